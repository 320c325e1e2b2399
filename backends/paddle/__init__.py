"""The paddle backend: PaddleFormers (the successor of PaddleNLP's LLM training) on
PaddlePaddle, launched with paddle.distributed.launch.

translate.py     recipe -> paddleformers.yaml, run_finetune.json, lora/, worker.json, launch.sh
export.py        the plan's data (messages, erniekit, PaddleNLP src/tgt, the template module)
worker.py        the training loop, run inside the paddle environment
decode.py        the decoder of ftx generate/chat/eval/serve: PaddleFormers' logits
modeling.py      model loading (HF safetensors directly), LoRA, batches and the loss
capabilities.py  what it trains, and the native keys of ``backends.paddle`` it honours
environment.py   its pinned environment (requirements.lock) and device detection
"""

from ftx.backends.paddle.capabilities import CAPABILITIES, OVERRIDES
from ftx.backends.paddle.environment import ENVIRONMENT
from ftx.core.backend import BackendSpec, DataExporter

SPEC = BackendSpec(
    name="paddle",
    description="PaddlePaddle: PaddleFormers",
    launcher="python -m paddle.distributed.launch",
    environment=ENVIRONMENT,
    capabilities=CAPABILITIES,
    translator="ftx.backends.paddle.translate:translate",
    worker="ftx.backends.paddle.worker",
    decoder="ftx.backends.paddle.decode",
    overrides=OVERRIDES,
    exporters={
        "paddlenlp": DataExporter(
            description="train.json / dev.json (src/tgt JSON Lines) + chat_template.json",
            function="ftx.backends.paddle.export:export_paddlenlp",
        ),
        "paddleformers": DataExporter(
            description="messages + erniekit JSON Lines, PaddleNLP src/tgt, template module",
            function="ftx.backends.paddle.export:export_plan_data",
        ),
    },
    plan_data="paddleformers",
)

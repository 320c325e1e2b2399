"""The mindformers backend: MindSpore MindFormers, launched with msrun.

translate.py     recipe -> finetune.yaml (legacy LlamaForCausalLM), worker.json, launch.sh
export.py        the plan's MindRecord data, and `ftx data export --to mindrecord`
mindrecord.py    writes prepared rows as MindRecord with mindspore's FileWriter
worker.py        the training loop, run inside the mindformers environment
native.py        train.trainer native: MindFormers' own Trainer under ftx
decode.py        the decoder of ftx generate/chat/eval/serve: MindFormers' logits
modeling.py      the MindFormers model built from finetune.yaml, HF weights in and out
model_section.py a config.json as the legacy LlamaForCausalLM's model_config
capabilities.py  what it trains, and the native keys of ``backends.mindformers`` it honours
environment.py   its pinned environment (requirements.lock) and device detection
"""

from ftx.backends.mindformers.capabilities import CAPABILITIES, OVERRIDES
from ftx.backends.mindformers.environment import ENVIRONMENT
from ftx.core.backend import BackendSpec, DataExporter

SPEC = BackendSpec(
    name="mindformers",
    description="MindSpore: MindFormers",
    launcher="msrun",
    environment=ENVIRONMENT,
    capabilities=CAPABILITIES,
    translator="ftx.backends.mindformers.translate:translate",
    worker="ftx.backends.mindformers.worker",
    decoder="ftx.backends.mindformers.decode",
    overrides=OVERRIDES,
    exporters={
        "mindrecord": DataExporter(
            description="train.mindrecord rows of max_seq_len + 1 (input_ids, labels),"
            " val.mindrecord rows of max_seq_len, written by mindspore in the mindformers"
            " environment",
            function="ftx.backends.mindformers.export:export_mindrecord",
        ),
        "mindformers": DataExporter(
            description="what finetune.yaml reads: train.mindrecord (+ val.mindrecord)",
            function="ftx.backends.mindformers.export:export_plan_data",
        ),
    },
    plan_data="mindformers",
)

"""The paddle backend: its pinned environment and PaddleNLP data export.

Training (translator, worker, capabilities) lands with the PaddleFormers work.

    environment.py  its pinned environment (requirements.lock) and device detection
    export.py       `ftx data export --to paddlenlp`: src/tgt JSON Lines + chat_template.json
"""

from ftx.backends.paddle.environment import ENVIRONMENT
from ftx.core.backend import BackendSpec, DataExporter

SPEC = BackendSpec(
    name="paddle",
    description="PaddlePaddle: PaddleFormers / PaddleNLP",
    launcher="python -m paddle.distributed.launch",
    environment=ENVIRONMENT,
    exporters={
        "paddlenlp": DataExporter(
            description="train.json / dev.json (src/tgt JSON Lines) + chat_template.json",
            function="ftx.backends.paddle.export:export_paddlenlp",
        )
    },
)

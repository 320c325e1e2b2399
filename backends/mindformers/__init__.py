"""The mindformers backend: its pinned environment and MindRecord data export.

Training (translator, worker, capabilities) lands with the MindFormers work.

    environment.py  its pinned environment (requirements.lock) and device detection
    export.py       `ftx data export --to mindrecord` (runs mindrecord.py in the environment)
    mindrecord.py   writes prepared rows as MindRecord with mindspore's FileWriter
"""

from ftx.backends.mindformers.environment import ENVIRONMENT
from ftx.core.backend import BackendSpec, DataExporter

SPEC = BackendSpec(
    name="mindformers",
    description="MindSpore: MindFormers",
    launcher="msrun",
    environment=ENVIRONMENT,
    exporters={
        "mindrecord": DataExporter(
            description="train.mindrecord rows of max_seq_len + 1 (input_ids, labels),"
            " written by mindspore in the mindformers environment",
            function="ftx.backends.mindformers.export:export_mindrecord",
        )
    },
)

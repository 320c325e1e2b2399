"""What the torch backend runs today (transformers + peft, torchrun/DDP)."""

from ftx.core.capabilities import Capabilities

CAPABILITIES = Capabilities(
    stages=frozenset({"sft", "pt"}),
    finetuning=frozenset({"full", "lora", "freeze"}),
    precisions=frozenset({"fp32", "bf16", "fp16"}),
    parallel=frozenset({"dp", "multinode"}),
    packing=False,
    notes={"prefix": "prefix tuning is the paddle backend's"},
)

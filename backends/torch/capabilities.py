"""What the torch backend runs today (transformers + peft + DeepSpeed, torchrun)."""

from ftx.core.capabilities import Capabilities

CAPABILITIES = Capabilities(
    stages=frozenset({"sft", "pt"}),
    finetuning=frozenset({"full", "lora", "freeze"}),
    precisions=frozenset({"fp32", "bf16", "fp16"}),
    parallel=frozenset({"dp", "zero1", "zero2", "zero3", "offload", "multinode"}),
    packing=True,
    notes={
        "prefix": "prefix tuning is the paddle backend's",
        "tp": "no tensor parallelism in transformers training: use zero 3 to shard parameters",
    },
)

"""What the torch backend runs today (transformers + peft + DeepSpeed, torchrun)."""

from ftx.core.capabilities import Capabilities

CAPABILITIES = Capabilities(
    stages=frozenset({"sft", "pt"}),
    finetuning=frozenset({"full", "lora", "qlora", "freeze"}),
    precisions=frozenset({"fp32", "bf16", "fp16"}),
    parallel=frozenset({"dp", "zero1", "zero2", "zero3", "offload", "multinode"}),
    packing=True,
    accelerator_only=frozenset({"qlora"}),
    notes={
        "prefix": "prefix tuning is the paddle backend's",
        "qlora": "bitsandbytes 4-bit/8-bit quantised training needs a CUDA GPU",
        "tp": "no tensor parallelism in transformers training: use zero 3 to shard parameters",
    },
)

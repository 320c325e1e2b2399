"""What the torch backend trains, and the keys of ``backends.torch`` its worker honours."""

from ftx.core.backend import TRAINING_ARGUMENTS, Capabilities, alias

CAPABILITIES = Capabilities(
    stages=frozenset({"sft", "pt", "dpo", "kto", "rm"}),
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


# transformers' TrainingArguments names, so a torch user's habits work.
OVERRIDES = {
    **TRAINING_ARGUMENTS,
    "bf16": alias("train.precision", bool, True, values={True: "bf16"}),
    "fp16": alias("train.precision", bool, True, values={True: "fp16"}),
    "gradient_checkpointing": alias("train.gradient_checkpointing", bool, True),
    "data_seed": alias("data.seed", int, 7),
    "resume_from_checkpoint": alias("train.resume", str, "auto"),
}

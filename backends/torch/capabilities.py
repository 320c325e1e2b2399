"""What the torch backend trains, and the keys of ``backends.torch`` its worker honours."""

from ftx.core.backend import Capabilities, Override

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


def _alias(recipe_key: str, kind: type, example: object, values: dict | None = None) -> Override:
    help = f"the recipe's {recipe_key}"
    return Override(kind, example, help, recipe_key=recipe_key, values=values)


# transformers' TrainingArguments names, so a torch user's habits work. Those that name
# a recipe key are written into it (every file derived from the key follows); the Adam
# betas and epsilon have no recipe key and reach the worker's AdamW as they are.
OVERRIDES = {
    "adam_beta1": Override(float, 0.8, "AdamW beta1 (default 0.9)"),
    "adam_beta2": Override(float, 0.95, "AdamW beta2 (default 0.999)"),
    "adam_epsilon": Override(float, 1e-6, "AdamW epsilon (default 1e-8)"),
    "learning_rate": _alias("train.learning_rate", float, 3e-4),
    "num_train_epochs": _alias("train.epochs", float, 7.0),
    "max_steps": _alias("train.max_steps", int, 11),
    "lr_scheduler_type": _alias("train.scheduler", str, "linear"),
    "warmup_ratio": _alias("train.warmup_ratio", float, 0.2),
    "warmup_steps": _alias("train.warmup_steps", int, 9),
    "per_device_train_batch_size": _alias("train.micro_batch_size", int, 3),
    "gradient_accumulation_steps": _alias("train.grad_accum", int, 4),
    "weight_decay": _alias("train.weight_decay", float, 0.05),
    "max_grad_norm": _alias("train.max_grad_norm", float, 0.5),
    "bf16": _alias("train.precision", bool, True, values={True: "bf16"}),
    "fp16": _alias("train.precision", bool, True, values={True: "fp16"}),
    "gradient_checkpointing": _alias("train.gradient_checkpointing", bool, True),
    "seed": _alias("train.seed", int, 7),
    "data_seed": _alias("data.seed", int, 7),
    "logging_steps": _alias("train.logging_steps", int, 3),
    "save_steps": _alias("train.save_steps", int, 13),
    "save_total_limit": _alias("train.save_total_limit", int, 5),
    "eval_steps": _alias("train.eval_steps", int, 17),
    "resume_from_checkpoint": _alias("train.resume", str, "auto"),
}

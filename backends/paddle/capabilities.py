"""What the paddle backend trains, and the keys of ``backends.paddle`` it honours."""

from ftx.core.backend import Capabilities, Override

CAPABILITIES = Capabilities(
    stages=frozenset({"sft", "pt"}),
    finetuning=frozenset({"full", "lora"}),
    precisions=frozenset({"fp32"}),
    parallel=frozenset({"dp", "multinode"}),
    packing=True,
    plan_only=frozenset({"bf16", "fp16", "tp", "pp", "zero1", "zero2", "zero3"}),
    notes={
        "prefix": "PaddleFormers 1.2 has LoRA only (prefix tuning was PaddleNLP's)",
        "qlora": "PaddleFormers' weight_quantize_algo needs a GPU; not translated yet",
        "bf16": "run the plan with `paddleformers-cli train OUT/plan/paddleformers.yaml` on a GPU",
        "fp16": "run the plan with `paddleformers-cli train OUT/plan/paddleformers.yaml` on a GPU",
        "tp": "tensor parallelism runs in PaddleFormers' fleet trainer: `paddleformers-cli train"
        " OUT/plan/paddleformers.yaml` on GPUs",
        "pp": "pipeline parallelism runs in PaddleFormers' fleet trainer: `paddleformers-cli train"
        " OUT/plan/paddleformers.yaml` on GPUs",
        "zero1": "sharding stage1 runs in PaddleFormers' trainer (`paddleformers-cli train"
        " OUT/plan/paddleformers.yaml`)",
        "zero2": "sharding stage2 runs in PaddleFormers' trainer (`paddleformers-cli train"
        " OUT/plan/paddleformers.yaml`)",
        "zero3": "sharding stage3 runs in PaddleFormers' trainer (`paddleformers-cli train"
        " OUT/plan/paddleformers.yaml`)",
        "models": "on CPU PaddleFormers 1.2 builds Llama-architecture models only (Qwen2/Qwen3"
        " need PaddleFleet, in the GPU image)",
    },
)


def _alias(recipe_key: str, kind: type, example: object, values: dict | None = None) -> Override:
    return Override(
        kind, example, f"the recipe's {recipe_key}", recipe_key=recipe_key, values=values
    )


# PaddleFormers' own argument names, so a Paddle user's habits work. Those that name a
# recipe key are written into it; the rest reach paddleformers.yaml (and the worker) as is.
OVERRIDES = {
    "adam_beta1": Override(float, 0.8, "AdamW beta1 (default 0.9)"),
    "adam_beta2": Override(float, 0.95, "AdamW beta2 (default 0.999)"),
    "adam_epsilon": Override(float, 1e-6, "AdamW epsilon (default 1e-8)"),
    "unified_checkpoint": Override(bool, False, "paddleformers.yaml's unified_checkpoint"),
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
    "seed": _alias("train.seed", int, 7),
    "logging_steps": _alias("train.logging_steps", int, 3),
    "save_steps": _alias("train.save_steps", int, 13),
    "save_total_limit": _alias("train.save_total_limit", int, 5),
    "eval_steps": _alias("train.eval_steps", int, 17),
    "max_seq_len": _alias("data.max_seq_len", int, 96),
    "packing": _alias("data.packing", bool, True),
    "tensor_model_parallel_size": _alias("parallel.tp", int, 2),
    "pipeline_model_parallel_size": _alias("parallel.pp", int, 2),
}

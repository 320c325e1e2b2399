"""What the paddle backend trains, and the keys of ``backends.paddle`` it honours."""

from ftx.core.backend import TRAINING_ARGUMENTS, Capabilities, Override, alias

CAPABILITIES = Capabilities(
    stages=frozenset({"sft", "pt", "dpo", "kto", "rm"}),
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


# PaddleFormers' own argument names (its TrainingArguments share transformers'), so a
# Paddle user's habits work.
OVERRIDES = {
    **TRAINING_ARGUMENTS,
    "unified_checkpoint": Override(bool, False, "paddleformers.yaml's unified_checkpoint"),
    "max_seq_len": alias("data.max_seq_len", int, 96),
    "packing": alias("data.packing", bool, True),
    "tensor_model_parallel_size": alias("parallel.tp", int, 2),
    "pipeline_model_parallel_size": alias("parallel.pp", int, 2),
}

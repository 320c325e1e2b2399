"""What the paddle backend trains, and the keys of ``backends.paddle`` it honours."""

from ftx.core.backend import TRAINING_ARGUMENTS, Capabilities, NativeTrainer, Override, alias

# What only PaddleFormers' own trainer runs; its CPU kernels run none of it (no bf16
# matmul, auto_cast a no-op; sharding's tensor fusion and the fleet's model/pipeline
# groups need GPUs), so a CPU machine is refused them by name.
ON_GPUS = frozenset({"bf16", "fp16", "tp", "pp", "zero1", "zero2", "zero3"})

CAPABILITIES = Capabilities(
    stages=frozenset({"sft", "pt", "dpo", "kto", "rm"}),
    finetuning=frozenset({"full", "lora"}),
    precisions=frozenset({"fp32"}),
    parallel=frozenset({"dp", "multinode"}),
    packing=True,
    native=NativeTrainer(
        name="PaddleFormers' Trainer",
        command="paddleformers-cli train plan/paddleformers.yaml",
        stages=frozenset({"sft", "pt", "dpo"}),
        finetuning=frozenset({"full", "lora"}),
        only=ON_GPUS,
        accelerator_only=ON_GPUS,
    ),
    notes={
        "prefix": "PaddleFormers 1.2 has LoRA only (prefix tuning was PaddleNLP's)",
        "qlora": "PaddleFormers' weight_quantize_algo needs a GPU; not translated yet",
        "bf16": "paddle's CPU kernels have no bfloat16 matmul",
        "fp16": "paddle.amp's auto_cast does nothing on a CPU",
        "tp": "tensor_model_parallel_size: the fleet's model-parallel groups need GPUs",
        "pp": "pipeline_model_parallel_size: the fleet's pipeline groups need GPUs",
        "zero1": "sharding stage1: its tensor-fusion helper fails on a CPU",
        "zero2": "sharding stage2: its tensor-fusion helper fails on a CPU",
        "zero3": "sharding stage3: its tensor-fusion helper fails on a CPU",
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

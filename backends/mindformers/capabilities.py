"""What the mindformers backend trains, and the keys of ``backends.mindformers`` it honours."""

from ftx.core.backend import Capabilities, NativeTrainer, Override, alias

ON_ASCEND = "runs on Ascend through MindFormers' own trainer with OUT/plan/finetune.yaml"
# What only MindFormers' own trainer runs, and only on Ascend (bf16 fails on CPU and fp16
# computes in fp32 there; the parallel layouts and the MCore path need NPUs).
ON_NPUS = frozenset({"bf16", "fp16", "tp", "pp", "zero1", "zero2", "zero3", "qwen3"})

CAPABILITIES = Capabilities(
    stages=frozenset({"sft", "pt", "dpo", "kto", "rm"}),
    finetuning=frozenset({"full", "lora"}),
    precisions=frozenset({"fp32"}),
    parallel=frozenset({"dp", "multinode"}),
    # Legacy MindFormers models take rows of seq_length + 1 with positions 0..n and one
    # causal mask: nothing keeps packed examples apart (its eod mask compression needs
    # flash attention, on Ascend only).
    packing=False,
    native=NativeTrainer(
        name="MindFormers' Trainer",
        command="python run_mindformer.py --config plan/finetune.yaml",
        stages=frozenset({"sft", "pt"}),
        finetuning=frozenset({"full", "lora"}),
        only=ON_NPUS,
        accelerator_only=ON_NPUS,
    ),
    notes={
        "prefix": "MindFormers' prefix tuning exists for ChatGLM only, not for Llama models",
        "qlora": "MindFormers has no quantised LoRA",
        "freeze": "MindFormers has no layer-freezing fine-tune setting",
        "bf16": f"bf16 (compute_dtype bfloat16) {ON_ASCEND}",
        "fp16": f"fp16 (compute_dtype float16, dynamic loss scale) {ON_ASCEND}",
        "tp": f"model parallelism (parallel_config.model_parallel) {ON_ASCEND}",
        "pp": f"pipeline stages (parallel_config.pipeline_stage) {ON_ASCEND}",
        "zero1": f"the parallel optimizer (parallel.enable_parallel_optimizer) {ON_ASCEND}",
        "zero2": f"the parallel optimizer (parallel.enable_parallel_optimizer) {ON_ASCEND}",
        "zero3": f"the parallel optimizer (parallel.enable_parallel_optimizer) {ON_ASCEND}",
        "qwen3": "Qwen3 goes through MindFormers' MCore path (use_legacy: False), whose"
        f" training kernels exist on Ascend only; it {ON_ASCEND}",
        "models": "Llama-architecture models (Llama 2/3, Qwen2/2.5 with q/k/v biases) through"
        " MindFormers' legacy LlamaForCausalLM; on CPU in fp32, PyNative + jit. Qwen3: the"
        " MCore path, on Ascend",
    },
)

SCHEDULES = {"CosineWithWarmUpLR": "cosine", "LinearWithWarmUpLR": "linear"}
SCHEDULES["ConstantWarmUpLR"] = "constant"

# MindFormers' own YAML key names, so a MindFormers user's habits work.
OVERRIDES = {
    "adam_beta1": Override(float, 0.8, "optimizer.betas[0] (default 0.9)"),
    "adam_beta2": Override(float, 0.95, "optimizer.betas[1] (default 0.999)"),
    "adam_epsilon": Override(float, 1e-6, "optimizer.eps (default 1e-8)"),
    "learning_rate": alias("train.learning_rate", float, 3e-4),
    "epochs": alias("train.epochs", float, 7.0),
    "batch_size": alias("train.micro_batch_size", int, 3),
    "gradient_accumulation_steps": alias("train.grad_accum", int, 4),
    "lr_schedule": alias("train.scheduler", str, "LinearWithWarmUpLR", values=SCHEDULES),
    "warmup_ratio": alias("train.warmup_ratio", float, 0.2),
    "warmup_steps": alias("train.warmup_steps", int, 9),
    "weight_decay": alias("train.weight_decay", float, 0.05),
    "max_grad_norm": alias("train.max_grad_norm", float, 0.5),
    "seed": alias("train.seed", int, 7),
    "seq_length": alias("data.max_seq_len", int, 96),
    "save_checkpoint_steps": alias("train.save_steps", int, 13),
    "keep_checkpoint_max": alias("train.save_total_limit", int, 5),
    "recompute": alias("train.gradient_checkpointing", bool, True),
    "model_parallel": alias("parallel.tp", int, 2),
    "pipeline_stage": alias("parallel.pp", int, 2),
    "use_flash_attention": Override(
        bool, False, "model_config.use_flash_attention on Ascend (default true)"
    ),
    "max_device_memory": Override(str, "30GB", "context.max_device_memory (default 58GB)"),
    "checkpoint_format": Override(
        str, "ckpt", "CheckpointMonitor's checkpoint_format: ckpt or safetensors (default)"
    ),
}

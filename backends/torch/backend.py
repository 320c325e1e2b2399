"""The torch backend's translator: recipe -> worker config, PEFT config, launch.sh.

The worker config uses transformers' TrainingArguments names for everything
that has one, so a torch user can read it; ``backends.torch`` overrides in the
recipe are merged into ``training_args`` and must be keys the worker honours.
"""

from __future__ import annotations

import json
from typing import Any

from ftx.backends.torch.capabilities import CAPABILITIES
from ftx.core.backend import Backend
from ftx.core.errors import FtxError
from ftx.core.layout import RunLayout
from ftx.core.plan import NativePlan
from ftx.core.recipe.schema import Recipe

WORKER_MODULE = "ftx.backends.torch.worker"
DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def training_args(recipe: Recipe, layout: RunLayout) -> dict[str, Any]:
    """The TrainingArguments-named part of the worker config."""
    t = recipe.train
    args: dict[str, Any] = {
        "output_dir": str(layout.root),
        "num_train_epochs": t.num_epochs,
        "max_steps": t.max_steps or -1,
        "learning_rate": t.learning_rate,
        "lr_scheduler_type": t.scheduler,
        "warmup_ratio": t.warmup_ratio or 0.0,
        "warmup_steps": t.warmup_steps or 0,
        "per_device_train_batch_size": t.micro_batch_size,
        "per_device_eval_batch_size": t.micro_batch_size,
        "gradient_accumulation_steps": t.grad_accum,
        "weight_decay": t.weight_decay,
        "max_grad_norm": t.max_grad_norm,
        "bf16": t.precision == "bf16",
        "fp16": t.precision == "fp16",
        "gradient_checkpointing": t.gradient_checkpointing,
        "seed": t.seed,
        "data_seed": recipe.data.seed,
        "logging_steps": t.logging_steps,
        "save_steps": t.save_steps,
        "save_total_limit": t.save_total_limit,
        "eval_steps": t.eval_steps,
        "resume_from_checkpoint": t.resume or None,
        "adam_beta1": 0.9,
        "adam_beta2": 0.999,
        "adam_epsilon": 1e-8,
    }
    overrides = recipe.backends.get("torch", {})
    unknown = sorted(set(overrides) - set(args))
    if unknown:
        raise FtxError(
            f"backends.torch: unknown key(s) {', '.join(unknown)} for the torch worker",
            where="backends.torch",
            fix=f"use TrainingArguments keys the worker honours: {', '.join(sorted(args))}",
        )
    return {**args, **overrides}


def peft_config(recipe: Recipe) -> dict[str, Any]:
    """peft.LoraConfig keyword arguments."""
    lora = recipe.method.lora
    return {
        "task_type": "CAUSAL_LM",
        "r": lora.rank,
        "lora_alpha": lora.alpha,
        "lora_dropout": lora.dropout,
        "target_modules": "all-linear" if lora.targets == "all" else list(lora.targets),
        "use_rslora": lora.rslora,
        "use_dora": lora.dora,
    }


def deepspeed_config(recipe: Recipe) -> dict[str, Any]:
    """A DeepSpeed config for ZeRO stage ``parallel.zero`` (no "auto" values: all explicit)."""
    t, p = recipe.train, recipe.parallel
    zero: dict[str, Any] = {"stage": p.zero, "contiguous_gradients": True, "overlap_comm": False}
    if p.zero == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    if p.offload in ("optimizer", "all"):
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if p.offload == "all":
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    return {
        "train_micro_batch_size_per_gpu": t.micro_batch_size,
        "gradient_accumulation_steps": t.grad_accum,
        "gradient_clipping": t.max_grad_norm,
        "zero_optimization": zero,
        # ftx builds its own AdamW (same as without DeepSpeed) and hands it over.
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "bf16": {"enabled": t.precision == "bf16"},
        "fp16": {
            "enabled": t.precision == "fp16",
            "loss_scale": 0,
            "initial_scale_power": 16,
            "loss_scale_window": 1000,
            "hysteresis": 2,
            "min_loss_scale": 1,
        },
        "steps_per_print": 1_000_000_000,
        "wall_clock_breakdown": False,
    }


def worker_config(recipe: Recipe, layout: RunLayout) -> dict[str, Any]:
    """Everything the worker needs, in one JSON document."""
    m = recipe.method
    dtype = recipe.model.dtype if recipe.model.dtype != "auto" else "float32"
    return {
        "backend": "torch",
        "precision": recipe.train.precision,
        "deepspeed": "ds_config.json" if recipe.parallel.zero else None,
        "report_to": recipe.output.report_to,
        "model": {
            "model_name_or_path": recipe.model.path,
            "torch_dtype": dtype,
            "trust_remote_code": recipe.model.trust_remote_code,
        },
        "method": {
            "stage": m.stage,
            "finetuning_type": m.finetuning,
            "freeze_trainable_layers": m.freeze.trainable_layers,
            "peft_config": "peft_config.json" if m.finetuning in ("lora", "qlora") else None,
            "quantization": (
                {
                    "bits": m.quantization.bits,
                    "quant_type": m.quantization.type,
                    "double_quant": m.quantization.double_quant,
                }
                if m.finetuning == "qlora"
                else None
            ),
            "merge_lora": recipe.output.merge_lora,
        },
        "data": {
            "prepared_dir": str(layout.data),
            "max_seq_len": recipe.data.max_seq_len,
        },
        "evaluate": (
            {
                "max_new_tokens": recipe.evaluate.max_new_tokens,
                "before_training": recipe.evaluate.before_training,
            }
            if recipe.evaluate
            else None
        ),
        "training_args": training_args(recipe, layout),
    }


def launch_command(recipe: Recipe, config_path: str) -> list[str]:
    """torchrun with the recipe's topology (standalone rendezvous on one node)."""
    p = recipe.parallel
    if p.nnodes == 1:
        rendezvous = ["--standalone"]
    else:
        rendezvous = [
            f"--nnodes={p.nnodes}",
            f"--node_rank={p.node_rank}",
            f"--master_addr={p.master_addr}",
            f"--master_port={p.master_port}",
        ]
    return [
        "torchrun",
        *rendezvous,
        f"--nproc_per_node={p.nproc_per_node}",
        "-m",
        WORKER_MODULE,
        config_path,
    ]


class TorchBackend(Backend):
    """transformers + peft on torch, launched with torchrun."""

    name = "torch"
    environment = "torch"
    capabilities = CAPABILITIES
    description = "PyTorch: transformers + peft + DeepSpeed, torchrun"

    def translate(self, recipe: Recipe, layout: RunLayout) -> NativePlan:
        files = {"train_args.json": json.dumps(worker_config(recipe, layout), indent=2) + "\n"}
        if recipe.method.finetuning in ("lora", "qlora"):
            files["peft_config.json"] = json.dumps(peft_config(recipe), indent=2) + "\n"
        if recipe.parallel.zero:
            files["ds_config.json"] = json.dumps(deepspeed_config(recipe), indent=2) + "\n"
        return NativePlan(
            backend=self.name,
            out_dir=layout.root,
            files=files,
            command=launch_command(recipe, str(layout.plan / "train_args.json")),
            env={"TOKENIZERS_PARALLELISM": "false"},
            expected_outputs=("metrics.jsonl", "final"),
        )

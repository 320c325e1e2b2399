"""The torch backend's translator: recipe -> worker.json, peft_config.json, ds_config.json.

Pure: no file is read or written. Paths inside OUT are relative to OUT, and
launch.sh starts in OUT, so a plan can be moved or mounted elsewhere. The
recipe arrives with ``backends.torch`` already applied (ftx.core.overrides):
aliases are in their recipe keys, native keys in ``recipe.backends["torch"]``.
"""

from __future__ import annotations

import json
from typing import Any

from ftx.backends.torch import SPEC
from ftx.backends.torch.plan_files import DS_CONFIG, PEFT_CONFIG
from ftx.core.contract import WORKER_CONFIG
from ftx.core.models.architectures import ModelConfig
from ftx.core.nodes import MASTER_ADDR, MASTER_PORT, NODE_RANK, NodeContract, var
from ftx.core.plan import NativePlan
from ftx.core.recipe.schema import Recipe
from ftx.core.worker_config import worker_config


def peft_config(recipe: Recipe) -> dict[str, Any]:
    """peft.LoraConfig keyword arguments."""
    lora = recipe.method.lora
    return {
        # a reward model's score head is saved whole with the adapter (modules_to_save)
        "task_type": "SEQ_CLS" if recipe.method.stage == "rm" else "CAUSAL_LM",
        "r": lora.rank,
        "lora_alpha": lora.alpha,
        "lora_dropout": lora.dropout,
        "target_modules": "all-linear" if lora.targets == "all" else list(lora.targets),
        "use_rslora": lora.rslora,
        "use_dora": lora.dora,
    }


def build_ds_config(recipe: Recipe) -> dict[str, Any]:
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


def launch_command(recipe: Recipe) -> list[str]:
    """torchrun with the recipe's topology (standalone rendezvous on one node); one process
    without DeepSpeed needs no launcher, so the worker starts directly (a second sooner)."""
    p = recipe.parallel
    if p.world_size == 1 and not p.zero:
        return ["python", "-m", str(SPEC.worker), WORKER_CONFIG]
    if p.nnodes == 1:
        rendezvous = ["--standalone"]
    else:
        rendezvous = [
            f"--nnodes={p.nnodes}",
            f"--node_rank={var(NODE_RANK)}",
            f"--master_addr={var(MASTER_ADDR)}",
            f"--master_port={var(MASTER_PORT)}",
        ]
    return [
        "torchrun",
        *rendezvous,
        f"--nproc_per_node={p.nproc_per_node}",
        "-m",
        SPEC.worker,
        WORKER_CONFIG,
    ]


def _json(data: Any) -> str:
    return json.dumps(data, indent=2) + "\n"


def translate(recipe: Recipe, model: ModelConfig) -> NativePlan:
    """The torch plan of a recipe (with its backends.torch section applied)."""
    files: dict[str, str] = {}
    if recipe.method.finetuning in ("lora", "qlora"):
        files[PEFT_CONFIG] = _json(peft_config(recipe))
    if recipe.parallel.zero:
        files[DS_CONFIG] = _json(build_ds_config(recipe))
    return NativePlan(
        backend=SPEC.name,
        worker_config=worker_config(recipe, SPEC.name),
        files=files,
        command=launch_command(recipe),
        nodes=NodeContract.plan_of(recipe.parallel) if recipe.parallel.nnodes > 1 else None,
        env={"TOKENIZERS_PARALLELISM": "false"},
    )

"""How gradients are computed, synchronised and applied: plain/DDP or DeepSpeed ZeRO.

Both engines expose the same operations, so the torch framework in worker.py reads the
same whichever runs underneath.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import torch

from ftx.backends.torch.plan_files import DS_CONFIG
from ftx.core.worker.framework import Rank


class PlainEngine:
    """One process, or DistributedDataParallel over several; optional autocast + scaler."""

    def __init__(
        self,
        model: Any,
        optimizer: torch.optim.Optimizer,
        rank: Rank,
        precision: str,
        max_grad_norm: float,
    ):
        self.rank = rank
        self.inner = model
        self.model = torch.nn.parallel.DistributedDataParallel(model) if rank.world > 1 else model
        self.optimizer = optimizer
        self.max_grad_norm = max_grad_norm
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        device = next(model.parameters()).device.type
        self.device_type = device
        self.scaler = torch.amp.GradScaler(device, enabled=precision == "fp16")
        self.gathers_for_forward = False
        self.torch_optimizer = optimizer  # what the learning-rate schedule drives

    def forward_context(self, last_micro_batch: bool) -> contextlib.AbstractContextManager:
        stack = contextlib.ExitStack()
        if self.rank.world > 1 and not last_micro_batch:
            stack.enter_context(self.model.no_sync())  # sync gradients once per step
        stack.enter_context(
            torch.autocast(self.device_type, dtype=self.dtype, enabled=self.dtype is not None)
        )
        return stack

    def backward(self, loss: torch.Tensor, last_micro_batch: bool) -> None:
        self.scaler.scale(loss).backward()

    def step(self) -> float:
        """Clip, apply and clear the gradients; return the gradient norm before clipping."""
        self.scaler.unscale_(self.optimizer)
        params = [p for p in self.inner.parameters() if p.requires_grad]
        norm = torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm or float("inf"))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    def save(self, folder: Path) -> None:
        if self.rank.main:
            torch.save(self.optimizer.state_dict(), folder / "optimizer.pt")

    def load(self, folder: Path) -> None:
        state = torch.load(folder / "optimizer.pt", weights_only=True)
        self.optimizer.load_state_dict(state)
        _load_weights(self.inner, folder)

    def export_state_dict(self) -> dict[str, torch.Tensor] | None:
        """None: the model's own state_dict is complete on this rank."""
        return None


class DeepSpeedEngine:
    """DeepSpeed ZeRO 1-3 (optionally offloaded) around the same model and optimizer."""

    def __init__(self, model: Any, optimizer: torch.optim.Optimizer, rank: Rank, config: dict):
        import deepspeed

        self.rank = rank
        self.inner = model
        self.stage = config["zero_optimization"]["stage"]
        self.engine, self.optimizer, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, config=config
        )
        self.model = self.engine
        # DeepSpeed regroups the parameters inside the torch optimizer it wraps; the
        # learning-rate schedule must drive those groups.
        self.torch_optimizer = self.optimizer.optimizer
        # Under ZeRO-3 every forward gathers parameters collectively: all ranks must run it.
        self.gathers_for_forward = self.stage == 3

    def forward_context(self, last_micro_batch: bool) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor, last_micro_batch: bool) -> None:
        # The loss is already normalised over the whole step (tokens of every micro-batch).
        self.engine.backward(loss, scale_wrt_gas=False)
        if not last_micro_batch:
            self.engine.step()  # DeepSpeed counts micro-steps and updates at the boundary

    def step(self) -> float:
        """The boundary micro-step: clip, update, clear; return the gradient norm."""
        self.engine.step()
        norm = self.engine.get_global_grad_norm()
        return float(norm) if norm is not None else 0.0

    def save(self, folder: Path) -> None:
        self.engine.save_checkpoint(str(folder / "deepspeed"), tag="state")

    def load(self, folder: Path) -> None:
        self.engine.load_checkpoint(str(folder / "deepspeed"), tag="state")

    def export_state_dict(self) -> dict[str, torch.Tensor] | None:
        """Full weights on rank 0 (a collective call: every rank must make it)."""
        if self.stage == 3:
            return self.engine._zero3_consolidated_16bit_state_dict()
        return None


def _load_weights(model: Any, folder: Path) -> None:
    """Load model (or adapter) weights saved in HF format into ``model``."""
    from safetensors.torch import load_file

    if (folder / "adapter_model.safetensors").exists():
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, load_file(str(folder / "adapter_model.safetensors")))
        return
    state: dict[str, torch.Tensor] = {}
    for shard in sorted(folder.glob("model*.safetensors")):
        state.update(load_file(str(shard)))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    if unexpected or [m for m in missing if m not in tied and "lm_head" not in m]:
        raise RuntimeError(f"{folder} does not match the model: {missing[:3]} {unexpected[:3]}")


def read_ds_config(plan_dir: Path) -> dict | None:
    """The plan's DeepSpeed config, or None when the run uses the plain engine."""
    path = plan_dir / DS_CONFIG
    return json.loads(path.read_text()) if path.exists() else None

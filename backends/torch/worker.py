"""The torch worker: the torch framework of the one training loop, and its entry point.

    torchrun --standalone --nproc_per_node=1 -m ftx.backends.torch.worker plan/worker.json

:class:`Torch` implements :class:`ftx.core.worker.framework.Framework` with transformers
models (peft for LoRA/QLoRA, DeepSpeed ZeRO when the plan has a ds_config.json);
:func:`ftx.core.worker.loop.train` runs the loop. A plain loop rather than transformers'
Trainer: ftx guarantees the same example order on every backend, a loss normalised by
the learned tokens across accumulation and ranks, the shared metrics, atomic
checkpoints and a checkpoint on SIGTERM; each would need a Trainer subclass or callback.
"""

from __future__ import annotations

import copy
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from ftx.backends.torch.engines import DeepSpeedEngine, PlainEngine, read_ds_config
from ftx.backends.torch.evaluation import greedy
from ftx.backends.torch.modeling import device_batch, load_model, nll_sum, token_logprobs
from ftx.core.contract import RunLayout, TrainArgs, WorkerConfig
from ftx.core.prepared import PreparedSplit
from ftx.core.worker.entry import run_worker
from ftx.core.worker.framework import ModelSize, Rank, StepOutput
from ftx.core.worker.loop import train
from ftx.core.worker.objectives import (
    Objective,
    RowLogps,
    RowScores,
    StepTotals,
    TensorOps,
    TokenBatch,
    reference_kind,
    summed,
)
from ftx.core.worker.rules import decays
from ftx.core.worker.schedule import Schedule


class Torch:
    """transformers + peft (+ DeepSpeed) behind the framework interface."""

    adapter_format: Literal["peft", "native"] = "peft"
    native_name: str | None = None  # torch's own format is Hugging Face's
    collective_forward = False  # ZeRO-3's forwards are (start reads the plan's ds_config)
    keeps_reference = True  # the adapter switched off (LoRA) or a frozen copy (full)

    # ---------------------------------------------------------------- processes

    def start(self, config: WorkerConfig, layout: RunLayout) -> Rank:
        self.ds_config = read_ds_config(layout.plan)
        self.rank, self.device = start_processes(self.ds_config is not None)
        zero = (self.ds_config or {}).get("zero_optimization", {}).get("stage", 0)
        self.collective_forward = zero == 3
        return self.rank

    def seed(self, seed: int) -> None:
        torch.manual_seed(seed)

    def all_reduce_sum(self, values: Sequence[float]) -> list[float]:
        if self.rank.world == 1:
            return list(values)
        tensor = torch.tensor(list(values), dtype=torch.float64)
        torch.distributed.all_reduce(tensor)
        return tensor.tolist()

    def accelerator(self) -> str | None:
        return torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else None

    # ---------------------------------------------------------------- construction

    def build(
        self,
        config: WorkerConfig,
        layout: RunLayout,
        split: PreparedSplit,
        schedule: Schedule,
        objective: Objective,
    ) -> ModelSize:
        self.objective = objective
        self.tokenizer, model = load_model(
            config, layout.plan, self.device, self.ds_config, packed=split.packed
        )
        self.reference = reference_of(model, config)
        self.engine = build_engine(model, config.train, self.rank, self.ds_config)
        self.scheduler = build_scheduler(self.engine.torch_optimizer, config.train, schedule)
        self.engine.model.train()
        params = sum(p.numel() for p in model.parameters())
        return ModelSize(params, sum(p.numel() for p in model.parameters() if p.requires_grad))

    # ---------------------------------------------------------------- one step

    def optimizer_step(self, batches: Sequence[TokenBatch], totals: StepTotals) -> StepOutput:
        if self.objective.needs != "nll":
            return self._preference_step(batches, totals)
        engine, loss_sum = self.engine, 0.0
        for i, host in enumerate(batches):
            last = i == len(batches) - 1
            with engine.forward_context(last_micro_batch=last):
                nll = nll_sum(engine.model, device_batch(host, self.device))
            weight = self.objective.weight(host, totals, "sum")
            engine.backward(self.objective.loss(nll, weight), last)
            loss_sum += float(nll.detach())
        grad_norm = engine.step()
        self.scheduler.step()
        return StepOutput(loss_sum, grad_norm)

    def _preference_step(self, batches: Sequence[TokenBatch], totals: StepTotals) -> StepOutput:
        """dpo's, kto's and rm's step: each micro-batch's rows in one forward (a pair batch:
        chosen and rejected together), the objective's per-pair or per-row losses summed
        and weighted; the rewards (and log-probabilities) logged."""
        engine, objective, loss_sum = self.engine, self.objective, 0.0
        extras: dict[str, float] = {}
        for i, host in enumerate(batches):
            last = i == len(batches) - 1
            batch = device_batch(host, self.device)
            with engine.forward_context(last_micro_batch=last):
                stat = self._statistic(engine.model, batch)
                total = objective.summed_losses(stat, TORCH_OPS)
            engine.backward(objective.loss(total, objective.weight(host, totals, "sum")), last)
            loss_sum += float(total.detach())
            extras = summed(extras, objective.metrics(stat.apply(on_host)))
        grad_norm = engine.step()
        self.scheduler.step()
        return StepOutput(loss_sum, grad_norm, extras)

    def _statistic(self, model: Any, batch: dict[str, Any]) -> RowLogps | RowScores:
        """What the preference objective asks for: rows' log-probabilities or scores."""
        if self.objective.needs == "row_scores":
            inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
            return RowScores(model(**inputs).logits[:, 0].float())  # transformers' positions
        return self._pair_logps(model, batch)

    def _pair_logps(self, model: Any, batch: dict[str, Any]) -> RowLogps:
        """The policy's summed log-probabilities per row and the reference's: precomputed in
        the batch, the base with the adapter switched off (LoRA), a frozen copy (full), or
        none for the reference-free losses."""
        policy = token_logprobs(model, batch).sum(-1)
        reference = batch.get("reference_logps")
        if reference is None:
            if self.reference == "none":
                reference = torch.zeros_like(policy).detach()
            else:
                with torch.no_grad():
                    reference = self.row_logps_on_device(batch, reference=True)
        return RowLogps(policy, reference, batch["row_units"], batch["row_aux"])

    @torch.no_grad()
    def row_logps_on_device(self, batch: dict[str, Any], reference: bool) -> torch.Tensor:
        if not reference:
            return token_logprobs(self.engine.inner, batch).sum(-1)
        if self.reference == "adapter_off":
            with self.engine.inner.disable_adapter():
                return token_logprobs(self.engine.inner, batch).sum(-1)
        return token_logprobs(self.reference, batch).sum(-1)

    def row_logps(self, batch: TokenBatch, reference: bool) -> np.ndarray:
        was_training = self.engine.inner.training
        self.engine.inner.eval()
        found = self.row_logps_on_device(device_batch(batch, self.device), reference)
        self.engine.inner.train(was_training)
        return found.float().cpu().numpy()

    def learning_rate(self, step: int) -> float:
        return self.scheduler.get_last_lr()[0]

    # ---------------------------------------------------------------- evaluation

    @torch.no_grad()
    def eval_loss(self, batches: Sequence[tuple[TokenBatch, bool]]) -> tuple[float, int]:
        # The bare model (no DDP collectives); under ZeRO-3 every forward is a collective.
        model = self.engine.inner
        model.eval()
        total, count = 0.0, 0
        for host, counted in batches:
            if counted or self.collective_forward:
                batch = device_batch(host, self.device)
                if self.objective.needs != "nll":
                    stat = self._statistic(model, batch)
                    loss = self.objective.summed_losses(stat, TORCH_OPS)
                else:
                    loss = nll_sum(model, batch)
                if counted:
                    total, count = total + float(loss), count + host.units
        model.train()
        return total, count

    def token_logprobs(self, batch: TokenBatch) -> torch.Tensor:
        return token_logprobs(self.engine.model, device_batch(batch, self.device))

    def greedy(
        self, prompts: Sequence[Sequence[int]], max_new_tokens: int, stop: frozenset[int]
    ) -> list[list[int]]:
        return greedy(
            self.engine.inner,
            self.tokenizer,
            prompts,
            max_new_tokens,
            stop,
            self.device,
            synced=self.collective_forward,
        )

    # ---------------------------------------------------------------- state

    def save_state(self, folder: Path) -> None:
        """HF weights (model or adapter) and tokenizer, optimizer (or DeepSpeed's state),
        schedule and torch's RNG state."""
        self._save_hf(folder)
        if self.rank.main:
            self.tokenizer.save_pretrained(str(folder))
        self.engine.save(folder)
        if self.rank.main:
            torch.save(self.scheduler.state_dict(), folder / "scheduler.pt")
            torch.save(torch.get_rng_state(), folder / "torch_rng_state.pt")

    def load_state(self, folder: Path) -> None:
        self.engine.load(folder)
        self.scheduler.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=True))
        torch.set_rng_state(torch.load(folder / "torch_rng_state.pt", weights_only=True))

    # ---------------------------------------------------------------- outputs

    def save_model(self, folder: Path) -> None:
        self._save_hf(folder)

    def save_native(self, folder: Path) -> None:
        self._save_hf(folder)  # torch's own format is Hugging Face's

    def save_merged(self, folder: Path) -> bool:
        """peft's merge_and_unload (DoRA's magnitudes included), saved in HF format."""
        self.engine.inner.merge_and_unload().save_pretrained(str(folder), safe_serialization=True)
        return True

    def score_head(self) -> None:
        return None  # transformers' *ForSequenceClassification saves its own head

    def summary_writer(self, folder: Path) -> Any:
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(str(folder))

    def _save_hf(self, folder: Path) -> None:
        """The full model or the PEFT adapter in HF format on rank 0; a collective under
        ZeRO-3 (the weights are gathered), so every rank calls it."""
        state = self.engine.export_state_dict()
        if self.rank.main:
            kwargs = {"state_dict": state} if state is not None else {}
            self.engine.inner.save_pretrained(str(folder), safe_serialization=True, **kwargs)


TORCH_OPS = TensorOps(torch.nn.functional.logsigmoid, torch.relu, torch.exp, torch.log1p, torch.sum)


def on_host(t: Any) -> Any:
    """A tensor as a float32 host array."""
    return t.detach().float().cpu().numpy()


def reference_of(model: Any, config: WorkerConfig) -> Any:
    """The reference a preference run keeps (ftx.core.worker.objectives.reference_kind):
    "none", "adapter_off", or the frozen copy itself."""
    kind = reference_kind(config.method)
    if kind != "frozen_copy":
        return kind
    frozen = copy.deepcopy(model).eval()
    for param in frozen.parameters():
        param.requires_grad_(False)
    return frozen


def start_processes(deepspeed: bool) -> tuple[Rank, torch.device]:
    """Join torchrun's process group (or DeepSpeed's); this rank's device."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if world > 1 or deepspeed:
        import torch.distributed as dist

        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if deepspeed:
            import deepspeed as ds

            ds.init_distributed(dist_backend=backend)
        else:
            dist.init_process_group(backend)
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    barrier = torch.distributed.barrier if world > 1 else Rank().barrier
    return Rank(rank, world, local_rank, barrier), device


def build_engine(model: Any, t: TrainArgs, rank: Rank, ds_config: dict | None) -> Any:
    """AdamW (no weight decay on biases and norm weights: ftx.core.worker.rules.decays) in
    the plain/DDP engine, or handed to DeepSpeed."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (decay if decays(name, param.shape) else no_decay).append(param)
    trained = decay + no_decay
    # One fused kernel per step instead of a dozen passes over every parameter (what
    # transformers' Trainer runs by default, adamw_torch_fused): at 0.5B parameters on a
    # CPU the unfused update was 8% of a full fine-tuning step. DeepSpeed keeps its own.
    fused = ds_config is None and all(
        p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in trained
    )
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": t.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=t.learning_rate,
        betas=(t.adam_beta1, t.adam_beta2),
        eps=t.adam_epsilon,
        fused=fused or None,
    )
    if ds_config:
        return DeepSpeedEngine(model, optimizer, rank, ds_config)
    return PlainEngine(model, optimizer, rank, t.precision, t.max_grad_norm)


def build_scheduler(optimizer: torch.optim.Optimizer, t: TrainArgs, schedule: Schedule) -> Any:
    from transformers import get_scheduler

    name = "constant_with_warmup" if t.scheduler == "constant" else t.scheduler
    return get_scheduler(
        name,
        optimizer,
        num_warmup_steps=schedule.warmup_steps(t),
        num_training_steps=schedule.total_steps,
    )


def make_framework(config: WorkerConfig, layout: RunLayout) -> Torch:
    """This backend's framework for the run ``config`` describes."""
    return Torch()


def main(config: WorkerConfig, layout: RunLayout) -> int:
    return train(make_framework(config, layout), config, layout)


if __name__ == "__main__":
    sys.exit(run_worker(main))

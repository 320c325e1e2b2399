"""The torch worker: runs inside the torch environment, launched by torchrun.

    torchrun --standalone --nproc_per_node=1 -m ftx.backends.torch.worker plan/worker.json

It reads the worker config and the core's prepared data, trains with
transformers + peft (and DeepSpeed ZeRO when the plan has a ds_config.json) and
leaves the run layout every backend shares (ftx.core.contract). What does not
depend on torch (batch order, signals, metrics, checkpoint bookkeeping, MFU)
comes from the worker kit (ftx.core.workerkit).

Why a plain loop rather than transformers' Trainer: ftx must guarantee the
same example order on every backend, a loss normalised by the number of
learned tokens across gradient accumulation and ranks, the shared metrics
schema, atomic checkpoints and a checkpoint on SIGTERM. Each of those needs a
Trainer subclass or callback; written out here they are one screen of code.
"""

from __future__ import annotations

import json
import os
import random
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ftx.backends.torch.engines import (
    DeepSpeedEngine,
    PlainEngine,
    all_reduce_sum,
    read_ds_config,
)
from ftx.backends.torch.evaluation import eval_loss, exact_match
from ftx.backends.torch.modeling import collate, load_model, shifted_targets, token_loss_sum
from ftx.core.contract import (
    MetricsLog,
    RunLayout,
    TrainArgs,
    WorkerConfig,
)
from ftx.core.fsutil import atomic_write_json
from ftx.core.prepared import IGNORE_INDEX, load_split, read_eval_prompts, read_manifest
from ftx.core.workerkit import (
    Checkpoints,
    MetricsWindow,
    Rank,
    RunTracker,
    Schedule,
    StepResult,
    StopSignal,
    TrainerState,
    flops_per_token,
    mfu,
    peak_flops,
    run_worker,
    write_final,
)


def main(config: WorkerConfig, layout: RunLayout) -> int:
    t = config.train
    ds_config = read_ds_config(layout.plan)
    rank, device = start_processes(ds_config is not None)
    torch.manual_seed(t.seed)
    random.seed(t.seed)
    np.random.seed(t.seed % 2**32)
    stop = StopSignal()

    # Data, model, schedule, the engine that applies the gradients.
    prepared = layout.at(config.data.prepared)
    pad_id = read_manifest(prepared)["pad_token_id"]
    train, val = load_split(prepared, "train"), load_split(prepared, "val")
    assert train is not None, f"{prepared} has no train split"
    tokenizer, model = load_model(config, layout.plan, device, ds_config, packed=train.packed)
    schedule = Schedule.plan(len(train), t, rank.world)
    engine = build_engine(model, t, rank, ds_config)
    scheduler = build_scheduler(engine.torch_optimizer, t, schedule)
    throughput = Throughput(model, device)

    def evaluate() -> float:
        return eval_loss(engine, val, t.micro_batch_size, pad_id, device)

    tracker = RunTracker(
        config,
        layout,
        rank,
        schedule,
        len(train),
        stop=stop,
        metrics=open_metrics(config, layout, rank),
        save=lambda folder: write_checkpoint(folder, engine, tokenizer, scheduler),
        evaluate=evaluate if val is not None else None,
        mfu=throughput.mfu,
    )
    resumed = tracker.resume(lambda folder: load_checkpoint(folder, engine, scheduler))
    held_out = HeldOut(config, layout, engine, tokenizer, prepared, resumed)
    held_out.exact_match("before")

    # The loop: one optimizer step = grad_accum micro-batches on every rank.
    tracker.start(throughput.params, throughput.trainable)
    engine.model.train()
    while tracker.running:
        indices = schedule.step(tracker.state.step, rank.rank)
        result = train_step(engine, [collate(train, b, pad_id, device) for b in indices], rank)
        scheduler.step()
        tracker.step_done(result, lr=scheduler.get_last_lr()[0])
    stopped = tracker.finish()  # a signal: checkpoint saved, exit code
    if stopped is not None:
        return stopped

    held_out.exact_match("after")
    write_final(layout, rank, lambda folder: write_hf_final(folder, engine, tokenizer, config))
    tracker.done()
    return 0


# --------------------------------------------------------------------------- processes


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
    """AdamW (no weight decay on biases and norm weights, as transformers does) in the
    plain/DDP engine, or handed to DeepSpeed."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if param.ndim < 2 or "norm" in name else decay).append(param)
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": t.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=t.learning_rate,
        betas=(t.adam_beta1, t.adam_beta2),
        eps=t.adam_epsilon,
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


# --------------------------------------------------------------------------- one step


def train_step(engine: Any, mine: list[dict[str, torch.Tensor]], rank: Rank) -> StepResult:
    """Forward/backward over this rank's micro-batches, then the optimizer step.

    The loss is normalised by the learned tokens of the whole step on every rank.
    """
    local = [
        float(sum(int((shifted_targets(c) != IGNORE_INDEX).sum()) for c in mine)),
        float(sum(int(c["token_mask"].sum()) for c in mine)),
    ]
    learned, tokens = all_reduce_sum(local, rank)
    loss_sum = 0.0
    for i, batch in enumerate(mine):
        last = i == len(mine) - 1
        with engine.forward_context(last_micro_batch=last):
            loss, _ = token_loss_sum(engine.model, batch)
        # Gradients are averaged over ranks, so scale by world for the global token mean.
        engine.backward(loss * rank.world / max(learned, 1), last)
        loss_sum += float(loss.detach())
    grad_norm = engine.step()
    (global_loss,) = all_reduce_sum([loss_sum], rank)
    return StepResult(global_loss, int(learned), int(tokens), grad_norm)


class Throughput:
    """Parameter counts and, on GPUs with a known peak, model FLOPs utilisation."""

    def __init__(self, model: Any, device: torch.device):
        self.params = sum(p.numel() for p in model.parameters())
        self.trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        self.peak = (
            peak_flops(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
        )
        config = getattr(model, "config", None)
        self.shape = (config.num_hidden_layers, config.hidden_size) if config is not None else None

    def mfu(self, window: MetricsWindow, world: int) -> float | None:
        if not (self.peak and self.shape):
            return None
        full = self.trainable == self.params
        per_token = flops_per_token(self.params, *self.shape, window.mean_row_tokens, full=full)
        value = mfu(window.tokens_per_s / world, per_token, self.peak)
        return round(value, 4) if value is not None else None


# --------------------------------------------------------------------------- outputs


class HeldOut:
    """Greedy-generation exact match on held-out prompts, into OUT/eval.json."""

    def __init__(
        self,
        config: WorkerConfig,
        layout: RunLayout,
        engine: Any,
        tokenizer: Any,
        prepared: Path,
        resumed: bool,
    ):
        self.settings, self.layout = config.evaluate, layout
        self.engine, self.tokenizer = engine, tokenizer
        self.prompts = read_eval_prompts(prepared) if self.settings else []
        existing = resumed and layout.eval_json.exists()
        self.results = json.loads(layout.eval_json.read_text()) if existing else {}
        # Under ZeRO-3 every forward is a collective: every rank generates.
        self.scoring = engine.rank.main or engine.gathers_for_forward

    def exact_match(self, when: str) -> None:
        if not (self.prompts and self.settings and self.scoring):
            return
        if when == "before" and (not self.settings.before_training or "before" in self.results):
            return
        engine = self.engine
        device = next(engine.inner.parameters()).device
        self.results[when] = exact_match(
            engine.inner,
            self.tokenizer,
            self.prompts,
            self.settings.max_new_tokens,
            device,
            synced=engine.gathers_for_forward,
        )
        if engine.rank.main:
            atomic_write_json(self.layout.eval_json, self.results)
            engine.rank.say(f"exact match {when} training: {self.results[when]['exact_match']:.3f}")


def open_metrics(config: WorkerConfig, layout: RunLayout, rank: Rank) -> MetricsLog:
    """The metrics log, feeding TensorBoard too when the recipe asks for it."""
    if rank.main and config.output.report_to == "tensorboard":
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(layout.tensorboard))
        return MetricsLog(layout, scalars=writer.add_scalar, close=writer.close)
    return MetricsLog(layout)


def save_hf(engine: Any, tokenizer: Any, folder: Path) -> None:
    """HF format (the full model or the PEFT adapter, plus the tokenizer) on rank 0.

    A collective under ZeRO-3 (weights are gathered), so every rank calls it.
    """
    state = engine.export_state_dict()
    if engine.rank.main:
        kwargs = {"state_dict": state} if state is not None else {}
        engine.inner.save_pretrained(str(folder), safe_serialization=True, **kwargs)
        tokenizer.save_pretrained(str(folder))


def write_checkpoint(folder: Path, engine: Any, tokenizer: Any, scheduler: Any) -> None:
    """Weights (HF format), optimizer, schedule and RNG state into ``folder`` (every rank)."""
    save_hf(engine, tokenizer, folder)
    engine.save(folder)
    if engine.rank.main:
        torch.save(scheduler.state_dict(), folder / "scheduler.pt")
        rng = {
            "python": random.getstate(),
            "numpy": np.random.get_state(),
            "torch": torch.get_rng_state(),
        }
        torch.save(rng, folder / "rng_state.pt")


def load_checkpoint(folder: Path, engine: Any, scheduler: Any) -> TrainerState:
    engine.load(folder)
    scheduler.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=True))
    rng = torch.load(folder / "rng_state.pt", weights_only=False)
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])
    return Checkpoints.state_of(folder)


def write_hf_final(folder: Path, engine: Any, tokenizer: Any, config: WorkerConfig) -> None:
    """OUT/final in HF format; final/merged too when asked (LoRA folded into the weights)."""
    save_hf(engine, tokenizer, folder)
    if engine.rank.main and config.output.merge_lora:
        merged = engine.inner.merge_and_unload()
        merged.save_pretrained(str(folder / "merged"), safe_serialization=True)
        tokenizer.save_pretrained(str(folder / "merged"))


if __name__ == "__main__":
    sys.exit(run_worker(main))

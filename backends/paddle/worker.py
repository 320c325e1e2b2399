"""The paddle worker: runs inside the paddle environment, started by launch.sh.

    python -m ftx.backends.paddle.worker plan/worker.json                  # one process
    python -m paddle.distributed.launch --nproc_per_node 2 ... -m ftx.backends.paddle.worker ...

It trains PaddleFormers' model (read from the HF folder) with full fine-tuning or
``paddleformers.peft`` LoRA, on the core's prepared examples, so the token
stream is the torch backend's. Like the torch worker it is a plain loop on the
worker kit (ftx.core.workerkit) rather than PaddleFormers' Trainer: the same
example order on every backend, a loss normalised by the learned tokens across
accumulation and ranks, the shared metrics, atomic checkpoints and a checkpoint
on SIGTERM each need a Trainer subclass or callback. PaddleFormers' Trainer
runs the same recipe natively from ``OUT/plan/paddleformers.yaml``
(`paddleformers-cli train`).
"""

from __future__ import annotations

import json
import math
import os
import pickle
import random
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import paddle

from ftx.backends.paddle.modeling import (
    collate,
    load_model,
    on_gpu,
    shifted_targets,
    token_loss_sum,
    trainable,
)
from ftx.core.contract import MetricsLog, RunLayout, TrainArgs, WorkerConfig
from ftx.core.convert.convert import copy_side_files
from ftx.core.heldout import HeldOut
from ftx.core.prepared import IGNORE_INDEX, PreparedSplit, load_split, read_manifest
from ftx.core.workerkit import (
    Checkpoints,
    Rank,
    RunTracker,
    Schedule,
    StepResult,
    StopSignal,
    TrainerState,
    run_worker,
    write_final,
)


def main(config: WorkerConfig, layout: RunLayout) -> int:
    t = config.train
    rank = start_processes()
    paddle.seed(t.seed)
    random.seed(t.seed)
    np.random.seed(t.seed % 2**32)

    prepared = layout.at(config.data.prepared)
    pad_id = read_manifest(prepared)["pad_token_id"]
    train, val = load_split(prepared, "train"), load_split(prepared, "val")
    assert train is not None, f"{prepared} has no train split"
    model = load_model(config, layout, rank.rank, packed=train.packed)
    schedule = Schedule.plan(len(train), t, rank.world)
    scheduler = build_scheduler(t, schedule)
    optimizer = build_optimizer(model, t, scheduler)
    wrapped = paddle.DataParallel(model) if rank.world > 1 else model
    # After PaddleFormers' imports, which install paddle's own SIGTERM handler (it exits).
    stop = StopSignal()

    tracker = RunTracker(
        config,
        layout,
        rank,
        schedule,
        len(train),
        stop=stop,
        metrics=MetricsLog(layout),
        save=lambda folder: save_checkpoint(folder, model, optimizer, scheduler, rank),
        evaluate=(lambda: eval_loss(model, val, t.micro_batch_size, pad_id, rank)) if val else None,
    )
    resumed = tracker.resume(lambda folder: load_checkpoint(folder, model, optimizer, scheduler))
    held_out = HeldOut(
        config, layout, prepared, rank, resumed, next_token_of(model), _train_mode(model)
    )
    held_out.exact_match("before")

    params = sum(int(np.prod(p.shape)) for p in model.parameters())
    tracker.start(params, sum(int(np.prod(p.shape)) for p in trainable(model)))
    model.train()
    while tracker.running:
        indices = schedule.step(tracker.state.step, rank.rank)
        batches = [collate(train, b, pad_id) for b in indices]
        result = train_step(wrapped, model, optimizer, batches, rank, t.max_grad_norm)
        scheduler.step()
        tracker.step_done(result, lr=float(scheduler.last_lr))
    stopped = tracker.finish()
    if stopped is not None:
        return stopped

    held_out.exact_match("after")
    write_final(layout, rank, lambda folder: write_hf_final(folder, model, config, rank))
    tracker.done()
    return 0


# --------------------------------------------------------------------------- processes


def start_processes() -> Rank:
    """Join paddle.distributed.launch's job (gloo on CPU, NCCL on GPUs) when there is one."""
    world = int(os.environ.get("PADDLE_TRAINERS_NUM", 1))
    if on_gpu():
        paddle.set_device(f"gpu:{int(os.environ.get('PADDLE_LOCAL_RANK', 0))}")
    else:
        paddle.set_device("cpu")
    if world == 1:
        return Rank()
    import paddle.distributed as dist

    dist.init_parallel_env()
    local = int(os.environ.get("PADDLE_RANK_IN_NODE", os.environ.get("PADDLE_LOCAL_RANK", 0)))
    return Rank(dist.get_rank(), dist.get_world_size(), local, dist.barrier)


def all_reduce_sum(values: list[float], rank: Rank) -> list[float]:
    """Sum a few numbers over all ranks (float64, so token counts stay exact)."""
    if rank.world == 1:
        return values
    tensor = paddle.to_tensor(np.array(values, dtype=np.float64))
    paddle.distributed.all_reduce(tensor)
    return tensor.numpy().tolist()


def build_scheduler(t: TrainArgs, schedule: Schedule) -> Any:
    """PaddleFormers' warm-up schedules (transformers' shapes) over the run's steps."""
    from paddleformers.trainer import trainer_utils as schedules

    warmup, total = schedule.warmup_steps(t), schedule.total_steps
    if t.scheduler == "constant":
        return schedules.get_constant_schedule_with_warmup(t.learning_rate, warmup)
    if t.scheduler == "linear":
        return schedules.get_linear_schedule_with_warmup(t.learning_rate, warmup, total)
    return schedules.get_cosine_schedule_with_warmup(t.learning_rate, warmup, total)


def build_optimizer(model: Any, t: TrainArgs, scheduler: Any) -> paddle.optimizer.AdamW:
    """AdamW with no weight decay on biases and norm weights, as the torch worker does.
    Clipping is done in :func:`train_step` (torch's rule), so the norm can be logged."""
    no_decay = {
        p.name
        for n, p in model.named_parameters()
        if not p.stop_gradient and (len(p.shape) < 2 or "norm" in n)
    }
    return paddle.optimizer.AdamW(
        learning_rate=scheduler,
        parameters=trainable(model),
        beta1=t.adam_beta1,
        beta2=t.adam_beta2,
        epsilon=t.adam_epsilon,
        weight_decay=t.weight_decay,
        apply_decay_param_fun=lambda name: name not in no_decay,
    )


# --------------------------------------------------------------------------- one step


def train_step(
    wrapped: Any,
    model: Any,
    optimizer: Any,
    mine: list[dict[str, paddle.Tensor]],
    rank: Rank,
    max_grad_norm: float,
) -> StepResult:
    """Forward/backward over this rank's micro-batches, then the optimizer step.

    The loss is normalised by the learned tokens of the whole step on every rank;
    gradients are averaged over ranks, so each rank scales by the world size.
    """
    local = [
        float(sum(int((shifted_targets(b) != IGNORE_INDEX).astype("int64").sum()) for b in mine)),
        float(sum(int(b["token_mask"].sum()) for b in mine)),
    ]
    learned, tokens = all_reduce_sum(local, rank)
    loss_sum = 0.0
    for i, batch in enumerate(mine):
        last = i == len(mine) - 1
        sync = rank.world == 1 or last
        context = wrapped.no_sync() if not sync else _nothing()
        with context:
            loss, _ = token_loss_sum(wrapped, batch)
            (loss * (rank.world / max(learned, 1))).backward()
        loss_sum += float(loss)
    grad_norm = clip_gradients(model, max_grad_norm)
    optimizer.step()
    optimizer.clear_grad()
    (global_loss,) = all_reduce_sum([loss_sum], rank)
    return StepResult(global_loss, int(learned), int(tokens), grad_norm)


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


@paddle.no_grad()
def clip_gradients(model: Any, max_norm: float) -> float:
    """The global gradient norm before clipping; gradients scaled as torch's
    clip_grad_norm_ does (max_norm / (norm + 1e-6), when that is below 1)."""
    grads = [p.grad for p in trainable(model) if p.grad is not None]
    # One reduction and one host sync for the whole model (a float() per tensor cost ~12%
    # of a small model's step).
    squares = [
        paddle.square(g if g.dtype == paddle.float32 else g.astype("float32")).sum() for g in grads
    ]
    norm = math.sqrt(float(paddle.add_n(squares))) if squares else 0.0
    if max_norm > 0:
        coef = max_norm / (norm + 1e-6)
        if coef < 1:
            for g in grads:
                g.scale_(coef)
    return norm


@paddle.no_grad()
def eval_loss(model: Any, split: PreparedSplit, batch_size: int, pad_id: int, rank: Rank) -> float:
    """Token-weighted loss over a split, sharded over ranks."""
    model.eval()
    mine = list(range(rank.rank, len(split), rank.world))
    total, count = 0.0, 0
    for start in range(0, len(mine), batch_size):
        loss, n = token_loss_sum(model, collate(split, mine[start : start + batch_size], pad_id))
        total, count = total + float(loss), count + n
    model.train()
    total, count = all_reduce_sum([total, float(count)], rank)
    return total / max(count, 1)


# --------------------------------------------------------------------------- outputs


def next_token_of(model: Any) -> Any:
    """The greedy next token after a list of token ids (one prompt, no padding)."""

    @paddle.no_grad()
    def next_token(ids: list[int]) -> int:
        logits = model(paddle.to_tensor([ids], dtype="int64"), return_dict=True).logits
        return int(paddle.argmax(logits[0, -1]))

    return next_token


def _train_mode(model: Any) -> Any:
    return lambda on: model.train() if on else model.eval()


def save_checkpoint(folder: Path, model: Any, optimizer: Any, scheduler: Any, rank: Rank) -> None:
    """Trainable weights, optimizer, schedule and RNG state (rank 0: data parallel keeps
    every rank's copy equal)."""
    if not rank.main:
        return
    weights = {n: p for n, p in model.named_parameters() if not p.stop_gradient}
    paddle.save(weights, str(folder / "model_state.pdparams"))
    paddle.save(optimizer.state_dict(), str(folder / "optimizer.pdopt"))
    paddle.save(scheduler.state_dict(), str(folder / "scheduler.pdparams"))
    paddle.save(paddle.get_rng_state(), str(folder / "rng_state.pdparams"))
    with (folder / "rng_state.pkl").open("wb") as handle:  # read back by this worker only
        pickle.dump({"python": random.getstate(), "numpy": np.random.get_state()}, handle)


def load_checkpoint(folder: Path, model: Any, optimizer: Any, scheduler: Any) -> TrainerState:
    weights = paddle.load(str(folder / "model_state.pdparams"))
    named = dict(model.named_parameters())
    for name, value in weights.items():
        named[name].set_value(value)
    optimizer.set_state_dict(paddle.load(str(folder / "optimizer.pdopt")))
    scheduler.set_state_dict(paddle.load(str(folder / "scheduler.pdparams")))
    paddle.set_rng_state(paddle.load(str(folder / "rng_state.pdparams"), return_numpy=False))
    with (folder / "rng_state.pkl").open("rb") as handle:
        rng = pickle.load(handle)
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    return Checkpoints.state_of(folder)


def write_hf_final(folder: Path, model: Any, config: WorkerConfig, rank: Rank) -> None:
    """OUT/final in Hugging Face format, written by PaddleFormers' own save. A full model
    is saved as HF safetensors already (PaddleFormers' ``save_to_hf``); a LoRA adapter is
    PaddleFormers' (kept in final/paddle for save_format both, final itself for native)
    converted to PEFT's layout by ftx. final/merged too when asked."""
    fmt, source = config.output.save_format, Path(config.model.path)
    lora = config.method.finetuning == "lora"
    kept = "paddle" if fmt == "both" else ".paddle"
    native = folder if fmt == "native" or not lora else folder / kept
    if on_gpu():
        model.save_pretrained(str(native))  # flex_checkpoint: a collective over the ranks
    elif lora or rank.main:
        # flex_checkpoint's collectives run through CUDA: on CPU the plain writer (data
        # parallel keeps every rank's copy equal). Its LoRA save meets the other ranks at
        # a barrier and writes on rank 0 only, so every rank calls that one.
        model.save_pretrained(str(native), save_checkpoint_format="safetensors")
    rank.barrier()
    if not rank.main:
        return
    _tidy(native)
    copy_side_files(source, native)
    if not lora or fmt == "native":
        return
    from ftx.core.convert.adapters import convert_adapter
    from ftx.core.convert.merge_lora import merge_lora

    # On CPU the adapter is PaddleFormers' legacy lora_model_state.pdparams: a pickle this
    # worker wrote a moment ago, so reading it back is safe.
    convert_adapter(native, folder / ".hf", "hf", trust_pickle=True)
    for item in (folder / ".hf").iterdir():
        item.replace(folder / item.name)
    (folder / ".hf").rmdir()
    _with_base(folder / "adapter_config.json", str(source))
    copy_side_files(source, folder)
    if fmt == "hf":
        shutil.rmtree(native)
    if config.output.merge_lora:
        # ftx's merge (fp32, as PEFT's); written beside the adapter folder, which it reads.
        merged = folder.with_name(f"{folder.name}.merged")
        merge_lora(source, folder, merged, force=True)
        copy_side_files(source, merged)
        merged.replace(folder / "merged")


def _tidy(folder: Path) -> None:
    for marker in folder.glob("saved_signal_*"):  # PaddleFormers' async-save markers
        marker.unlink()


def _with_base(path: Path, base: str) -> None:
    config = json.loads(path.read_text())
    config["base_model_name_or_path"] = base
    path.write_text(json.dumps(config, indent=2) + "\n")


def exit_now(code: int) -> None:
    """Exit without interpreter teardown in a multi-process job: gloo's connections abort
    the process (SIGABRT) when a peer that has already finished closes its end first.
    Every output is written and synced by the time this runs."""
    sys.stdout.flush()
    sys.stderr.flush()
    if int(os.environ.get("PADDLE_TRAINERS_NUM", 1)) > 1:
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    exit_now(run_worker(main))

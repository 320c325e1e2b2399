"""The shared worker kit: the parts of a training worker that no framework changes.

Backend workers import it inside their own environment, so it needs only the
standard library and numpy. A worker is its framework's model, optimizer and
step on top of these pieces:

- :func:`micro_batch_order`: which examples each micro-batch takes (the same on every backend)
- :func:`segment_spans`: where each example of a packed row starts and ends
- :func:`lora_a_init`: the LoRA A every backend starts from, by Hugging Face module name
- :class:`StopSignal`: SIGTERM/SIGINT ask for a checkpoint and an orderly exit
- :class:`MetricsWindow`: running sums between two logged steps -> a :class:`MetricsRow`
- :class:`Checkpoints`: staged, atomic ``checkpoint-<step>`` folders, rotation, resume
- :class:`RunTracker`: the loop's bookkeeping (state, metrics, eval, events, saves, timing)
- :func:`write_final`: OUT/final staged and renamed into place
- :func:`flops_per_token`, :func:`peak_flops`, :func:`mfu`: model FLOPs utilisation
- :func:`run_worker`: reads the worker config, turns failures into OUT/error.json and exit codes
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import shutil
import signal
import sys
import time
import traceback
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ftx.core.contract import (
    ContractError,
    ExitCode,
    MetricsLog,
    MetricsRow,
    ProgressEvent,
    RunLayout,
    TrainArgs,
    TrainTiming,
    WorkerConfig,
    WorkerFailure,
    print_event,
    read_record,
    write_record,
)


def _no_barrier() -> None:
    return None


@dataclass(frozen=True)
class Rank:
    """This process's place in the job, and how to wait for the others."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    barrier: Callable[[], None] = field(default=_no_barrier, compare=False)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def say(self, message: str) -> None:
        """A progress line in the log, from rank 0 only."""
        if self.main:
            print(f"[ftx] {message}", flush=True)

    def emit(self, event: ProgressEvent) -> None:
        """A progress event for the core's display, from rank 0 only."""
        if self.main:
            print_event(event)


# --------------------------------------------------------------------------- data order


def micro_batch_order(
    n: int, per_step: int, epochs: float, max_micro_batches: int | None, seed: int
) -> list[list[int]]:
    """Example indices of every micro-batch of the run, over all ranks.

    Each epoch is a seeded permutation; ``per_step`` = micro batch * world size.
    The order depends only on the data and the seed, never on the backend.
    """
    per_epoch = math.ceil(n / per_step)
    total = max_micro_batches if max_micro_batches else math.ceil(epochs * per_epoch)
    batches: list[list[int]] = []
    epoch = 0
    while len(batches) < total:
        order = np.random.default_rng(seed + epoch).permutation(n).tolist()
        # Wrap around so every micro-batch is full and every rank gets its rows.
        order += order[: per_epoch * per_step - n]
        batches += [order[i : i + per_step] for i in range(0, len(order), per_step)]
        epoch += 1
    return batches[:total]


@dataclass(frozen=True)
class Schedule:
    """The run's micro-batches, grouped into optimizer steps."""

    batches: list[list[int]]
    grad_accum: int
    micro_batch_size: int
    world: int

    @classmethod
    def plan(cls, examples: int, train: TrainArgs, world: int) -> Schedule:
        ga, mbs = train.grad_accum, train.micro_batch_size
        max_micro = train.max_steps * ga if train.max_steps else None
        order = micro_batch_order(examples, mbs * world, train.epochs, max_micro, train.data_seed)
        return cls(order, ga, mbs, world)

    @property
    def total_steps(self) -> int:
        return math.ceil(len(self.batches) / self.grad_accum)

    def step(self, step: int, rank: int) -> list[list[int]]:
        """This rank's micro-batches (example indices) for optimizer step ``step`` (0-based)."""
        micro = self.batches[step * self.grad_accum : (step + 1) * self.grad_accum]
        mbs = self.micro_batch_size
        return [b[rank * mbs : (rank + 1) * mbs] for b in micro]

    def rows_per_step(self) -> int:
        return self.grad_accum * self.micro_batch_size * self.world

    def warmup_steps(self, train: TrainArgs) -> int:
        if train.warmup_steps:
            return train.warmup_steps
        return math.ceil(train.warmup_ratio * self.total_steps)


def segment_spans(segments: Sequence[int]) -> list[tuple[int, int]]:
    """(start, end) of every example of one packed row, from its segment ids (0: padding)."""
    spans, start = [], 0
    for i in range(1, len(segments) + 1):
        if i == len(segments) or segments[i] != segments[start]:
            if segments[start] > 0:
                spans.append((start, i))
            start = i
    return spans


# --------------------------------------------------------------------------- LoRA


LAYER_MODULE = re.compile(r"layers\.(\d+)\.(.+)$")


def lora_a_init(module: str, rank: int, fan_in: int, seed: int) -> np.ndarray:
    """LoRA's A [rank, fan_in] for the Hugging Face module ``module``
    (``model.layers.0.self_attn.q_proj``): PEFT's distribution (kaiming-uniform with
    a = sqrt(5), i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in))) drawn from a generator seeded by
    the run's seed and the module's name, so every backend starts from the same adapter
    (B starts at zero everywhere). Each framework's own draw would differ."""
    rng = np.random.default_rng([seed, zlib.crc32(module.encode())])
    bound = 1.0 / math.sqrt(fan_in)
    return rng.uniform(-bound, bound, size=(rank, fan_in)).astype(np.float32)


def hf_module(name: str) -> str | None:
    """``model.layers.N.<rest>`` for a parameter or module name holding ``layers.N.<rest>``
    (any wrapper prefix dropped), else None."""
    found = LAYER_MODULE.search(name)
    return f"model.layers.{found.group(1)}.{found.group(2)}" if found else None


# --------------------------------------------------------------------------- signals


class StopSignal:
    """Set by SIGTERM/SIGINT; the loop saves a checkpoint and exits after the current step."""

    def __init__(self) -> None:
        self.signal: int | None = None
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, _frame: Any) -> None:
        self.signal = signum

    @property
    def requested(self) -> bool:
        return self.signal is not None


# --------------------------------------------------------------------------- metrics


@dataclass
class MetricsWindow:
    """Running sums between two logged steps."""

    loss_sum: float = 0.0  # summed token losses
    learned: int = 0  # tokens with a label
    tokens: int = 0  # real (non-pad) tokens
    rows: int = 0
    start: float = field(default_factory=time.time)

    def add(self, loss_sum: float, learned: int, tokens: int, rows: int) -> None:
        self.loss_sum += loss_sum
        self.learned += learned
        self.tokens += tokens
        self.rows += rows

    @property
    def loss(self) -> float:
        return self.loss_sum / max(self.learned, 1)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / max(time.time() - self.start, 1e-9)

    @property
    def mean_row_tokens(self) -> float:
        return self.tokens / max(1, self.rows)


# --------------------------------------------------------------------------- checkpoints


@dataclass(frozen=True)
class TrainerState:
    """What a checkpoint's trainer_state.json records about the loop."""

    step: int
    tokens: int


class Checkpoints:
    """``OUT/checkpoints/checkpoint-<step>``: staged, renamed when complete, rotated.

    The framework's part is one ``write(folder)`` call that saves weights, optimizer,
    schedule and RNG state into a folder; every rank makes it (ZeRO gathers).
    """

    STATE = "trainer_state.json"

    def __init__(self, layout: RunLayout, keep: int | None):
        self.root = layout.checkpoints
        self.keep = keep

    def complete(self) -> list[Path]:
        """Complete checkpoints, oldest first."""
        found = [p for p in self.root.glob("checkpoint-*") if (p / self.STATE).exists()]
        return sorted(found, key=lambda p: int(p.name.split("-")[-1]))

    def resume_point(self, setting: str | None) -> Path | None:
        """The checkpoint to resume from: 'auto' = the newest here, a path, or None."""
        if not setting:
            return None
        if setting == "auto":
            found = self.complete()
            return found[-1] if found else None
        return Path(setting)

    def save(
        self, step: int, state: TrainerState, rank: Rank, write: Callable[[Path], None]
    ) -> None:
        def complete(folder: Path) -> None:  # rank 0, once every rank has written
            write_record(folder / self.STATE, state)

        staged_on_every_rank(self.root / f"checkpoint-{step}", rank, write, complete)
        if rank.main:
            for old in self.complete()[: -self.keep] if self.keep else []:
                shutil.rmtree(old, ignore_errors=True)
        rank.barrier()

    @classmethod
    def state_of(cls, folder: Path) -> TrainerState:
        state = read_record(TrainerState, folder / cls.STATE)
        if state is None:
            raise ContractError(f"{folder}: not a complete checkpoint (no readable {cls.STATE})")
        return state


def staged_on_every_rank(
    final: Path,
    rank: Rank,
    write: Callable[[Path], None],
    complete: Callable[[Path], None] | None = None,
) -> None:
    """``final``, written by ``write(folder)`` on every rank into one staged folder (a fixed
    name, so every rank finds it) and renamed into place by rank 0 once all are done, so
    ``final`` is complete or absent."""
    tmp = final.with_name(f".{final.name}.partial")
    if rank.main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    rank.barrier()
    write(tmp)
    rank.barrier()
    if rank.main:
        if complete is not None:
            complete(tmp)
        shutil.rmtree(final, ignore_errors=True)
        tmp.replace(final)
    rank.barrier()


def write_final(layout: RunLayout, rank: Rank, write: Callable[[Path], None]) -> None:
    """OUT/final, written on every rank by ``write(folder)``, staged."""
    staged_on_every_rank(layout.final, rank, write)


# --------------------------------------------------------------------------- the loop's bookkeeping


class StepResult(NamedTuple):
    """One optimizer step, summed over all ranks."""

    loss_sum: float  # token losses
    learned: int  # tokens with a label
    tokens: int  # real (non-pad) tokens
    grad_norm: float  # before clipping


class RunTracker:
    """Everything around a training loop that is not the framework's step: where the run
    stands, metrics rows and evaluation, progress events, checkpoints, signals, timing.

        tracker.resume(load)            # newest checkpoint (train.resume), metrics trimmed
        tracker.start(params, trainable)
        while tracker.running:
            ... one optimizer step over schedule.step(tracker.state.step, rank.rank) ...
            tracker.step_done(result, lr)
        code = tracker.finish()         # the exit code after a stop signal, else None
    """

    def __init__(
        self,
        config: WorkerConfig,
        layout: RunLayout,
        rank: Rank,
        schedule: Schedule,
        examples: int,
        *,
        stop: StopSignal,
        metrics: MetricsLog,
        save: Callable[[Path], None],
        evaluate: Callable[[], float] | None = None,
        mfu: Callable[[MetricsWindow, int], float | None] | None = None,
    ):
        self.backend, self.train = config.backend, config.train
        self.layout, self.rank, self.schedule, self.examples = layout, rank, schedule, examples
        self.stop, self.metrics, self.save_into = stop, metrics, save
        self.evaluate, self.mfu = evaluate, mfu
        self.checkpoints = Checkpoints(layout, self.train.save_total_limit)
        self.state = TrainerState(step=0, tokens=0)
        self.window = MetricsWindow()
        self.started, self.at_start = time.time(), self.state

    def resume(self, load: Callable[[Path], TrainerState]) -> bool:
        """Load the checkpoint train.resume names (``load`` restores the framework's state
        and returns the checkpoint's TrainerState); False when there is none."""
        folder = self.checkpoints.resume_point(self.train.resume)
        if folder is None:
            return False
        self.state = load(folder)
        if self.rank.main:
            self.metrics.keep_until(self.state.step)
        self.rank.say(f"resumed from {folder} at step {self.state.step}")
        return True

    def start(self, params: int, trainable: int) -> None:
        total = self.schedule.total_steps
        self.rank.say(f"training {trainable:,} of {params:,} parameters for {total} steps")
        self.rank.emit(ProgressEvent("start", self.state.step, total))
        self.started, self.at_start, self.window = time.time(), self.state, MetricsWindow()
        self._step_started = time.time()

    @property
    def running(self) -> bool:
        return self.state.step < self.schedule.total_steps and not self.stop.requested

    def step_done(self, result: StepResult, lr: float) -> None:
        """After an optimizer step: metrics row and eval when due, event, checkpoint."""
        t, total = self.train, self.schedule.total_steps
        self.state = TrainerState(self.state.step + 1, self.state.tokens + result.tokens)
        self.window.add(
            result.loss_sum, result.learned, result.tokens, self.schedule.rows_per_step()
        )
        step = self.state.step
        logged = step % t.logging_steps == 0 or step == total
        row = MetricsRow(step=step, backend=self.backend)
        if logged:
            row = MetricsRow(
                step=step,
                backend=self.backend,
                epoch=round(step * self.schedule.rows_per_step() / self.examples, 4),
                loss=round(self.window.loss, 6),
                lr=lr,
                grad_norm=round(result.grad_norm, 6),
                tokens=self.state.tokens,
                tokens_per_s=round(self.window.tokens_per_s, 1),
                mfu=self.mfu(self.window, self.rank.world) if self.mfu else None,
            )
        if self._evaluates(step):
            row = dataclasses.replace(row, eval_loss=round(self.evaluate(), 6))  # type: ignore[misc]
        if (logged or self._evaluates(step)) and self.rank.main:
            self.metrics.write(row)
        if logged:
            self.window = MetricsWindow()
        now = time.time()
        per_s = round(result.tokens / max(now - self._step_started, 1e-9), 1)
        loss = round(result.loss_sum / max(result.learned, 1), 6)
        self.rank.emit(ProgressEvent("step", step, total, loss, per_s, logged))
        if self._saves(step):
            self.save()
        self._step_started = time.time()

    def save(self) -> None:
        """A checkpoint of where the run stands now."""
        self.checkpoints.save(self.state.step, self.state, self.rank, self.save_into)
        self.rank.emit(ProgressEvent("checkpoint", self.state.step, self.schedule.total_steps))

    def finish(self) -> int | None:
        """After the loop. Stopped by a signal: a checkpoint (unless this step just had
        one) and the exit code. Otherwise the timing and a last eval loss (unless this
        step just had one); None."""
        step = self.state.step
        if self.stop.signal is not None:
            if not self._saves(step):
                self.save()
            self.rank.say(f"stopped by signal {self.stop.signal} at step {step}; checkpoint saved")
            self.metrics.close()
            return 128 + self.stop.signal
        if self.rank.main:
            seconds = round(time.time() - self.started, 3)
            done = TrainTiming(
                seconds, step - self.at_start.step, self.state.tokens - self.at_start.tokens
            )
            write_record(self.layout.timing, done)
        if self.evaluate is not None and not self._evaluates(step):
            value = round(self.evaluate(), 6)
            if self.rank.main:
                self.metrics.write(MetricsRow(step=step, backend=self.backend, eval_loss=value))
        self.metrics.close()
        return None

    def done(self) -> None:
        """The run's outputs are complete."""
        self.rank.emit(ProgressEvent("done", self.state.step, self.schedule.total_steps))

    def _evaluates(self, step: int) -> bool:
        every = self.train.eval_steps
        return self.evaluate is not None and bool(every) and step % every == 0

    def _saves(self, step: int) -> bool:
        every = self.train.save_steps
        return bool(every) and step % every == 0


# --------------------------------------------------------------------------- held-out scoring


def exact_match_result(references: Sequence[str], answers: Sequence[str]) -> dict[str, Any]:
    """OUT/eval.json's entry for one scoring: the share of answers equal to their reference
    (both stripped), the count, and the first five pairs."""
    hits = [a.strip() == r.strip() for r, a in zip(references, answers, strict=True)]
    samples = [
        {"reference": r, "answer": a.strip(), "match": hit}
        for r, a, hit in list(zip(references, answers, hits, strict=True))[:5]
    ]
    return {
        "exact_match": sum(hits) / max(len(hits), 1),
        "examples": len(hits),
        "samples": samples,
    }


# --------------------------------------------------------------------------- FLOPs / MFU

# Dense bf16 peak FLOP/s by device name fragment.
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}


def flops_per_token(params: int, layers: int, hidden: int, seq_len: float, full: bool) -> float:
    """Training FLOPs for one token: 6N for full fine-tuning, about 4N for LoRA (frozen
    weights get no weight-gradient matmul), plus attention's 12 * layers * hidden *
    sequence length (PaLM appendix B)."""
    return (6 if full else 4) * params + 12 * layers * hidden * seq_len


def peak_flops(device_name: str) -> float | None:
    """The bf16 peak of a known GPU (None when unknown)."""
    return next((peak for key, peak in PEAK_BF16.items() if key in device_name), None)


def mfu(tokens_per_s: float, per_token: float, peak: float | None) -> float | None:
    return None if not peak else tokens_per_s * per_token / peak


# --------------------------------------------------------------------------- entry point


def run_worker(
    main: Callable[[WorkerConfig, RunLayout], int], argv: list[str] | None = None
) -> int:
    """Run a worker's ``main(config, layout)``: the exit code it returns, 2 for a config
    that breaks the contract, 1 (with OUT/error.json) for any exception."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m <worker> OUT/plan/worker.json", file=sys.stderr)
        return ExitCode.BAD_CONFIG
    path = Path(argv[0])
    layout = RunLayout.of_worker_config(path)
    try:
        return main(WorkerConfig.read(path), layout)
    except ContractError as exc:
        print(f"[ftx] error: {exc}", file=sys.stderr, flush=True)
        return ExitCode.BAD_CONFIG
    except Exception as exc:
        traceback.print_exc()
        record_failure(layout, exc)
        return ExitCode.FAILED


def record_failure(layout: RunLayout, exc: BaseException) -> None:
    """Write OUT/error.json for ``exc`` unless another rank already has."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f"{frames[-1].filename}:{frames[-1].lineno} in {frames[-1].name}" if frames else "?"
    rank = int(os.environ.get("RANK", os.environ.get("PADDLE_TRAINER_ID", 0)))
    failure = WorkerFailure(type(exc).__name__, str(exc).strip()[:2000], where, rank)
    if not layout.error_json.exists():
        write_record(layout.error_json, failure)

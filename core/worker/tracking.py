"""The loop's bookkeeping: stop signals, the metrics window between two logged steps, and
:class:`RunTracker` (where the run stands, metrics rows and evaluation, progress events,
checkpoints, timing)."""

from __future__ import annotations

import dataclasses
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ftx.core.contract import (
    MetricsLog,
    MetricsRow,
    ProgressEvent,
    RunLayout,
    TrainTiming,
    WorkerConfig,
    write_record,
)
from ftx.core.worker.checkpoints import Checkpoints, TrainerState
from ftx.core.worker.framework import Rank
from ftx.core.worker.objectives import per_unit
from ftx.core.worker.schedule import Schedule
from ftx.core.worker.throughput import Utilisation


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
    units: int = 0  # what the loss is averaged over (SFT: tokens with a label)
    tokens: int = 0  # real (non-pad) tokens
    rows: int = 0
    start: float = field(default_factory=time.time)

    extras: dict[str, float] = field(default_factory=dict)  # sums over the units

    def add(
        self, loss_sum: float, units: int, tokens: int, rows: int, extras: dict[str, float]
    ) -> None:
        self.loss_sum += loss_sum
        self.units += units
        for name, value in extras.items():
            self.extras[name] = self.extras.get(name, 0.0) + value
        self.tokens += tokens
        self.rows += rows

    @property
    def loss(self) -> float:
        return self.loss_sum / max(self.units, 1)

    def means(
        self, mean_of: Callable[[dict[str, float], int], dict[str, float]]
    ) -> dict[str, float]:
        """The extras as the objective averages them (``Objective.metric_means``), rounded
        as metrics rows are."""
        if not self.extras:
            return {}
        return {k: round(v, 6) for k, v in mean_of(self.extras, self.units).items()}

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / max(time.time() - self.start, 1e-9)

    @property
    def mean_row_tokens(self) -> float:
        return self.tokens / max(1, self.rows)


@dataclass(frozen=True)
class StepResult:
    """One optimizer step, summed over all ranks."""

    loss_sum: float  # the objective's loss summed over the units (SFT: token losses)
    units: int  # what the loss is averaged over (SFT: tokens with a label)
    tokens: int  # real (non-pad) tokens
    grad_norm: float  # before clipping
    extras: dict[str, float] = field(default_factory=dict)  # MetricsRow fields, summed


class RunTracker:
    """Everything around a training loop that is not the framework's step: where the run
    stands, metrics rows and evaluation, progress events, checkpoints, signals, timing.

        tracker.resume(load)            # newest checkpoint (train.resume), metrics trimmed
        tracker.start(params, trainable)
        while tracker.running:
            ... one optimizer step over schedule.step(tracker.state.step, rank.rank) ...
            tracker.step_done(result)
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
        learning_rate: Callable[[int], float],
        evaluate: Callable[[], float] | None = None,
        utilisation: Utilisation | None = None,
        metric_means: Callable[[dict[str, float], int], dict[str, float]] | None = None,
    ):
        self.backend, self.train = config.backend, config.train
        self.layout, self.rank, self.schedule, self.examples = layout, rank, schedule, examples
        self.stop, self.metrics, self.save_into = stop, metrics, save
        self.learning_rate, self.evaluate, self.utilisation = learning_rate, evaluate, utilisation
        self.metric_means = metric_means or per_unit
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

    def start(self, params: int, trainable: int, trainer: str = "") -> None:
        """Training begins (``trainer``: who trains, when not ftx's loop)."""
        total = self.schedule.total_steps
        world = self.rank.world
        self.rank.say(
            f"{trainer + ' trains' if trainer else 'training'} {trainable:,} of {params:,}"
            f" parameters for {total} steps on {world} process{'es' if world > 1 else ''}"
        )
        self.rank.emit(ProgressEvent("start", self.state.step, total))
        self.started, self.at_start, self.window = time.time(), self.state, MetricsWindow()
        self._step_started = time.time()

    @property
    def running(self) -> bool:
        return self.state.step < self.schedule.total_steps and not self.stop.requested

    def step_done(self, result: StepResult) -> None:
        """After an optimizer step: metrics row and eval when due, event, checkpoint."""
        t, total = self.train, self.schedule.total_steps
        self.state = TrainerState(self.state.step + 1, self.state.tokens + result.tokens)
        self.window.add(
            result.loss_sum,
            result.units,
            result.tokens,
            self.schedule.rows_per_step(),
            result.extras,
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
                lr=self.learning_rate(step),
                grad_norm=round(result.grad_norm, 6),
                tokens=self.state.tokens,
                tokens_per_s=round(self.window.tokens_per_s, 1),
                mfu=self._mfu(),
                **self.window.means(self.metric_means),
            )
        if self._evaluates(step):
            row = dataclasses.replace(row, eval_loss=round(self.evaluate(), 6))  # type: ignore[misc]
        if (logged or self._evaluates(step)) and self.rank.main:
            self.metrics.write(row)
        if logged:
            self.window = MetricsWindow()
        now = time.time()
        per_s = round(result.tokens / max(now - self._step_started, 1e-9), 1)
        loss = round(result.loss_sum / max(result.units, 1), 6)
        means = self.metric_means(result.extras, result.units) if result.extras else {}
        margin, accuracy = means.get("rewards_margins"), means.get("rewards_accuracies")
        self.rank.emit(
            ProgressEvent(
                "step",
                step,
                total,
                loss,
                per_s,
                logged,
                margin=None if margin is None else round(margin, 6),
                accuracy=None if accuracy is None else round(accuracy, 6),
            )
        )
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

    def _mfu(self) -> float | None:
        if self.utilisation is None:
            return None
        w = self.window
        return self.utilisation.at(w.tokens_per_s, w.mean_row_tokens, self.rank.world)

    def _evaluates(self, step: int) -> bool:
        every = self.train.eval_steps
        return self.evaluate is not None and bool(every) and step % every == 0

    def _saves(self, step: int) -> bool:
        every = self.train.save_steps
        return bool(every) and step % every == 0

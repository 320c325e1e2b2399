"""The training loop, once for every backend.

    train(framework, config, layout)

runs a training run from the worker config and the run layout to the final outputs:
join the job, seed, read the prepared split, build the model, optimizer and schedule,
resume, score the held-out prompts, run the optimizer steps (metrics, evaluation,
checkpoints, signals), score again and write OUT/final. The framework
(:class:`ftx.core.worker.framework.Framework`) is reached only through its interface,
and the stage only through its objective (:mod:`ftx.core.worker.objectives`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from ftx.core.contract import ContractError, MetricsLog, RunLayout, WorkerConfig
from ftx.core.prepared import PreparedSplit, load_split, read_manifest
from ftx.core.worker.checkpoints import (
    Checkpoints,
    TrainerState,
    load_host_rng,
    save_host_rng,
    seed_host,
)
from ftx.core.worker.exports import write_final
from ftx.core.worker.framework import Framework, ModelSize, Rank
from ftx.core.worker.heldout import HeldOut
from ftx.core.worker.objectives import Objective, StepTotals, TokenBatch, objective_for
from ftx.core.worker.reference import precompute_reference
from ftx.core.worker.schedule import Schedule
from ftx.core.worker.throughput import Utilisation
from ftx.core.worker.tracking import RunTracker, StepResult, StopSignal


def precomputes_reference(config: WorkerConfig, framework: Framework) -> bool:
    """Whether the loop scores the reference before training: asked for
    (``reference: precomputed``), or needed by a framework that keeps no reference."""
    settings = config.method.preference
    if settings is None or settings.reference == "none":
        return False
    return settings.reference == "precomputed" or not framework.keeps_reference


def train(framework: Framework, config: WorkerConfig, layout: RunLayout) -> int:
    """Run the training run of ``config``; the exit code (0, or 128 + a stop signal after
    its checkpoint)."""
    t = config.train
    objective = objective_for(config.method)
    rank = framework.start(config, layout)
    framework.seed(t.seed)
    seed_host(t.seed)

    prepared = layout.at(config.data.prepared)
    pad_id = read_manifest(prepared)["pad_token_id"]
    split, val = load_split(prepared, "train"), load_split(prepared, "val")
    if split is None:
        raise ContractError(f"{prepared}: the prepared data has no train split")
    schedule = Schedule.plan(len(split), t, rank.world)
    size = framework.build(config, layout, split, schedule, objective)
    if precomputes_reference(config, framework):
        for part in (split, val):
            if part is not None:
                precompute_reference(framework, objective, part, pad_id, t.micro_batch_size, rank)
    # After the framework's imports: PaddleFormers installs a SIGTERM handler that exits.
    tracker = run_tracker(
        framework, config, layout, rank, objective, pad_id, schedule, (split, val), size
    )
    resumed = tracker.resume(lambda folder: load_checkpoint(framework, folder))
    held_out = HeldOut(config, layout, prepared, rank, framework, resumed)
    held_out.score("before")

    tracker.start(size.params, size.trainable)
    while tracker.running:
        indices = schedule.step(tracker.state.step, rank.rank)
        batches = [objective.collate(split, b, pad_id) for b in indices]
        batches = with_step_kl(framework, objective, split, indices, pad_id, batches)
        tracker.step_done(optimizer_step(framework, batches, rank))
    stopped = tracker.finish()  # after a signal: checkpoint saved, the exit code
    if stopped is not None:
        return stopped

    held_out.score("after")
    write_final(layout, rank, framework, config)
    tracker.done()
    return 0


def run_tracker(
    framework: Framework,
    config: WorkerConfig,
    layout: RunLayout,
    rank: Rank,
    objective: Objective,
    pad_id: int,
    schedule: Schedule,
    splits: tuple[PreparedSplit, PreparedSplit | None],
    size: ModelSize,
) -> RunTracker:
    """The tracker of a run the framework trains (by ftx's loop, or by the framework's own
    trainer reporting its steps): its stop signal, metrics, checkpoints and evaluation of
    the ``(train, val)`` splits."""
    split, val = splits
    mbs = config.train.micro_batch_size

    def evaluate() -> float:
        assert val is not None
        return evaluation_loss(framework, objective, val, mbs, pad_id, rank)

    return RunTracker(
        config,
        layout,
        rank,
        schedule,
        len(split),
        stop=StopSignal(),
        metrics=open_metrics(config, layout, rank, framework),
        save=lambda folder: save_checkpoint(framework, folder, rank),
        learning_rate=framework.learning_rate,
        evaluate=evaluate if val is not None else None,
        utilisation=Utilisation.of(
            config.model.path, size.params, size.trainable, framework.accelerator()
        ),
        metric_means=objective.metric_means,
    )


def optimizer_step(framework: Framework, batches: Sequence[TokenBatch], rank: Rank) -> StepResult:
    """One optimizer step: the step's totals over every rank (the objective's normaliser),
    the framework's step, and its loss summed over ranks."""
    local = [float(sum(b.units for b in batches)), float(sum(b.tokens for b in batches))]
    units, tokens = framework.all_reduce_sum(local)
    totals = StepTotals(int(units), int(tokens), rank.world)
    out = framework.optimizer_step(batches, totals)
    names = sorted(out.extras)
    summed = framework.all_reduce_sum([out.loss_sum, *(out.extras[n] for n in names)])
    extras = dict(zip(names, summed[1:], strict=True))
    return StepResult(summed[0], totals.units, totals.tokens, out.grad_norm, extras)


def with_step_kl(
    framework: Framework,
    objective: Objective,
    split: PreparedSplit,
    groups: Sequence[Sequence[int]],
    pad_id: int,
    batches: list[TokenBatch],
    counted: Sequence[bool] | None = None,
) -> list[TokenBatch]:
    """``batches`` with the KL estimate of an objective that has one (KTO): the mean
    log-ratio of the KL rows of every (counted) group on every rank, clamped at 0 and
    without gradient; ``batches`` themselves for other objectives. Every rank scores the
    same number of groups (a collective forward needs it)."""
    kl_batches = [objective.kl_rows(split, group, pad_id) for group in groups]
    if not kl_batches or kl_batches[0] is None:
        return batches
    total, rows = 0.0, 0
    for i, kl_batch in enumerate(kl_batches):
        assert kl_batch is not None
        policy = framework.row_logps(kl_batch, reference=False)
        reference = kl_batch.arrays.get("reference_logps")  # precomputed
        if reference is None:
            reference = framework.row_logps(kl_batch, reference=True)
        if counted is None or counted[i]:
            total, rows = total + float((policy - reference).sum()), rows + kl_batch.rows
    total, rows = framework.all_reduce_sum([total, float(rows)])
    kl = max(total / max(rows, 1.0), 0.0)
    return [objective.with_kl(b, kl) for b in batches]


def evaluation_loss(
    framework: Framework,
    objective: Objective,
    split: PreparedSplit,
    batch_size: int,
    pad_id: int,
    rank: Rank,
) -> float:
    """The objective's loss over a split (SFT: the token-weighted NLL; KTO: with one KL
    estimate over the whole split), its examples shared out over ranks; every rank gets
    the same number of batches (the last ones uncounted where its share is shorter), as a
    framework whose forward is a collective needs."""
    mine = list(range(rank.rank, len(split), rank.world))
    count = math.ceil(math.ceil(len(split) / rank.world) / batch_size)
    groups, counted = [], []
    for b in range(count):
        indices = mine[b * batch_size : (b + 1) * batch_size]
        groups.append(indices or [0])
        counted.append(bool(indices))
    made = [objective.collate(split, g, pad_id) for g in groups]
    made = with_step_kl(framework, objective, split, groups, pad_id, made, counted)
    total, units = framework.eval_loss(list(zip(made, counted, strict=True)))
    total, units = framework.all_reduce_sum([total, float(units)])
    return total / max(units, 1)


def save_checkpoint(framework: Framework, folder: Path, rank: Rank) -> None:
    """The framework's state and the host's RNG state into a checkpoint folder."""
    framework.save_state(folder)
    if rank.main:
        save_host_rng(folder)


def load_checkpoint(framework: Framework, folder: Path) -> TrainerState:
    framework.load_state(folder)
    load_host_rng(folder)
    return Checkpoints.state_of(folder)


def open_metrics(
    config: WorkerConfig, layout: RunLayout, rank: Rank, framework: Framework
) -> MetricsLog:
    """The metrics log (rank 0 writes), feeding TensorBoard too when the recipe asks."""
    if rank.main and config.output.report_to == "tensorboard":
        writer = framework.summary_writer(layout.tensorboard)
        return MetricsLog(layout, scalars=writer.add_scalar, close=writer.close)
    return MetricsLog(layout)

"""Which examples each micro-batch takes: a seeded order that depends only on the data and
the seed, never on the backend, grouped into optimizer steps and split over ranks."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ftx.core.contract import TrainArgs


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

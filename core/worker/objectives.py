"""Training stages as objectives: how a stage's micro-batch is collated and counted, and
the formula that turns what the framework computed into the loss that is differentiated.

The loop (:mod:`ftx.core.worker.loop`) is given the objective of the run's stage
(:func:`objective_for`) and never looks inside it; the framework
(:class:`ftx.core.worker.framework.Framework`) computes the statistic the objective names
on its own tensors and hands it to :meth:`Objective.loss`.

What a stage needs from a framework
    ``nll``: the negative log-likelihood of a micro-batch's learned tokens, as the
    framework's loss kernel gives it: summed (torch, paddle: cross-entropy with a sum
    reduction) or averaged over the batch's learned tokens (MindFormers' own loss).
    ``token_logprobs``: per-token log-probabilities of a batch's targets under the model
    ([rows, length - 1], 0 where nothing is learned), from which a stage sums what it
    needs per row (the preference stages).

How the shared formula reaches a compiled step
    :meth:`Objective.loss` is plain arithmetic on whatever tensors it is given. torch and
    paddle call it eagerly; MindSpore traces it: the mindformers worker calls it inside
    the function it hands to ``ms.value_and_grad`` under ``ms.jit``, with the weight as a
    Tensor argument, so the one compiled step serves every micro-batch.

Adding a stage: an objective here (collate, weight, loss) registered in
:data:`OBJECTIVES`, and, where a framework needs it, one small function in that
framework's worker computing the statistic the objective names.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np

from ftx.core.contract import ContractError
from ftx.core.prepared import IGNORE_INDEX, PreparedSplit

Reduction = Literal["sum", "mean"]  # how a framework's NLL statistic is reduced


@dataclass(frozen=True)
class TokenBatch:
    """One micro-batch on the host, before a framework turns it into its tensors.

    ``arrays`` are int64, right-padded to the longest row: input_ids (pad id on padding),
    labels (-100 there), token_mask (1 on real tokens), targets (the next-token labels,
    [rows, length - 1], -100 where nothing is learned) and, for packed splits,
    position_ids and segment_ids (0 on padding)."""

    arrays: dict[str, np.ndarray]
    learned: int  # targets the loss counts
    tokens: int  # real (non-pad) tokens

    @property
    def rows(self) -> int:
        return int(self.arrays["input_ids"].shape[0])


@dataclass(frozen=True)
class StepTotals:
    """One optimizer step over all its micro-batches and every rank."""

    learned: int
    tokens: int
    world: int


class Objective(Protocol):
    """A training stage: its batches, its normalisation and its loss."""

    stages: tuple[str, ...]  # the method.stage values it trains

    def collate(self, split: PreparedSplit, indices: Sequence[int], pad_id: int) -> TokenBatch:
        """The micro-batch of examples ``indices`` of ``split``."""
        ...

    def weight(self, batch: TokenBatch, totals: StepTotals, reduction: Reduction) -> float:
        """What this micro-batch's statistic (reduced as ``reduction`` says) is multiplied
        by, so that the gradients of the whole step (every micro-batch, every rank;
        frameworks average gradients over ranks) are the stage's loss over the step."""
        ...

    def loss(self, statistic: Any, weight: Any) -> Any:
        """The loss to differentiate, from the framework's statistic and the weight (framework
        tensors or numbers: the formula is traced by compiling frameworks)."""
        ...


@dataclass(frozen=True)
class NextTokenNLL:
    """Supervised fine-tuning and pre-training: the next-token negative log-likelihood of
    the learned tokens (labels not -100; in packed rows an example's first token is never
    the target of the previous example's last), normalised by the learned tokens of the
    whole optimizer step across gradient accumulation and ranks."""

    stages: tuple[str, ...] = ("sft", "pt")

    def collate(self, split: PreparedSplit, indices: Sequence[int], pad_id: int) -> TokenBatch:
        arrays = split.padded(indices, pad_id)
        targets = arrays["labels"][:, 1:].copy()
        if "position_ids" in arrays:
            targets[arrays["position_ids"][:, 1:] == 0] = IGNORE_INDEX
        arrays["targets"] = targets
        learned = int((targets != IGNORE_INDEX).sum())
        return TokenBatch(arrays, learned, int(arrays["token_mask"].sum()))

    def weight(self, batch: TokenBatch, totals: StepTotals, reduction: Reduction) -> float:
        per_rank = max(totals.learned, 1) / totals.world  # gradients are averaged over ranks
        return batch.learned / per_rank if reduction == "mean" else 1 / per_rank

    def loss(self, statistic: Any, weight: Any) -> Any:
        return statistic * weight


NEXT_TOKEN_NLL = NextTokenNLL()
OBJECTIVES: dict[str, Objective] = {stage: NEXT_TOKEN_NLL for stage in NEXT_TOKEN_NLL.stages}


def objective_for(stage: str) -> Objective:
    """The objective that trains ``stage``; a ContractError for a stage no objective trains."""
    if stage not in OBJECTIVES:
        raise ContractError(
            f"method.stage {stage!r}: this worker trains {sorted(OBJECTIVES)}."
            " Fix: write the plan again with this ftx (`ftx plan`)"
        )
    return OBJECTIVES[stage]

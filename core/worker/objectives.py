"""Training stages as objectives: how a stage's micro-batch is collated and counted, and
the formula that turns what the framework computed into the loss that is differentiated.

The loop (:mod:`ftx.core.worker.loop`) is given the objective of the run's stage
(:func:`objective_for`) and never looks inside it; the framework
(:class:`ftx.core.worker.framework.Framework`) computes the statistic the objective names
on its own tensors and hands it to :meth:`Objective.loss`.

What a stage needs from a framework (its ``needs``)
    ``nll`` (sft, pt): the negative log-likelihood of a micro-batch's learned tokens, as
    the framework's loss kernel gives it: summed (torch, paddle: cross-entropy with a sum
    reduction) or averaged over the batch's learned tokens (MindFormers' own loss).
    ``pair_logps`` (dpo): :class:`PairLogps`, each row's summed per-token log-probabilities
    (the framework's ``token_logprobs``) under the policy and the reference.

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

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np

from ftx.core.contract import ContractError, MethodArgs, PreferenceArgs
from ftx.core.prepared import IGNORE_INDEX, PairedSplit, PreparedSplit, padded_rows

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
    units: int  # what the stage's loss is averaged over: learned tokens, pairs, rows

    @property
    def rows(self) -> int:
        return int(self.arrays["input_ids"].shape[0])


@dataclass(frozen=True)
class StepTotals:
    """One optimizer step over all its micro-batches and every rank."""

    units: int  # the objective's units (SFT: learned tokens)
    tokens: int
    world: int


class Objective(Protocol):
    """A training stage: its batches, its normalisation and its loss."""

    stages: tuple[str, ...]  # the method.stage values it trains
    needs: str  # the statistic it asks of the framework: "nll" or "pair_logps"

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
    needs = "nll"

    def collate(self, split: PreparedSplit, indices: Sequence[int], pad_id: int) -> TokenBatch:
        arrays = split.padded(indices, pad_id)
        targets = arrays["labels"][:, 1:].copy()
        if "position_ids" in arrays:
            targets[arrays["position_ids"][:, 1:] == 0] = IGNORE_INDEX
        arrays["targets"] = targets
        learned = int((targets != IGNORE_INDEX).sum())
        return TokenBatch(arrays, learned, int(arrays["token_mask"].sum()), learned)

    def weight(self, batch: TokenBatch, totals: StepTotals, reduction: Reduction) -> float:
        per_rank = max(totals.units, 1) / totals.world  # gradients are averaged over ranks
        return batch.learned / per_rank if reduction == "mean" else 1 / per_rank

    def loss(self, statistic: Any, weight: Any) -> Any:
        return statistic * weight


@dataclass(frozen=True)
class TensorOps:
    """The few tensor functions the preference formulas use, each backend's own (its
    worker builds one: ``TensorOps(torch.nn.functional.logsigmoid, ...)``)."""

    log_sigmoid: Callable[[Any], Any]
    relu: Callable[[Any], Any]
    exp: Callable[[Any], Any]
    log1p: Callable[[Any], Any]
    total: Callable[[Any], Any]  # the sum of every element


@dataclass(frozen=True)
class PairLogps:
    """What a preference stage needs of a pair batch, as framework tensors over its rows
    (the chosen rows first, then the rejected ones, pair i at rows i and B + i): the summed
    log-probabilities of each row's learned tokens under the policy (with gradients) and
    under the reference (without; zeros when the loss has none), and each row's learned
    token count (float). Always tensors, so a compiled step has no branch to join."""

    policy: Any
    reference: Any
    units: Any


def pair_rows(split: PairedSplit, indices: Sequence[int], pad_id: int) -> TokenBatch:
    """Pairs ``indices`` of ``split`` as one batch: the chosen rows, then the rejected rows
    (one forward for both, as TRL concatenates them), with each row's learned tokens in
    ``row_units``; ``units`` is the number of pairs."""
    rows = [split.chosen[i] for i in indices] + [split.rejected[i] for i in indices]
    arrays = padded_rows(rows, pad_id)
    targets = arrays["labels"][:, 1:].copy()
    arrays["targets"] = targets
    arrays["row_units"] = (targets != IGNORE_INDEX).sum(axis=1).astype(np.float32)
    reference = split.column("reference_logps")  # method.preference.reference: precomputed
    if reference is not None:
        arrays["reference_logps"] = np.concatenate([reference[indices, 0], reference[indices, 1]])
    learned = int(arrays["row_units"].sum())
    return TokenBatch(arrays, learned, int(arrays["token_mask"].sum()), len(indices))


@dataclass(frozen=True)
class PairPreference:
    """dpo: a loss over pairs of answers to one prompt, averaged over the pairs of the whole
    optimizer step (accumulation and ranks). The formulas are TRL's and LLaMA-Factory's,
    with z = (policy chosen - policy rejected) - (reference chosen - reference rejected)
    (summed log-probabilities; averaged over the answer's tokens for ipo, simpo and orpo):

    - sigmoid (DPO): -log sigmoid(beta z) (1 - ls) - log sigmoid(-beta z) ls
    - ipo: (z - 1 / (2 beta))^2
    - hinge: relu(1 - beta z)
    - simpo (no reference): -log sigmoid(beta (chosen - rejected) - gamma)
    - orpo (no reference): -chosen - beta log sigmoid(log-odds(chosen) - log-odds(rejected))

    plus ``sft_weight`` times the chosen answer's token-averaged NLL (LLaMA-Factory's
    ``pref_ftx``; orpo has it built in). The rewards are beta (policy - reference), beta
    times the policy's (averaged) log-probability without a reference."""

    settings: PreferenceArgs
    stages: tuple[str, ...] = ("dpo",)
    needs = "pair_logps"

    def collate(self, split: Any, indices: Sequence[int], pad_id: int) -> TokenBatch:
        return pair_rows(split, indices, pad_id)

    def weight(self, batch: TokenBatch, totals: StepTotals, reduction: Reduction) -> float:
        return totals.world / max(totals.units, 1)  # the per-pair losses are summed

    def loss(self, statistic: Any, weight: Any) -> Any:
        return statistic * weight

    @property
    def averaged(self) -> bool:
        return self.settings.loss in ("ipo", "simpo", "orpo")

    def _halves(self, policy: Any, reference: Any, units: Any) -> tuple[Any, Any, Any, Any]:
        pairs = policy.shape[0] // 2
        if self.averaged:
            policy, reference = policy / units, reference / units
        return policy[:pairs], policy[pairs:], reference[:pairs], reference[pairs:]

    def losses(self, policy: Any, reference: Any, units: Any, ops: TensorOps) -> Any:
        """Each pair's loss (a framework tensor [pairs]) from the fields of a
        :class:`PairLogps` (passed apart: a compiling framework traces tensors, not objects)."""
        p, pairs = self.settings, policy.shape[0] // 2
        chosen, rejected, ref_chosen, ref_rejected = self._halves(policy, reference, units)
        z = (chosen - rejected) - (ref_chosen - ref_rejected)
        if p.loss == "sigmoid":
            smooth = p.label_smoothing
            losses = (
                -ops.log_sigmoid(p.beta * z) * (1 - smooth) - ops.log_sigmoid(-p.beta * z) * smooth
            )
        elif p.loss == "ipo":
            losses = (z - 1 / (2 * p.beta)) ** 2
        elif p.loss == "hinge":
            losses = ops.relu(1 - p.beta * z)
        elif p.loss == "simpo":
            losses = -ops.log_sigmoid(p.beta * (chosen - rejected) - p.simpo_gamma)
        else:  # orpo: the NLL of the chosen answer and the log odds ratio
            odds = (chosen - rejected) - (
                ops.log1p(-ops.exp(chosen)) - ops.log1p(-ops.exp(rejected))
            )
            return -chosen - p.beta * ops.log_sigmoid(odds)
        if p.sft_weight:  # the chosen answer's NLL, averaged over its tokens
            losses = losses - p.sft_weight * policy[:pairs] / units[:pairs]
        return losses

    def summed_losses(self, stat: PairLogps, ops: TensorOps) -> Any:
        """The pairs' losses summed (what the step reports and weights)."""
        return ops.total(self.losses(stat.policy, stat.reference, stat.units, ops))

    def metrics(self, stat: PairLogps) -> dict[str, float]:
        """The logged values summed over the pairs (host arrays in ``stat``): the rewards,
        their accuracy and margin, the policy's log-probabilities."""
        chosen, rejected, ref_chosen, ref_rejected = self._halves(
            stat.policy, stat.reference, stat.units
        )
        beta = self.settings.beta
        good, bad = beta * (chosen - ref_chosen), beta * (rejected - ref_rejected)
        return {
            "rewards_chosen": float(np.sum(good)),
            "rewards_rejected": float(np.sum(bad)),
            "rewards_accuracies": float(np.sum(good > bad)),
            "rewards_margins": float(np.sum(good - bad)),
            "logps_chosen": float(np.sum(chosen)),
            "logps_rejected": float(np.sum(rejected)),
        }


def reference_kind(method: MethodArgs) -> Literal["none", "adapter_off", "frozen_copy"]:
    """What a preference run's framework keeps as its reference while training: nothing
    (reference-free, or log-probabilities precomputed before training), the base with the
    adapter switched off (LoRA), or a frozen copy of the starting model (full)."""
    settings = method.preference
    if settings is None or settings.reference in ("none", "precomputed"):
        return "none"
    return "adapter_off" if method.finetuning in ("lora", "qlora") else "frozen_copy"


def summed(totals: dict[str, float], more: dict[str, float]) -> dict[str, float]:
    """Metric sums of two micro-batches added (the objective's ``metrics``)."""
    return {name: totals.get(name, 0.0) + more.get(name, 0.0) for name in {*totals, *more}}


NEXT_TOKEN_NLL = NextTokenNLL()
OBJECTIVES: dict[str, Objective] = {stage: NEXT_TOKEN_NLL for stage in NEXT_TOKEN_NLL.stages}
PREFERENCE_OBJECTIVES = {"dpo": PairPreference}  # built from the run's method.preference


def objective_for(method: MethodArgs) -> Objective:
    """The objective that trains ``method.stage``; a ContractError for a stage no objective
    trains."""
    if method.stage in OBJECTIVES:
        return OBJECTIVES[method.stage]
    if method.stage in PREFERENCE_OBJECTIVES and method.preference is not None:
        return PREFERENCE_OBJECTIVES[method.stage](method.preference)
    known = sorted([*OBJECTIVES, *PREFERENCE_OBJECTIVES])
    raise ContractError(
        f"method.stage {method.stage!r}: this worker trains {known}."
        " Fix: write the plan again with this ftx (`ftx plan`)"
    )

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
    ``row_logps`` (dpo, kto): :class:`RowLogps`, each row's summed per-token
    log-probabilities (the framework's ``token_logprobs``) under the policy and the
    reference, with the batch's per-row numbers (``row_units``, ``row_aux``).
    ``row_scores`` (rm): :class:`RowScores`, each row's scalar score from the model's
    score head at the batch's ``score_positions``.

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
from dataclasses import dataclass, replace
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
    needs: str  # the statistic it asks of the framework: "nll", "row_logps", "row_scores"

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

    def kl_rows(
        self, split: PreparedSplit, indices: Sequence[int], pad_id: int
    ) -> TokenBatch | None:
        """The rows whose policy-to-reference log-ratio estimates a KL term shared by the
        whole step (KTO's mismatched rows), or None when the stage has no such term."""
        ...

    def with_kl(self, batch: TokenBatch, kl: float) -> TokenBatch:
        """``batch`` carrying the step's KL estimate (only for stages with ``kl_rows``)."""
        ...

    def metric_means(self, sums: dict[str, float], units: int) -> dict[str, float]:
        """The logged values (MetricsRow fields) from the extras summed over logged steps
        and their ``units``."""
        ...


class Plain:
    """What an objective without a shared KL term, and averaging every logged value over
    its units, has in common."""

    def kl_rows(self, split: Any, indices: Sequence[int], pad_id: int) -> TokenBatch | None:
        return None

    def with_kl(self, batch: TokenBatch, kl: float) -> TokenBatch:
        raise TypeError(f"{type(self).__name__} has no KL term")

    def metric_means(self, sums: dict[str, float], units: int) -> dict[str, float]:
        return per_unit(sums, units)


def per_unit(sums: dict[str, float], units: int) -> dict[str, float]:
    """Each summed value over the units (how most objectives average what they log)."""
    return {name: value / max(units, 1) for name, value in sums.items()}


@dataclass(frozen=True)
class NextTokenNLL(Plain):
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
class RowLogps:
    """What a preference stage needs of a batch, as framework tensors over its rows (a pair
    batch: the chosen rows first, then the rejected ones, pair i at rows i and B + i): the
    summed log-probabilities of each row's learned tokens under the policy (with
    gradients) and under the reference (without; zeros when the loss has none), each
    row's learned token count (float, the batch's ``row_units``) and the objective's own
    per-row numbers (the batch's ``row_aux``, [rows, 2]; KTO: the tag and the step's KL).
    Always tensors, so a compiled step has no branch to join."""

    policy: Any
    reference: Any
    units: Any
    aux: Any

    def apply(self, convert: Callable[[Any], Any]) -> RowLogps:
        """Every field converted (e.g. a framework tensor to a host array)."""
        return RowLogps(*(convert(t) for t in (self.policy, self.reference, self.units, self.aux)))


def pair_rows(split: PairedSplit, indices: Sequence[int], pad_id: int) -> TokenBatch:
    """Pairs ``indices`` of ``split`` as one batch: the chosen rows, then the rejected rows
    (one forward for both, as TRL concatenates them), with each row's learned tokens in
    ``row_units``; ``units`` is the number of pairs."""
    rows = [split.chosen[i] for i in indices] + [split.rejected[i] for i in indices]
    reference = split.column("reference_logps")  # method.preference.reference: precomputed
    if reference is not None:
        reference = np.concatenate([reference[indices, 0], reference[indices, 1]])
    return scored_batch(rows, pad_id, reference, len(indices))


def scored_batch(
    rows: Sequence[tuple[np.ndarray, np.ndarray]],
    pad_id: int,
    reference: np.ndarray | None,
    units: int,
) -> TokenBatch:
    """Rows as a batch whose rows are scored: padded, next-token ``targets``, each row's
    learned tokens (``row_units``), the precomputed reference's log-probs when given, and
    zero ``row_aux``; ``units`` is what the stage averages over (pairs, rows)."""
    arrays = padded_rows(rows, pad_id)
    targets = arrays["labels"][:, 1:].copy()
    arrays["targets"] = targets
    arrays["row_units"] = (targets != IGNORE_INDEX).sum(axis=1).astype(np.float32)
    arrays["row_aux"] = np.zeros((len(rows), 2), dtype=np.float32)
    if reference is not None:
        arrays["reference_logps"] = reference.astype(np.float32)
    learned = int(arrays["row_units"].sum())
    return TokenBatch(arrays, learned, int(arrays["token_mask"].sum()), units)


class PerExample(Plain):
    """The preference stages' normalisation: each example's loss (a pair's, a row's)
    summed by the framework, the sum weighted so that the step's gradient is their mean
    over the whole optimizer step (accumulation and ranks)."""

    def weight(self, batch: TokenBatch, totals: StepTotals, reduction: Reduction) -> float:
        return totals.world / max(totals.units, 1)  # frameworks average over ranks

    def loss(self, statistic: Any, weight: Any) -> Any:
        return statistic * weight


class LogRatioLoss(PerExample):
    """What the objectives over :class:`RowLogps` share: their summed loss, from the
    ``losses(policy, reference, units, aux, ops)`` each of them defines."""

    losses: Callable[..., Any]

    def summed_losses(self, stat: RowLogps, ops: TensorOps) -> Any:
        """The examples' losses summed (what the step reports and weights)."""
        return ops.total(self.losses(stat.policy, stat.reference, stat.units, stat.aux, ops))


@dataclass(frozen=True)
class PairPreference(LogRatioLoss):
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
    ``pref_ftx``; orpo has it built in). The rewards are beta (policy - reference) of the
    summed log-probabilities (ipo too, as TRL logs them), beta times the policy's averaged
    log-probability without a reference."""

    settings: PreferenceArgs
    stages: tuple[str, ...] = ("dpo",)
    needs = "row_logps"

    def collate(self, split: Any, indices: Sequence[int], pad_id: int) -> TokenBatch:
        return pair_rows(split, indices, pad_id)

    @property
    def averaged(self) -> bool:
        return self.settings.loss in ("ipo", "simpo", "orpo")

    def _halves(
        self, policy: Any, reference: Any, units: Any, averaged: bool | None = None
    ) -> tuple[Any, Any, Any, Any]:
        pairs = policy.shape[0] // 2
        if self.averaged if averaged is None else averaged:
            policy, reference = policy / units, reference / units
        return policy[:pairs], policy[pairs:], reference[:pairs], reference[pairs:]

    def reference_rows(self, split: PairedSplit, indices: Sequence[int], pad_id: int) -> TokenBatch:
        """The rows a precomputed reference scores for pairs ``indices``: the chosen rows,
        then the rejected ones (``reference_logps.npy``'s two columns)."""
        return pair_rows(split, indices, pad_id)

    def losses(self, policy: Any, reference: Any, units: Any, aux: Any, ops: TensorOps) -> Any:
        """Each pair's loss (a framework tensor [pairs]) from the fields of a
        :class:`RowLogps` (passed apart: a compiling framework traces tensors, not objects)."""
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

    def metrics(self, stat: RowLogps) -> dict[str, float]:
        """The logged values summed over the pairs (host arrays in ``stat``): the rewards,
        their accuracy and margin, the policy's log-probabilities. As TRL logs them: from
        the summed log-probabilities, except for the reference-free losses, whose rewards
        are their own averaged ones (ipo averages inside its loss only)."""
        chosen, rejected, ref_chosen, ref_rejected = self._halves(
            stat.policy,
            stat.reference,
            stat.units,
            averaged=self.settings.loss in ("simpo", "orpo"),
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


@dataclass(frozen=True)
class Feedback(LogRatioLoss):
    """kto: each answer judged alone, desirable or not (KTO, as TRL's ``KTOTrainer`` and
    LLaMA-Factory compute it), averaged over the rows of the whole optimizer step. With r
    the row's log-ratio (policy - reference, summed log-probabilities) and z the step's KL
    estimate, a desirable row's loss is desirable_weight (1 - sigmoid(beta (r - z))), an
    undesirable one's undesirable_weight (1 - sigmoid(beta (z - r))).

    z is the mean log-ratio of the step's KL rows (each row's prompt with another row's
    answer, prepared beside the data), over every micro-batch and rank, clamped at 0 and
    held constant (no gradient): TRL's estimate when a step is one micro-batch, and one
    value for the step however it is split over accumulation and processes. The rewards
    are beta r, logged apart for the desirable and the undesirable rows."""

    settings: PreferenceArgs
    stages: tuple[str, ...] = ("kto",)
    needs = "row_logps"

    def collate(self, split: Any, indices: Sequence[int], pad_id: int) -> TokenBatch:
        rows = [split[i] for i in indices]
        batch = scored_batch(rows, pad_id, _precomputed(split, indices, 0), len(indices))
        batch.arrays["row_aux"][:, 0] = split.column("kto_tag")[list(indices)]
        return batch

    def kl_rows(self, split: Any, indices: Sequence[int], pad_id: int) -> TokenBatch:
        rows = [split.kl[i] for i in indices]
        return scored_batch(rows, pad_id, _precomputed(split, indices, 1), len(indices))

    def with_kl(self, batch: TokenBatch, kl: float) -> TokenBatch:
        arrays = dict(batch.arrays, row_aux=batch.arrays["row_aux"].copy())
        arrays["row_aux"][:, 1] = kl
        return replace(batch, arrays=arrays)

    def reference_rows(self, split: Any, indices: Sequence[int], pad_id: int) -> TokenBatch:
        """The rows a precomputed reference scores for rows ``indices``: the rows, then
        their KL rows (``reference_logps.npy``'s two columns)."""
        rows = [split[i] for i in indices] + [split.kl[i] for i in indices]
        return scored_batch(rows, pad_id, None, len(indices))

    def losses(self, policy: Any, reference: Any, units: Any, aux: Any, ops: TensorOps) -> Any:
        """Each row's loss (a framework tensor [rows]); ``aux`` holds each row's tag and the
        step's KL estimate. 1 - sigmoid(x) is written exp(log sigmoid(-x))."""
        p = self.settings
        ratio, tag, kl = policy - reference, aux[:, 0], aux[:, 1]
        desirable = p.desirable_weight * ops.exp(ops.log_sigmoid(-p.beta * (ratio - kl)))
        undesirable = p.undesirable_weight * ops.exp(ops.log_sigmoid(-p.beta * (kl - ratio)))
        return tag * desirable + (1 - tag) * undesirable

    def metrics(self, stat: RowLogps) -> dict[str, float]:
        """Sums over the rows (host arrays): the rewards and the policy's log-probabilities of
        the desirable (``chosen``) and undesirable (``rejected``) rows, their counts, and the
        KL estimate times the rows."""
        tag = stat.aux[:, 0] > 0.5
        rewards = self.settings.beta * (stat.policy - stat.reference)
        return {
            "rewards_chosen": float(np.sum(rewards[tag])),
            "rewards_rejected": float(np.sum(rewards[~tag])),
            "logps_chosen": float(np.sum(stat.policy[tag])),
            "logps_rejected": float(np.sum(stat.policy[~tag])),
            "count_chosen": float(np.sum(tag)),
            "count_rejected": float(np.sum(~tag)),
            "kl": float(np.sum(stat.aux[:, 1])),
        }

    def metric_means(self, sums: dict[str, float], units: int) -> dict[str, float]:
        """The desirable rows' means over the desirable rows, the undesirable rows' over
        theirs (TRL's), the margin between the two rewards, the KL over every row."""
        means = {"kl": sums["kl"] / max(units, 1)}
        for side in ("chosen", "rejected"):  # a side with no rows in the window logs nothing
            count = sums[f"count_{side}"]
            if count:
                means[f"rewards_{side}"] = sums[f"rewards_{side}"] / count
                means[f"logps_{side}"] = sums[f"logps_{side}"] / count
        if "rewards_chosen" in means and "rewards_rejected" in means:
            means["rewards_margins"] = means["rewards_chosen"] - means["rewards_rejected"]
        return means


def _precomputed(split: Any, indices: Sequence[int], column: int) -> np.ndarray | None:
    """A KTO split's precomputed reference of its rows (column 0) or KL rows (1), if any."""
    found = split.column("reference_logps")
    return None if found is None else found[indices, column]


@dataclass(frozen=True)
class RowScores:
    """What the reward model stage needs of a pair batch: each row's scalar score (a
    framework tensor [rows], with gradients; the chosen rows first, then the rejected)."""

    scores: Any

    def apply(self, convert: Callable[[Any], Any]) -> RowScores:
        return RowScores(convert(self.scores))


def score_positions(input_ids: np.ndarray, pad_id: int) -> np.ndarray:
    """Where each row is scored: its last token that is not ``pad_id`` (0 when all are),
    the position transformers' ``*ForSequenceClassification`` reads, so that the exported
    reward model scores a row as training did."""
    positions = np.arange(input_ids.shape[1])
    return (positions * (input_ids != pad_id)).argmax(-1)


@dataclass(frozen=True)
class PairwiseReward(PerExample):
    """rm: a reward model, a scalar score per row from a linear head (``score``, one output,
    started at zero so that every score is 0 at first) on the last hidden state at the
    row's last token (:func:`score_positions`), trained so that the chosen answer of each
    pair scores above the rejected one: -log sigmoid(chosen - rejected), averaged over the
    pairs of the whole optimizer step. Logged: the mean scores (``rewards/chosen``,
    ``rewards/rejected``), their margin and how often the chosen one is higher."""

    stages: tuple[str, ...] = ("rm",)
    needs = "row_scores"

    def collate(self, split: Any, indices: Sequence[int], pad_id: int) -> TokenBatch:
        batch = pair_rows(split, indices, pad_id)
        batch.arrays["score_positions"] = score_positions(batch.arrays["input_ids"], pad_id)
        return batch

    def losses(self, scores: Any, ops: TensorOps) -> Any:
        """Each pair's loss (a framework tensor [pairs])."""
        pairs = scores.shape[0] // 2
        return -ops.log_sigmoid(scores[:pairs] - scores[pairs:])

    def summed_losses(self, stat: RowScores, ops: TensorOps) -> Any:
        return ops.total(self.losses(stat.scores, ops))

    def metrics(self, stat: RowScores) -> dict[str, float]:
        pairs = stat.scores.shape[0] // 2
        chosen, rejected = stat.scores[:pairs], stat.scores[pairs:]
        return {
            "rewards_chosen": float(np.sum(chosen)),
            "rewards_rejected": float(np.sum(rejected)),
            "rewards_accuracies": float(np.sum(chosen > rejected)),
            "rewards_margins": float(np.sum(chosen - rejected)),
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
OBJECTIVES: dict[str, Objective] = {
    **{stage: NEXT_TOKEN_NLL for stage in NEXT_TOKEN_NLL.stages},
    "rm": PairwiseReward(),
}
# built from the run's method.preference
PREFERENCE_OBJECTIVES: dict[str, Any] = {"dpo": PairPreference, "kto": Feedback}


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

"""The framework interface: what the one training loop asks of a backend's framework.

:func:`ftx.core.worker.loop.train` runs every training run from the worker config and
the run layout to the final outputs, and reaches the framework only through the
methods of :class:`Framework`. Each ``backends/<name>/worker.py`` implements them (a
class), builds it with ``make_framework(config, layout)`` and is that framework's entry
point (``main(config, layout)``, run by :func:`ftx.core.worker.entry.run_worker`);
``tests/test_backend_surface.py`` checks every worker against this module.

What is the same everywhere is not here: the batch order (:mod:`.schedule`), the
objective (:mod:`.objectives`), checkpoint staging and the host's RNG state
(:mod:`.checkpoints`), held-out scoring (:mod:`.heldout`), the export flow
(:mod:`.exports`), and the rules for weight decay, clipping and LoRA's first A
(:mod:`.rules`), which the implementations call.

Tensors cross this interface only where a stage needs the framework's own
(:meth:`Framework.token_logprobs`); everything else is numbers, numpy arrays and folders.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from ftx.core.contract import ProgressEvent, RunLayout, WorkerConfig, print_event
from ftx.core.prepared import PreparedSplit
from ftx.core.worker.objectives import Objective, StepTotals, TokenBatch
from ftx.core.worker.schedule import Schedule


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


@dataclass(frozen=True)
class ModelSize:
    """Parameter counts of the model as built (adapters included)."""

    params: int
    trainable: int


@dataclass(frozen=True)
class StepOutput:
    """What one optimizer step gave on this rank."""

    loss_sum: float  # the objective's loss summed over this rank's units (SFT: NLL of tokens)
    grad_norm: float  # the global gradient norm before clipping
    # the objective's other logged values, summed over this rank's units (MetricsRow fields)
    extras: dict[str, float] = field(default_factory=dict)


@runtime_checkable
class Framework(Protocol):
    """A framework's side of a training run, in the order the loop calls it."""

    #: How :meth:`save_native` writes a LoRA adapter: ``"peft"`` (PEFT's own layout, which
    #: OUT/final holds) or ``"native"`` (the framework's, converted to PEFT by the kit).
    adapter_format: Literal["peft", "native"]
    #: OUT/final/<native_name> keeps the framework's own files with output.save_format
    #: both (None: the framework's own format is Hugging Face's).
    native_name: str | None
    #: True when every forward is a collective (ZeRO-3 gathers parameters), so every rank
    #: must run the same forwards: evaluation and decoding then run on every rank. Known
    #: once :meth:`start` has returned.
    collective_forward: bool
    #: True when the framework keeps a preference run's reference while training (the
    #: adapter switched off, a frozen copy); when False the loop computes the reference's
    #: log-probabilities once before training (``reference: precomputed``), which is the
    #: same reference: the model as it starts.
    keeps_reference: bool

    # ---------------------------------------------------------------- processes

    def start(self, config: WorkerConfig, layout: RunLayout) -> Rank:
        """Join the launcher's job (torchrun, paddle.distributed.launch, msrun) when there
        is one and pick this rank's device; returns this process's :class:`Rank`, whose
        barrier waits for every rank."""
        ...

    def seed(self, seed: int) -> None:
        """Seed the framework's own generators (the kit seeds Python's and numpy's)."""
        ...

    def all_reduce_sum(self, values: Sequence[float]) -> list[float]:
        """``values`` summed over every rank (the values themselves on one process)."""
        ...

    def accelerator(self) -> str | None:
        """The name of this rank's accelerator (a GPU's name, for MFU); None on a CPU."""
        ...

    # ---------------------------------------------------------------- construction

    def build(
        self,
        config: WorkerConfig,
        layout: RunLayout,
        split: PreparedSplit,
        schedule: Schedule,
        objective: Objective,
    ) -> ModelSize:
        """Build the model from ``config.model.path`` with the method applied (LoRA's A
        from :func:`ftx.core.worker.rules.lora_a_init`), the optimizer (AdamW with
        :func:`ftx.core.worker.rules.decays`) and the learning-rate schedule over
        ``schedule``'s steps and warm-up, for ``objective``'s loss; ``split`` is the
        training split (packed or not). Returns the model's parameter counts."""
        ...

    # ---------------------------------------------------------------- one step

    def optimizer_step(self, batches: Sequence[TokenBatch], totals: StepTotals) -> StepOutput:
        """One optimizer step over this rank's micro-batches: forward and backward of each
        (gradients synchronised over ranks once, after the last), each micro-batch's loss
        being ``objective.loss(statistic, objective.weight(batch, totals, reduction))``;
        then the global gradient norm, clipping to ``train.max_grad_norm`` by
        :func:`ftx.core.worker.rules.clip_coefficient`, the update, cleared gradients and
        the schedule advanced. Returns this rank's loss sum and the norm before clipping."""
        ...

    def learning_rate(self, step: int) -> float:
        """The learning rate the schedule gives after ``step`` optimizer steps (what the
        metrics row of that step logs; asked only for logged steps)."""
        ...

    # ---------------------------------------------------------------- evaluation

    def eval_loss(self, batches: Sequence[tuple[TokenBatch, bool]]) -> tuple[float, int]:
        """The objective's loss summed over the units of the counted batches (``(batch,
        True)``; SFT: the NLL of the learned tokens), and their number, with no gradient and
        the model left training. Uncounted
        batches pad every rank to the same number of forwards: a framework whose forward
        is a collective runs them, others may skip them."""
        ...

    def token_logprobs(self, batch: TokenBatch) -> Any:
        """Per-token log-probabilities of ``batch``'s targets under the model, a framework
        tensor [rows, length - 1] holding 0 where the target is -100 (with gradients when
        the model trains)."""
        ...

    def row_logps(self, batch: TokenBatch, reference: bool) -> Any:
        """Each row's summed log-probabilities of its learned targets, with no gradient, as a
        host (numpy) array: under the model as it is, or (``reference``) under the preference
        stages' reference (the adapter switched off, or the frozen starting model)."""
        ...

    def greedy(
        self, prompts: Sequence[Sequence[int]], max_new_tokens: int, stop: frozenset[int]
    ) -> list[list[int]]:
        """Greedy continuations of token-id prompts: up to ``max_new_tokens`` ids each,
        ending before the first id in ``stop``; the model evaluates, then trains again."""
        ...

    # ---------------------------------------------------------------- state

    def save_state(self, folder: Path) -> None:
        """Weights, optimizer, schedule and the framework's RNG state into ``folder``
        (called on every rank; the framework decides which ranks write)."""
        ...

    def load_state(self, folder: Path) -> None:
        """Restore what :meth:`save_state` wrote into ``folder``."""
        ...

    # ---------------------------------------------------------------- outputs

    def save_model(self, folder: Path) -> None:
        """The trained model in Hugging Face format into ``folder`` (called on every rank):
        the full weights with config.json, or (``adapter_format`` peft) the PEFT adapter."""
        ...

    def save_native(self, folder: Path) -> None:
        """The framework's own files of the trained model (the full model, or the adapter
        as the framework writes it) into ``folder`` (called on every rank)."""
        ...

    def save_merged(self, folder: Path) -> bool:
        """A LoRA model merged into its base, by the framework's own merge, into ``folder``;
        False when it has none (the kit then merges the PEFT adapter with ftx's fp32 merge)."""
        ...

    def score_head(self) -> Any:
        """A reward model's (stage rm) score head as a host array [1, hidden], in
        transformers' orientation, when the framework trains it beside its causal LM; the
        kit then writes OUT/final as transformers' *ForSequenceClassification
        (:mod:`ftx.core.convert.reward_model`). None when the framework's own saves hold
        the head already (torch trains transformers' class itself), or for other stages."""
        ...

    def summary_writer(self, folder: Path) -> Any:
        """A TensorBoard writer (``add_scalar(tag, value, step)``, ``close()``) logging into
        ``folder``, for output.report_to tensorboard."""
        ...

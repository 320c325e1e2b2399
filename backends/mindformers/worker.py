"""The mindformers worker: the MindFormers framework of the one training loop, and its
entry point.

    python -m ftx.backends.mindformers.worker plan/worker.json          # one worker
    msrun --worker_num 2 ... plan/mindformers_worker.py plan/worker.json  # data parallel

The entry point (:func:`main`) keeps what is MindSpore's alone: msrun's scheduler
process, and ``train.trainer: native``, MindFormers' own Trainer on ``finetune.yaml``
(:mod:`ftx.backends.mindformers.native`).
Everywhere else :class:`MindFormers` implements :class:`ftx.core.worker.framework.Framework`
and :func:`ftx.core.worker.loop.train` runs the loop. The model is MindFormers' own,
built from ``OUT/plan/finetune.yaml`` (see :mod:`ftx.backends.mindformers.modeling`),
and so is its loss; the step is MindSpore's: ``value_and_grad`` compiled with
``ms.jit`` (the objective's formula traced into it), the YAML's AdamW (MindFormers'
``AdamW``) and warm-up schedule (MindFormers' ``*WithWarmUpLR``), clipping by torch's
rule. Workers started by msrun join MindSpore's CPU collective (mccl) and all-reduce
gradients.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import mindspore as ms
import numpy as np
from mindspore import Tensor, ops

from ftx.backends.mindformers.modeling import (
    build_model,
    cpu_profile,
    fixed_rows,
    load_hf_weights,
    on_ascend,
    read_yaml,
    start_lora_like_every_backend,
    trainable,
    write_hf_model,
    write_mindformers_adapter,
)
from ftx.backends.mindformers.plan_files import FINETUNE_YAML
from ftx.core.contract import RunLayout, WorkerConfig
from ftx.core.errors import FtxError
from ftx.core.nodes import NODE_RANK
from ftx.core.prepared import IGNORE_INDEX, PreparedSplit, read_manifest
from ftx.core.worker.entry import run_worker
from ftx.core.worker.framework import ModelSize, Rank, StepOutput
from ftx.core.worker.heldout import greedy_by_next_token
from ftx.core.worker.loop import train
from ftx.core.worker.objectives import (
    Objective,
    RowLogps,
    RowScores,
    StepTotals,
    TensorOps,
    TokenBatch,
    objective_for,
    summed,
)
from ftx.core.worker.rules import clip_coefficient, decays
from ftx.core.worker.schedule import Schedule


class MindFormers:
    """MindFormers' model on MindSpore (CPU kernels) behind the framework interface."""

    adapter_format: Literal["peft", "native"] = "native"  # MindFormers' mindpet_delta_lora_*
    native_name: str | None = "mindspore"
    collective_forward = False
    # A second MindFormers network would double the memory, and PetModel has no switch
    # that turns its LoRA off: the loop scores the reference before training instead.
    keeps_reference = False

    def __init__(self, yaml_config: Any):
        self.yaml = yaml_config

    # ---------------------------------------------------------------- processes

    def start(self, config: WorkerConfig, layout: RunLayout) -> Rank:
        self.config, self.layout = config, layout
        if config.train.trainer == "ftx" or not on_ascend():
            cpu_profile(self.yaml)  # ftx's loop runs on MindSpore's CPU kernels
        self.rank = start_processes()
        self._reduce = ops.AllReduce() if self.rank.world > 1 else None
        return self.rank

    def seed(self, seed: int) -> None:
        ms.set_seed(seed)

    def all_reduce_sum(self, values: Sequence[float]) -> list[float]:
        if self._reduce is None:
            return list(values)
        summed = self._reduce(Tensor(np.array(values, dtype=np.float32)))
        return [float(v) for v in summed.asnumpy()]

    def accelerator(self) -> str | None:
        return None  # the CPU worker; Ascend runs MindFormers' Trainer (see main)

    # ---------------------------------------------------------------- construction

    def build(
        self,
        config: WorkerConfig,
        layout: RunLayout,
        split: PreparedSplit,
        schedule: Schedule,
        objective: Objective,
    ) -> ModelSize:
        self.describe_run(config, layout, objective)
        net = self.network(config, Path(config.model.path))
        # rm: MindFormers 1.9 has no Llama sequence classifier; the head trains beside it
        self.score = score_head(net) if objective.needs == "row_scores" else None
        head = [] if self.score is None else [self.score.weight]
        lr_schedule = build_lr(self.schedule_settings(schedule))
        self.adopt(net, build_optimizer(net, self.yaml, lr_schedule, head), lr_schedule)
        net.set_train(True)
        return self.size()

    def describe_run(self, config: WorkerConfig, layout: RunLayout, objective: Objective) -> None:
        """What the model's inputs look like: rows of seq_length + 1 tokens, the pad id."""
        self.objective, self.score = objective, None
        self.width = config.data.max_seq_len + 1
        self.pad_id = int(read_manifest(layout.at(config.data.prepared))["pad_token_id"])
        config_json = json.loads((Path(config.model.path) / "config.json").read_text())
        self.model_type = config_json["model_type"]

    def network(self, config: WorkerConfig, source: Path) -> Any:
        """MindFormers' network from the YAML with the model's HF weights (LoRA's A
        matrices from ftx's seeded draw): where both of this backend's trainers start."""
        net = build_model(self.yaml)
        load_hf_weights(net, source, self.yaml)
        if config.method.finetuning == "lora":
            start_lora_like_every_backend(net, self.model_type, config.train.seed)
        return net

    def adopt(self, net: Any, optimizer: Any, lr_schedule: Any = None) -> None:
        """Train ``net`` with ``optimizer`` (whose learning rate is ``lr_schedule``, or
        its own schedule cell): ftx's optimizer, or the one MindFormers' Trainer built."""
        self.net, self.optimizer = net, optimizer
        self.lr_schedule = optimizer.learning_rate if lr_schedule is None else lr_schedule
        clip = self.config.train.max_grad_norm
        self.step = TrainStep(net, optimizer, self.objective, clip, self.score)

    def size(self) -> ModelSize:
        head = [] if self.score is None else [self.score.weight]
        params = sum(int(np.prod(p.shape)) for p in [*self.net.get_parameters(), *head])
        trained = sum(int(np.prod(p.shape)) for p in [*trainable(self.net), *head])
        return ModelSize(params, trained)

    def schedule_settings(self, schedule: Schedule) -> dict[str, Any]:
        """The YAML's lr_schedule over the run's optimizer steps (warm-up by ftx's rule)."""
        settings = dict(self.yaml.lr_schedule)
        total = settings["total_steps"] = schedule.total_steps
        if "warmup_ratio" in settings:
            settings["warmup_steps"] = math.ceil(settings.pop("warmup_ratio") * total)
        return settings

    def begin_native(self, config: WorkerConfig, layout: RunLayout) -> None:
        """Before MindFormers' Trainer runs: the processes joined and the run described."""
        self.start(config, layout)
        self.describe_run(config, layout, objective_for(config.method))

    # ---------------------------------------------------------------- one step

    def optimizer_step(self, batches: Sequence[TokenBatch], totals: StepTotals) -> StepOutput:
        """Each micro-batch's loss is MindFormers' own, its mean over the batch's learned
        tokens (the statistic reduced by "mean"), weighted by the objective; gradients are
        summed over micro-batches, all-reduced and divided by the world size."""
        if self.objective.needs == "row_logps":
            return self._preference_step(batches, totals)
        if self.objective.needs == "row_scores":
            return self._reward_step(batches, totals)
        grads: tuple | None = None
        loss_sum: Tensor | None = None
        # MindFormers' mean times the weight, times the step's learned tokens per rank, is
        # the micro-batch's NLL sum (what the loop logs), still on the device.
        per_rank = max(totals.units, 1.0) / totals.world
        for host in batches:
            rows = fixed_rows(host, self.pad_id, self.width)
            weight = Tensor(self.objective.weight(host, totals, "mean"), ms.float32)
            loss, g = self.step.gradients(
                Tensor(rows["input_ids"]), Tensor(rows["labels"]), Tensor(rows["loss_mask"]), weight
            )
            part = loss * per_rank
            loss_sum = part if loss_sum is None else loss_sum + part
            grads = g if grads is None else tuple(a + c for a, c in zip(grads, g, strict=True))
        assert grads is not None and loss_sum is not None
        local_loss, norm_value = self._update(grads, loss_sum)
        return StepOutput(local_loss, norm_value)

    def _update(self, grads: tuple, loss_sum: Tensor) -> tuple[float, float]:
        """All-reduce the summed gradients, clip and step; the step's loss and norm."""
        if self._reduce is not None:
            grads = tuple(self._reduce(g) / self.rank.world for g in grads)
        # mutable: one compiled update for every step (a tuple of tensors would be a constant)
        norm = self.step.update(ms.mutable(grads))
        # One read-back per step for the loss and the norm: each read waits for the device.
        local_loss, norm_value = (
            float(v) for v in ops.concat([loss_sum.reshape(1), norm.reshape(1)]).asnumpy()
        )
        return local_loss, norm_value

    def _preference_step(self, batches: Sequence[TokenBatch], totals: StepTotals) -> StepOutput:
        """dpo's and kto's step: each micro-batch's rows in one compiled forward and backward
        (the objective's formula traced into it), the per-pair or per-row losses summed and
        weighted."""
        grads: tuple | None = None
        loss_sum: Tensor | None = None
        extras: dict[str, float] = {}
        for host in batches:
            inputs = self._pair_inputs(host)
            weight = Tensor(self.objective.weight(host, totals, "sum"), ms.float32)
            (_, total, policy), g = self.step.pair_gradients(*inputs, weight)
            loss_sum = total if loss_sum is None else loss_sum + total
            grads = g if grads is None else tuple(a + c for a, c in zip(grads, g, strict=True))
            stat = RowLogps(policy.asnumpy(), *(t.asnumpy() for t in inputs[3:]))
            extras = summed(extras, self.objective.metrics(stat))
        assert grads is not None and loss_sum is not None
        local_loss, norm_value = self._update(grads, loss_sum)
        return StepOutput(local_loss, norm_value, extras)

    def _reward_step(self, batches: Sequence[TokenBatch], totals: StepTotals) -> StepOutput:
        """rm's step: each micro-batch's pairs scored in one compiled forward and backward
        (the pairwise loss traced into it)."""
        grads: tuple | None = None
        loss_sum: Tensor | None = None
        extras: dict[str, float] = {}
        for host in batches:
            weight = Tensor(self.objective.weight(host, totals, "sum"), ms.float32)
            (_, total, scores), g = self.step.score_gradients(*self._score_inputs(host), weight)
            loss_sum = total if loss_sum is None else loss_sum + total
            grads = g if grads is None else tuple(a + c for a, c in zip(grads, g, strict=True))
            extras = summed(extras, self.objective.metrics(RowScores(scores.asnumpy())))
        assert grads is not None and loss_sum is not None
        local_loss, norm_value = self._update(grads, loss_sum)
        return StepOutput(local_loss, norm_value, extras)

    def _score_inputs(self, host: TokenBatch) -> tuple[Tensor, Tensor]:
        """A pair batch as the compiled score loss takes it: seq_length input tokens and
        the position each row is scored at."""
        rows = fixed_rows(host, self.pad_id, self.width)
        positions = host.arrays["score_positions"].astype(np.int32)
        return Tensor(rows["input_ids"][:, : self.width - 1]), Tensor(positions)

    def _pair_inputs(self, host: TokenBatch) -> tuple[Tensor, ...]:
        """A preference batch as the compiled pair loss takes it: seq_length input tokens,
        each position's target index and learned mask, the reference's summed
        log-probabilities (precomputed; zeros for the reference-free losses), each row's
        learned tokens and the objective's per-row numbers (row_aux)."""
        rows = fixed_rows(host, self.pad_id, self.width)
        targets = np.full((rows["input_ids"].shape[0], self.width - 1), IGNORE_INDEX, np.int32)
        found = host.arrays["targets"]
        targets[:, : found.shape[1]] = found
        units = host.arrays["row_units"].astype(np.float32)
        reference = host.arrays.get("reference_logps")
        reference = np.zeros_like(units) if reference is None else reference.astype(np.float32)
        return (
            Tensor(rows["input_ids"][:, : self.width - 1]),
            Tensor(np.where(targets == IGNORE_INDEX, 0, targets)[..., None]),
            Tensor((targets != IGNORE_INDEX).astype(np.float32)),
            Tensor(reference),
            Tensor(units),
            Tensor(host.arrays["row_aux"].astype(np.float32)),
        )

    def learning_rate(self, step: int) -> float:
        # The schedule is a small MindSpore graph: evaluated only for the rows that log it.
        return float(self.lr_schedule(Tensor(step, ms.int32)))

    # ---------------------------------------------------------------- evaluation

    def eval_loss(self, batches: Sequence[tuple[TokenBatch, bool]]) -> tuple[float, int]:
        """MindFormers' mean loss of each counted batch with learned tokens, times their
        number (its loss is computed in training mode, where the network returns it)."""
        total, count = 0.0, 0
        if self.objective.needs != "nll":
            for host, counted in batches:
                if not counted:
                    continue
                if self.objective.needs == "row_scores":
                    _, loss, _ = self.step.score_loss(*self._score_inputs(host), Tensor(1.0))
                else:
                    _, loss, _ = self.step.pair_loss(*self._pair_inputs(host), Tensor(1.0))
                total, count = total + float(loss), count + host.units
            return total, count
        for host, counted in batches:
            if counted and host.learned:
                rows = fixed_rows(host, self.pad_id, self.width)
                mean = self.step.loss(
                    Tensor(rows["input_ids"]), Tensor(rows["labels"]), Tensor(rows["loss_mask"])
                )
                total, count = total + float(mean) * host.learned, count + host.learned
        return total, count

    def token_logprobs(self, batch: TokenBatch) -> Tensor:
        """From the evaluation forward's logits (the network returns logits only when not
        training), over seq_length positions."""
        rows = fixed_rows(batch, self.pad_id, self.width)
        targets = batch.arrays["targets"]
        self.net.set_train(False)
        logits = self.step.logits(Tensor(rows["input_ids"][:, : self.width - 1]))
        self.net.set_train(True)
        logp = ops.log_softmax(logits[:, : targets.shape[1]].astype(ms.float32), -1)
        index = Tensor(np.where(targets == IGNORE_INDEX, 0, targets)[..., None].astype(np.int32))
        picked = ops.gather_elements(logp, 2, index).squeeze(-1)
        return picked * Tensor((targets != IGNORE_INDEX).astype(np.float32))

    def row_logps(self, batch: TokenBatch, reference: bool) -> np.ndarray:
        # keeps_reference is False: the loop asks before training, when the model is the
        # reference, and never for the reference itself.
        assert not reference, "the mindformers worker keeps no reference"
        # The training forward's path: the reference scored exactly as the first step's
        # policy will be, so the two agree to the last bit while they are one model.
        return self.step.row_logps(*self._pair_inputs(batch)[:3]).asnumpy()

    def greedy(
        self, prompts: Sequence[Sequence[int]], max_new_tokens: int, stop: frozenset[int]
    ) -> list[list[int]]:
        """The evaluation forward takes exactly seq_length tokens (its causal mask's size),
        so each prompt is padded on the right, which a causal model never sees from the
        earlier positions. Compiled once: in PyNative a forward per generated token made
        held-out scoring take minutes."""
        seq_length = self.width - 1

        def next_token(ids: list[int]) -> int | None:
            if len(ids) >= seq_length:
                return None  # no room left: the answer ends here
            row = np.full((1, seq_length), self.pad_id, dtype=np.int32)
            row[0, : len(ids)] = ids
            return int(self.step.logits(Tensor(row)).asnumpy()[0, len(ids) - 1].argmax())

        self.net.set_train(False)
        answers = greedy_by_next_token(next_token, prompts, max_new_tokens, stop)
        self.net.set_train(True)
        return answers

    # ---------------------------------------------------------------- state

    def save_state(self, folder: Path) -> None:
        """Trainable weights and the optimizer (moments, step count) in MindSpore's .ckpt
        format (rank 0: data parallel keeps every worker's copy equal)."""
        if not self.rank.main:
            return
        trained = [*trainable(self.net), *([] if self.score is None else [self.score.weight])]
        weights = [{"name": p.name, "data": p} for p in trained]
        ms.save_checkpoint(weights, str(folder / "model.ckpt"))
        ms.save_checkpoint(self.optimizer, str(folder / "optimizer.ckpt"))

    def load_state(self, folder: Path) -> None:
        weights = ms.load_checkpoint(str(folder / "model.ckpt"))
        if self.score is not None:
            self.score.weight.set_data(weights.pop(self.score.weight.name))
        ms.load_param_into_net(self.net, weights)
        ms.load_param_into_net(self.optimizer, ms.load_checkpoint(str(folder / "optimizer.ckpt")))

    # ---------------------------------------------------------------- outputs

    def save_model(self, folder: Path) -> None:
        """The full model's weights as HF safetensors, with the base's config.json."""
        if self.rank.main:
            write_hf_model(self.net, self.model_type, folder)
            shutil.copy2(Path(self.config.model.path) / "config.json", folder / "config.json")

    def save_native(self, folder: Path) -> None:
        """finetune.yaml with the model's .ckpt, or the adapter as MindFormers keeps it."""
        if not self.rank.main:
            return
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy2(self.layout.plan / FINETUNE_YAML, folder / FINETUNE_YAML)
        if self.config.method.finetuning == "lora":
            pet = self.yaml.model.model_config.pet_config
            write_mindformers_adapter(self.net, self.config, pet, folder)
        else:
            ms.save_checkpoint(self.net, str(folder / "model.ckpt"))

    def save_merged(self, folder: Path) -> bool:
        return False  # ftx merges the converted PEFT adapter

    def score_head(self) -> np.ndarray | None:
        return None if self.score is None else self.score.weight.asnumpy().astype(np.float32)

    def summary_writer(self, folder: Path) -> Any:
        from tensorboardX import SummaryWriter

        return SummaryWriter(str(folder))


class TrainStep:
    """The compiled parts of the network's use: the gradients of one micro-batch's weighted
    loss, the update, the loss alone and the evaluation forward's logits.

    The objective's formula is traced into the compiled gradient function (``ms.jit`` reads
    :meth:`ftx.core.worker.objectives.Objective.loss` like the rest of ``_weighted_loss``);
    the weight comes in as a Tensor, so one compiled graph serves every micro-batch."""

    def __init__(
        self,
        net: Any,
        optimizer: Any,
        objective: Objective,
        max_grad_norm: float,
        score: Any = None,
    ):
        self.net, self.optimizer, self.objective = net, optimizer, objective
        self.max_grad_norm, self.score = max_grad_norm, score
        grad = ms.value_and_grad(self._weighted_loss, None, optimizer.parameters)
        self.gradients = ms.jit(grad)
        self.loss = ms.jit(self._forward)
        self.update = ms.jit(self._apply)
        self.logits = ms.jit(self._logits)  # the evaluation forward (the network not training)
        if objective.needs == "row_logps":
            self.causal = causal_lm(net)
            pair = ms.value_and_grad(self._pair_loss, None, optimizer.parameters, has_aux=True)
            self.pair_gradients = ms.jit(pair)
            self.pair_loss = ms.jit(self._pair_loss)
            self.row_logps = ms.jit(self._row_logps)
        if objective.needs == "row_scores":
            self.causal = causal_lm(net)
            scored = ms.value_and_grad(self._score_loss, None, optimizer.parameters, has_aux=True)
            self.score_gradients = ms.jit(scored)
            self.score_loss = ms.jit(self._score_loss)

    def _forward(self, ids: Tensor, labels: Tensor, mask: Tensor) -> Tensor:
        return self.net(ids, labels, loss_mask=mask)  # MindFormers' mean over the mask

    def _logits(self, ids: Tensor) -> Tensor:
        return self.net(ids)[0]

    def _weighted_loss(self, ids: Tensor, labels: Tensor, mask: Tensor, weight: Tensor) -> Tensor:
        return self.objective.loss(self._forward(ids, labels, mask), weight)

    def _pair_loss(
        self,
        tokens: Tensor,
        index: Tensor,
        mask: Tensor,
        reference: Tensor,
        units: Tensor,
        aux: Tensor,
        weight: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """The weighted pair loss, the pairs' summed loss and each row's summed policy
        log-probability, from the training forward's logits (MindFormers' network returns
        only its own loss when training, so its decoder and head are called apart)."""
        policy = self._row_logps(tokens, index, mask)
        total = ops.sum(self.objective.losses(policy, reference, units, aux, MS_OPS))
        return self.objective.loss(total, weight), total, policy

    def _score_loss(
        self, tokens: Tensor, positions: Tensor, weight: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """The weighted pairwise loss, the pairs' summed loss and each row's score: the
        head on the decoder's last hidden state (after its final norm) at each row's
        position."""
        scores = self.score(self.causal.model(tokens), positions)
        # the objective's per-pair losses, not summed_losses: a RowScores built inside the
        # graph would be a Python object there, and the gradient would stop at it
        total = ops.sum(self.objective.losses(scores, MS_OPS))
        return self.objective.loss(total, weight), total, scores

    def _row_logps(self, tokens: Tensor, index: Tensor, mask: Tensor) -> Tensor:
        logits = self.causal.lm_head(self.causal.model(tokens)).astype(ms.float32)
        picked = ops.gather_elements(ops.log_softmax(logits, -1), 2, index).squeeze(-1)
        return (picked * mask).sum(-1)

    def _apply(self, grads: tuple) -> Tensor:
        """Clip by torch's rule (ftx.core.worker.rules.clip_coefficient, clamped at 1), step
        AdamW; return the norm before clipping. One compiled graph: the same work per
        tensor in PyNative cost a third of a small model's step."""
        norm = ops.sqrt(ops.addn(_EACH(_SQUARED_SUM, grads)))
        if self.max_grad_norm > 0:
            coef = ops.clamp(clip_coefficient(norm, self.max_grad_norm), max=1.0)
            grads = _EACH(ops.partial(_SCALED, coef), grads)
        self.optimizer(grads)
        return norm


# The update's per-tensor work maps over the gradient tuple (HyperMap) rather than a
# Python loop: a loop unrolls into one chain of graph nodes per tensor, and MindSpore's
# compile time grows faster than their number (0.5B LoRA, 336 factors: 77 s -> 7 s).
_EACH = ops.HyperMap()
_SQUARED_SUM = ops.MultitypeFuncGraph("squared_sum")
_SCALED = ops.MultitypeFuncGraph("scaled")


@_SQUARED_SUM.register("Tensor")
def _squared_sum(grad: Tensor) -> Tensor:
    return ops.square(grad).sum()


@_SCALED.register("Tensor", "Tensor")
def _scaled(coef: Tensor, grad: Tensor) -> Tensor:
    return grad * coef


MS_OPS = TensorOps(ops.logsigmoid, ops.relu, ops.exp, ops.log1p, ops.sum)


def causal_lm(net: Any) -> Any:
    """The LlamaForCausalLM inside MindFormers' LoRA wrappers (PetModel and LoraModel each
    hold the next as ``network``)."""
    while hasattr(net, "network"):
        net = net.network
    return net


# --------------------------------------------------------------------------- processes


def schedule_the_cluster() -> int:
    """msrun's scheduler process runs this same script: it only hosts the cluster (its
    init() returns when every worker has finished) and trains nothing.

    msrun starts a scheduler on every host that owns master_addr. Several "nodes" on one
    host (node_rank > 0 with a local master_addr) would start a second one on the same
    port; it steps aside for node 0's (launch.sh exports FTX_NODE_RANK).
    """
    if int(os.environ.get(NODE_RANK, 0)) > 0:
        return 0
    from mindspore.communication import init

    init()
    return 0


def start_processes() -> Rank:
    """Join msrun's job (MindSpore's CPU collective, mccl) when there is one."""
    if int(os.environ.get("MS_WORKER_NUM", 1)) <= 1:
        return Rank()
    from mindspore.communication import get_group_size, get_local_rank, get_rank, init

    init()
    reduce = ops.AllReduce()
    return Rank(get_rank(), get_group_size(), get_local_rank(), lambda: reduce(Tensor([0.0])))


# --------------------------------------------------------------------------- optimizer


def build_lr(settings: dict[str, Any]) -> Any:
    """MindFormers' learning-rate schedule cell of the YAML's lr_schedule ``settings``."""
    from mindformers.core.lr import build_lr as build

    return build(settings)


class ScoreHead(ms.nn.Cell):
    """A reward model's score head beside MindFormers' causal LM: transformers' ``score``
    [1, hidden] (no bias), started at zero (ftx.core.worker.objectives.PairwiseReward),
    applied to the decoder's last hidden state at each row's position."""

    def __init__(self, hidden: int):
        super().__init__()
        self.weight = ms.Parameter(Tensor(np.zeros((1, hidden), np.float32)), name="score.weight")

    def construct(self, hidden_states: Tensor, positions: Tensor) -> Tensor:
        rows = ops.arange(positions.shape[0], dtype=ms.int32)
        picked = ops.gather_nd(hidden_states, ops.stack([rows, positions], -1))
        return ops.matmul(picked.astype(ms.float32), self.weight.T)[:, 0]


def score_head(net: Any) -> ScoreHead:
    """The score head of a reward model on ``net``."""
    return ScoreHead(int(causal_lm(net).config.hidden_size))


def build_optimizer(net: Any, yaml_config: Any, lr_schedule: Any, extra: Sequence = ()) -> Any:
    """The YAML's optimizer (MindFormers' AdamW: torch's update rule) with no weight decay
    on biases and norm weights (ftx.core.worker.rules.decays), over the net's trainable
    parameters and ``extra`` ones (a reward model's head)."""
    from mindformers.core.optim import AdamW

    settings = yaml_config.optimizer
    if settings.type != "AdamW":
        raise FtxError(
            f"optimizer.type is {settings.type}; the CPU worker runs AdamW",
            where=FINETUNE_YAML,
            fix="set optimizer.type: AdamW",
        )
    params = [*trainable(net), *extra]
    groups = [
        {
            "params": [p for p in params if decays(p.name, p.shape)],
            "weight_decay": float(settings.weight_decay),
        },
        {"params": [p for p in params if not decays(p.name, p.shape)], "weight_decay": 0.0},
    ]
    return AdamW(
        [g for g in groups if g["params"]],
        learning_rate=lr_schedule,
        betas=tuple(float(b) for b in settings.betas),
        eps=float(settings.eps),
    )


# --------------------------------------------------------------------------- entry point


def make_framework(config: WorkerConfig, layout: RunLayout) -> MindFormers:
    """This backend's framework for the run ``config`` describes (the plan's finetune.yaml;
    MindFormers writes its logs under LOCAL_DEFAULT_PATH)."""
    os.environ.setdefault("LOCAL_DEFAULT_PATH", str(layout.root / "native"))
    return MindFormers(read_yaml(layout))


def main(config: WorkerConfig, layout: RunLayout) -> int:
    """msrun's scheduler process hosts the cluster; ``train.trainer: native`` runs
    MindFormers' own Trainer (:mod:`ftx.backends.mindformers.native`), ``ftx`` ftx's loop."""
    if os.environ.get("MS_ROLE") == "MS_SCHED":
        return schedule_the_cluster()
    framework = make_framework(config, layout)
    if config.train.trainer == "native":
        from ftx.backends.mindformers.native import run_native

        return run_native(config, layout, framework)
    return train(framework, config, layout)


if __name__ == "__main__":
    # A normal exit: MindSpore's exit handlers tell msrun's scheduler this worker is done.
    sys.exit(run_worker(main))

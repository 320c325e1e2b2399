"""The paddle worker: the PaddleFormers framework of the one training loop, and its entry
point.

    python -m ftx.backends.paddle.worker plan/worker.json                  # one process
    python -m paddle.distributed.launch --nproc_per_node 2 ... plan/paddle_worker.py ...

:class:`Paddle` implements :class:`ftx.core.worker.framework.Framework` with
PaddleFormers' own model (read from the HF folder), ``paddleformers.peft`` LoRA and
PaddleFormers' warm-up schedules, on the core's prepared examples, so the token stream
is the torch backend's; :func:`ftx.core.worker.loop.train` runs the loop.
PaddleFormers' Trainer runs the same recipe natively from
``OUT/plan/paddleformers.yaml`` (`paddleformers-cli train`).
"""

from __future__ import annotations

import copy
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import paddle

from ftx.backends.paddle.modeling import (
    RewardModel,
    device_batch,
    global_norm,
    load_model,
    nll_sum,
    on_gpu,
    token_logprobs,
    trainable,
)
from ftx.core.contract import RunLayout, TrainArgs, WorkerConfig
from ftx.core.errors import FtxError
from ftx.core.prepared import PreparedSplit
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
    reference_kind,
    summed,
)
from ftx.core.worker.rules import clip_coefficient, decays
from ftx.core.worker.schedule import Schedule


class Paddle:
    """PaddleFormers on paddlepaddle behind the framework interface."""

    adapter_format: Literal["peft", "native"] = "native"  # paddleformers.peft's own layout
    native_name: str | None = "paddle"
    collective_forward = False
    keeps_reference = True  # the adapter switched off (LoRA) or a frozen copy (full)

    # ---------------------------------------------------------------- processes

    def start(self, config: WorkerConfig, layout: RunLayout) -> Rank:
        self.config, self.layout = config, layout
        self.rank = start_processes()
        return self.rank

    def seed(self, seed: int) -> None:
        paddle.seed(seed)

    def all_reduce_sum(self, values: Sequence[float]) -> list[float]:
        """Sums over all ranks in float64, so token counts stay exact."""
        if self.rank.world == 1:
            return list(values)
        tensor = paddle.to_tensor(np.array(values, dtype=np.float64))
        paddle.distributed.all_reduce(tensor)
        return tensor.numpy().tolist()

    def accelerator(self) -> str | None:
        return paddle.device.cuda.get_device_name() if on_gpu() else None

    # ---------------------------------------------------------------- construction

    def build(
        self,
        config: WorkerConfig,
        layout: RunLayout,
        split: PreparedSplit,
        schedule: Schedule,
        objective: Objective,
    ) -> ModelSize:
        self.objective, self.max_grad_norm = objective, config.train.max_grad_norm
        self.model = load_model(config, layout, self.rank.rank, packed=split.packed)
        # what trains: the model, or (rm) the model and its score head
        self.scored = RewardModel(self.model) if objective.needs == "row_scores" else None
        self.trained = self.model if self.scored is None else self.scored
        self.reference = reference_of(self.model, config)
        self.scheduler = build_scheduler(config.train, schedule)
        self.optimizer = build_optimizer(self.trained, config.train, self.scheduler)
        world = self.rank.world
        self.wrapped = paddle.DataParallel(self.trained) if world > 1 else self.trained
        self.trained.train()
        params = sum(int(np.prod(p.shape)) for p in self.trained.parameters())
        return ModelSize(params, sum(int(np.prod(p.shape)) for p in trainable(self.trained)))

    # ---------------------------------------------------------------- one step

    def optimizer_step(self, batches: Sequence[TokenBatch], totals: StepTotals) -> StepOutput:
        if self.objective.needs != "nll":
            return self._preference_step(batches, totals)
        loss_sum = 0.0
        for i, host in enumerate(batches):
            # gradients are all-reduced once, by the last micro-batch's backward
            sync = self.rank.world == 1 or i == len(batches) - 1
            with self.wrapped.no_sync() if not sync else _nothing():
                nll = nll_sum(self.wrapped, device_batch(host))
                weight = self.objective.weight(host, totals, "sum")
                self.objective.loss(nll, weight).backward()
            loss_sum += float(nll)
        grad_norm = clip_gradients(self.model, self.max_grad_norm)
        self.optimizer.step()
        self.optimizer.clear_grad()
        self.scheduler.step()
        return StepOutput(loss_sum, grad_norm)

    def _preference_step(self, batches: Sequence[TokenBatch], totals: StepTotals) -> StepOutput:
        """dpo's, kto's and rm's step: each micro-batch's rows in one forward (a pair batch:
        chosen and rejected together), the objective's per-pair or per-row losses summed
        and weighted; the rewards (and log-probabilities) logged."""
        objective, loss_sum, extras = self.objective, 0.0, {}
        for i, host in enumerate(batches):
            sync = self.rank.world == 1 or i == len(batches) - 1
            batch = device_batch(host)
            with self.wrapped.no_sync() if not sync else _nothing():
                stat = self._statistic(self.wrapped, batch)
                total = objective.summed_losses(stat, PADDLE_OPS)
                objective.loss(total, objective.weight(host, totals, "sum")).backward()
            loss_sum += float(total)
            extras = summed(extras, objective.metrics(stat.apply(on_host)))
        grad_norm = clip_gradients(self.trained, self.max_grad_norm)
        self.optimizer.step()
        self.optimizer.clear_grad()
        self.scheduler.step()
        return StepOutput(loss_sum, grad_norm, extras)

    def _statistic(self, model: Any, batch: dict[str, Any]) -> RowLogps | RowScores:
        """What the preference objective asks for: rows' log-probabilities or (rm, where
        ``model`` is the RewardModel) scores."""
        if self.objective.needs == "row_scores":
            return RowScores(model(**batch))
        return self._pair_logps(model, batch)

    def _pair_logps(self, model: Any, batch: dict[str, Any]) -> RowLogps:
        """The policy's summed log-probabilities per row and the reference's (precomputed in
        the batch, LoRA switched off, a frozen copy, or none)."""
        policy = token_logprobs(model, batch).sum(-1)
        reference = batch.get("reference_logps")
        if reference is None:
            if self.reference == "none":
                reference = paddle.zeros_like(policy)
            else:
                reference = self._row_logps_on_device(batch, reference=True)
        return RowLogps(policy, reference, batch["row_units"], batch["row_aux"])

    @paddle.no_grad()
    def _row_logps_on_device(self, batch: dict[str, Any], reference: bool) -> paddle.Tensor:
        if not reference:
            return token_logprobs(self.model, batch).sum(-1)
        if self.reference == "adapter_off":
            self.model.disable_lora()
            try:
                return token_logprobs(self.model, batch).sum(-1)
            finally:
                self.model.enable_lora()
        return token_logprobs(self.reference, batch).sum(-1)

    def learning_rate(self, step: int) -> float:
        return float(self.scheduler.last_lr)

    # ---------------------------------------------------------------- evaluation

    @paddle.no_grad()
    def eval_loss(self, batches: Sequence[tuple[TokenBatch, bool]]) -> tuple[float, int]:
        self.trained.eval()
        total, count = 0.0, 0
        for host, counted in batches:
            if counted:
                batch = device_batch(host)
                if self.objective.needs != "nll":
                    stat = self._statistic(self.trained, batch)
                    loss = self.objective.summed_losses(stat, PADDLE_OPS)
                else:
                    loss = nll_sum(self.model, batch)
                total, count = total + float(loss), count + host.units
        self.trained.train()
        return total, count

    def token_logprobs(self, batch: TokenBatch) -> paddle.Tensor:
        return token_logprobs(self.model, device_batch(batch))

    def row_logps(self, batch: TokenBatch, reference: bool) -> np.ndarray:
        self.model.eval()
        found = self._row_logps_on_device(device_batch(batch), reference).numpy()
        self.model.train()
        return found

    def greedy(
        self, prompts: Sequence[Sequence[int]], max_new_tokens: int, stop: frozenset[int]
    ) -> list[list[int]]:
        @paddle.no_grad()
        def next_token(ids: list[int]) -> int:
            logits = self.model(paddle.to_tensor([ids], dtype="int64"), return_dict=True).logits
            return int(paddle.argmax(logits[0, -1]))

        self.model.eval()
        answers = greedy_by_next_token(next_token, prompts, max_new_tokens, stop)
        self.model.train()
        return answers

    # ---------------------------------------------------------------- state

    def save_state(self, folder: Path) -> None:
        """Trainable weights, optimizer, schedule and paddle's RNG state (rank 0: data
        parallel keeps every rank's copy equal)."""
        if not self.rank.main:
            return
        weights = {n: p for n, p in self.trained.named_parameters() if not p.stop_gradient}
        paddle.save(weights, str(folder / "model_state.pdparams"))
        paddle.save(self.optimizer.state_dict(), str(folder / "optimizer.pdopt"))
        paddle.save(self.scheduler.state_dict(), str(folder / "scheduler.pdparams"))
        paddle.save(paddle.get_rng_state(), str(folder / "rng_state.pdparams"))

    def load_state(self, folder: Path) -> None:
        named = dict(self.trained.named_parameters())
        for name, value in paddle.load(str(folder / "model_state.pdparams")).items():
            named[name].set_value(value)
        self.optimizer.set_state_dict(paddle.load(str(folder / "optimizer.pdopt")))
        self.scheduler.set_state_dict(paddle.load(str(folder / "scheduler.pdparams")))
        state = paddle.load(str(folder / "rng_state.pdparams"), return_numpy=False)
        paddle.set_rng_state(state)

    # ---------------------------------------------------------------- outputs

    def save_model(self, folder: Path) -> None:
        """PaddleFormers saves a full model in Hugging Face format (``save_to_hf``)."""
        self.save_native(folder)

    def save_native(self, folder: Path) -> None:
        """PaddleFormers' own save: the full model, or its LoRA adapter."""
        if on_gpu():
            self.model.save_pretrained(str(folder))  # flex_checkpoint: a collective
        elif self.config.method.finetuning == "lora" or self.rank.main:
            # flex_checkpoint's collectives run through CUDA: on CPU the plain writer (data
            # parallel keeps every rank's copy equal). Its LoRA save meets the other ranks at
            # a barrier and writes on rank 0 only, so every rank calls that one.
            self.model.save_pretrained(str(folder), save_checkpoint_format="safetensors")
        self.rank.barrier()
        if self.rank.main:
            for marker in folder.glob("saved_signal_*"):  # PaddleFormers' async-save markers
                marker.unlink()

    def save_merged(self, folder: Path) -> bool:
        return False  # ftx merges the converted PEFT adapter

    def score_head(self) -> np.ndarray | None:
        return None if self.scored is None else self.scored.head()

    def summary_writer(self, folder: Path) -> Any:
        raise FtxError(
            "the paddle worker writes no TensorBoard logs",
            where="output.report_to",
            fix="set output.report_to: none (metrics.jsonl has every logged value)",
        )


PADDLE_OPS = TensorOps(
    paddle.nn.functional.log_sigmoid,
    paddle.nn.functional.relu,
    paddle.exp,
    paddle.log1p,
    paddle.sum,
)


def on_host(t: Any) -> Any:
    """A tensor as a float32 host array."""
    return t.detach().astype("float32").numpy()


def reference_of(model: Any, config: WorkerConfig) -> Any:
    """The reference a preference run keeps (ftx.core.worker.objectives.reference_kind):
    "none", "adapter_off", or the frozen copy itself."""
    kind = reference_kind(config.method)
    if kind != "frozen_copy":
        return kind
    frozen = copy.deepcopy(model)
    frozen.eval()
    for param in frozen.parameters():
        param.stop_gradient = True
    return frozen


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def start_processes() -> Rank:
    """Join paddle.distributed.launch's job (gloo on CPU, NCCL on GPUs) when there is one."""
    if on_gpu():
        paddle.set_device(f"gpu:{int(os.environ.get('PADDLE_LOCAL_RANK', 0))}")
    else:
        paddle.set_device("cpu")
    if int(os.environ.get("PADDLE_TRAINERS_NUM", 1)) > 1:
        paddle.distributed.init_parallel_env()
    return job_rank()


def job_rank() -> Rank:
    """This process in the launcher's job, once the job is joined (a single Rank alone)."""
    if int(os.environ.get("PADDLE_TRAINERS_NUM", 1)) == 1:
        return Rank()
    import paddle.distributed as dist

    local = int(os.environ.get("PADDLE_RANK_IN_NODE", os.environ.get("PADDLE_LOCAL_RANK", 0)))
    return Rank(dist.get_rank(), dist.get_world_size(), local, dist.barrier)


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
    """AdamW with no weight decay on biases and norm weights (ftx.core.worker.rules.decays).
    Clipping is done in :func:`clip_gradients` (torch's rule), so the norm can be logged."""
    no_decay = {
        p.name
        for n, p in model.named_parameters()
        if not p.stop_gradient and not decays(n, p.shape)
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


@paddle.no_grad()
def clip_gradients(model: Any, max_norm: float) -> float:
    """The global gradient norm before clipping; gradients scaled by
    :func:`ftx.core.worker.rules.clip_coefficient` when it is below 1."""
    grads = [p.grad for p in trainable(model) if p.grad is not None]
    norm = global_norm(grads)
    if max_norm > 0:
        coef = clip_coefficient(norm, max_norm)
        if coef < 1:
            for g in grads:
                g.scale_(coef)
    return norm


def exit_now(code: int) -> None:
    """Exit without interpreter teardown in a multi-process job: gloo's connections abort
    the process (SIGABRT) when a peer that has already finished closes its end first.
    Every output is written and synced by the time this runs."""
    sys.stdout.flush()
    sys.stderr.flush()
    if int(os.environ.get("PADDLE_TRAINERS_NUM", 1)) > 1:
        os._exit(code)
    sys.exit(code)


def make_framework(config: WorkerConfig, layout: RunLayout) -> Paddle:
    """This backend's framework for the run ``config`` describes."""
    return Paddle()


def main(config: WorkerConfig, layout: RunLayout) -> int:
    """ftx's loop, or (train.trainer: native) PaddleFormers' Trainer on the plan."""
    if config.train.trainer == "native":
        from ftx.backends.paddle.native import run_native

        return run_native(config, layout, make_framework(config, layout))
    return train(make_framework(config, layout), config, layout)


if __name__ == "__main__":
    exit_now(run_worker(main))

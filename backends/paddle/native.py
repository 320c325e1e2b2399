"""``train.trainer: native`` on the paddle backend: PaddleFormers' own Trainer.

The worker process ftx's launcher started (plain python, or paddle.distributed.launch)
runs PaddleFormers' CLI entry (``paddleformers.cli.train.tuner.run_tuner``) on
OUT/plan/paddleformers.yaml, as `paddleformers-cli train` would: its argument parser, its
model loading, LoRA, TrainingArguments, optimizer, schedule, parallel layout, checkpoints
and saves. Two things differ, both to keep the run ftx's:

- the trainer is given ftx's prepared token stream (OUT/data, tokenised, masked and packed
  once for every backend) through its ``train_dataset``/``eval_dataset``/``data_collator``,
  where `paddleformers-cli train` tokenises the plan's messages rows itself;
- an in-process :class:`FtxCallback` writes the run layout every backend shares
  (metrics.jsonl through the contract's writer, progress events, checkpoints on SIGTERM,
  held-out exact match, OUT/final through :mod:`ftx.core.worker.exports`).

PaddleFormers' CLI takes no trainer class or callbacks, so for the call its workflow's
trainer class is a subclass that adds them (:func:`ftx_trainer`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import paddle
import yaml

from ftx.backends.paddle.capabilities import CAPABILITIES
from ftx.backends.paddle.modeling import (
    device_batch,
    global_norm,
    keep_pad_embedding,
    on_gpu,
    trainable,
)
from ftx.backends.paddle.plan_files import NATIVE_OUTPUT, PADDLEFORMERS_YAML
from ftx.core.contract import (
    PREFERENCE_KEYS,
    MetricsLog,
    MetricsRow,
    ProgressEvent,
    RunLayout,
    TrainTiming,
    WorkerConfig,
    write_record,
)
from ftx.core.prepared import IGNORE_INDEX, load_split, read_manifest
from ftx.core.worker.exports import write_final
from ftx.core.worker.framework import Rank
from ftx.core.worker.heldout import HeldOut
from ftx.core.worker.objectives import TokenBatch, objective_for
from ftx.core.worker.tracking import StopSignal

# What a CPU run adds to the plan, as a native user adds it on the command line.
CPU_FLAGS = {"device": "cpu", "_attn_implementation": "eager"}
COUNTS = "ftx_counts"  # the collator's (tokens, units) of a micro-batch, popped before the model
NATIVE = CAPABILITIES.native
assert NATIVE is not None


class Stopped(Exception):
    """Raised from the trainer's checkpoint callback after a stop signal."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by signal {signum}")
        self.signum = signum


class PreparedRows(paddle.io.Dataset):
    """A prepared split as the trainer's dataset: item i is (the split's name, row i),
    collated by :meth:`NativeRun.collate`."""

    def __init__(self, name: str, rows: int):
        super().__init__()
        self.name, self.rows = name, rows

    def __len__(self) -> int:
        return self.rows

    def __getitem__(self, index: int) -> tuple[str, int]:
        return self.name, index


def dpo_arrays(
    pairs: Sequence[tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]],
    prompts: Sequence[int],
) -> dict[str, np.ndarray]:
    """Pairs (chosen and rejected rows of one prompt of ``prompts[i]`` tokens) as
    PaddleFormers' DPO inputs: one row per pair holding the prompt, the chosen answer,
    then the prompt's last token again and the rejected answer, with the rejected part's
    positions restarting after the prompt and FlashMask row indices that hide the chosen
    part (and the first copy of the prompt's last token) from the rejected one, so each
    answer sees exactly what it sees in a row of its own. ``response_labels`` are the
    next-token labels (PaddleFormers' DPO collator shifts them); ``response_indexs`` are
    [row, chosen start, rejected start, end] in the row (the model's
    ``use_filtered_label_loss`` off)."""
    built = []
    for (chosen, rejected), p in zip(pairs, prompts, strict=True):
        (c_ids, c_labels), (r_ids, r_labels) = chosen, rejected
        if p < 1 or not np.array_equal(c_ids[:p], r_ids[:p]):
            raise ValueError("a DPO pair's chosen and rejected rows do not share its prompt")
        c, r = len(c_ids) - p, len(r_ids) - p
        ids = np.concatenate([c_ids[: p + c - 1], c_ids[p - 1 : p], r_ids[p : p + r - 1]])
        positions = np.concatenate([np.arange(p + c - 1), [p - 1], np.arange(p, p + r - 1)])
        labels = np.concatenate([c_labels[1:], r_labels[p:]])
        built.append((ids, positions, labels, p, c))
    width = max(len(ids) for ids, *_ in built)
    arrays = {
        "input_ids": np.zeros((len(built), width), dtype=np.int64),
        "position_ids": np.zeros((len(built), width), dtype=np.int64),
        "response_labels": np.full((len(built), width), IGNORE_INDEX, dtype=np.int64),
        "response_indexs": np.zeros((len(built), 4), dtype=np.int64),
    }
    # for each column, the first row that may no longer see it (width: every later row)
    starts = np.full((len(built), 1, width, 1), width, dtype=np.int32)
    for i, (ids, positions, labels, p, c) in enumerate(built):
        n = len(ids)
        arrays["input_ids"][i, :n], arrays["position_ids"][i, :n] = ids, positions
        arrays["response_labels"][i, :n] = labels
        starts[i, 0, p - 1 : p + c - 1, 0] = p + c - 1
        arrays["response_indexs"][i] = [i, p - 1, p - 1 + c, n]
    arrays["attn_mask_startend_row_indices"] = starts
    return arrays


def paddleformers_inputs(batch: TokenBatch) -> dict[str, Any]:
    """A host micro-batch as PaddleFormers' SFT inputs: its ``labels`` are the next-token
    targets at each position (PaddleFormers' collator shifts them; the model does not)."""
    inputs = device_batch(batch)
    targets = inputs.pop("targets")
    ignore = paddle.full([targets.shape[0], 1], -100, dtype=targets.dtype)
    inputs["labels"] = paddle.concat([targets, ignore], axis=1)
    return inputs


class NativeRun:
    """One native run: the prepared data, the run's outputs and where it stands."""

    def __init__(self, config: WorkerConfig, layout: RunLayout, framework: Any):
        self.config, self.layout, self.framework = config, layout, framework
        prepared = layout.at(config.data.prepared)
        self.prepared = prepared
        self.pad_id = int(read_manifest(prepared)["pad_token_id"])
        self.split, self.val = load_split(prepared, "train"), load_split(prepared, "val")
        self.objective = objective_for(config.method)
        self.rank = Rank()
        self.metrics = MetricsLog(layout)
        self.stop: StopSignal | None = None
        self.trainer: Any = None
        self.tokens = 0  # real tokens trained on, this rank, since the run began
        self.window_tokens, self.window_start = 0, time.time()
        self.step_tokens, self.step_start = 0, time.time()
        self.grad_norm = 0.0
        self.pending: ProgressEvent | None = None
        self.started, self.start_step, self.start_tokens = time.time(), 0, 0
        self.ended: float | None = None
        self.evaluated_at: int | None = None  # the step of the last evaluation

    # ---------------------------------------------------------------- data

    def collate(self, items: list[tuple[str, int]]) -> dict[str, Any]:
        """The trainer's collator, for its train and eval loaders alike: the stage's
        inputs as PaddleFormers' workflow for it takes them."""
        split = self.split if items[0][0] == "train" else self.val
        indices = [i for _, i in items]
        batch = self.objective.collate(split, indices, self.pad_id)  # ftx's counts
        if self.config.method.stage == "dpo":
            prompts = split.column("prompt_lengths")
            pairs = dpo_arrays([split[i] for i in indices], [int(prompts[i]) for i in indices])
            inputs = {k: paddle.to_tensor(v) for k, v in pairs.items()}
        else:
            inputs = paddleformers_inputs(batch)
        inputs[COUNTS] = batch.tokens
        return inputs

    def count(self, inputs: dict[str, Any]) -> None:
        self.step_tokens += inputs.pop(COUNTS)

    # ---------------------------------------------------------------- the trainer's events

    def begin(self, trainer: Any) -> None:
        """The model is built (and resumed): join the job, score the held-out prompts."""
        self.trainer = trainer
        from ftx.backends.paddle.worker import job_rank  # PaddleFormers joined the job

        self.rank = job_rank()
        self.framework.rank, self.framework.model = self.rank, trainer.model
        self.stop = StopSignal()  # after PaddleFormers' own handlers
        step = int(trainer.state.global_step)
        self.start_step = step
        resumed = step > 0
        if resumed and self.rank.main:
            self.metrics.keep_until(step)
        if resumed:
            self.tokens = self.tokens_at(step)
        self.start_tokens = self.tokens
        self.held_out = HeldOut(
            self.config, self.layout, self.prepared, self.rank, self.framework, resumed
        )
        self.held_out.score("before")
        total = int(trainer.state.max_steps)
        params = sum(int(np.prod(p.shape)) for p in trainer.model.parameters())
        trained = sum(int(np.prod(p.shape)) for p in trainable(trainer.model))
        self.rank.say(
            f"{NATIVE.name} trains {trained:,} of {params:,} parameters for {total} steps"
            f" on {self.rank.world} process{'es' if self.rank.world > 1 else ''}"
        )
        self.rank.emit(ProgressEvent("start", step, total))
        self.started = self.window_start = self.step_start = time.time()

    def optimizer_begin(self) -> None:
        """The step's gradients are accumulated and not clipped yet: their global norm."""
        grads = [gradient(p) for p in trainable(self.trainer.model)]
        self.grad_norm = global_norm([g for g in grads if g is not None])

    def step_end(self, control: Any) -> None:
        state = self.trainer.state
        tokens = self.all_reduce(self.step_tokens)
        self.tokens += tokens
        self.window_tokens += tokens
        now = time.time()
        per_s = round(tokens / max(now - self.step_start, 1e-9), 1)
        self.flush()
        # sent once the trainer has logged this step's loss (or at the next step)
        self.pending = ProgressEvent(
            "step", int(state.global_step), int(state.max_steps), None, per_s
        )
        self.step_tokens, self.step_start = 0, now
        if self.stop is not None and self.stop.requested:
            control.should_save = True
            control.should_training_stop = True

    def flush(self, loss: float | None = None) -> None:
        """Send the last step's progress event (with its logged loss)."""
        if self.pending is not None:
            logged = loss is not None
            self.rank.emit(dataclasses.replace(self.pending, loss=loss, logged=logged))
            self.pending = None

    def logged(self, logs: dict[str, Any]) -> None:
        state = self.trainer.state
        if "loss" not in logs:
            return
        self.flush(round(float(logs["loss"]), 6))
        if not self.rank.main:
            return
        seconds = max(time.time() - self.window_start, 1e-9)
        self.metrics.write(
            MetricsRow(
                step=int(state.global_step),
                backend=self.config.backend,
                epoch=self.epoch(int(state.global_step)),
                loss=round(float(logs["loss"]), 6),
                lr=float(logs["learning_rate"]),
                grad_norm=round(self.grad_norm, 6),
                tokens=self.tokens,
                tokens_per_s=round(self.window_tokens / seconds, 1),
                **preference_metrics(logs),
            )
        )
        self.window_tokens, self.window_start = 0, time.time()

    def evaluated(self, metrics: dict[str, Any]) -> None:
        """An evaluation's loss, once per step (PaddleFormers' workflow evaluates again
        after training when its last step evaluated already)."""
        step = int(self.trainer.state.global_step)
        if "eval_loss" not in metrics or step == self.evaluated_at:
            return
        self.evaluated_at = step
        if self.rank.main:
            value = round(float(metrics["eval_loss"]), 6)
            self.metrics.write(MetricsRow(step=step, backend=self.config.backend, eval_loss=value))

    def saved(self) -> None:
        state = self.trainer.state
        step = int(state.global_step)
        self.flush()
        if self.rank.main:
            self.remember_tokens(step)
        self.rank.emit(ProgressEvent("checkpoint", step, int(state.max_steps)))
        if self.stop is not None and self.stop.signal is not None:
            self.rank.say(f"stopped by signal {self.stop.signal} at step {step}; checkpoint saved")
            raise Stopped(self.stop.signal)

    # ---------------------------------------------------------------- bookkeeping

    def epoch(self, step: int) -> float:
        """Epochs done after ``step`` steps, as ftx's loop counts them (PaddleFormers'
        DPOTrainer logs its state's epoch times num_train_epochs)."""
        args = self.trainer.args
        rows = args.per_device_train_batch_size * args.gradient_accumulation_steps
        return round(step * rows * self.rank.world / max(len(self.split), 1), 4)

    def all_reduce(self, value: int) -> int:
        if self.rank.world == 1:
            return value
        tensor = paddle.to_tensor([float(value)], dtype="float64")
        paddle.distributed.all_reduce(tensor)
        return int(tensor.item())

    def tokens_file(self, step: int) -> Path:
        return self.layout.root / NATIVE_OUTPUT / f"checkpoint-{step}" / "ftx_tokens.json"

    def remember_tokens(self, step: int) -> None:
        folder = self.tokens_file(step).parent
        if folder.is_dir():
            self.tokens_file(step).write_text(f"{self.tokens}\n")

    def tokens_at(self, step: int) -> int:
        path = self.tokens_file(step)
        return int(path.read_text()) if path.exists() else 0

    def finish(self) -> None:
        """After the trainer's own final save: timing, the eval loss at the last step
        (as ftx's loop ends), held-out, OUT/final, done."""
        state = self.trainer.state
        step = int(state.global_step)
        self.flush()
        if self.trainer.eval_dataset is not None and self.evaluated_at != step:
            self.trainer.evaluate()
        if self.rank.main:
            seconds = round((self.ended or time.time()) - self.started, 3)
            timing = TrainTiming(seconds, step - self.start_step, self.tokens - self.start_tokens)
            write_record(self.layout.timing, timing)
        self.metrics.close()
        self.held_out.score("after")
        write_final(self.layout, self.rank, self.framework, self.config)
        self.rank.emit(ProgressEvent("done", step, int(state.max_steps)))


def preference_metrics(logs: dict[str, Any]) -> dict[str, float]:
    """The preference values PaddleFormers' DPOTrainer logs (TRL's names, as
    metrics.jsonl writes them) as MetricsRow fields."""
    return {
        field: round(float(logs[key]), 6) for field, key in PREFERENCE_KEYS.items() if key in logs
    }


def gradient(param: Any) -> Any:
    """A parameter's accumulated gradient: PaddleFormers' trainer keeps it in
    ``main_grad`` (fp32 master gradients) when it has one."""
    main = getattr(param, "main_grad", None)
    return main if main is not None else param.grad


def ftx_callback(run: NativeRun) -> Any:
    """A PaddleFormers TrainerCallback that reports the trainer's events to ``run``."""
    from paddleformers.trainer import TrainerCallback

    class FtxCallback(TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            run.begin(run.trainer)

        def on_optimizer_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            run.optimizer_begin()

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> Any:
            run.step_end(control)
            return control

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any):
            run.logged(logs or {})

        def on_evaluate(self, args: Any, state: Any, control: Any, metrics: Any = None, **kw):
            run.evaluated(metrics or {})

        def on_save(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            run.saved()

        def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            run.ended = time.time()  # before PaddleFormers' own final save

    return FtxCallback()


def fleet_ready() -> bool:
    """Whether paddle's fleet was initialised (PaddleFormers does for several workers)."""
    from paddle.distributed import fleet

    return hasattr(fleet.fleet, "_user_defined_strategy")


@contextlib.contextmanager
def undistributed() -> Iterator[None]:
    """``fleet.distributed_model`` returns the model it is given, for the call."""
    from paddle.distributed import fleet

    wrap = fleet.distributed_model
    fleet.distributed_model = lambda model, *a, **k: model
    try:
        yield
    finally:
        fleet.distributed_model = wrap


def ftx_trainer(base: type, run: NativeRun) -> type:
    """PaddleFormers' trainer class ``base`` with ftx's data and callback."""

    class FtxTrainer(base):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any):
            kwargs["train_dataset"] = PreparedRows("train", len(run.split))
            # also without do_eval: ftx's run evaluates once at the end (NativeRun.finish)
            has_eval = run.val is not None and len(run.val) > 0
            kwargs["eval_dataset"] = PreparedRows("val", len(run.val)) if has_eval else None
            kwargs["data_collator"] = run.collate
            if run.config.method.stage == "dpo":  # dpo_arrays gives positions in each row
                kwargs["model"].config.use_filtered_label_loss = False
            super().__init__(*args, **kwargs)
            run.trainer = self
            if not on_gpu():
                self.model.config.fuse_rms_norm = False  # the fused kernel is GPU-only
            for model in (self.model, kwargs.get("ref_model")):
                if model is not None:  # the checkpoint's pad row, as ftx's loader
                    keep_pad_embedding(model)
            self.add_callback(ftx_callback(run))

        def _wrap_ref_model(self, model: Any) -> Any:
            """DPOTrainer hands its reference (and, to evaluate, the policy) to
            ``fleet.distributed_model``, which fails where no fleet was set up: one
            process without PaddleFleet. There is nothing to distribute in that case, so
            the model is kept as it is once PaddleFormers' own wrapping has cast it."""
            if fleet_ready():
                return super()._wrap_ref_model(model)
            with undistributed():
                return super()._wrap_ref_model(model)

        def train(self, resume_from_checkpoint: Any = None, **kw: Any) -> Any:
            """PaddleFormers' DPO workflow passes only the output folder's last checkpoint;
            a checkpoint named by ``resume_from_checkpoint`` is honoured as its SFT
            workflow honours it."""
            named = self.args.resume_from_checkpoint
            return super().train(resume_from_checkpoint=named or resume_from_checkpoint, **kw)

        def training_step(self, model: Any, inputs: dict[str, Any], *args: Any, **kw: Any):
            run.count(inputs)
            return super().training_step(model, inputs, *args, **kw)

        def prediction_step(self, model: Any, inputs: dict[str, Any], *args: Any, **kw: Any):
            inputs.pop(COUNTS, None)
            return super().prediction_step(model, inputs, *args, **kw)

    return FtxTrainer


# The workflow PaddleFormers' tuner runs for a stage, and its trainer class's name there.
WORKFLOWS = {
    "sft": ("paddleformers.cli.train.sft.workflow", "SFTTrainer"),
    "pt": ("paddleformers.cli.train.sft.workflow", "SFTTrainer"),
    "dpo": ("paddleformers.cli.train.dpo.workflow", "DPOTrainer"),
}


@contextlib.contextmanager
def hooked(run: NativeRun) -> Iterator[None]:
    """The stage's PaddleFormers workflow builds :func:`ftx_trainer`'s class for the
    call. On a CPU ``paddle.device.synchronize`` (which its loop calls between
    accumulated micro-batches) is a no-op: there is no device queue to wait for."""
    import importlib

    from paddleformers.trainer import trainer as trainer_module

    module, name = WORKFLOWS[run.config.method.stage]
    workflow = importlib.import_module(module)
    base, sync = getattr(workflow, name), paddle.device.synchronize
    setattr(workflow, name, ftx_trainer(base, run))
    if not on_gpu():
        paddle.device.synchronize = lambda *a, **k: None
    # PaddleFormers 1.2's evaluation loop tests a LoRA model's inner model against
    # PaddleFleet's GPTModel, a name it imports only with PaddleFleet (NameError without):
    # without PaddleFleet no model is one.
    fleetless = not hasattr(trainer_module, "GPTModel")
    if fleetless:
        trainer_module.GPTModel = type("NoPaddleFleetModel", (), {})
    try:
        yield
    finally:
        setattr(workflow, name, base)
        paddle.device.synchronize = sync
        if fleetless:
            del trainer_module.GPTModel


def native_arguments(config: WorkerConfig, layout: RunLayout) -> dict[str, Any]:
    """The plan's paddleformers.yaml as the CLI reads it, with a CPU's device flags and
    the checkpoint ``train.resume`` names."""
    args = yaml.safe_load(layout.plan.joinpath(PADDLEFORMERS_YAML).read_text())
    if not on_gpu():
        args.update(CPU_FLAGS)
    resume = config.train.resume
    output = layout.root / NATIVE_OUTPUT
    if resume and resume != "auto":
        args["resume_from_checkpoint"] = str(Path(resume).resolve())
    elif not resume:
        args["overwrite_output_dir"] = True  # a fresh run never picks up old checkpoints
    args["output_dir"] = str(output)
    args["logging_dir"] = str(output / "visualdl")
    return args


def run_native(config: WorkerConfig, layout: RunLayout, framework: Any) -> int:
    """Train with PaddleFormers' Trainer; the exit code (128 + the signal after a stop)."""
    from paddleformers.cli.train.tuner import run_tuner

    os.chdir(layout.root)  # the plan's paths are relative to OUT
    run = NativeRun(config, layout, framework)
    framework.config, framework.layout = config, layout
    try:
        with hooked(run):
            run_tuner(native_arguments(config, layout))
    except Stopped as stop:
        run.metrics.close()
        return 128 + stop.signum
    run.finish()
    return 0

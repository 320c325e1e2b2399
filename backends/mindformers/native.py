"""``train.trainer: native`` on the mindformers backend: MindFormers' own Trainer.

The worker runs ``mindformers.Trainer(...).train()`` on OUT/plan/finetune.yaml: the YAML's
run wrapper (MFTrainOneStepCell: loss scale, gradient clipping, global norm), its AdamW
and warm-up schedule, MindSpore's ``Model.train`` loop and the YAML's loss monitor. What
ftx hands it, to keep the run ftx's:

- the network, built from the YAML's model section with the Hugging Face weights loaded
  by ftx (and LoRA's A matrices from ftx's seeded draw): the start ftx's loop has, and no
  reliance on MindFormers finding a checkpoint (``load_checkpoint`` is cleared);
- the data: ftx's prepared rows (OUT/data) in ftx's order
  (:class:`ftx.core.worker.schedule.Schedule`), the whole run as one epoch of optimizer
  steps, so steps are bounded exactly (MindFormers 1.9 ignores ``stop_step``) and a
  resumed run starts at its step;
- an in-process :class:`FtxCallback` that feeds ftx's :class:`RunTracker` (metrics rows
  through the contract's writer, progress events, evaluation, checkpoints of the
  network's and the optimizer's state, SIGTERM), then held-out exact match and OUT/final.

On a CPU: no data sink; the run wrapper's overflow check through ``IsFinite``
(:class:`FtxCpuTrainOneStepCell`): MindSpore's check takes the NPU-only
``NPUGetFloatStatusV2`` branch on every target but GPU and Ascend 910B; graph mode for
one worker, and for msrun's workers MindSpore's data-parallel mode in PyNative (its
semi-automatic parallel compiles for NPUs only, and the CPU graph compiler fails on the
data-parallel graph). The micro-batches of one optimizer step run as one batch there
(MindFormers accumulates gradients only under its parallel modes): its loss, the mean
over the step's learned tokens, is ftx's.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import mindspore as ms
import numpy as np
from mindformers import MindFormerConfig
from mindformers.tools.register import MindFormerModuleType, MindFormerRegister
from mindformers.wrapper import MFTrainOneStepCell
from mindspore.nn.wrap.loss_scale import _ascend_grad_overflow
from mindspore.train import Callback

from ftx.backends.mindformers.capabilities import CAPABILITIES
from ftx.backends.mindformers.modeling import fixed_rows, on_ascend
from ftx.backends.mindformers.plan_files import NATIVE_OUTPUT
from ftx.core.contract import RunLayout, WorkerConfig
from ftx.core.errors import FtxError
from ftx.core.prepared import PreparedSplit, load_split, read_manifest
from ftx.core.worker.checkpoints import Checkpoints, seed_host
from ftx.core.worker.exports import write_final
from ftx.core.worker.heldout import HeldOut
from ftx.core.worker.loop import load_checkpoint, run_tracker
from ftx.core.worker.objectives import objective_for
from ftx.core.worker.schedule import Schedule
from ftx.core.worker.tracking import RunTracker, StepResult

CPU_WRAPPER = "FtxCpuTrainOneStepCell"
NATIVE = CAPABILITIES.native
assert NATIVE is not None


@MindFormerRegister.register(MindFormerModuleType.WRAPPER)
class FtxCpuTrainOneStepCell(MFTrainOneStepCell):
    """MindFormers' run wrapper with an overflow check a CPU has kernels for: IsFinite
    over the gradients (MindSpore's infnan check), summed over the workers."""

    def get_overflow_status(self, status: Any, compute_output: Any) -> Any:
        return self._get_distributed_overflow_status_on_infnan_mode(
            _ascend_grad_overflow, compute_output
        )


class RunRows:
    """The rows this rank trains on from optimizer step ``start`` to the end, in ftx's
    order, as MindFormers' legacy models take them (seq_length + 1 tokens and labels)."""

    def __init__(self, split: PreparedSplit, schedule: Schedule, start: int, rank: int, run: Any):
        self.split, self.run = split, run
        self.indices = [
            index
            for step in range(start, schedule.total_steps)
            for micro in schedule.step(step, rank)
            for index in micro
        ]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        batch = self.run.objective.collate(self.split, [self.indices[i]], self.run.pad_id)
        rows = fixed_rows(batch, self.run.pad_id, self.run.width)
        return rows["input_ids"][0], rows["labels"][0]


class NativeRun:
    """One run of MindFormers' Trainer under ftx: the data, the tracker, the outputs."""

    def __init__(self, config: WorkerConfig, layout: RunLayout, framework: Any):
        self.config, self.layout, self.framework = config, layout, framework
        self.prepared = layout.at(config.data.prepared)
        self.split = load_split(self.prepared, "train")
        self.val = load_split(self.prepared, "val")
        if self.split is None:
            raise FtxError(f"{self.prepared}: the prepared data has no train split")
        self.objective = objective_for(config.method)
        self.pad_id = int(read_manifest(self.prepared)["pad_token_id"])
        self.width = config.data.max_seq_len + 1
        self.rank = framework.rank
        self.schedule = Schedule.plan(len(self.split), config.train, self.rank.world)
        resume = Checkpoints(layout, config.train.save_total_limit).resume_point(
            config.train.resume
        )
        self.start = 0 if resume is None else Checkpoints.state_of(resume).step
        self.tracker: RunTracker | None = None
        self.held_out: HeldOut | None = None
        self.net: Any = None

    def dataset(self) -> Any:
        """The run's remaining optimizer steps, one batch each."""
        rows = RunRows(self.split, self.schedule, self.start, self.rank.rank, self)
        data = ms.dataset.GeneratorDataset(
            rows, column_names=["input_ids", "labels"], shuffle=False, num_parallel_workers=1
        )
        per_step = self.schedule.grad_accum * self.schedule.micro_batch_size
        return data.batch(per_step, drop_remainder=True)

    # ---------------------------------------------------------------- the trainer's events

    def begin(self, train_network: Any) -> None:
        """MindFormers built the run wrapper: take its network and optimizer, resume, score
        the held-out prompts before training."""
        f = self.framework
        # the network ftx built (the run wrapper holds it inside MindFormers' tool cells)
        f.adopt(self.net, train_network.optimizer)
        size = f.size()
        # its stop signal after MindFormers' own handlers
        self.tracker = run_tracker(
            f,
            self.config,
            self.layout,
            self.rank,
            self.objective,
            self.pad_id,
            self.schedule,
            (self.split, self.val),
            size,
        )
        resumed = self.tracker.resume(lambda folder: load_checkpoint(f, folder))
        assert self.tracker.state.step == self.start
        self.held_out = HeldOut(self.config, self.layout, self.prepared, self.rank, f, resumed)
        self.held_out.score("before")
        self.tracker.start(size.params, size.trainable, NATIVE.name)

    def step_end(self, outputs: Any) -> bool:
        """One optimizer step of MindFormers': its loss and global norm into ftx's tracker.
        True when the run should stop (a signal)."""
        assert self.tracker is not None
        step = self.tracker.state.step
        batches = [
            self.objective.collate(self.split, b, self.pad_id)
            for b in self.schedule.step(step, self.rank.rank)
        ]
        units = sum(b.units for b in batches)
        tokens = sum(b.tokens for b in batches)
        loss, norm = float(outputs[0].asnumpy()), outputs[4]
        # MindFormers' loss is this rank's mean over its learned tokens
        loss_sum, units, tokens = self.framework.all_reduce_sum([loss * units, units, tokens])
        grad_norm = 0.0 if norm is None else float(norm.asnumpy())
        self.tracker.step_done(StepResult(loss_sum, int(units), int(tokens), grad_norm))
        return self.tracker.stop.requested

    def finish(self) -> int:
        """After MindFormers' loop: the checkpoint and exit code after a signal, else
        held-out scoring after training and OUT/final."""
        assert self.tracker is not None and self.held_out is not None
        stopped = self.tracker.finish()
        if stopped is not None:
            return stopped
        self.held_out.score("after")
        write_final(self.layout, self.rank, self.framework, self.config)
        self.tracker.done()
        return 0


class FtxCallback(Callback):
    """Reports MindSpore's training events to a :class:`NativeRun`."""

    def __init__(self, run: NativeRun):
        super().__init__()
        self.run = run

    def on_train_begin(self, run_context: Any) -> None:
        self.run.begin(run_context.original_args().train_network)

    def on_train_step_end(self, run_context: Any) -> None:
        if self.run.step_end(run_context.original_args().net_outputs):
            run_context.request_stop()


def native_config(yaml_config: Any, run: NativeRun) -> Any:
    """The plan's finetune.yaml as this run gives it to MindFormers' Trainer."""
    yaml_config.load_checkpoint = ""  # the network comes loaded (see the module's note)
    yaml_config.auto_trans_ckpt = False  # nothing to reshard: every worker loaded it whole
    yaml_config.resume_training = False  # ftx's checkpoint is loaded into it
    yaml_config.do_eval = False  # ftx's tracker evaluates, on the prepared val rows
    yaml_config.output_dir = str(run.layout.root / NATIVE_OUTPUT)
    runner = yaml_config.runner_config
    runner.epochs, runner.sink_mode, runner.stop_step = 1, False, 0
    runner.gradient_accumulation_steps = 1  # one step's micro-batches are one batch
    runner.batch_size = run.schedule.grad_accum * run.schedule.micro_batch_size
    yaml_config.model.model_config.batch_size = runner.batch_size
    yaml_config.lr_schedule = MindFormerConfig(**run.framework.schedule_settings(run.schedule))
    # ftx's checkpoints hold the network's and the optimizer's state (MindSpore .ckpt);
    # ftx's rows bound the steps exactly (a resumed run's TrainCallBack would count anew)
    dropped = ("CheckpointMonitor", "TrainCallBack")
    yaml_config.callbacks = [c for c in yaml_config.callbacks if c["type"] not in dropped]
    if not on_ascend():
        yaml_config.context.mode = ms.GRAPH_MODE if run.rank.world == 1 else ms.PYNATIVE_MODE
        yaml_config.runner_wrapper.type = CPU_WRAPPER
        # semi-automatic parallel compiles for NPUs only; data parallel: each worker its
        # own rows (full_batch off), gradients averaged over the workers
        parallel = yaml_config.parallel
        parallel.parallel_mode, parallel.full_batch, parallel.gradients_mean = 0, False, True
    return yaml_config


def run_native(config: WorkerConfig, layout: RunLayout, framework: Any) -> int:
    """Train with MindFormers' Trainer; the exit code (128 + the signal after a stop)."""
    from mindformers import Trainer
    from mindformers.core.context import build_context

    framework.begin_native(config, layout)
    seed_host(config.train.seed)
    run = NativeRun(config, layout, framework)
    yaml_config = native_config(framework.yaml, run)
    os.chdir(layout.root)  # the plan's paths are relative to OUT
    build_context(yaml_config)
    run.net = net = framework.network(config, Path(config.model.path))
    trainer = Trainer(
        args=yaml_config,
        task="text_generation",
        model=net,
        train_dataset=run.dataset(),
        callbacks=[FtxCallback(run)],
    )
    trainer.train()
    return run.finish()

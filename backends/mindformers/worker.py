"""The mindformers worker: runs inside the mindformers environment, started by launch.sh.

    python -m ftx.backends.mindformers.worker plan/worker.json          # one worker
    msrun --worker_num 2 ... plan/mindformers_worker.py plan/worker.json  # data parallel

The model is MindFormers' own, built from ``OUT/plan/finetune.yaml`` (see
:mod:`ftx.backends.mindformers.modeling`), and its loss is MindFormers' own. On Ascend
MindFormers' Trainer could run that YAML as it is; on CPU it stops at the Ascend-only
overflow check of its MFTrainOneStepCell (NPUGetFloatStatusV2), so this worker trains
with MindSpore's step: ``value_and_grad`` compiled with ``ms.jit``, the YAML's AdamW
(MindFormers' ``AdamW``) and warm-up schedule (MindFormers' ``*WithWarmUpLR``), global
norm clipping as torch does it, on the worker kit (ftx.core.workerkit): the same
example order as every backend, a loss normalised by the learned tokens across
accumulation and workers, the shared metrics, atomic checkpoints, a checkpoint on SIGTERM.
Workers started by msrun join MindSpore's CPU collective (mccl) and all-reduce gradients.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import random
import shutil
import sys
from pathlib import Path
from typing import Any

import mindspore as ms
import numpy as np
from mindspore import Tensor, ops

from ftx.backends.mindformers.modeling import (
    build_model,
    cpu_profile,
    fixed_batch,
    load_hf_weights,
    on_ascend,
    read_yaml,
    start_lora_like_every_backend,
    trainable,
    write_hf_model,
    write_mindformers_adapter,
)
from ftx.backends.mindformers.plan_files import FINETUNE_YAML
from ftx.core.contract import MetricsLog, RunLayout, WorkerConfig
from ftx.core.convert.convert import copy_side_files
from ftx.core.errors import FtxError
from ftx.core.heldout import HeldOut
from ftx.core.nodes import NODE_RANK
from ftx.core.prepared import PreparedSplit, load_split, read_manifest
from ftx.core.workerkit import (
    Checkpoints,
    Rank,
    RunTracker,
    Schedule,
    StepResult,
    StopSignal,
    TrainerState,
    run_worker,
    write_final,
)


def main(config: WorkerConfig, layout: RunLayout) -> int:
    if os.environ.get("MS_ROLE") == "MS_SCHED":
        return schedule_the_cluster()
    t = config.train
    os.environ.setdefault("LOCAL_DEFAULT_PATH", str(layout.root / "native"))
    yaml_config = read_yaml(layout)
    if on_ascend():
        return run_mindformers_trainer(yaml_config)
    cpu_profile(yaml_config)
    rank = start_processes()
    ms.set_seed(t.seed)
    random.seed(t.seed)
    np.random.seed(t.seed % 2**32)

    prepared = layout.at(config.data.prepared)
    pad_id = read_manifest(prepared)["pad_token_id"]
    train, val = load_split(prepared, "train"), load_split(prepared, "val")
    assert train is not None, f"{prepared} has no train split"
    width = config.data.max_seq_len + 1
    net = build_model(yaml_config)
    load_hf_weights(net, Path(config.model.path), yaml_config)
    model_type = json.loads((Path(config.model.path) / "config.json").read_text())["model_type"]
    if config.method.finetuning == "lora":
        start_lora_like_every_backend(net, model_type, t.seed)
    schedule = Schedule.plan(len(train), t, rank.world)
    lr_schedule = build_lr_schedule(yaml_config, schedule)
    optimizer = build_optimizer(net, yaml_config, lr_schedule)
    step = TrainStep(net, optimizer, rank, t.max_grad_norm)
    stop = StopSignal()

    tracker = RunTracker(
        config,
        layout,
        rank,
        schedule,
        len(train),
        stop=stop,
        metrics=metrics_log(config, layout, rank),
        save=lambda folder: save_checkpoint(folder, net, optimizer, rank),
        evaluate=(lambda: step.eval_loss(val, t.micro_batch_size, pad_id, width)) if val else None,
    )
    resumed = tracker.resume(lambda folder: load_checkpoint(folder, net, optimizer))
    held_out = HeldOut(
        config,
        layout,
        prepared,
        rank,
        resumed,
        next_token_of(net, width - 1, pad_id),
        net.set_train,
    )
    held_out.exact_match("before")

    params = sum(int(np.prod(p.shape)) for p in net.get_parameters())
    tracker.start(params, sum(int(np.prod(p.shape)) for p in trainable(net)))
    net.set_train(True)
    while tracker.running:
        indices = schedule.step(tracker.state.step, rank.rank)
        batches = [fixed_batch(train, b, pad_id, width) for b in indices]
        result = step(batches)
        done = tracker.state.step + 1
        # The schedule is a small MindSpore graph: evaluated only for the rows that log it.
        logged = done % t.logging_steps == 0 or done == schedule.total_steps
        lr = float(lr_schedule(Tensor(done, ms.int32))) if logged else 0.0
        tracker.step_done(result, lr=lr)
    stopped = tracker.finish()
    if stopped is not None:
        return stopped

    held_out.exact_match("after")
    write_final(
        layout,
        rank,
        lambda folder: write_hf_final(folder, net, config, yaml_config, model_type, rank),
    )
    tracker.done()
    return 0


def run_mindformers_trainer(yaml_config: Any) -> int:
    """On Ascend: MindFormers' own Trainer runs finetune.yaml as it is (its checkpoints,
    logs and loss monitor under OUT/native). Not exercised here: no Ascend machine."""
    from mindformers import Trainer

    Trainer(args=yaml_config, task="text_generation").finetune()
    return 0


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
    rank = Rank(get_rank(), get_group_size(), get_local_rank())
    return Rank(rank.rank, rank.world, rank.local_rank, lambda: all_reduce_sum([0.0], rank))


_ALL_REDUCE: Any = None


def all_reduce_sum(values: list[float], rank: Rank) -> list[float]:
    """Sum a few numbers over all workers."""
    if rank.world == 1:
        return values
    global _ALL_REDUCE
    _ALL_REDUCE = _ALL_REDUCE or ops.AllReduce()
    summed = _ALL_REDUCE(Tensor(np.array(values, dtype=np.float32)))
    return [float(v) for v in summed.asnumpy()]


def metrics_log(config: WorkerConfig, layout: RunLayout, rank: Rank) -> MetricsLog:
    """metrics.jsonl, and TensorBoard event files (tensorboardX) when the recipe asks."""
    if config.output.report_to != "tensorboard" or not rank.main:
        return MetricsLog(layout)
    from tensorboardX import SummaryWriter

    writer = SummaryWriter(str(layout.tensorboard))
    return MetricsLog(layout, writer.add_scalar, writer.close)


# --------------------------------------------------------------------------- optimizer


def build_lr_schedule(yaml_config: Any, schedule: Schedule) -> Any:
    """The YAML's lr_schedule (MindFormers' class), over the run's optimizer steps."""
    from mindformers.core.lr import build_lr

    settings = dict(yaml_config.lr_schedule)
    total = schedule.total_steps
    settings["total_steps"] = total
    if "warmup_ratio" in settings:
        settings["warmup_steps"] = math.ceil(settings.pop("warmup_ratio") * total)
    return build_lr(settings)


def build_optimizer(net: Any, yaml_config: Any, lr_schedule: Any) -> Any:
    """The YAML's optimizer (MindFormers' AdamW: torch's update rule) with no weight decay
    on biases and norm weights, as the torch worker does."""
    from mindformers.core.optim import AdamW

    settings = yaml_config.optimizer
    if settings.type != "AdamW":
        raise FtxError(
            f"optimizer.type is {settings.type}; the CPU worker runs AdamW",
            where=FINETUNE_YAML,
            fix="set optimizer.type: AdamW",
        )
    params = trainable(net)
    decay = [p for p in params if len(p.shape) >= 2 and "norm" not in p.name]
    flat = [p for p in params if not (len(p.shape) >= 2 and "norm" not in p.name)]
    groups = [
        {"params": decay, "weight_decay": float(settings.weight_decay)},
        {"params": flat, "weight_decay": 0.0},
    ]
    return AdamW(
        [g for g in groups if g["params"]],
        learning_rate=lr_schedule,
        betas=tuple(float(b) for b in settings.betas),
        eps=float(settings.eps),
    )


# --------------------------------------------------------------------------- one step


class TrainStep:
    """Forward/backward over this worker's micro-batches, all-reduce, clip, AdamW.

    Each micro-batch's mean loss (MindFormers' own) is scaled to its token-loss sum over
    the learned tokens of the whole step on every worker, times the world size: the
    all-reduced gradient divided by the world size is then the step's token mean, as on
    every backend.
    """

    def __init__(self, net: Any, optimizer: Any, rank: Rank, max_grad_norm: float):
        self.net, self.optimizer, self.rank, self.max_grad_norm = (
            net,
            optimizer,
            rank,
            max_grad_norm,
        )
        self.params = optimizer.parameters
        grad = ms.value_and_grad(self._scaled_loss, None, self.params)
        self._grad = ms.jit(grad)
        self._loss = ms.jit(self._forward)
        self._update = ms.jit(self._apply)
        self._reduce = ops.AllReduce() if rank.world > 1 else None

    def _forward(self, ids: Tensor, labels: Tensor, mask: Tensor) -> Tensor:
        return self.net(ids, labels, loss_mask=mask)

    def _scaled_loss(self, ids: Tensor, labels: Tensor, mask: Tensor, scale: Tensor) -> Tensor:
        return self._forward(ids, labels, mask) * scale

    def _apply(self, grads: tuple) -> Tensor:
        """Clip as torch's clip_grad_norm_ does (scale by max_norm / (norm + 1e-6) when that
        is below 1), step AdamW; return the norm before clipping. One compiled graph: the
        same work per tensor in PyNative cost a third of a small model's step."""
        norm = ops.sqrt(ops.addn([ops.square(g).sum() for g in grads]))
        if self.max_grad_norm > 0:
            coef = ops.clamp(self.max_grad_norm / (norm + 1e-6), max=1.0)
            grads = tuple(g * coef for g in grads)
        self.optimizer(grads)
        return norm

    def __call__(self, batches: list[dict]) -> StepResult:
        local = [
            float(sum(b["learned"] for b in batches)),
            float(sum(b["tokens"] for b in batches)),
        ]
        learned, tokens = all_reduce_sum(local, self.rank)
        per_token = max(learned, 1.0) / self.rank.world  # scaled loss -> token-loss sum
        grads: tuple | None = None
        loss_sum: Tensor | None = None
        for b in batches:
            scale = Tensor(b["learned"] / per_token, ms.float32)
            loss, g = self._grad(
                Tensor(b["input_ids"]), Tensor(b["labels"]), Tensor(b["loss_mask"]), scale
            )
            part = loss * per_token  # this micro-batch's token-loss sum, still on the device
            loss_sum = part if loss_sum is None else loss_sum + part
            grads = g if grads is None else tuple(a + c for a, c in zip(grads, g, strict=True))
        assert grads is not None and loss_sum is not None
        if self._reduce is not None:
            grads = tuple(self._reduce(g) / self.rank.world for g in grads)
        # mutable: one compiled update for every step (a tuple of tensors would be a constant)
        norm = self._update(ms.mutable(grads))
        # One read-back per step for the loss and the norm: each read waits for the device.
        local_loss, norm_value = (
            float(v) for v in ops.concat([loss_sum.reshape(1), norm.reshape(1)]).asnumpy()
        )
        (global_loss,) = all_reduce_sum([local_loss], self.rank)
        return StepResult(global_loss, int(learned), int(tokens), norm_value)

    def eval_loss(self, split: PreparedSplit, batch_size: int, pad_id: int, width: int) -> float:
        """Token-weighted loss over a split, sharded over workers."""
        mine = list(range(self.rank.rank, len(split), self.rank.world))
        total, count = 0.0, 0
        for start in range(0, len(mine), batch_size):
            b = fixed_batch(split, mine[start : start + batch_size], pad_id, width)
            if b["learned"]:
                mean = self._loss(
                    Tensor(b["input_ids"]), Tensor(b["labels"]), Tensor(b["loss_mask"])
                )
                total, count = total + float(mean) * b["learned"], count + b["learned"]
        total, count = all_reduce_sum([total, float(count)], self.rank)
        return total / max(count, 1)


def next_token_of(net: Any, seq_length: int, pad_id: int) -> Any:
    """The greedy next token after a list of token ids: the model's evaluation forward
    takes exactly seq_length tokens (its causal mask's size), so the prompt is padded on
    the right, which a causal model never sees from the earlier positions. Compiled once
    (ms.jit): in PyNative a forward per generated token made held-out scoring take minutes."""

    @ms.jit
    def logits_of(row: Tensor) -> Tensor:
        return net(row)[0]

    def next_token(ids: list[int]) -> int | None:
        if len(ids) >= seq_length:
            return None  # no room left: the answer ends here
        row = np.full((1, seq_length), pad_id, dtype=np.int32)
        row[0, : len(ids)] = ids
        return int(logits_of(Tensor(row)).asnumpy()[0, len(ids) - 1].argmax())

    return next_token


# --------------------------------------------------------------------------- outputs


def save_checkpoint(folder: Path, net: Any, optimizer: Any, rank: Rank) -> None:
    """Trainable weights, the optimizer (moments, step count) and RNG state (rank 0:
    data parallel keeps every worker's copy equal), in MindSpore's .ckpt format."""
    if not rank.main:
        return
    weights = [{"name": p.name, "data": p} for p in trainable(net)]
    ms.save_checkpoint(weights, str(folder / "model.ckpt"))
    ms.save_checkpoint(optimizer, str(folder / "optimizer.ckpt"))
    with (folder / "rng_state.pkl").open("wb") as handle:  # read back by this worker only
        pickle.dump({"python": random.getstate(), "numpy": np.random.get_state()}, handle)


def load_checkpoint(folder: Path, net: Any, optimizer: Any) -> TrainerState:
    ms.load_param_into_net(net, ms.load_checkpoint(str(folder / "model.ckpt")))
    ms.load_param_into_net(optimizer, ms.load_checkpoint(str(folder / "optimizer.ckpt")))
    with (folder / "rng_state.pkl").open("rb") as handle:
        rng = pickle.load(handle)
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    return Checkpoints.state_of(folder)


def write_hf_final(
    folder: Path, net: Any, config: WorkerConfig, yaml_config: Any, model_type: str, rank: Rank
) -> None:
    """OUT/final in Hugging Face format: the full model's safetensors, or a PEFT adapter
    converted by ftx from the MindFormers LoRA weights (kept as MindFormers wrote them in
    final/mindspore for save_format both, final itself for native). final/merged too when
    asked."""
    if not rank.main:
        return
    fmt, source = config.output.save_format, Path(config.model.path)
    lora = config.method.finetuning == "lora"
    if fmt in ("native", "both"):
        native = folder if fmt == "native" else folder / "mindspore"
        native.mkdir(parents=True, exist_ok=True)
        shutil.copy2(config_path(folder), native / FINETUNE_YAML)
        if lora:
            write_mindformers_adapter(
                net, config, yaml_config.model.model_config.pet_config, native
            )
        else:
            ms.save_checkpoint(net, str(native / "model.ckpt"))
        if fmt == "native":
            copy_side_files(source, folder)
            return
    if not lora:
        write_hf_model(net, model_type, folder)
        shutil.copy2(source / "config.json", folder / "config.json")
        copy_side_files(source, folder)
        return
    from ftx.core.convert.adapters import convert_adapter
    from ftx.core.convert.merge_lora import merge_lora

    staged = folder / ".mindformers-adapter"
    write_mindformers_adapter(net, config, yaml_config.model.model_config.pet_config, staged)
    convert_adapter(staged, folder / ".hf", "hf")
    shutil.rmtree(staged)
    for item in (folder / ".hf").iterdir():
        item.replace(folder / item.name)
    (folder / ".hf").rmdir()
    copy_side_files(source, folder)
    if config.output.merge_lora:
        merged = folder.with_name(f"{folder.name}.merged")
        merge_lora(source, folder, merged, force=True)
        copy_side_files(source, merged)
        merged.replace(folder / "merged")


def config_path(final: Path) -> Path:
    """OUT/plan/finetune.yaml, seen from the staged final folder (OUT/.final.partial)."""
    return final.parent / "plan" / FINETUNE_YAML


if __name__ == "__main__":
    # A normal exit: MindSpore's exit handlers tell msrun's scheduler this worker is done.
    sys.exit(run_worker(main))

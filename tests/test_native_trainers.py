"""train.trainer: native for real: PaddleFormers' and MindFormers' own Trainers run the
plan under ftx's launcher, on ftx's token stream, and leave the run layout every backend
shares."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from test_mindformers_backend import HF_LOSS, IDS, MF_LOSS
from test_paddle_backend import cpu_model, logits

from conftest import FTX, ROOT, run_ftx, run_in_env
from ftx.core.contract import MetricsRow
from training import losses, pairs_recipe, rows

pytestmark = pytest.mark.env

TOLERANCE = 1e-4


def whole_set_recipe(tmp_path: Path, model: Path, finetuning: str) -> Path:
    """Two optimizer steps, each over the same 16 rows in one micro-batch: the first
    step's loss does not depend on the order a trainer draws rows in."""
    path = tmp_path / f"whole-{finetuning}.yaml"
    path.write_text(
        f"""
model: {{path: {model}}}
data:
  datasets: [{{path: {ROOT / "recipes/data/quickstart_train.jsonl"}, format: alpaca}}]
  max_seq_len: 64
  max_samples: 16
  val_size: 0
method: {{finetuning: {finetuning}}}
train: {{max_steps: 2, learning_rate: 1.0e-3, micro_batch_size: 16, logging_steps: 1}}
"""
    )
    return path


def run_ok(*args: str) -> None:
    result = run_ftx(*args, timeout=900)
    assert result.returncode == 0, (args, result.stderr[-3000:])


@pytest.mark.parametrize("finetuning", ["full", pytest.param("lora", marks=pytest.mark.heavy)])
def test_paddleformers_trainer_takes_ftx_first_step_and_exports_what_it_trained(
    finetuning: str, tmp_path: Path, tiny_llama: Path
) -> None:
    """PaddleFormers' Trainer and ftx's loop on the same first batch: the same loss (and,
    full fine-tuning, the same gradient norm: the same weights, tokens and masks). Its
    OUT/final loads in transformers (peft for LoRA) with the logits of the model
    PaddleFormers itself saved in OUT/native. Full fine-tuning also on two workers."""
    from ftx.core.contract import RunLayout, read_metrics

    model = cpu_model(tmp_path, tiny_llama)
    path = whole_set_recipe(tmp_path, model, finetuning)
    found = {}
    for trainer in ("ftx", "native"):
        out = tmp_path / trainer
        run_ok("run", str(path), "--backend", "paddle", "--out", str(out), "--trainer", trainer)
        found[trainer] = read_metrics(RunLayout(out))  # the contract's reader
    ours, theirs = found["ftx"][0], found["native"][0]
    assert theirs.loss == pytest.approx(ours.loss, abs=TOLERANCE)
    assert theirs.tokens == ours.tokens and theirs.lr == ours.lr
    if finetuning == "full":  # LoRA: PaddleFormers draws its own A matrices
        assert theirs.grad_norm == pytest.approx(ours.grad_norm, rel=TOLERANCE)
    assert [r.step for r in found["native"]] == [1, 2]

    out = tmp_path / "native"
    run = json.loads((out / "run.json").read_text())
    assert run["trainer"]["trainer"] == "native" and "PaddleFormers" in run["trainer"]["reason"]
    assert json.loads((out / "plan/worker.json").read_text())["train"]["trainer"] == "native"
    if finetuning == "full":
        in_torch = logits("torch", out / "final", tmp_path / "t.npy")
        in_paddle = logits("paddle", out / "native", tmp_path / "p.npy")
    else:
        in_torch = logits("torch", model, tmp_path / "t.npy", out / "final")
        in_paddle = logits("paddle", model, tmp_path / "p.npy", out / "native")
    assert abs(in_torch - in_paddle).max() <= TOLERANCE
    if finetuning == "full":
        two_workers(path, tmp_path / "two", found["native"][0])


def trained(metrics: list[MetricsRow]) -> list[MetricsRow]:
    """The rows of logged training steps (a native run writes eval losses apart)."""
    return [r for r in metrics if r.loss is not None]


def two_workers(path: Path, two: Path, one: MetricsRow) -> None:
    """Two CPU workers (gloo) under paddle.distributed.launch: the plan shards nothing
    (``sharding: ''``) and reads and writes unified checkpoints. PaddleFormers averages
    each worker's mean loss where ftx weighs every token alike, so the first loss agrees
    with one worker's to the ranks' difference in token counts (here 3e-5 relative)."""
    import yaml

    run_ok("run", str(path), "--backend", "paddle", "--out", str(two), "train.trainer=native",
           "parallel.nproc_per_node=2", "train.micro_batch_size=8")  # fmt: skip
    plan = yaml.safe_load((two / "plan/paddleformers.yaml").read_text())
    assert plan["sharding"] == "" and plan["save_checkpoint_format"] == "unified_checkpoint"
    assert plan["load_checkpoint_format"] == "unified_checkpoint"
    assert "paddle.distributed.launch" in (two / "plan/launch.sh").read_text()
    first = rows(two)[0]
    assert first["tokens"] == one.tokens  # summed over both workers
    assert first["loss"] == pytest.approx(one.loss, rel=TOLERANCE)
    assert (two / "final/model.safetensors").exists()


@pytest.mark.parametrize("finetuning", ["full", "lora"])
def test_paddleformers_dpo_trainer_takes_ftx_steps(
    finetuning: str, tmp_path: Path, tiny_llama: Path
) -> None:
    """PaddleFormers' DPOTrainer (its DPO criterion, reference, optimizer and loop) on
    ftx's pairs, each pair one row of prompt, chosen and rejected as PaddleFormers lays it
    out: the first step's loss (ln 2), the policy's log-probabilities, lr and tokens equal
    ftx's loop; full fine-tuning (reference: a frozen copy, kept undistributed in one
    process) also the gradient norm, the second step's loss and rewards and the eval loss
    at the end, in one process and in two (gloo). A resume from its step-1 checkpoint
    gives the uninterrupted step 2."""
    from ftx.core.contract import RunLayout, read_metrics

    model = cpu_model(tmp_path, tiny_llama)
    path = pairs_recipe(tmp_path, model, steps=2)
    path.write_text(
        path.read_text()
        .replace("micro_batch_size: 4, grad_accum: 2", "micro_batch_size: 16")
        .replace("learning_rate: 5.0e-3", "learning_rate: 1.0e-3, save_steps: 1")
        .replace("finetuning: lora", f"finetuning: {finetuning}")
    )  # one optimizer step over all 16 training pairs: the order does not matter
    found = {}
    for trainer in ("ftx", "native"):
        out = tmp_path / trainer
        run_ok("run", str(path), "--backend", "paddle", "--out", str(out), "--trainer", trainer)
        found[trainer] = read_metrics(RunLayout(out))  # the contract's reader
    ours, theirs = (trained(found[t]) for t in ("ftx", "native"))
    assert theirs[0].loss == pytest.approx(0.693147, abs=1e-6) == ours[0].loss
    for name in ("logps_chosen", "logps_rejected"):
        assert getattr(theirs[0], name) == pytest.approx(getattr(ours[0], name), abs=TOLERANCE)
    assert [(r.tokens, r.lr) for r in theirs] == [(r.tokens, r.lr) for r in ours]
    assert [r.step for r in theirs if r.loss is not None] == [1, 2]
    run = json.loads((tmp_path / "native/run.json").read_text())
    assert run["trainer"]["trainer"] == "native" and run["status"] == "completed"
    assert (tmp_path / "native/final/model.safetensors").exists() or (
        tmp_path / "native/final/adapter_model.safetensors"
    ).exists()
    if finetuning == "lora":  # PaddleFormers draws its own A: only step 1 is comparable
        return
    for mine, native in zip(ours, theirs, strict=True):
        for name in ("loss", "rewards_chosen", "rewards_margins"):
            expected = getattr(mine, name)
            assert getattr(native, name) == pytest.approx(expected, abs=TOLERANCE), name
        assert native.grad_norm == pytest.approx(mine.grad_norm, rel=TOLERANCE)
    evaluated = [[(r.step, r.eval_loss) for r in found[t] if r.eval_loss] for t in found]
    assert len(evaluated[1]) == 1 and evaluated[1][0][0] == 2  # once, at the end, as ftx's loop
    assert evaluated[1][0][1] == pytest.approx(evaluated[0][0][1], abs=TOLERANCE)

    two = tmp_path / "two"
    run_ok("run", str(path), "--backend", "paddle", "--out", str(two), "--trainer", "native",
           "parallel.nproc_per_node=2", "train.micro_batch_size=8")  # fmt: skip
    for one, both in zip(theirs, trained(read_metrics(RunLayout(two))), strict=True):
        assert both.loss == pytest.approx(one.loss, abs=TOLERANCE)
        assert both.tokens == one.tokens  # summed over both workers

    resumed = tmp_path / "resumed"
    checkpoint = tmp_path / "native/native/checkpoint-1"
    run_ok("run", str(path), "--backend", "paddle", "--out", str(resumed), "--trainer",
           "native", f"train.resume={checkpoint}")  # fmt: skip
    again = trained(read_metrics(RunLayout(resumed)))
    assert [r.step for r in again] == [2]
    assert again[0].loss == pytest.approx(theirs[1].loss, abs=TOLERANCE)


@pytest.mark.parametrize("finetuning", ["full", pytest.param("lora", marks=pytest.mark.heavy)])
def test_mindformers_trainer_takes_ftx_first_step_and_exports_what_it_trained(
    finetuning: str, tmp_path: Path, tiny_llama: Path
) -> None:
    """MindFormers' Trainer (its run wrapper, AdamW, schedule and loop, in graph mode on
    this CPU) and ftx's loop on the same rows: the same loss, gradient norm and learning
    rate at both steps (LoRA's A matrices are ftx's draw in both). OUT/final loads in
    transformers (peft for LoRA) with the loss MindFormers gives the model it kept in
    OUT/final/mindspore."""
    from ftx.core.contract import RunLayout, read_metrics

    path = whole_set_recipe(tmp_path, tiny_llama, finetuning)
    found = {}
    for trainer in ("ftx", "native"):
        out = tmp_path / trainer
        run_ok("run", str(path), "--backend", "mindformers", "--out", str(out),
               "--trainer", trainer, "output.save_format=both")  # fmt: skip
        found[trainer] = read_metrics(RunLayout(out))  # the contract's reader
    for ours, theirs in zip(found["ftx"], found["native"], strict=True):
        assert theirs.loss == pytest.approx(ours.loss, abs=TOLERANCE)
        assert theirs.grad_norm == pytest.approx(ours.grad_norm, rel=TOLERANCE)
        assert theirs.tokens == ours.tokens and theirs.lr == ours.lr
    assert [r.step for r in found["native"]] == [1, 2]

    out = tmp_path / "native"
    run = json.loads((out / "run.json").read_text())
    assert run["trainer"]["trainer"] == "native" and "MindFormers" in run["trainer"]["reason"]
    kept = out / "final/mindspore"
    weights = kept / ("model.ckpt" if finetuning == "full" else "adapter_model.ckpt")
    mf = run_in_env("mindformers", MF_LOSS, str(kept / "finetune.yaml"), str(tiny_llama),
                    str(weights), IDS)  # fmt: skip
    if finetuning == "full":
        hf = run_in_env("torch", HF_LOSS, str(out / "final"), IDS)
    else:
        hf = run_in_env("torch", HF_LOSS, str(tiny_llama), IDS, str(out / "final"))
    base = run_in_env("torch", HF_LOSS, str(tiny_llama), IDS)
    assert abs(hf["loss"] - mf["loss"]) <= TOLERANCE
    assert abs(hf["loss"] - base["loss"]) > 1e-4  # the export is the trained model
    if finetuning == "full":
        two_msrun_workers(path, tmp_path / "two", found["native"][0])


def two_msrun_workers(path: Path, two: Path, one: MetricsRow) -> None:
    """Two CPU workers under msrun (mccl), each on its own rows of ftx's order, MindFormers
    averaging their gradients: ftx weighs every token alike, MindFormers each worker's mean,
    so the gradient norm agrees with one worker's to the ranks' difference in token counts
    (9e-5 relative here); the loss is ftx's token-weighted sum over both."""
    run_ok("run", str(path), "--backend", "mindformers", "--out", str(two), "--trainer",
           "native", "parallel.nproc_per_node=2", "train.micro_batch_size=8")  # fmt: skip
    assert "msrun" in (two / "plan/launch.sh").read_text()
    first = rows(two)[0]
    assert first["tokens"] == one.tokens  # summed over both workers
    assert first["loss"] == pytest.approx(one.loss, rel=TOLERANCE)
    assert first["grad_norm"] == pytest.approx(one.grad_norm, rel=1e-3)
    assert (two / "final/model.safetensors").exists()


# What MindFormers' run_mindformer.py does with `--config finetune.yaml` (the script is in
# MindFormers' repository, not in its wheel): the config read, the command line's settings
# applied over it, the output path and context set, its Trainer's train(). The settings
# are what a CPU needs; each is a flag of run_mindformer.py or its `--a.b value` form.
RUN_MINDFORMER = """
import os, sys
from mindformers import MindFormerConfig, Trainer
from mindformers.core.context import build_context
from mindformers.utils.file_utils import set_output_path
import ftx.backends.mindformers.native  # registers the CPU run wrapper (as --register_path)

config = MindFormerConfig(os.path.abspath(sys.argv[1]))
for key, value in CPU_FLAGS.items():
    *parents, last = key.split(".")
    section = config
    for name in parents:
        section = section[name]
    section[last] = value
set_output_path(config.output_dir)
build_context(config)
Trainer(config).train()
"""
CPU_FLAGS = {
    "context.device_target": "CPU",  # --device_target CPU
    "runner_config.sink_mode": False,  # --sink_mode False: a CPU has no data sink
    # the CPU kernels MindFormers' legacy Llama has (no flash attention, no fused RMSNorm)
    "model.model_config.use_flash_attention": False,
    "model.model_config.fused_rms_norm": False,
    "model.model_config.use_rope_slice": True,
    # the overflow check through IsFinite: the stock one is NPU-only
    "runner_wrapper.type": "FtxCpuTrainOneStepCell",
    "train_dataset.num_parallel_workers": 1,  # MindSpore caps them at the cores (2 here)
    "eval_dataset.num_parallel_workers": 1,
}


def test_mindformers_own_entry_trains_the_plan_as_ftx_does(
    tmp_path: Path, tiny_llama: Path
) -> None:
    """`ftx plan` for mindformers, then what run_mindformer.py --config
    plan/finetune.yaml does, with only a CPU's settings added: MindFormers loads the HF
    weights the plan names (the first loss is ftx's), stops at max_steps (its
    stop_step does nothing; the plan's TrainCallBack does), and evaluates on the plan's
    val rows during training (seq_length wide, as its eval network takes them): loss,
    global norm and eval loss at both steps equal ftx's loop."""
    import os

    from ftx.core import envs
    from ftx.core.contract import RunLayout, read_metrics

    path = whole_set_recipe(tmp_path, tiny_llama, "full")
    path.write_text(
        path.read_text()
        .replace("max_samples: 16", "max_samples: 32")
        .replace("val_size: 0", "val_size: 16")
        .replace("logging_steps: 1", "logging_steps: 1, eval_steps: 1")
    )  # 16 rows trained on in one step, 16 evaluated in one batch
    ours = tmp_path / "ftx"
    run_ok("run", str(path), "--backend", "mindformers", "--out", str(ours))
    planned = tmp_path / "plan"
    run_ok("plan", str(path), "--backend", "mindformers", "--out", str(planned))
    script = RUN_MINDFORMER.replace("CPU_FLAGS", repr(CPU_FLAGS))
    python = envs.ensure("mindformers")
    env = envs.process_env("mindformers")
    result = subprocess.run([str(python), "-c", script, "plan/finetune.yaml"], cwd=planned,
                            env=env, capture_output=True, text=True, timeout=900)  # fmt: skip
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    steps = [tuple(float(x) for x in m) for m in re.findall(
        r"loss:\[([\d.]+)/[\d.]+\].*?global_norm: \[([\d.]+)\]", log)]  # fmt: skip
    evals = [float(x) for x in re.findall(r"'PerplexityMetric': \{'loss': ([\d.]+)", log)]
    metrics = read_metrics(RunLayout(ours))
    assert len(steps) == len(metrics) == 2, log[-3000:]  # max_steps, not epochs x rows
    for (loss, norm), row in zip(steps, metrics, strict=True):
        assert loss == pytest.approx(row.loss, abs=TOLERANCE)
        assert norm == pytest.approx(row.grad_norm, rel=TOLERANCE)
    assert evals == pytest.approx([r.eval_loss for r in metrics], abs=TOLERANCE)
    assert os.path.isdir(planned / "native")  # MindFormers' output, as the plan names it


# Where each native trainer leaves its checkpoints: PaddleFormers' own under OUT/native;
# under MindFormers' Trainer, ftx's (the network's and optimizer's MindSpore state).
CHECKPOINTS = {"paddle": "native", "mindformers": "checkpoints"}


@pytest.mark.heavy
@pytest.mark.parametrize("backend", ["paddle", "mindformers"])
def test_native_trainer_learns_the_quickstart_stops_and_resumes(
    backend: str, tmp_path: Path
) -> None:
    """The quickstart through the framework's Trainer, 40 steps of its 375 (PaddleFormers
    1.4 s a step on this CPU, MindFormers 0.8 s): SIGTERM after a few logged steps leaves
    a checkpoint and exit code 143; train.resume=auto continues from it (metrics trimmed
    to it, no step twice) to a model whose loss fell by over 40%, with held-out exact
    match before and after in OUT/eval.json and an eval loss at step 20."""
    model = tmp_path / "quickstart-llama"
    run_ok("init-model", "--arch", "llama", "--size", "small", "--out", str(model))
    out = tmp_path / "run"
    args = ["run", "recipes/quickstart.yaml", "--backend", backend, "--out", str(out),
            f"model.path={model}", "train.trainer=native", "train.logging_steps=5",
            "train.save_steps=10", "train.epochs=null", "train.max_steps=40",
            "train.eval_steps=20"]  # fmt: skip
    proc = subprocess.Popen([str(FTX), *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.time() + 600
    while time.time() < deadline and not (
        (out / "metrics.jsonl").exists() and len(losses(out)) >= 3
    ):
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 143, stderr[-3000:]
    saved = sorted((out / CHECKPOINTS[backend]).glob("checkpoint-*"))
    assert saved and not (out / "final").exists(), stderr[-2000:]
    stopped_at = int(saved[-1].name.split("-")[1])

    resumed = run_ftx(*args, "train.resume=auto", cwd=ROOT, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    steps = [r["step"] for r in rows(out) if "loss" in r]
    assert steps == list(range(5, 41, 5)), steps  # none lost, none twice
    run = json.loads((out / "run.json").read_text())
    assert run["training"]["steps"] == 40 - stopped_at, run["training"]  # resumed, not restarted
    assert run["status"] == "completed" and run["trainer"]["trainer"] == "native"
    assert run["final_loss"] < 0.6 * run["first_loss"], run  # 6.04 -> 3.24 / 3.20 measured
    assert [r["step"] for r in rows(out) if "eval_loss" in r][:1] == [20]
    evaluation = json.loads((out / "eval.json").read_text())
    assert evaluation["before"]["exact_match"] <= 0.05, evaluation["before"]
    assert evaluation["after"]["examples"] == evaluation["before"]["examples"] > 0
    assert (out / "final/model.safetensors").exists()


def test_what_a_cpu_cannot_run_natively_is_refused_naming_the_device(
    tmp_path: Path, tiny_llama: Path
) -> None:
    """bf16 picks PaddleFormers' Trainer (auto) and is refused on this CPU by name, after
    `ftx plan` wrote it for a GPU; torch has no separate native trainer; MindFormers'
    Trainer takes fp32 on this CPU and bf16 on NPUs only."""
    path = whole_set_recipe(tmp_path, tiny_llama, "full")
    bf16 = run_ftx("run", str(path), "--backend", "paddle", "--out", str(tmp_path / "o"),
                   "train.precision=bf16")  # fmt: skip
    assert bf16.returncode == 2, bf16.stderr
    assert "GPU/NPU only" in bf16.stderr and "bfloat16 matmul" in bf16.stderr
    assert not (tmp_path / "o").exists()
    planned = run_ftx("plan", str(path), "--backend", "paddle", "--out", str(tmp_path / "p"),
                      "train.precision=bf16")  # fmt: skip
    assert planned.returncode == 0, planned.stderr
    worker = json.loads((tmp_path / "p/plan/worker.json").read_text())
    assert worker["train"]["trainer"] == "native" and worker["train"]["precision"] == "bf16"
    torch = run_ftx("validate", str(path), "--backend", "torch", "train.trainer=native")
    assert torch.returncode == 2 and "no separate native trainer" in torch.stderr
    mindformers = run_ftx("validate", str(path), "--backend", "mindformers",
                          "train.trainer=native")  # fmt: skip
    assert mindformers.returncode == 0, mindformers.stderr
    bf16 = run_ftx("validate", str(path), "--backend", "mindformers", "train.precision=bf16")
    assert bf16.returncode == 0 and "MindFormers' Trainer on a GPU/NPU only" in bf16.stderr
    refused = run_ftx("run", str(path), "--backend", "mindformers", "train.precision=bf16",
                      "--out", str(tmp_path / "r"))  # fmt: skip
    assert refused.returncode == 2 and "MindFormers' Trainer on a GPU/NPU only" in refused.stderr

"""The worker contract: typed configs validated on read, the metrics schema, progress
events, error.json and exit codes, through a real worker where it matters."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import FTX, run_ftx
from ftx.core.contract import (
    ContractError,
    ExitCode,
    MetricsLog,
    MetricsRow,
    ProgressEvent,
    RunLayout,
    WorkerConfig,
    read_metrics,
    run_status,
)
from ftx.core.worker.checkpoints import Checkpoints, TrainerState
from ftx.core.worker.framework import Rank
from ftx.core.worker.schedule import micro_batch_order


@pytest.fixture()
def planned(tmp_path: Path, tiny_llama: Path) -> RunLayout:
    result = run_ftx(
        "plan",
        "recipes/quickstart.yaml",
        "--out",
        str(tmp_path / "out"),
        f"model.path={tiny_llama}",
        "method.finetuning=lora",
    )
    assert result.returncode == 0, result.stderr
    return RunLayout(tmp_path / "out")


def test_worker_config_round_trips_and_is_typed(planned: RunLayout) -> None:
    config = WorkerConfig.read(planned.worker_config)
    assert config.backend == "torch" and config.method.lora is not None
    assert config.method.lora.targets is None  # every linear layer
    assert WorkerConfig.read(planned.worker_config) == config
    assert json.loads(config.to_json()) == json.loads(planned.worker_config.read_text())
    assert planned.at(config.data.prepared) == planned.data


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda c: c["train"].update(learning_rate="fast"),
            "train.learning_rate: expected a number",
        ),
        (lambda c: c["train"].update(grad_accum=True), "train.grad_accum: expected an integer"),
        (lambda c: c["train"].update(precision="fp8"), "train.precision: expected one of"),
        (lambda c: c["model"].update(revision="main"), "unknown: ['revision']"),
        (lambda c: c["method"].pop("stage"), "method.stage: missing"),
        (lambda c: c.update(version=0), "worker config version 0"),
    ],
)
def test_a_config_that_breaks_the_contract_is_named_precisely(
    planned: RunLayout, edit, message: str
) -> None:
    raw = json.loads(planned.worker_config.read_text())
    edit(raw)
    planned.worker_config.write_text(json.dumps(raw))
    with pytest.raises(ContractError, match=message.replace("[", r"\[").replace("]", r"\]")):
        WorkerConfig.read(planned.worker_config)


@pytest.mark.env
def test_the_torch_worker_exits_2_on_a_broken_config(planned: RunLayout) -> None:
    from ftx.core import envs

    raw = json.loads(planned.worker_config.read_text())
    raw["train"]["micro_batch_size"] = "4"
    planned.worker_config.write_text(json.dumps(raw))
    result = subprocess.run(
        [str(envs.ensure("torch")), "-m", "ftx.backends.torch.worker", str(planned.worker_config)],
        capture_output=True,
        text=True,
        env=envs.process_env("torch"),
    )
    assert result.returncode == ExitCode.BAD_CONFIG
    assert "train.micro_batch_size: expected an integer, got '4'" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.env
def test_a_failing_worker_leaves_error_json_and_the_runner_reports_it(
    tmp_path: Path, tiny_llama: Path
) -> None:
    model = tmp_path / "model"
    shutil.copytree(tiny_llama, model)
    config = json.loads((model / "config.json").read_text())
    config["intermediate_size"] += 8  # the weights no longer fit: loading fails in the worker
    (model / "config.json").write_text(json.dumps(config))
    result = run_ftx(
        "run",
        "recipes/quickstart.yaml",
        "--out",
        str(tmp_path / "out"),
        f"model.path={model}",
        "train.max_steps=2",
        "train.epochs=null",
    )
    assert result.returncode == 1, result.stderr
    error = json.loads((tmp_path / "out/error.json").read_text())
    assert set(error) == {"type", "message", "where", "rank"} and error["rank"] == 0
    assert error["type"] and ".py:" in error["where"]
    assert f"the torch worker failed (exit code 1): {error['type']}" in result.stderr
    run = json.loads((tmp_path / "out/run.json").read_text())
    assert run["status"] == "failed" and run["error"].startswith(error["type"])


def _worker_pids(root: int) -> list[int]:
    """The processes under ``root`` whose command line runs an ftx worker module."""
    children: dict[int, list[int]] = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(stat[1]), []).append(int(entry))
    found, stack = [], [root]
    while stack:
        pid = stack.pop()
        stack.extend(children.get(pid, []))
        try:
            if b".worker" in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
        except OSError:
            pass
    return found


@pytest.mark.env
def test_a_worker_killed_by_sigkill_is_named_as_killed(tmp_path: Path, tiny_llama: Path) -> None:
    """A worker killed with SIGKILL (the kernel's out-of-memory killer's signal) writes no
    error.json: the runner says it was killed, and what to change if memory ran out."""
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [str(FTX), "run", "recipes/quickstart.yaml", "--out", str(out),
         f"model.path={tiny_llama}", "train.max_steps=100000", "train.epochs=null",
         "train.logging_steps=1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.time() + 300
    while time.time() < deadline and not (out / "metrics.jsonl").exists():
        time.sleep(0.1)
    workers = _worker_pids(proc.pid)
    assert workers, "no worker process found under ftx run"
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 1, stderr[-2000:]
    text = " ".join(stderr.split())
    assert "killed with SIGKILL" in text and "out-of-memory killer" in text, text[-2000:]
    assert "method.finetuning=lora" in text and "train.resume=auto" in text
    assert not (out / "error.json").exists()
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "failed" and run["exit_code"] in (ExitCode.KILLED, -signal.SIGKILL)


def test_metrics_log_is_the_one_schema(tmp_path: Path) -> None:
    layout = RunLayout(tmp_path)
    seen = []
    log = MetricsLog(layout, scalars=lambda tag, value, step: seen.append((tag, value, step)))
    log.write(MetricsRow(step=1, backend="torch", loss=2.5, lr=1e-3, tokens=10))
    log.write(MetricsRow(step=2, backend="torch", eval_loss=2.0))
    log.write(MetricsRow(step=3, backend="torch", loss=1.5))
    with layout.metrics.open("a") as handle:
        handle.write('{"step": 4, "backe')  # a torn last line (a kill mid-write)
    rows = read_metrics(layout)
    assert [r.step for r in rows] == [1, 2, 3]
    assert json.loads(layout.metrics.read_text().splitlines()[1]) == {
        "step": 2,
        "backend": "torch",
        "eval_loss": 2.0,
    }
    assert ("train/loss", 2.5, 1) in seen and ("train/eval_loss", 2.0, 2) in seen
    log.keep_until(2)  # resume from checkpoint-2: later rows go
    assert [r.step for r in read_metrics(layout)] == [1, 2]


def test_progress_events_and_exit_codes() -> None:
    event = ProgressEvent("step", 3, 10, loss=1.25, tokens_per_s=100.0, logged=True)
    assert ProgressEvent.parse(event.line()) == event
    assert ProgressEvent.parse("[ftx] step 3/10 loss 1.25") is None
    assert ProgressEvent.parse('FTX_EVENT {"kind": "nope", "step": 1, "total": 2}') is None
    assert [run_status(c) for c in (0, 1, 2, 130, 143, -9)] == [
        "completed",
        "failed",
        "failed",
        "interrupted",
        "interrupted",
        "failed",
    ]


def test_checkpoints_are_staged_rotated_and_resumable(tmp_path: Path) -> None:
    layout = RunLayout(tmp_path)
    checkpoints = Checkpoints(layout, keep=2)
    for step in (1, 2, 3):
        checkpoints.save(
            step, TrainerState(step, step * 10), Rank(), lambda f: (f / "weights").write_text("w")
        )
    assert [p.name for p in checkpoints.complete()] == ["checkpoint-2", "checkpoint-3"]
    assert not list(layout.checkpoints.glob(".*partial"))
    newest = checkpoints.resume_point("auto")
    assert newest is not None and Checkpoints.state_of(newest) == TrainerState(3, 30)
    # A save that fails half-way leaves no checkpoint that looks complete.
    with pytest.raises(OSError):
        checkpoints.save(4, TrainerState(4, 40), Rank(), lambda f: (_ for _ in ()).throw(OSError))
    assert checkpoints.resume_point("auto") == newest
    (layout.checkpoints / "checkpoint-5").mkdir()  # no trainer_state.json: incomplete
    assert checkpoints.resume_point("auto") == newest


def test_batch_order_depends_only_on_data_and_seed() -> None:
    first = micro_batch_order(10, 4, 2.0, None, seed=1)
    assert first == micro_batch_order(10, 4, 2.0, None, seed=1)
    assert first != micro_batch_order(10, 4, 2.0, None, seed=2)
    assert len(first) == 6 and all(len(b) == 4 for b in first)  # wrapped to full batches
    assert sorted(set(i for b in first[:3] for i in b)) == list(range(10))  # one epoch
    assert len(micro_batch_order(10, 4, 2.0, 5, seed=1)) == 5  # max_steps wins

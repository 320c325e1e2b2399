"""The benchmarks that the README names but this machine cannot run at their real size run
here small, so they work the first time they are given a GPU."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from conftest import ROOT

RUNS = [
    "ftx full, packed",
    "Trainer full, flattening",
    "ftx LoRA, packed",
    "Trainer LoRA, flattening",
    "ftx full, padded",
    "Trainer full, padded",
    "ftx DPO LoRA",
    "ftx DPO full",
]


def test_the_gpu_benchmark_runs_every_path_on_a_cpu(tmp_path: Path) -> None:
    """bench/gpu.py --tiny: every run of the GPU table (ftx through its plan and worker,
    the Trainer beside it, DPO) measured on a tiny model; QLoRA named as not run here.
    Run as on a GPU box (bench/gpu_device.sh): one virtual environment's python holds
    torch and ftx, FTX_IMAGE=torch makes it the torch backend's environment."""
    from ftx.core import envs

    python = str(envs.ensure("torch"))
    command = [python, str(ROOT / "bench/gpu.py"), "--tiny", "--workdir", str(tmp_path),
               "--json", str(tmp_path / "gpu.json")]  # fmt: skip
    env = {**envs.process_env("torch"), "FTX_IMAGE": "torch"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=ROOT, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    found = json.loads((tmp_path / "gpu.json").read_text())
    assert found["probe"]["device"] == "CPU" and found["probe"]["peak_flops"] > 1e8
    measured = {r["label"]: r for r in found["results"]}
    for label in RUNS:
        run = measured[label]
        assert run["note"] == "" and run["tokens_per_s"] > 0, run
        assert 0 < run["mfu"] < 1, run  # against the peak it measured
        assert run["memory_gb"] > 0.05, run  # the run's process tree, sampled
    for bits in (4, 8):
        assert measured[f"ftx QLoRA {bits}-bit, packed"]["note"] == "not run: no CUDA GPU"
    # a flattening micro-batch holds about as many real tokens as a packed one
    assert measured["Trainer full, flattening"]["extra"]["batch"] >= 2
    table = result.stdout
    assert "| tiny | ftx full, packed |" in table and "x |" in table, table[-2000:]
    assert "measured float32 matmul peak" in table

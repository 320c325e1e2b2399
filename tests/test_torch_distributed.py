"""Multi-process torch training on CPU beyond the backend suite's data parallelism:
DeepSpeed ZeRO-2 (with offload) and ZeRO-3 with torchrun (gloo), and the MFU formula."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import ROOT, run_ftx, run_in_env

# Losses of different process layouts agree to float rounding (summation order differs).
TOLERANCE = 1e-4


def recipe(tmp_path: Path, model: Path, steps: int = 4) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(
        f"""
model: {{path: {model}}}
data:
  datasets: [{{path: {ROOT / "recipes/data/quickstart_train.jsonl"}}}]
  max_seq_len: 64
  max_samples: 64
  val_size: 8
method: {{finetuning: full}}
train:
  max_steps: {steps}
  learning_rate: 1.0e-3
  micro_batch_size: 4
  logging_steps: 1
  eval_steps: 2
"""
    )
    return path


def losses(out: Path) -> list[float]:
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


LAYOUTS = {
    "zero2": ["parallel.nproc_per_node=2", "train.micro_batch_size=2", "parallel.zero=2"],
    "zero2_offload": [
        "parallel.nproc_per_node=2",
        "train.micro_batch_size=2",
        "parallel.zero=2",
        "parallel.offload=optimizer",
    ],
    "zero3": [
        "parallel.nproc_per_node=2",
        "train.micro_batch_size=1",
        "train.grad_accum=2",
        "parallel.zero=3",
    ],
}


@pytest.fixture(scope="module")
def single_process(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path) -> Path:
    tmp = tmp_path_factory.mktemp("single")
    result = run_ftx("run", str(recipe(tmp, tiny_llama)), "--out", str(tmp / "out"))
    assert result.returncode == 0, result.stderr[-2000:]
    return tmp / "out"


@pytest.mark.slow
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_two_processes_match_one_with_the_same_global_batch(
    layout: str, tmp_path: Path, tiny_llama: Path, single_process: Path
) -> None:
    out = tmp_path / "out"
    result = run_ftx("run", str(recipe(tmp_path, tiny_llama)), "--out", str(out), *LAYOUTS[layout])
    assert result.returncode == 0, result.stderr[-2000:]
    launch = (out / "plan/launch.sh").read_text()
    assert "--nproc_per_node=2" in launch
    ds = json.loads((out / "plan/ds_config.json").read_text())
    assert ds["zero_optimization"]["stage"] == int(layout[4])
    assert ("offload_optimizer" in ds["zero_optimization"]) == layout.endswith("offload")
    assert losses(out) == pytest.approx(losses(single_process), abs=TOLERANCE)
    # The saved model (gathered from the shards under ZeRO-3) equals the single-process one.
    found = run_in_env(
        "torch",
        "import json, sys; from safetensors.torch import load_file;"
        "a = load_file(sys.argv[1]); b = load_file(sys.argv[2]);"
        "print(json.dumps({'keys': sorted(a) == sorted(b),"
        " 'diff': max(float((a[k] - b[k]).abs().max()) for k in a)}))",
        str(single_process / "final/model.safetensors"),
        str(out / "final/model.safetensors"),
    )
    assert found["keys"] and found["diff"] < TOLERANCE


def test_mfu_formula() -> None:
    found = run_in_env(
        "torch",
        "import json; from ftx.core.worker.throughput import flops_per_token, mfu, peak_flops;"
        "per = flops_per_token(500_000_000, 24, 896, 2048, full=True);"
        "print(json.dumps({'per': per, 'peak': peak_flops('NVIDIA H100 80GB HBM3'),"
        " 'mfu': mfu(10_000, per, 989e12), 'lora': flops_per_token(10, 1, 1, 1, full=False),"
        " 'unknown': peak_flops('Tesla T4')}))",
    )
    assert found["per"] == 6 * 500_000_000 + 12 * 24 * 896 * 2048
    assert found["peak"] == 989e12 and found["unknown"] is None
    assert found["mfu"] == pytest.approx(10_000 * found["per"] / 989e12)
    assert found["lora"] == 4 * 10 + 12

"""`ftx compare`: one recipe on torch, paddle and mindformers from the same weights and
batches gives the same losses step by step and exports with the same logits; runs that
differ fail with exit code 1."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import run_ftx
from training import feedback_recipe, pairs_recipe, recipe, train

pytestmark = pytest.mark.env

EVERY = "torch,paddle,mindformers"


def compare(path: Path, out: Path, backends: str, *overrides: str, steps: int = 3) -> dict:
    result = run_ftx(
        "compare", str(path), *overrides, "--backends", backends, "--steps", str(steps),
        "--out", str(out), timeout=1800,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads((out / "comparison.json").read_text())
    assert found["passed"] and found["problems"] == []
    assert (out / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [s["step"] for s in found["steps"]] == list(range(1, steps + 1))
    for step in found["steps"]:
        assert sorted(step["losses"]) == sorted(backends.split(","))
    assert found["logits_max_diff"] is not None and found["logits_max_diff"] <= 1e-3
    assert "the runs agree" in result.stderr + result.stdout
    return found


def test_full_finetuning_agrees_on_every_backend(tmp_path: Path, tiny_llama: Path) -> None:
    found = compare(recipe(tmp_path, tiny_llama), tmp_path / "cmp", EVERY)
    assert found["steps"][0]["max_relative"] <= 1e-4
    assert all(s["max_relative"] <= 1e-4 for s in found["steps"])  # measured: ~3e-7


@pytest.mark.heavy
def test_lora_agrees_on_every_backend(tmp_path: Path, tiny_llama: Path) -> None:
    lora = ["method.finetuning=lora", "method.lora.rank=4", "method.lora.targets=[q_proj,v_proj]"]
    found = compare(recipe(tmp_path, tiny_llama), tmp_path / "cmp", EVERY, *lora)
    # One seeded LoRA A on every backend: the adapters train alike, not just start alike.
    grad_norms = found["steps"][1]["grad_norms"]
    assert max(grad_norms.values()) - min(grad_norms.values()) <= 1e-4 * max(grad_norms.values())
    for backend in EVERY.split(","):
        adapter = tmp_path / "cmp" / backend / "final" / "adapter_config.json"
        assert json.loads(adapter.read_text())["r"] == 4


@pytest.mark.heavy
def test_qwen2_with_biases_agrees_on_torch_and_mindformers(
    tmp_path: Path, tiny_qwen2: Path
) -> None:
    """Qwen2 (q/k/v biases, tied embeddings) trains on CPU in torch and MindFormers
    (PaddleFormers builds it only with PaddleFleet, on GPUs)."""
    compare(recipe(tmp_path, tiny_qwen2), tmp_path / "cmp", "torch,mindformers",
            "method.finetuning=lora")  # fmt: skip


def test_runs_that_differ_fail_with_exit_code_1(tmp_path: Path, tiny_llama: Path) -> None:
    path = recipe(tmp_path, tiny_llama, steps=3)
    slow = train(path, tmp_path / "slow", "torch")
    fast = train(path, tmp_path / "fast", "torch", "train.learning_rate=1.0e-2")
    result = run_ftx("compare", str(slow), str(fast), "--out", str(tmp_path / "cmp"))
    assert result.returncode == 1, result.stderr
    found = json.loads((tmp_path / "cmp/comparison.json").read_text())
    assert sorted(found["runs"]) == ["torch:fast", "torch:slow"]
    # the same weights and batch: step 1 agrees, the learning rate shows from step 2 on
    assert found["steps"][0]["max_relative"] <= 1e-4
    assert found["problems"][0].startswith("step 2:") and "step 2" in result.stderr
    missing = run_ftx("compare", str(tmp_path / "nosuch"), str(slow))
    assert missing.returncode == 2 and "nosuch" in missing.stderr


@pytest.mark.parametrize(
    ("stage", "finetuning"),
    [
        pytest.param("dpo", "lora", marks=pytest.mark.heavy),
        pytest.param("kto", "full", marks=pytest.mark.heavy),
        pytest.param("rm", "full", marks=pytest.mark.heavy),
    ],
)
def test_preference_runs_agree_on_every_backend(
    tmp_path: Path, tiny_llama: Path, stage: str, finetuning: str
) -> None:
    """20 steps of dpo (LoRA), kto and rm (full): the same losses, rewards,
    log-probabilities, KL estimates and scores on the three backends, and (rm) exports that
    transformers loads as reward models scoring alike (the backend suite runs the other
    pairings for 6 steps)."""
    made = feedback_recipe if stage == "kto" else pairs_recipe
    path = made(tmp_path, tiny_llama)
    path.write_text(path.read_text().replace("stage: dpo", f"stage: {stage}"))
    lr = "5.0e-3" if finetuning == "lora" else "1.0e-3"  # full: the SFT comparison's rate
    found = compare(path, tmp_path / "cmp", EVERY,
                    f"method.finetuning={finetuning}", f"train.learning_rate={lr}",
                    steps=20)  # fmt: skip
    wanted = {
        "dpo": {"rewards_chosen", "rewards_rejected", "rewards_margins", "logps_chosen"},
        "kto": {"rewards_chosen", "rewards_rejected", "rewards_margins", "logps_chosen", "kl"},
        "rm": {"rewards_chosen", "rewards_rejected", "rewards_margins", "rewards_accuracies"},
    }[stage]
    for step in found["steps"]:
        assert wanted <= set(step["values"])
        assert all(sorted(v) == sorted(EVERY.split(",")) for v in step["values"].values())
    assert any(max(s["values"]["rewards_margins"].values()) != 0 for s in found["steps"])


@pytest.mark.heavy
def test_qwen2_dpo_agrees_on_torch_and_mindformers(tmp_path: Path, tiny_qwen2: Path) -> None:
    compare(pairs_recipe(tmp_path, tiny_qwen2), tmp_path / "cmp", "torch,mindformers", steps=20)

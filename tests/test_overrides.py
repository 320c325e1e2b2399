"""A recipe's backends.<name> section: checked at validate time against the keys the
backend's worker honours, and every honoured key really changes what runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import ROOT, run_ftx
from ftx.core.registry import get_spec

TORCH = get_spec("torch")


def recipe_with(tmp_path: Path, section: str) -> Path:
    """A small recipe (no epochs or warmup set, so any alias may set them) plus ``section``."""
    path = tmp_path / "r.yaml"
    path.write_text(
        f"""
model: {{path: {ROOT / "recipes/models/llama-2-7b"}}}
data: {{datasets: [{ROOT / "recipes/data/alpaca_demo.jsonl"}], max_seq_len: 128}}
method: {{finetuning: lora}}
parallel: {{nproc_per_node: 2, zero: 2}}
{section}
"""
    )
    return path


def plan_files(tmp_path: Path, recipe: Path, name: str) -> dict[str, str]:
    out = tmp_path / name
    result = run_ftx("plan", str(recipe), "--backend", "torch", "--out", str(out))
    assert result.returncode == 0, result.stderr
    return {p.name: p.read_text() for p in sorted((out / "plan").iterdir())}


def test_every_torch_override_key_changes_the_plan(tmp_path: Path) -> None:
    base = plan_files(tmp_path, recipe_with(tmp_path, ""), "base")
    unchanged = []
    for key, override in sorted(TORCH.overrides.items()):
        section = f"backends: {{torch: {{{key}: {json.dumps(override.example)}}}}}"
        files = plan_files(tmp_path, recipe_with(tmp_path, section), key)
        if files == base:
            unchanged.append(key)
    assert unchanged == []


def test_an_alias_reaches_every_file_derived_from_its_recipe_key(tmp_path: Path) -> None:
    recipe = recipe_with(
        tmp_path, "backends: {torch: {gradient_accumulation_steps: 4, bf16: true}}"
    )
    files = plan_files(tmp_path, recipe, "out")
    worker, ds = json.loads(files["worker.json"]), json.loads(files["ds_config.json"])
    assert worker["train"]["grad_accum"] == 4 and ds["gradient_accumulation_steps"] == 4
    assert worker["train"]["precision"] == "bf16" and ds["bf16"]["enabled"] is True


def test_native_keys_reach_the_worker(tmp_path: Path) -> None:
    recipe = recipe_with(tmp_path, "backends: {torch: {adam_beta2: 0.95, adam_epsilon: 1}}")
    train = json.loads(plan_files(tmp_path, recipe, "out")["worker.json"])["train"]
    assert train["adam_beta2"] == 0.95 and train["adam_epsilon"] == 1.0


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ("{adam_beta3: 0.9}", "unknown key(s) adam_beta3 for the torch worker"),
        ("{bf16: false}", "bf16: False is not one of True"),
        ("{learning_rate: fast}", "backends.torch.learning_rate: expected a float"),
        ("{gradient_accumulation_steps: 0}", "grad_accum"),
        ("{max_grad_norm: true}", "expected a float, got True"),
    ],
)
def test_bad_override_keys_fail_validation(tmp_path: Path, section: str, message: str) -> None:
    recipe = recipe_with(tmp_path, f"backends: {{torch: {section}}}")
    for args in (["validate", str(recipe)], ["validate", str(recipe), "--backend", "torch"]):
        result = run_ftx(*args)
        assert result.returncode == 2, (args, result.stdout)
        assert message in result.stderr and "Traceback" not in result.stderr
        assert "backends.torch" in result.stderr


def test_a_section_for_an_unknown_backend_is_refused(tmp_path: Path) -> None:
    result = run_ftx("validate", str(recipe_with(tmp_path, "backends: {jax: {x: 1}}")))
    assert result.returncode == 2 and "unknown backend section(s) jax" in result.stderr

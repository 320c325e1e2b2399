"""Recipe validation: good recipes pass, bad ones fail with the right message."""

from __future__ import annotations

from pathlib import Path

import pytest

from ftx.core.errors import FtxError
from ftx.core.recipe import load_recipe

BASE = """\
model:
  path: ./model
data:
  datasets: [train.jsonl]
"""


def recipe_file(tmp_path: Path, extra: str = "", base: str = BASE) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(base + extra)
    return path


def test_minimal_recipe_gets_defaults_and_absolute_paths(tmp_path: Path) -> None:
    loaded = load_recipe(recipe_file(tmp_path))
    r = loaded.recipe
    assert r.method.stage == "sft" and r.method.finetuning == "lora"
    assert r.train.num_epochs == 3.0 and r.train.max_steps is None
    assert r.model.path == str(tmp_path / "model")
    assert r.data.datasets[0].path == str(tmp_path / "train.jsonl")
    assert r.parallel.dp == 1 and r.parallel.world_size == 1


def test_dataset_shorthands(tmp_path: Path) -> None:
    r = load_recipe(recipe_file(tmp_path, base=BASE.replace("[train.jsonl]", "alpaca_demo,x.csv")))
    first, second = r.recipe.data.datasets
    assert first.name == "alpaca_demo" and first.path is None
    assert second.path == str(tmp_path / "x.csv")


def test_overrides_merge_on_top(tmp_path: Path) -> None:
    loaded = load_recipe(
        recipe_file(tmp_path, "train:\n  learning_rate: 1.0e-5\n"),
        ["train.learning_rate=1e-4", "data.max_seq_len=512", "method.lora.targets=[q_proj,v_proj]"],
    )
    assert loaded.recipe.train.learning_rate == pytest.approx(1e-4)
    assert loaded.recipe.data.max_seq_len == 512
    assert loaded.recipe.method.lora.targets == ["q_proj", "v_proj"]
    assert (
        loaded.digest
        != load_recipe(recipe_file(tmp_path, "train:\n  learning_rate: 1.0e-5\n")).digest
    )


def test_max_steps_wins_over_epochs_in_the_recipe_and_in_overrides(tmp_path: Path) -> None:
    """As in transformers' TrainingArguments and LLaMA-Factory: both set, max_steps decides
    the run's length (the shared schedule), whether the recipe or an override sets it."""
    from ftx.core.worker.schedule import Schedule
    from ftx.core.worker_config import worker_config

    def steps(extra: str, *overrides: str) -> tuple[bool, int]:
        loaded = load_recipe(recipe_file(tmp_path, extra), [*overrides, "train.trainer=ftx"])
        args = worker_config(loaded.recipe, "torch").train
        return loaded.recipe.train.steps_win, Schedule.plan(10, args, 1).total_steps

    assert steps("train:\n  epochs: 3\n  max_steps: 5\n") == (True, 5)
    assert steps("train:\n  epochs: 3\n", "train.max_steps=5") == (True, 5)
    assert steps("train:\n  epochs: 3\n") == (False, 30)  # 10 rows, batch 1, 3 epochs


BAD = [
    # (recipe text appended to BASE, override list, expected fragments of the message)
    (
        "train:\n  learning_rat: 1.0e-4\n",
        [],
        [":6: train.learning_rat", "did you mean 'learning_rate'"],
    ),
    ("trian:\n  epochs: 1\n", [], ["unknown key 'trian'", "did you mean 'train'"]),
    ("train:\n  warmup_ratio: 0.1\n  warmup_steps: 5\n", [], ["warmup_ratio' or 'warmup_steps'"]),
    ("train:\n  learning_rate: -1\n", [], ["train.learning_rate", "greater than 0"]),
    ("train:\n  precision: fp8\n", [], ["train.precision", "'fp32', 'bf16' or 'fp16'"]),
    ("train:\n  scheduler: cosin\n", [], ["train.scheduler"]),
    ("method:\n  stage: ppo\n", [], ["method.stage", "'sft', 'pt', 'dpo', 'kto' or 'rm'"]),
    (
        "method:\n  stage: dpo\n  preference:\n    los: ipo\n",
        [],
        ["method.preference.los", "did you mean 'loss'"],
    ),
    ("method:\n  finetuning: adapter\n", [], ["method.finetuning"]),
    ("method:\n  lora:\n    rnk: 8\n", [], ["method.lora.rnk", "did you mean 'rank'"]),
    ("parallel:\n  nproc_per_node: 3\n  tp: 2\n", [], ["parallel", "must divide the world size"]),
    ("parallel:\n  offload: optimizer\n", [], ["offload needs a ZeRO stage"]),
    ("parallel:\n  zero: 4\n", [], ["parallel.zero", "less than or equal to 3"]),
    ("", ["data.val_size=1.5"], ["data.val_size", "must be a whole number"]),
    ("data:\n  max_seq_len: 64\n", [], ["key 'data' appears twice"]),
    ("output:\n  merge_lora: true\nmethod:\n  finetuning: full\n", [], ["merge_lora needs"]),
    ("", ["train.learning_rat=1e-4"], ["train.learning_rat", "did you mean 'learning_rate'"]),
    ("", ["train"], ["not of the form section.key=value"]),
    ("", ["model.path.x=1"], ["'model.path' is not a section"]),
]


@pytest.mark.parametrize(("extra", "overrides", "fragments"), BAD)
def test_bad_recipes_fail_with_clear_messages(
    tmp_path: Path, extra: str, overrides: list[str], fragments: list[str]
) -> None:
    path = recipe_file(tmp_path, extra)
    with pytest.raises(FtxError) as info:
        load_recipe(path, overrides)
    message = str(info.value)
    assert info.value.exit_code == 2
    if not overrides:
        assert str(path) in message
    for fragment in fragments:
        assert fragment in message, message
    assert "Traceback" not in message


def test_missing_required_keys(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("model: {}\n")
    with pytest.raises(FtxError) as info:
        load_recipe(path)
    assert "model.path" in str(info.value) and "missing" in str(info.value)
    assert "data" in str(info.value)


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("model:\n  path: [unclosed\ndata: x\n")
    with pytest.raises(FtxError, match=r"r\.yaml:\d+: not valid YAML"):
        load_recipe(path)


def test_missing_recipe_file(tmp_path: Path) -> None:
    with pytest.raises(FtxError, match="recipe file not found"):
        load_recipe(tmp_path / "nope.yaml")


def test_every_shipped_recipe_validates() -> None:
    recipes = sorted((Path(__file__).parent.parent / "recipes").glob("*.yaml"))
    assert len(recipes) >= 5
    for path in recipes:
        load_recipe(path)

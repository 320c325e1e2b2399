"""Translator snapshots: every shipped recipe, on every backend that plans it, rendered to
the files of OUT/plan and compared with tests/snapshots/<backend>/<recipe>/. A translation
change shows up as a reviewed diff: `make snapshots` rewrites them."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import ROOT, run_in_env
from ftx.core.recipe import load_recipe
from ftx.core.registry import backend_names
from ftx.core.runner import target_for

SNAPSHOTS = ROOT / "tests" / "snapshots"
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))
CASES = [(b, r) for b in backend_names() for r in RECIPES]


def job_script(backend: str, recipe: Path, out: Path) -> str:
    """OUT/plan/job.sbatch of a recipe (pure), for a run in ``out``; ftx and FTX_HOME as a
    shared filesystem would hold them."""
    from ftx.core.contract import RunLayout
    from ftx.core.schedulers.slurm import sbatch_script

    target = target_for(load_recipe(recipe), backend, here=False)
    return sbatch_script(
        target.recipe,
        backend,
        RunLayout(out),
        ftx="/shared/ftx/bin/ftx",
        ftx_home="/shared/ftx-home",
    )


def rendered(backend: str, recipe: Path) -> dict[str, str]:
    """The plan files and the Slurm job script, with the checkout's path as $REPO (plans
    hold no other absolute path)."""
    target = target_for(load_recipe(recipe), backend, here=False)
    files = target.translate().rendered()
    files["job.sbatch"] = job_script(backend, recipe, Path(target.recipe.output.dir))
    return {name: text.replace(str(ROOT), "$REPO") for name, text in files.items()}


def snapshot_files(folder: Path) -> list[str]:
    """Every file under a snapshot folder, by its path inside it (a/b.json)."""
    return [str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()]


@pytest.mark.parametrize(("backend", "recipe"), CASES, ids=[f"{b}-{r.stem}" for b, r in CASES])
def test_plan_matches_its_snapshot(backend: str, recipe: Path, request) -> None:
    folder = SNAPSHOTS / backend / recipe.stem
    files = rendered(backend, recipe)
    if request.config.getoption("--update-snapshots"):
        folder.mkdir(parents=True, exist_ok=True)
        for stale in set(snapshot_files(folder)) - set(files):
            (folder / stale).unlink()
        for name, text in files.items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text(text)
    assert folder.is_dir(), f"no snapshot for {backend}/{recipe.stem}: run `make snapshots`"
    assert sorted(snapshot_files(folder)) == sorted(files)
    for name, text in files.items():
        assert text == (folder / name).read_text(), f"{backend}/{recipe.stem}/{name} changed"
    assert all("/tmp" not in text and "$OUT" not in text for text in files.values())


@pytest.mark.parametrize("backend", backend_names())
def test_every_shipped_recipe_has_a_snapshot(backend: str) -> None:
    assert sorted(p.name for p in (SNAPSHOTS / backend).iterdir()) == [r.stem for r in RECIPES]


NATIVE_PARSERS = """
import json, sys
from pathlib import Path
from deepspeed.runtime.config import DeepSpeedConfig
from peft import LoraConfig
from ftx.core.contract import WorkerConfig
checked = {}
for folder in sorted(Path(sys.argv[1]).iterdir()):
    found = []
    config = WorkerConfig.read(folder / "worker.json")
    found.append("worker.json")
    if (folder / "peft_config.json").exists():
        lora = LoraConfig(**json.loads((folder / "peft_config.json").read_text()))
        assert lora.r == config.method.lora.rank and lora.lora_alpha == config.method.lora.alpha
        found.append("peft_config.json")
    if (folder / "ds_config.json").exists():
        ds = DeepSpeedConfig(json.loads((folder / "ds_config.json").read_text()))
        assert ds.zero_optimization_stage > 0
        assert ds.gradient_accumulation_steps == config.train.grad_accum
        assert ds.train_micro_batch_size_per_gpu == config.train.micro_batch_size
        found.append("ds_config.json")
    checked[folder.name] = found
print(json.dumps(checked))
"""


@pytest.mark.env
def test_torch_snapshots_pass_the_native_parsers() -> None:
    """worker.json by the worker's own reader, peft_config by peft.LoraConfig, ds_config by
    DeepSpeed's DeepSpeedConfig, in the torch environment."""
    checked = run_in_env("torch", NATIVE_PARSERS, str(SNAPSHOTS / "torch"))
    assert sorted(checked) == [r.stem for r in RECIPES]
    assert "ds_config.json" in checked["qwen2_7b_full_zero3"]
    assert "peft_config.json" in checked["llama2_7b_lora_sft"]


PADDLEFORMERS_PARSER = """
import json, sys, yaml
from pathlib import Path
from paddleformers.cli.hparams import get_train_args
from ftx.core.contract import WorkerConfig
checked = {}
for folder in sorted(Path(sys.argv[1]).iterdir()):
    config = WorkerConfig.read(folder / "worker.json")
    raw = yaml.safe_load((folder / "paddleformers.yaml").read_text())
    raw.pop("custom_register_path", None)  # the template module is written with the data
    # PaddleFormers' own parser over its own dataclasses: unknown keys raise.
    model, data, _, _, train = get_train_args(raw)
    assert model.stage == config.method.stage.upper()
    assert train.learning_rate == config.train.learning_rate
    assert train.per_device_train_batch_size == config.train.micro_batch_size
    assert train.gradient_accumulation_steps == config.train.grad_accum
    assert data.max_seq_len == config.data.max_seq_len
    assert model.lora == (config.method.finetuning == "lora")
    checked[folder.name] = {"stage": model.stage, "lora": model.lora,
                            "sharding": train.sharding if raw.get("sharding") else None,
                            "bf16": train.bf16, "recompute": train.recompute_granularity}
print(json.dumps(checked))
"""

PADDLENLP_PARSER = """
import json, sys
from pathlib import Path
from paddlenlp.trainer import PdArgumentParser
from paddlenlp.trl import DataConfig, ModelConfig, SFTConfig
checked = {}
for folder in sorted(Path(sys.argv[1]).iterdir()):
    if not (folder / "run_finetune.json").exists():
        continue
    args = json.loads((folder / "run_finetune.json").read_text())
    # run_finetune.py's dataclasses (its GenerateArgument/ReftArgument hold no key of ours);
    # parse_dict raises on any key they do not know.
    model, data, train = PdArgumentParser((ModelConfig, DataConfig, SFTConfig)).parse_dict(args)
    checked[folder.name] = {"lora": model.lora, "max_length": data.max_length,
                            "zero_padding": data.zero_padding}
print(json.dumps(checked))
"""


@pytest.mark.env
def test_paddle_snapshots_pass_paddleformers_and_paddlenlp_parsers() -> None:
    """paddleformers.yaml by PaddleFormers' CLI argument parser (paddle environment),
    run_finetune.json by PaddleNLP 3.0's PdArgumentParser (the test-only oracle)."""
    from oracles import PADDLENLP

    checked = run_in_env("paddle", PADDLEFORMERS_PARSER, str(SNAPSHOTS / "paddle"))
    assert sorted(checked) == [r.stem for r in RECIPES]
    assert checked["qwen2_7b_lora_paddle"]["lora"] and checked["qwen2_7b_lora_paddle"]["bf16"]
    assert checked["qwen2_7b_lora_paddle"]["sharding"] is not None
    assert checked["qwen2_7b_lora_paddle"]["recompute"] == "full"
    legacy = run_in_env(PADDLENLP, PADDLENLP_PARSER, str(SNAPSHOTS / "paddle"))
    assert legacy["qwen2_7b_lora_paddle"]["lora"] is True
    assert legacy["quickstart"] == {"lora": False, "max_length": 64, "zero_padding": False}

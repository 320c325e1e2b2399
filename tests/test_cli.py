"""The CLI as a user runs it: real `ftx` subprocesses, exit codes and messages."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import FTX, ROOT, run_ftx, run_ftx_here

RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))


def test_validate_typo_exits_2_with_did_you_mean(tmp_path: Path) -> None:
    bad = tmp_path / "typo.yaml"
    bad.write_text(
        (ROOT / "recipes/quickstart.yaml").read_text().replace("learning_rate:", "learning_rat:")
    )
    result = run_ftx("validate", str(bad))
    assert result.returncode == 2
    assert "train.learning_rat" in result.stderr
    assert "did you mean 'learning_rate'" in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 3  # one paragraph, wrapped at most


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.stem for p in RECIPES])
def test_every_shipped_recipe_validates(recipe: Path) -> None:
    result = run_ftx("validate", str(recipe))
    assert result.returncode == 0, result.stderr
    assert "valid" in result.stdout


def test_validate_against_backend_capabilities(tmp_path: Path) -> None:
    result = run_ftx(
        "validate", "recipes/quickstart.yaml", "--backend", "torch", "method.finetuning=prefix"
    )
    assert result.returncode == 2
    assert "method.finetuning: 'prefix' is trained by no backend" in result.stderr
    result = run_ftx(
        "validate", "recipes/quickstart.yaml", "--backend", "paddle", "method.finetuning=qlora"
    )
    assert result.returncode == 2
    assert "'qlora' is not supported by the paddle backend" in result.stderr
    assert "backends that have it: torch" in result.stderr


def test_max_steps_on_the_command_line_wins_over_the_recipes_epochs(tmp_path: Path) -> None:
    """The quickstart sets epochs: 6; `train.max_steps=20` is taken (as transformers and
    LLaMA-Factory take it), said on the console and written into the worker's contract."""
    out = tmp_path / "plan"
    result = run_ftx("plan", "recipes/quickstart.yaml", "--backend", "torch", "--out", str(out),
                     "train.max_steps=20")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "train.max_steps 20 wins over train.epochs 6" in " ".join(result.stderr.split())
    assert json.loads((out / "plan/worker.json").read_text())["train"]["max_steps"] == 20


def test_unknown_backend_and_runtime() -> None:
    result = run_ftx("plan", "recipes/quickstart.yaml", "--backend", "jax")
    assert result.returncode == 2 and "unknown backend 'jax'" in result.stderr


def test_plan_writes_launch_script(tmp_path: Path) -> None:
    result = run_ftx(
        "plan", "recipes/quickstart.yaml", "--backend", "torch", "--out", str(tmp_path)
    )
    assert result.returncode == 0, result.stderr
    launch = tmp_path / "plan" / "launch.sh"
    assert launch.exists() and launch.stat().st_mode & 0o111
    text = launch.read_text()
    # one process, no DeepSpeed: the worker starts directly, without torchrun
    assert "exec python \\\n    -m \\\n    ftx.backends.torch.worker" in text
    two = run_ftx(
        "plan",
        "recipes/quickstart.yaml",
        "--out",
        str(tmp_path / "two"),
        "parallel.nproc_per_node=2",
    )
    assert two.returncode == 0, two.stderr
    assert "torchrun" in (tmp_path / "two/plan/launch.sh").read_text()
    config = json.loads((tmp_path / "plan" / "worker.json").read_text())
    assert config["train"]["learning_rate"] == pytest.approx(1e-3)
    assert config["data"]["prepared"] == "data"  # relative to OUT: the plan can move
    # plan runs nothing: no data, no metrics
    assert not (tmp_path / "data").exists() and not (tmp_path / "metrics.jsonl").exists()


def test_plan_lora_multinode_writes_peft_config_and_rendezvous(tmp_path: Path) -> None:
    result = run_ftx(
        "plan",
        "recipes/llama2_7b_lora_sft.yaml",
        "--out",
        str(tmp_path),
        "parallel.nnodes=2",
        "parallel.node_rank=1",
        "parallel.nproc_per_node=8",
        "parallel.master_addr=10.0.0.1",
    )
    assert result.returncode == 0, result.stderr
    peft = json.loads((tmp_path / "plan" / "peft_config.json").read_text())
    assert peft["r"] == 8 and peft["lora_alpha"] == 16 and peft["target_modules"] == "all-linear"
    launch = (tmp_path / "plan" / "launch.sh").read_text()
    # the same plan on every node: launch.sh defaults to node 0; ftx run (or ftx launch)
    # gives each node its rank through FTX_NODE_RANK
    for flag in ("--nnodes=2", '"--node_rank=${FTX_NODE_RANK}"', "--nproc_per_node=8"):
        assert flag in launch
    assert 'if [ -z "${FTX_MASTER_ADDR:-}" ]; then FTX_MASTER_ADDR=10.0.0.1; fi\n' in launch
    assert "export FTX_MASTER_ADDR\n" in launch


def test_backend_overrides_are_checked(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        (ROOT / "recipes/quickstart.yaml").read_text().replace("../", str(ROOT) + "/")
        + "backends:\n  torch:\n    adam_beta2: 0.95\n"
    )
    result = run_ftx("plan", str(recipe), "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    args = json.loads((tmp_path / "out/plan/worker.json").read_text())["train"]
    assert args["adam_beta2"] == 0.95
    recipe.write_text(recipe.read_text().replace("adam_beta2", "adam_beta3"))
    result = run_ftx("plan", str(recipe), "--out", str(tmp_path / "out2"))
    assert result.returncode == 2 and "backends.torch: unknown key(s) adam_beta3" in result.stderr


def test_backends_table_comes_from_the_capability_matrix() -> None:
    result = run_ftx("backends")
    assert result.returncode == 0
    assert "torch" in result.stdout and "lora" in result.stdout and "transformers" in result.stdout


def _commands() -> list[list[str]]:
    """Every command and subcommand the CLI registers (a new one is covered by itself)."""
    import click

    from ftx.core.cli import commands

    found = []

    def walk(group: click.Group, prefix: list[str]) -> None:
        for name, command in sorted(group.commands.items()):
            found.append([*prefix, name])
            if isinstance(command, click.Group):
                walk(command, [*prefix, name])

    walk(commands(), [])
    return found


COMMANDS = _commands()


def test_a_command_imports_only_its_own_module() -> None:
    """`ftx convert` starts without the modules of the other commands (pydantic, the
    recipe schema); every command is in the table that says where it lives."""
    from ftx.core.cli import COMMAND_MODULES, commands

    registered = commands().commands
    assert set(COMMAND_MODULES) == set(registered)
    for name, command in registered.items():
        assert command.callback.__module__ == f"ftx.core.cli.{COMMAND_MODULES[name]}", name
    probe = (
        "import sys\nsys.argv = ['ftx', '-q', 'convert', '--help']\n"
        "from ftx.core.cli import main\ntry:\n    main()\nexcept SystemExit:\n    pass\n"
        "print('pydantic' in sys.modules, 'ftx.core.recipe.schema' in sys.modules)"
    )
    found = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert found.stdout.strip().splitlines()[-1] == "False False", found.stdout + found.stderr


@pytest.mark.parametrize("command", COMMANDS, ids=[" ".join(c) for c in COMMANDS])
def test_every_command_help_shows_an_example(command: list[str]) -> None:
    result = run_ftx_here(*command, "--help")
    assert result.returncode == 0
    assert "Example:" in result.stdout or "Examples:" in result.stdout
    assert f"ftx {command[0]}" in result.stdout


def test_run_refuses_a_non_empty_output_folder(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("precious")
    result = run_ftx("run", "recipes/quickstart.yaml", "--out", str(tmp_path))
    assert result.returncode == 2
    assert "not empty" in result.stderr and "--force" in result.stderr
    assert (tmp_path / "keep.txt").read_text() == "precious"


def test_a_missing_container_engine_is_named_before_out_is_touched(tmp_path: Path) -> None:
    import os
    import subprocess

    out = tmp_path / "out"
    result = subprocess.run(
        [str(FTX), "run", "recipes/quickstart.yaml", "--runtime", "docker", "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock"},
    )
    assert result.returncode == 2
    assert "no-engine.sock" in result.stderr and "DOCKER_HOST" in result.stderr
    assert not out.exists()


def test_init_model_refuses_to_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "m"
    assert run_ftx("init-model", "--arch", "qwen2", "--out", str(out)).returncode == 0
    assert json.loads((out / "config.json").read_text())["model_type"] == "qwen2"
    again = run_ftx("init-model", "--arch", "qwen2", "--out", str(out))
    assert again.returncode == 2 and "--force" in again.stderr


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.stem for p in RECIPES])
def test_every_shipped_recipe_plans_on_every_backend(recipe: Path, tmp_path: Path) -> None:
    from ftx.core.registry import backend_names

    for backend in backend_names():
        result = run_ftx(
            "plan", str(recipe), "--backend", backend, "--out", str(tmp_path / backend)
        )
        assert result.returncode == 0, result.stderr
        assert (tmp_path / backend / "plan" / "launch.sh").exists()


def test_model_format_is_detected_and_checked(tmp_path: Path, tiny_llama: Path) -> None:
    import shutil

    from ftx.core.models.formats import detect_format

    assert detect_format(tiny_llama) == "hf"
    paddle = tmp_path / "paddle-model"
    shutil.copytree(tiny_llama, paddle)
    (paddle / "model.safetensors").unlink()
    (paddle / "model_state.pdparams").write_bytes(b"")
    assert detect_format(paddle) == "paddle"
    result = run_ftx(
        "validate", "recipes/quickstart.yaml", "--backend", "torch", f"model.path={paddle}"
    )
    assert result.returncode == 2
    assert "holds a paddle checkpoint" in result.stderr and "ftx convert" in result.stderr


def test_qlora_is_refused_on_a_cpu_only_machine_but_plans(tmp_path: Path) -> None:
    from ftx.core import envs

    envs.ensure("torch")
    assert envs.read_marker("torch")["devices"] == ["cpu"]
    result = run_ftx(
        "validate", "recipes/quickstart.yaml", "--backend", "torch", "method.finetuning=qlora"
    )
    # valid for the backend; `ftx run` on this machine refuses it, as the note says
    assert result.returncode == 0, result.stderr
    assert "'qlora' cannot run on this machine" in result.stderr and "CUDA GPU" in result.stderr
    refused = run_ftx("run", "recipes/quickstart.yaml", "--backend", "torch",
                      "method.finetuning=qlora", "--out", str(tmp_path / "r"))  # fmt: skip
    assert refused.returncode == 2 and "'qlora' cannot run on this machine" in refused.stderr
    assert not (tmp_path / "r").exists()
    planned = run_ftx(
        "plan",
        "recipes/llama2_7b_lora_sft.yaml",
        "--out",
        str(tmp_path),
        "method.finetuning=qlora",
        "method.quantization.type=fp4",
    )
    assert planned.returncode == 0, planned.stderr
    config = json.loads((tmp_path / "plan/worker.json").read_text())
    assert config["method"]["quantization"] == {
        "bits": 4,
        "quant_type": "fp4",
        "double_quant": True,
    }
    assert (tmp_path / "plan/peft_config.json").exists()

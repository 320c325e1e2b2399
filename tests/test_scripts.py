"""No recipe string runs as a command in a script ftx writes (launch.sh, job.sbatch):
values are quoted by one helper (ftx.core.scripts) or checked where they enter."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT, run_ftx
from ftx.core import scripts

HOSTILE = [
    "$(touch MARKER)",
    "`touch MARKER`",
    '"; touch MARKER; echo "',
    "'; touch MARKER; echo '",
    "}; touch MARKER; ${x",
    "a\\b $HOME ${HOME} %j",
    "line one\ntouch MARKER",
]


def bash(script: str, cwd: Path, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, cwd=cwd,
                            env=env or dict(os.environ))  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize("template", HOSTILE)
def test_a_quoted_value_reaches_the_program_as_it_is_and_runs_nothing(
    template: str, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    value = template.replace("MARKER", str(marker))
    printed = bash(
        scripts.export("A", value)
        + scripts.default_export("B", value)
        + f'printf \'%s|%s|%s\' "$A" "$B" {scripts.word(value)}',
        tmp_path,
    )
    assert printed == f"{value}|{value}|{value}"
    # a value the environment gives wins over the plan's default
    env = {**os.environ, "B": "from-the-scheduler"}
    assert bash(scripts.default_export("B", value) + 'printf %s "$B"', tmp_path, env) == (
        "from-the-scheduler"
    )
    assert not marker.exists()


def test_only_the_node_contract_expands_in_a_launch_argument(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    word = scripts.reference_word(f"--master_addr=${{FTX_MASTER_ADDR}}$(touch {marker})`id`")
    env = {**os.environ, "FTX_MASTER_ADDR": "node-0"}
    assert bash(f"printf %s {word}", tmp_path, env) == f"--master_addr=node-0$(touch {marker})`id`"
    assert not marker.exists()


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("parallel.master_addr=$(touch /tmp/x)", "parallel.master_addr"),
        ("parallel.master_addr=a`id`", "parallel.master_addr"),
        ("parallel.master_addr=", "is empty"),
        ('scheduler.slurm.partition=gpu"; rm -rf ~; "', "scheduler.slurm.partition"),
        ("scheduler.slurm.account=a b", "scheduler.slurm.account"),
        ("scheduler.slurm.job_name=$(id)", "scheduler.slurm.job_name"),
        ("scheduler.slurm.gres=gpu:8 --wrap=id", "scheduler.slurm.gres"),
    ],
)
def test_values_that_reach_a_script_are_checked_where_they_enter(
    override: str, needle: str
) -> None:
    result = run_ftx("validate", "recipes/quickstart.yaml", override)
    assert result.returncode == 2, result.stderr
    assert needle in result.stderr and "Traceback" not in result.stderr


def test_a_newline_in_the_output_folder_or_an_sbatch_option_is_refused(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    text = (ROOT / "recipes/quickstart.yaml").read_text()
    recipe.write_text(text.replace("  dir: ../runs/quickstart", '  dir: "runs/a\\nb"'))
    result = run_ftx("validate", str(recipe))
    assert result.returncode == 2 and "output.dir" in result.stderr, result.stderr
    extra = run_ftx("validate", "recipes/quickstart.yaml",
                    'scheduler.slurm.extra=["--comment=a\\u0007b"]')  # fmt: skip
    assert extra.returncode == 2 and "scheduler.slurm.extra" in extra.stderr, extra.stderr


def fake_tools(folder: Path, *names: str) -> dict[str, str]:
    """Programs named ``names`` that print their arguments one per line, first on PATH."""
    folder.mkdir()
    for name in names:
        tool = folder / name
        tool.write_text('#!/bin/sh\nprintf \'%s\\n\' "$0" "$@"\n')
        tool.chmod(0o755)
    return {**os.environ, "PATH": f"{folder}:{os.environ['PATH']}"}


def two_node_recipe(folder: Path, model: Path) -> Path:
    recipe = folder / "r.yaml"
    recipe.write_text(
        f"model: {{path: {model}}}\n"
        f"data: {{datasets: [{{path: {ROOT / 'recipes/data/quickstart_train.jsonl'}}}],"
        " max_seq_len: 32, max_samples: 8}\n"
        "train: {max_steps: 1}\n"
        "parallel: {nnodes: 2, master_addr: node-0.cluster.local}\n"
        "scheduler: {slurm: {partition: gpu_a100, job_name: my.job}}\n"
    )
    return recipe


def parses_and_runs(script: Path, env: dict[str, str]) -> list[str]:
    """`bash -n` accepts it; run with stand-in tools it exits 0: what they were given."""
    check = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert check.returncode == 0, (script, check.stderr)
    ran = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env)
    assert ran.returncode == 0, ran.stderr
    return ran.stdout.splitlines()


@pytest.mark.env
def test_generated_scripts_parse_and_run_nothing_from_a_hostile_folder_name(
    tiny_llama: Path, tmp_path: Path
) -> None:
    """Run folders named with $(...), backticks and quotes (legal in a path): launch.sh
    (a two-node torch plan, the node contract in it) and job.sbatch pass `bash -n`, and
    run with stand-ins for torchrun and srun hand the arguments over verbatim and run
    nothing. An OUT whose path an #SBATCH line cannot carry (a space, a quote) is refused
    before anything is written."""
    marker = tmp_path / "ran"
    recipe = two_node_recipe(tmp_path, tiny_llama)
    env = fake_tools(tmp_path / "bin", "torchrun", "srun")

    out = tmp_path / f"run-$(touch {marker})-`touch {marker}`-\"q\"-'s'"
    planned = run_ftx("plan", str(recipe), "--backend", "torch", "--out", str(out))
    assert planned.returncode == 0, planned.stderr[-2000:]
    assert "--master_addr=node-0.cluster.local" in parses_and_runs(out / "plan/launch.sh", env)

    refused = run_ftx("plan", str(recipe), "--backend", "torch", "--out", str(out) + "-b",
                      "--scheduler", "slurm")  # fmt: skip
    assert refused.returncode == 2 and "#SBATCH line cannot carry" in refused.stderr
    assert not Path(str(out) + "-b").exists()

    out = tmp_path / f"job-$(touch${{IFS}}{marker})-`touch${{IFS}}{marker}`"
    planned = run_ftx("plan", str(recipe), "--backend", "torch", "--out", str(out),
                      "--scheduler", "slurm")  # fmt: skip
    assert planned.returncode == 0, planned.stderr[-2000:]
    job = out / "plan/job.sbatch"
    assert str(out) in parses_and_runs(job, env)  # `ftx launch OUT`: the folder, verbatim
    assert "#SBATCH --job-name=my.job" in job.read_text()
    assert not marker.exists()

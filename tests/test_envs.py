"""Per-backend local environments: built from the lock file, recorded, inspected."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import FTX, run_ftx, run_in_env
from ftx.core import envs


def test_torch_env_is_ready_and_doctor_reports_versions_and_devices() -> None:
    result = run_ftx("env", "create", "torch", "--if-missing")
    assert result.returncode == 0, result.stderr
    listing = run_ftx("env", "list")
    assert "torch" in listing.stdout and "ready" in listing.stdout
    doctor = run_ftx("env", "doctor", "torch")
    assert doctor.returncode == 0
    assert "torch 2.13.0" in doctor.stdout and "cpu" in doctor.stdout
    record = envs.read_marker("torch")
    assert record["lock_sha256"] == envs.lock_digest(envs.get_spec("torch"))
    assert record["versions"]["transformers"] == "5.23.0"


def test_env_matches_its_lock_file_exactly() -> None:
    python = envs.env_python("torch")
    frozen = subprocess.run(
        [str(python), "-m", "pip", "freeze"], capture_output=True, text=True, check=True
    ).stdout
    installed = {line.split("==")[0].lower(): line for line in frozen.splitlines() if "==" in line}
    lock = envs.get_spec("torch").lock_file.read_text().splitlines()
    for pin in (ln for ln in lock if ln and not ln.startswith("#")):
        assert installed.get(pin.split("==")[0].lower()) == pin


def test_environments_are_byte_compiled() -> None:
    """Where PYTHONDONTWRITEBYTECODE is set (CI machines), an environment without .pyc
    files makes every process compile its frameworks again: the build compiles them."""
    site = envs._site_packages(envs.env_dir("torch"))
    tag = sys.implementation.cache_tag
    for module in ("torch/__init__.py", "transformers/modeling_utils.py", "peft/__init__.py"):
        source = site / module
        compiled = source.parent / "__pycache__" / f"{source.stem}.{tag}.pyc"
        assert compiled.is_file(), compiled


def test_an_environment_layered_on_another_installs_only_what_it_adds() -> None:
    """The TRL oracle is the torch environment plus TRL: it sees torch's packages beneath
    its own, holds only what its lock adds, and records what it was built on."""
    from oracles import TRL

    python = envs.ensure(TRL)
    own = envs._site_packages(envs.env_dir(TRL))
    assert (own / "trl").is_dir() and not (own / "torch").exists()
    found = subprocess.run([str(python), "-c", "import torch, trl; print(torch.__file__)"],
                           capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert found.startswith(str(envs.env_dir("torch"))), found
    record = envs.read_marker(TRL)
    assert record["base_lock_sha256"] == envs.lock_digest(envs.get_spec("torch"))
    assert envs.state(TRL) == "ready"


def test_worker_side_imports_with_only_the_backend_pins() -> None:
    # The worker must not pull in the core's own dependencies (pydantic, click, rich,
    # the recipe schema): backend images only promise their lock file.
    loaded = run_in_env(
        "torch",
        "import json, sys, ftx.backends.torch.worker, ftx.core.inventory;"
        "print(json.dumps(sorted(m for m in ('pydantic', 'click', 'rich', 'yaml',"
        " 'ftx.core.recipe', 'ftx.core.cli') if m in sys.modules)))",
    )
    assert loaded == []


def test_states_missing_incomplete_stale_and_remove(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("FTX_HOME", str(tmp_path))
    assert envs.state("paddle") == "missing"
    folder = tmp_path / "envs" / "paddle"
    folder.mkdir(parents=True)
    assert envs.state("paddle") == "incomplete"  # no marker: a create was interrupted
    (folder / envs.MARKER).write_text(json.dumps({"lock_sha256": "0" * 64}))
    assert envs.state("paddle") == "stale"  # the lock file changed since
    result = run_ftx_with_home(tmp_path, "env", "remove", "paddle")
    assert result.returncode == 0 and "removed" in result.stdout
    assert not folder.exists()
    doctor = run_ftx_with_home(tmp_path, "env", "doctor", "paddle")
    assert "ftx env create paddle" in doctor.stdout


def run_ftx_with_home(home: Path, *args: str) -> subprocess.CompletedProcess:
    from conftest import FTX

    return subprocess.run(
        [str(FTX), *args],
        capture_output=True,
        text=True,
        env=dict(os.environ, FTX_HOME=str(home), COLUMNS="200"),
    )


@pytest.mark.env
@pytest.mark.parametrize(
    ("name", "expected"),
    [("paddle", "paddlepaddle 3.3.1"), ("mindformers", "mindspore 2.9.0")],
)
def test_other_backend_envs_build_and_start(name: str, expected: str) -> None:
    result = run_ftx("env", "create", name, "--if-missing", timeout=1500)
    assert result.returncode == 0, result.stderr
    doctor = run_ftx("env", "doctor", name)
    assert expected in doctor.stdout and "cpu" in doctor.stdout


def test_ftx_from_a_wheel_is_copied_into_the_env(tmp_path: Path, monkeypatch) -> None:
    """Without a source checkout, ftx's installed package is copied into the environment."""
    import sys

    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path)], check=True)
    monkeypatch.setattr(envs, "source_root", lambda: None)
    subprocess.run(envs._ftx_install_command(tmp_path), check=True)
    found = subprocess.run(
        [str(tmp_path / "bin/python"), "-c", "import ftx.core.contract, ftx.core.prepared"],
        capture_output=True,
        text=True,
        cwd="/",
    )
    assert found.returncode != 0 and "numpy" in found.stderr  # ftx is there; numpy is the lock's
    layout = subprocess.run(
        [
            str(tmp_path / "bin/python"),
            "-c",
            "import ftx.core.contract; print(ftx.core.contract.__file__)",
        ],
        capture_output=True,
        text=True,
        cwd="/",
    )
    assert layout.returncode == 0 and str(tmp_path) in layout.stdout


def test_a_plan_says_which_environment_it_builds_and_a_cut_build_is_not_trusted(
    tmp_path: Path, tiny_llama: Path
) -> None:
    """`ftx plan --backend mindformers` needs mindspore to write MindRecord: before building
    the environment it says which, what for and what it costs; stopped (Ctrl-C) during the
    build, it leaves no environment a later command takes as ready."""
    import signal
    import time

    home = tmp_path / "home"
    env = {**os.environ, "FTX_HOME": str(home)}
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"model: {{path: {tiny_llama}}}\n"
        f"data: {{datasets: [{{path: {Path(__file__).parent.parent}"
        "/recipes/data/quickstart_train.jsonl}], max_seq_len: 32, max_samples: 8}\n"
        "train: {max_steps: 1}\n"
    )
    proc = subprocess.Popen(
        [str(FTX), "plan", str(recipe), "--backend",
         "mindformers", "--out", str(tmp_path / "out")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    deadline = time.time() + 120
    while time.time() < deadline and not (home / "envs" / "mindformers").exists():
        time.sleep(0.2)
    time.sleep(2)  # inside the build
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert "Setting up the mindformers environment (missing) to write MindRecord" in stderr
    assert "about 3.4 GB on disk" in stderr and "ftx env create mindformers" in stderr
    assert proc.returncode == 130, stderr[-2000:]
    listing = subprocess.run([str(FTX), "env", "list"],
                             capture_output=True, text=True, env=env)  # fmt: skip
    row = next(line for line in listing.stdout.splitlines() if "mindformers" in line)
    assert "ready" not in row, listing.stdout

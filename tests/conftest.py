"""Shared fixtures: the real ftx CLI, real backend environments, tiny real models."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ftx.core import envs
from oracles import ORACLES

for _name, _spec in ORACLES.items():
    envs.register(_name, _spec)

ROOT = Path(__file__).resolve().parent.parent
FTX = Path(sys.executable).with_name("ftx")


def run_ftx(*args: str, cwd: Path | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    """Run the installed `ftx` console script as a user would."""
    env = dict(os.environ, COLUMNS="200", NO_COLOR="1")
    return subprocess.run(
        [str(FTX), *args],
        capture_output=True,
        text=True,
        cwd=cwd or ROOT,
        env=env,
        timeout=timeout,
    )


def run_ftx_here(*args: str) -> subprocess.CompletedProcess:
    """The real CLI in this process (click's runner): for tests that run many quick
    commands, without an interpreter start each (a few seconds with its imports)."""
    from click.testing import CliRunner

    from ftx.core.cli import commands

    result = CliRunner().invoke(commands(), list(args), catch_exceptions=True)
    stderr = result.stderr if result.stderr_bytes is not None else ""
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        stderr += f"\nTraceback: {result.exception!r}"
    return subprocess.CompletedProcess(list(args), result.exit_code, result.stdout, stderr)


def run_nodes(commands: list[list[str]], logs: Path, timeout: int = 900) -> None:
    """Start one `ftx` command per "node" at once and wait for all; each writes its output
    to logs/node<i>.log (files, not pipes: no node can block on a full pipe while another
    is waited for). Fails naming every node that did not exit 0, with its log."""
    logs.mkdir(parents=True, exist_ok=True)
    files = [(logs / f"node{i}.log").open("w") for i in range(len(commands))]
    procs = [
        subprocess.Popen(c, stdout=f, stderr=subprocess.STDOUT, text=True, env=dict(os.environ))
        for c, f in zip(commands, files, strict=True)
    ]
    codes = [p.wait(timeout=timeout) for p in procs]
    for f in files:
        f.close()
    failed = {
        i: (logs / f"node{i}.log").read_text(errors="replace")[-2000:]
        for i, code in enumerate(codes)
        if code != 0
    }
    assert not failed, f"exit codes {codes}: {failed}"


def run_in_env(name: str, code: str, *args: str, timeout: int = 600) -> dict:
    """Run python code inside a backend's environment; it prints one JSON line last."""
    from ftx.core import envs

    python = envs.ensure(name)
    result = subprocess.run(
        [str(python), "-c", code, *args],
        capture_output=True,
        text=True,
        env=envs.process_env(name),
        timeout=timeout,
        cwd="/tmp",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from ftx.core.models.init import init_model

    out = tmp_path_factory.mktemp("models") / "tiny-llama"
    init_model("llama", "tiny", out)
    return out


@pytest.fixture(scope="session")
def tiny_qwen2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from ftx.core.models.init import init_model

    out = tmp_path_factory.mktemp("models") / "tiny-qwen2"
    init_model("qwen2", "tiny", out)
    return out


@pytest.fixture(scope="session")
def runs(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path):
    """Training runs of the tiny Llama shared by every test of the session (training.Runs)."""
    from training import Runs

    return Runs(tmp_path_factory.mktemp("runs"), tiny_llama)


def write_recipe(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-snapshots",
        action="store_true",
        help="Rewrite tests/snapshots from the translators' current output (`make snapshots`).",
    )


@pytest.fixture(scope="session", autouse=True)
def quickstart_model() -> Path:
    """The model recipes/quickstart.yaml names (`make run` makes it the same way)."""
    from ftx.core.models.init import init_model

    path = ROOT / ".ftx" / "models" / "quickstart-llama"
    if not (path / "config.json").exists():
        init_model("llama", "small", path, force=True)
    return path


def pytest_terminal_summary(terminalreporter, exitstatus: int, config) -> None:
    """Say how many CLI cases the fuzz suite ran (the count `make fuzz` reports)."""
    fuzz = sys.modules.get("test_fuzz")
    if fuzz is not None and fuzz.CASES["count"]:
        terminalreporter.write_line(
            f"fuzz: {fuzz.CASES['count']} CLI cases, each exit 0 or 2, no traceback,"
            " inputs unchanged, no half-written output"
        )


@contextlib.contextmanager
def small_disk(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``path`` (the tests run as root, as CI does)."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)

"""Local per-backend environments under $FTX_HOME/envs/<name>.

Each is a plain virtual environment built from the backend's pinned lock file
(the same file its Docker image installs) with ``pip install --no-deps``, so
what runs locally is exactly what the lock says. ftx itself is added without
its core dependencies. A ``ftx-env.json`` marker is written last: an
environment without it is incomplete and gets rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ftx.core.backend import EnvironmentSpec
from ftx.core.console import console, is_quiet, lead
from ftx.core.errors import FtxError
from ftx.core.fsutil import atomic_write_json
from ftx.core.home import ftx_home
from ftx.core.registry import get_spec as get_backend_spec
from ftx.core.registry import specs

MARKER = "ftx-env.json"


# Environments that belong to no backend (the tests' oracle of an older framework
# release, say), added with :func:`register`; `ftx env` lists only backends'.
_EXTRA: dict[str, EnvironmentSpec] = {}


def register(name: str, spec: EnvironmentSpec) -> None:
    """Make an environment that is not a backend's buildable under ``name``."""
    _EXTRA[name] = spec


def env_names() -> list[str]:
    """Every backend's environment (one per backend, named after it)."""
    return list(specs())


def get_spec(name: str) -> EnvironmentSpec:
    """The environment spec of a backend (or a registered extra), or a clear error."""
    if name in _EXTRA:
        return _EXTRA[name]
    return get_backend_spec(name, trains=False).environment


def env_dir(name: str) -> Path:
    return ftx_home() / "envs" / name


def env_python(name: str) -> Path:
    return env_dir(name) / "bin" / "python"


def lock_digest(spec: EnvironmentSpec) -> str:
    return hashlib.sha256(spec.lock_file.read_bytes()).hexdigest()


def read_marker(name: str) -> dict[str, Any] | None:
    """The environment's record, or None when it is missing or incomplete."""
    marker = env_dir(name) / MARKER
    if not marker.exists():
        return None
    try:
        return json.loads(marker.read_text())
    except json.JSONDecodeError:
        return None


def state(name: str) -> str:
    """'ready', 'stale' (lock file changed), 'incomplete' or 'missing'."""
    record = read_marker(name)
    if record is None:
        return "incomplete" if env_dir(name).exists() else "missing"
    spec = get_spec(name)
    if spec.base and (
        state(spec.base) != "ready" or record.get("base_lock_sha256") != _base_digest(spec)
    ):
        return "stale"  # what it was built on has changed or gone
    return "ready" if record.get("lock_sha256") == lock_digest(spec) else "stale"


def _base_digest(spec: EnvironmentSpec) -> str:
    return lock_digest(get_spec(spec.base)) if spec.base else ""


IMAGE_ENV = "FTX_IMAGE"  # set by a backend's image to its backend's name


def inside_image(name: str) -> bool:
    """True in the backend's own image: its environment is this process's."""
    return os.environ.get(IMAGE_ENV) == name


def ensure(name: str, why: str = "") -> Path:
    """Create the environment if it is missing, incomplete or stale, saying first which,
    what for (``why``) and what it costs; return its python (in the backend's image, the
    image's own). A build cut short leaves no marker, so nothing trusts it."""
    if inside_image(name):
        return Path(sys.executable)
    base = get_spec(name).base
    if base:
        ensure(base, f"(beneath the {name} environment)")
    current = state(name)
    if current != "ready":
        footprint = get_spec(name).footprint
        console.print(
            lead(
                f"Setting up the {name} environment",
                f" ({current}){' ' + why if why else ''}"
                f"{': ' + footprint if footprint else ''}; this runs once"
                f" (`ftx env create {name}` does it ahead of time).",
            ),
            soft_wrap=True,
        )
        create(name, force=True)
    return env_python(name)


def create(name: str, *, force: bool = False) -> dict[str, Any]:
    """Build the environment from its lock file and record what it holds."""
    spec = get_spec(name)
    target = env_dir(name)
    if target.exists():
        if not force and state(name) == "ready":
            raise FtxError(
                f"environment '{name}' already exists at {target}",
                fix=f"use `ftx env create {name} --force` to rebuild it",
            )
        # Moved aside, then deleted: a build killed with SIGKILL leaves its pip running,
        # still writing into the old folder, which deleting in place would race with.
        aside = target.with_name(f".{name}.old-{os.getpid()}")
        target.rename(aside)
    for old in target.parent.glob(f".{name}.old-*"):
        shutil.rmtree(old, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    started = time.time()
    python = str(target / "bin/python")
    steps = [("creating the virtual environment", [sys.executable, "-m", "venv", str(target)])]
    if spec.base:
        steps.append((f"layering it on the {spec.base} environment",
                      [python, "-c", _LAYER, str(_site_packages(env_dir(spec.base)))]))  # fmt: skip
    steps += [
        (
            f"installing {spec.lock_file.name} ({_count_pins(spec)} pinned packages)",
            [
                str(target / "bin/pip"),
                "install",
                "--no-deps",
                "--no-compile",
                "-r",
                str(spec.lock_file),
            ],
        ),
        ("installing ftx (without the core's dependencies)", _ftx_install_command(target)),
        # Byte-compiled at install, as pip does by default but on every core: where
        # PYTHONDONTWRITEBYTECODE is set, as on this project's CI machines, an environment
        # without .pyc files makes every process compile the frameworks again (make test:
        # +6 minutes), and pip's own compile runs on one core (half of a build).
        ("byte-compiling its modules", [python, "-c", _COMPILE]),
        ("checking imports", [python, "-c", spec.import_check]),
    ]
    for label, command in steps:
        _run_step(name, label, command, cwd=target if target.exists() else target.parent)
    record = {
        "name": name,
        "lock_file": str(spec.lock_file),
        "lock_sha256": lock_digest(spec),
        "base_lock_sha256": _base_digest(spec),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "seconds": round(time.time() - started, 1),
        **inventory(name),
    }
    atomic_write_json(target / MARKER, record)
    return record


# Run by the new environment's python: its site-packages sees the base's after its own.
_LAYER = (
    "import sys, sysconfig; from pathlib import Path;"
    "Path(sysconfig.get_paths()['purelib'], '_ftx_base.pth').write_text(sys.argv[1] + '\\n')"
)
# Every module of the environment's site-packages to .pyc, on every core; a file that does
# not compile (a package's Python 2 test data) is skipped, as pip skips it.
_COMPILE = (
    "import compileall, sysconfig;"
    "compileall.compile_dir(sysconfig.get_paths()['purelib'], quiet=2, workers=0)"
)


def _site_packages(root: Path) -> Path:
    found = sorted(root.glob("lib/python*/site-packages"))
    if not found:
        raise FtxError("the environment has no site-packages", where=str(root),
                       fix=f"rebuild it with `ftx env create {root.name} --force`")  # fmt: skip
    return found[0]


def remove(name: str) -> bool:
    """Delete the environment; False when there was none."""
    get_spec(name)
    target = env_dir(name)
    if not target.exists():
        return False
    shutil.rmtree(target)
    return True


def inventory(name: str) -> dict[str, Any]:
    """Ask the environment for its framework versions and devices (ftx.core.inventory)."""
    spec = get_spec(name)
    result = subprocess.run(
        [str(env_python(name)), "-m", "ftx.core.inventory", spec.devices, *spec.frameworks],
        capture_output=True,
        text=True,
        cwd=tempfile.gettempdir(),  # some frameworks write log folders into the cwd on import
        env=process_env(name),
        timeout=300,
    )
    lines = [ln for ln in result.stdout.splitlines() if ln.startswith("{")]
    if result.returncode != 0 or not lines:
        raise FtxError(
            f"the {name} environment does not start: {_tail(result.stderr)}",
            where=str(env_dir(name)),
            fix=f"rebuild it with `ftx env create {name} --force`",
        )
    return json.loads(lines[-1])


def process_env(name: str) -> dict[str, str]:
    """Environment variables for a process run in a backend's environment (its bin
    first on PATH, so its python and launchers are the ones found)."""
    env = dict(os.environ)
    if inside_image(name):
        # This python is the environment's: its folder first on PATH, so that a plan's
        # `python` and launchers are it (a virtual environment's python resolves to a base
        # interpreter that lacks the framework).
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        return env
    env.pop("PYTHONPATH", None)
    env["VIRTUAL_ENV"] = str(env_dir(name))
    env["PATH"] = f"{env_dir(name) / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return env


def _count_pins(spec: EnvironmentSpec) -> int:
    lines = spec.lock_file.read_text().splitlines()
    return sum(1 for ln in lines if ln.strip() and not ln.startswith("#"))


def source_root() -> Path | None:
    """The source checkout ftx runs from (it has pyproject.toml), if any."""
    root = Path(__file__).resolve().parent.parent
    return root if (root / "pyproject.toml").exists() and (root / "backends").is_dir() else None


def _ftx_install_command(target: Path) -> list[str]:
    root = source_root()
    if root is not None:
        # Editable, so a checkout's changes reach the worker without a rebuild.
        return [str(target / "bin/pip"), "install", "--no-deps", "-e", str(root)]
    # Installed from a wheel: copy the installed ftx package into the environment as is.
    package = Path(__file__).resolve().parent.parent
    script = (
        "import shutil, sys, sysconfig; from pathlib import Path;"
        "dest = Path(sysconfig.get_paths()['purelib']) / 'ftx';"
        "shutil.copytree(sys.argv[1], dest, dirs_exist_ok=True,"
        " ignore=shutil.ignore_patterns('__pycache__'))"
    )
    return [str(target / "bin/python"), "-c", script, str(package)]


def _run_step(name: str, label: str, command: list[str], *, cwd: Path) -> None:
    log = ftx_home() / "logs" / f"env-{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as handle:
        handle.write(f"\n$ {' '.join(command)}\n")
        handle.flush()
        status = console.status(f"\\[{name}] {label}") if not is_quiet() else None
        if status:
            status.start()
        try:
            proc = subprocess.run(
                command, stdout=handle, stderr=subprocess.STDOUT, cwd=cwd, env=process_env(name)
            )
        finally:
            if status:
                status.stop()
    if proc.returncode != 0:
        tail = _tail(log.read_text(), 6)
        shutil.rmtree(env_dir(name), ignore_errors=True)
        raise FtxError(
            f"setting up the {name} environment failed while {label}: {tail}",
            where=str(log),
            fix="read the log; check that PyPI is reachable and rerun `ftx env create "
            f"{name} --force`",
        )
    if not is_quiet():
        console.print(lead("✓", f" [{name}] {label}", "green"))


def _tail(text: str, n: int = 3) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip() and "Location" not in ln]
    return " | ".join(lines[-n:]) or "(no output)"

"""One backend surface: every backends/<name>/ has the same modules in the same roles, the
core reaches backends only through the registry, and listing them imports no framework."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, run_ftx, run_in_env

FOLDERS = sorted(p for p in (ROOT / "backends").iterdir() if (p / "__init__.py").exists())


def _imports_and_strings(path: Path) -> list[tuple[int, str]]:
    """Every imported module name and every string constant of a Python file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            found += [(node.lineno, node.module)]
            found += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            found.append((node.lineno, node.value))
    return found


def test_core_never_names_a_backend() -> None:
    """The registry's list is the only way in: no backend module, folder or name in core/."""
    from ftx.core.registry import specs

    names = list(specs())
    offences = []
    for path in sorted((ROOT / "core").rglob("*.py")):
        for line, text in _imports_and_strings(path):
            for name in names:
                if f"ftx.backends.{name}" in text or f"backends/{name}" in text:
                    offences.append(f"{path.relative_to(ROOT)}:{line}: {text}")
    assert offences == []
    registry = (ROOT / "core/registry.py").read_text()
    assert "from ftx.backends import BACKENDS" in registry


@pytest.mark.parametrize("folder", FOLDERS, ids=[p.name for p in FOLDERS])
def test_every_backend_folder_has_the_same_surface(folder: Path) -> None:
    from ftx.core.backend import BackendSpec
    from ftx.core.registry import load, specs

    package = f"ftx.backends.{folder.name}"
    from ftx.backends import BACKENDS

    assert package in BACKENDS  # one registry line per folder
    spec = specs()[folder.name]
    assert isinstance(spec, BackendSpec) and spec.name == folder.name
    assert (folder / "environment.py").exists() and spec.environment.lock_file.exists()
    assert spec.environment.lock_file == folder / "requirements.lock"
    assert spec.environment.devices.startswith(f"{package}.environment:")
    assert callable(load(spec.environment.devices))
    if spec.trains:
        for module in ("translate.py", "worker.py", "capabilities.py"):
            assert (folder / module).exists(), module
        assert spec.translator == f"{package}.translate:translate"
        assert spec.worker == f"{package}.worker"
    for exporter in spec.exporters.values():
        assert exporter.function.startswith(f"{package}.")
        assert callable(load(exporter.function))
    for key, override in spec.overrides.items():
        assert isinstance(override.example, override.kind), key


def test_listing_backends_imports_no_framework() -> None:
    code = (
        "import json, sys\n"
        "from ftx.core.registry import specs, capability_matrix, exporters\n"
        "specs(); capability_matrix(); exporters()\n"
        "heavy = ('torch', 'paddle', 'mindspore', 'mindformers', 'transformers', 'pydantic')\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in heavy"
        " or m.endswith(('.worker', '.translate')))))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []


def test_data_export_targets_come_from_the_specs() -> None:
    from ftx.core.registry import exporters

    result = run_ftx("data", "export", "--help")
    assert result.returncode == 0
    for name, exporter in exporters().items():
        assert name in result.stdout and exporter.description.split()[0] in result.stdout
    bad = run_ftx("data", "export", "recipes/quickstart.yaml", "--to", "nosuch", "--out", "/tmp/x")
    assert bad.returncode == 2 and "paddlenlp" in bad.stderr and "mindrecord" in bad.stderr


def test_backends_table_shows_every_spec_and_its_override_keys() -> None:
    from ftx.core.registry import specs

    result = run_ftx("backends")
    assert result.returncode == 0, result.stderr
    for spec in specs().values():
        assert spec.name in result.stdout and spec.launcher.split()[0] in result.stdout
    assert "seq_length" in result.stdout and "data.max_seq_len" in result.stdout  # mindformers
    assert "native only" in result.stdout and "zero2" in result.stdout  # paddle's own trainer
    assert "PaddleFormers' Trainer" in result.stdout and "MindFormers' Trainer" in result.stdout
    assert "gradient_accumulation_steps" in result.stdout and "train.grad_accum" in result.stdout


@pytest.mark.env
@pytest.mark.parametrize("name", ["torch", "paddle", "mindformers"])
def test_contract_and_kit_import_in_every_backend_environment(name: str) -> None:
    """Workers of every backend can use the contract and the kit with their own lock alone."""
    found = run_in_env(
        name,
        "import json, sys\n"
        "import ftx.core.contract, ftx.core.worker.loop, ftx.core.inventory, ftx.core.prepared\n"
        f"import ftx.backends.{name}\n"
        "from ftx.core.contract import CONTRACT_VERSION\n"
        "core_deps = ('pydantic', 'click', 'rich', 'yaml', 'ftx.core.recipe', 'ftx.core.cli')\n"
        "print(json.dumps({'version': CONTRACT_VERSION,"
        " 'core': sorted(m for m in core_deps if m in sys.modules)}))",
    )
    assert found == {"version": 1, "core": []}


IMPLEMENTS = """
import inspect, json, sys
from importlib import import_module
from ftx.core.worker import framework as interface
worker = import_module(sys.argv[1])
cls = inspect.signature(worker.make_framework).return_annotation
cls = getattr(worker, cls) if isinstance(cls, str) else cls
protocol = interface.Framework
members = [*protocol.__annotations__]
members += [n for n, v in vars(protocol).items() if not n.startswith("_") and callable(v)]
problems = []
for name in sorted(members):
    if not hasattr(cls, name) and name not in getattr(cls, "__annotations__", {}):
        problems.append(f"{name}: missing")
        continue
    wanted = getattr(protocol, name, None)
    if callable(wanted):
        given = getattr(cls, name)
        expected = list(inspect.signature(wanted).parameters)
        found = list(inspect.signature(given).parameters)
        if found != expected:
            problems.append(f"{name}{tuple(found)}: the interface has {tuple(expected)}")
print(json.dumps({"class": cls.__name__, "members": sorted(members), "problems": problems,
                  "main": callable(getattr(worker, "main", None))}))
"""


@pytest.mark.env
@pytest.mark.parametrize("name", [p.name for p in FOLDERS])
def test_every_worker_implements_the_framework_interface(name: str) -> None:
    """Each backend's worker module builds its framework with ``make_framework`` (a class
    with every member of ftx.core.worker.framework.Framework, with the interface's
    signatures) and runs it from ``main``; none sequences its own loop."""
    from ftx.core.registry import specs

    spec = specs()[name]
    if not spec.trains:
        pytest.skip(f"{name} does not train")
    found = run_in_env(name, IMPLEMENTS, spec.worker)
    assert found["problems"] == [], found
    assert found["main"] and {"optimizer_step", "greedy", "save_state"} <= set(found["members"])
    source = (ROOT / "backends" / name / "worker.py").read_text()
    # the loop is the kit's: no worker walks the schedule or tracks the run itself
    for sign in ("RunTracker", "while tracker.running", "schedule.step(", "HeldOut("):
        assert sign not in source, sign
    assert "train(make_framework(config, layout), config, layout)" in source or (
        "return train(framework, config, layout)" in source
    )

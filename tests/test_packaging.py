"""The package: `ftx` namespace with ftx.core and ftx.backends, nothing else at the top."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import tomllib

from conftest import ROOT


def test_every_source_package_is_listed_in_pyproject() -> None:
    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    found = set()
    for top, name in (("core", "ftx.core"), ("backends", "ftx.backends")):
        for init in (ROOT / top).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / top)
            found.add(".".join([name, *rel.parts]) if rel.parts else name)
    assert found == listed


def test_wheel_installs_only_the_ftx_namespace(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("ftx-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"ftx", wheel.name.split("-")[0] + "-" + wheel.name.split("-")[1] + ".dist-info"}
    assert "ftx/__init__.py" not in names  # a namespace package
    for needed in (
        "ftx/core/cli/__init__.py",
        "ftx/backends/torch/worker.py",
        "ftx/backends/torch/requirements.lock",
        "ftx/backends/paddle/requirements.lock",
        "ftx/backends/mindformers/requirements.lock",
        "ftx/core/assets/tokenizer_corpus.txt",
    ):
        assert needed in names
    entry = (
        zipfile.ZipFile(wheel)
        .read(next(n for n in names if n.endswith("entry_points.txt")))
        .decode()
    )
    assert "ftx = ftx.core.cli:main" in entry


def test_core_dependencies_hold_no_framework() -> None:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for framework in ("torch", "paddle", "mindspore", "deepspeed"):
        assert not any(d.lower().startswith(framework) for d in deps)

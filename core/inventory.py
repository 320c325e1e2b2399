"""What a backend environment holds: run inside it as ``python -m ftx.core.inventory NAME``.

Prints one JSON line, ``{"python", "executable", "versions", "devices"}``, that
`ftx env create` records and `ftx env doctor` shows. Standard library only; the
device detection comes from the environment's spec (a backend's, or one given
on the command line: ``python -m ftx.core.inventory DEVICES_FN DIST...``).
"""

from __future__ import annotations

import json
import platform
import sys
from collections.abc import Iterable
from importlib import metadata

from ftx.core.registry import load, specs


def versions(distributions: Iterable[str]) -> dict[str, str | None]:
    """Installed version of each distribution (None when absent)."""
    found: dict[str, str | None] = {}
    for dist in distributions:
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found[dist] = None
    return found


def inventory(devices_function: str, frameworks: Iterable[str]) -> dict[str, object]:
    """Python, framework versions and visible devices of the running environment."""
    try:
        devices = load(devices_function)()
    except Exception as exc:  # a broken driver must not hide the versions
        devices = [f"error: {exc}"]
    return {
        "python": platform.python_version(),
        "executable": sys.executable,
        "versions": versions(frameworks),
        "devices": devices,
    }


if __name__ == "__main__":
    if len(sys.argv) == 2:  # a backend's name
        spec = specs()[sys.argv[1]].environment
        print(json.dumps(inventory(spec.devices, spec.frameworks)))
    else:
        print(json.dumps(inventory(sys.argv[1], sys.argv[2:])))


def cpu_only() -> list[str]:
    """The devices of an environment whose library runs on the CPU alone."""
    return ["cpu"]

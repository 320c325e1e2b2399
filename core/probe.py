"""Run inside a backend environment: report framework versions and devices as JSON.

Standard library only; each backend's ``probe`` module passes its own device
detection function.
"""

from __future__ import annotations

import json
import platform
import sys
from collections.abc import Callable, Iterable
from importlib import metadata


def versions(distributions: Iterable[str]) -> dict[str, str | None]:
    """Installed version of each distribution (None when absent)."""
    found: dict[str, str | None] = {}
    for dist in distributions:
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found[dist] = None
    return found


def report(distributions: Iterable[str], detect_devices: Callable[[], list[str]]) -> None:
    """Print ``{"python", "versions", "devices"}`` as one JSON line on stdout."""
    try:
        devices = detect_devices()
    except Exception as exc:  # a broken driver must not hide the versions
        devices = [f"error: {exc}"]
    print(
        json.dumps(
            {
                "python": platform.python_version(),
                "executable": sys.executable,
                "versions": versions(distributions),
                "devices": devices,
            }
        )
    )

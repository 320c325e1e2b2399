"""What a backend's local environment is made of (standard library only)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class EnvironmentSpec:
    """A backend environment: a pinned lock file and how to inspect it."""

    name: str
    lock_file: Path
    frameworks: tuple[str, ...]  # distributions whose versions `ftx env doctor` reports
    probe_module: str  # `python -m` this in the env prints versions and devices as JSON
    import_check: str  # a statement that must run in the finished env

"""The Runtime interface."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from ftx.core.plan import NativePlan


class Runtime(ABC):
    """Runs a written plan's launch.sh somewhere and returns its exit code."""

    name: str

    @abstractmethod
    def prepare(self, environment: str) -> dict[str, Any]:
        """Make sure the backend's environment exists; return its record (versions...)."""

    @abstractmethod
    def run(self, plan: NativePlan, environment: str, log: Path) -> int:
        """Run ``plan_dir/launch.sh``, teeing its output to ``log``."""

"""The Runtime interface: where a written plan runs."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

from ftx.core.contract import RunLayout


class Runtime(ABC):
    """Runs a written plan's launch.sh somewhere and returns its exit code."""

    name: str

    @abstractmethod
    def prepare(self, backend: str) -> dict[str, Any]:
        """Make sure the backend's environment exists; return its record (versions...)."""

    @abstractmethod
    def run(self, layout: RunLayout, backend: str, on_line: Callable[[str], None]) -> int:
        """Run OUT/plan/launch.sh in OUT, teeing its output into OUT/logs/launch.log and
        passing each line to ``on_line``."""

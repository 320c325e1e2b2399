"""The Runtime interface: where a written plan runs."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ftx.core.contract import RunLayout


@dataclass(frozen=True)
class Launch:
    """One launch of a written plan: OUT, the backend, and what the run reads."""

    layout: RunLayout
    backend: str
    inputs: tuple[Path, ...] = ()  # the recipe, model and data files: read-only to the run
    multinode: bool = False  # the launcher meets other hosts (needs the host's network)
    env: Mapping[str, str] = field(default_factory=dict)  # this node's contract (FTX_NODE_RANK..)
    log: Path | None = None  # default OUT/logs/launch.log (other nodes of a shared OUT: their own)

    @property
    def log_file(self) -> Path:
        return self.log or self.layout.launch_log


class Runtime(ABC):
    """Runs a written plan's launch.sh somewhere and returns its exit code."""

    name: str

    @abstractmethod
    def prepare(self, backend: str) -> dict[str, Any]:
        """Make sure the backend's environment exists; return its record (versions...)."""

    @abstractmethod
    def run(self, launch: Launch, on_line: Callable[[str], None]) -> int:
        """Run OUT/plan/launch.sh in OUT, teeing its output into OUT/logs/launch.log and
        passing each line to ``on_line``."""

    @abstractmethod
    def python(
        self,
        backend: str,
        args: list[str],
        *,
        reads: tuple[Path, ...],
        writes: tuple[Path, ...],
        why: str = "",
    ) -> tuple[int, str]:
        """Run ``python ARGS`` with the backend's framework (in a scratch working folder,
        reading ``reads`` and writing ``writes``); return its exit code and output. ``why``
        says what for, when the framework must be set up first."""

    def close(self) -> None:  # noqa: B027 (most runtimes hold nothing)
        """Release what prepare() set up (an engine connection, a service ftx started)."""

"""The run output layout, the same for every backend.

Workers import this module inside backend environments, so it uses only the
standard library.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunLayout:
    """Paths under a run's output folder OUT."""

    root: Path

    @property
    def plan(self) -> Path:
        return self.root / "plan"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def final(self) -> Path:
        return self.root / "final"

    @property
    def run_json(self) -> Path:
        return self.root / "run.json"

    @property
    def eval_json(self) -> Path:
        return self.root / "eval.json"

    def is_fresh(self) -> bool:
        """True when OUT does not exist or holds nothing."""
        return not self.root.exists() or not any(self.root.iterdir())

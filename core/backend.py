"""The Backend interface: translate a recipe to a native plan, collect results.

A backend is a folder under backends/ with a translator (pure: recipe in,
:class:`NativePlan` out), a worker that runs inside the backend's own
environment, a pinned lock file and its capabilities. Nothing here imports a
framework.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from typing import Any, ClassVar

from ftx.core.capabilities import Capabilities
from ftx.core.layout import RunLayout
from ftx.core.plan import NativePlan
from ftx.core.recipe.schema import Recipe


class Backend(ABC):
    """One framework's translator and result collector."""

    name: ClassVar[str]
    environment: ClassVar[str]
    capabilities: ClassVar[Capabilities]
    description: ClassVar[str]

    @abstractmethod
    def translate(self, recipe: Recipe, layout: RunLayout) -> NativePlan:
        """Turn a validated recipe into native config files and a launch command.

        Must be pure: no file is read or written and nothing is run.
        """

    def collect(self, layout: RunLayout) -> dict[str, Any]:
        """Summarise a finished run from the files its worker left in OUT."""
        metrics = read_metrics(layout)
        losses = [m["loss"] for m in metrics if "loss" in m]
        summary: dict[str, Any] = {
            "steps": max((m.get("step", 0) for m in metrics), default=0),
            "first_loss": losses[0] if losses else None,
            "final_loss": losses[-1] if losses else None,
            "final_dir": str(layout.final) if layout.final.exists() else None,
        }
        if layout.eval_json.exists():
            summary["evaluation"] = json.loads(layout.eval_json.read_text())
        timing = layout.logs / "train_timing.json"
        if timing.exists():
            # seconds spent in the training loop alone, and the real tokens it processed
            summary["training"] = json.loads(timing.read_text())
        return summary


def read_metrics(layout: RunLayout) -> list[dict[str, Any]]:
    """The logged steps of a run (metrics.jsonl), skipping a torn last line."""
    if not layout.metrics.exists():
        return []
    rows = []
    for line in layout.metrics.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows

"""The NativePlan: what a backend's translator produces from a recipe.

A plan is plain data: the worker config, the native files to write (name ->
text), the launch command and its environment variables. Writing a plan and
running it are separate steps, so `ftx plan` and `ftx run` share everything up
to the launch. Paths in a plan are relative to OUT: launch.sh starts there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ftx.core import scripts
from ftx.core.contract import WORKER_CONFIG, RunLayout, WorkerConfig
from ftx.core.fsutil import staged_dir
from ftx.core.nodes import NODES_FILE, NodeContract

NOTES_FILE = "NOTES.md"
PLAN_DATA = "data"  # OUT/plan/data: native data a plan's configs read (see BackendSpec.plan_data)


@dataclass(frozen=True)
class NativePlan:
    """A backend's translation of one recipe."""

    backend: str
    worker_config: WorkerConfig
    files: dict[str, str]  # native files under OUT/plan (names may hold a folder: a/b.json)
    command: list[str]
    env: dict[str, str] = field(default_factory=dict)
    # Multi-node plans: the recipe's topology; the command refers to the per-node values
    # with nodes.var(...) and launch.sh takes them from the node contract's variables.
    nodes: NodeContract | None = None
    # What the framework's own tool cannot express of this recipe, and who trains it
    # instead: written to OUT/plan/NOTES.md and printed by `ftx plan`.
    notes: tuple[str, ...] = ()

    def rendered(self) -> dict[str, str]:
        """Every file of OUT/plan by name, launch.sh included."""
        nodes = {NODES_FILE: self.nodes.to_json()} if self.nodes else {}
        notes = {NOTES_FILE: self.notes_text()} if self.notes else {}
        return {
            Path(WORKER_CONFIG).name: self.worker_config.to_json(),
            **self.files,
            **nodes,
            **notes,
            "launch.sh": self.launch_script(),
        }

    def notes_text(self) -> str:
        lines = "".join(f"- {note}\n" for note in self.notes)
        return f"# What the {self.backend} plan cannot say in its native files\n\n{lines}"

    def launch_script(self) -> str:
        """The exact launch command as a bash script that runs from anywhere."""
        exports = "".join(scripts.export(k, v) for k, v in sorted(self.env.items()))
        command = " \\\n    ".join(scripts.reference_word(part) for part in self.command)
        contract = self.nodes.preamble() if self.nodes else ""
        return (
            "#!/usr/bin/env bash\n"
            f"# Written by `ftx plan` for the {self.backend} backend. Runs with the python\n"
            "# and launchers found on PATH (the backend's environment or image), in OUT.\n"
            "set -euo pipefail\n"
            'cd "$(dirname "$0")/.."\n'
            f"{contract}"
            f"{exports}"
            f"exec {command}\n"
        )

    def write(self, layout: RunLayout, data: Callable[[Path], str] | None = None) -> list[str]:
        """Write OUT/plan (staged, then renamed into place whole); return the file names.

        ``data(folder)`` writes the native data the plan's files read into OUT/plan/data.
        """
        files = self.rendered()
        with staged_dir(layout.plan, replace=True) as tmp:
            for name, text in files.items():
                (tmp / name).parent.mkdir(parents=True, exist_ok=True)
                (tmp / name).write_text(text, encoding="utf-8")
            launch = tmp / layout.launch_script.name
            launch.chmod(launch.stat().st_mode | 0o111)
            if data is not None:
                data(tmp / PLAN_DATA)
        return [*files, f"{PLAN_DATA}/"] if data is not None else list(files)

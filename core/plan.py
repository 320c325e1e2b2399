"""The NativePlan: what a backend's translator produces from a recipe.

A plan is plain data: the native files to write (name -> text), the launch
command, environment variables and the outputs the run is expected to leave.
Writing a plan to disk and running it are separate steps, so `ftx plan` and
`ftx run` share everything up to the launch.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from ftx.core.fsutil import atomic_write_text


@dataclass(frozen=True)
class NativePlan:
    """A backend's translation of one recipe."""

    backend: str
    out_dir: Path
    files: dict[str, str]
    command: list[str]
    env: dict[str, str] = field(default_factory=dict)
    expected_outputs: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def plan_dir(self) -> Path:
        return self.out_dir / "plan"

    def launch_script(self) -> str:
        """The exact launch command as a bash script that runs from anywhere."""
        exports = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in sorted(self.env.items()))
        command = " \\\n    ".join(shlex.quote(part) for part in self.command)
        return (
            "#!/usr/bin/env bash\n"
            f"# Written by `ftx plan` for the {self.backend} backend. Runs with the python\n"
            "# and launchers found on PATH (the backend's environment or image).\n"
            "set -euo pipefail\n"
            f"{exports}"
            f"exec {command}\n"
        )

    def write(self) -> Path:
        """Write the native files and launch.sh under OUT/plan; return launch.sh."""
        self.plan_dir.mkdir(parents=True, exist_ok=True)
        for name, text in self.files.items():
            atomic_write_text(self.plan_dir / name, text)
        launch = self.plan_dir / "launch.sh"
        atomic_write_text(launch, self.launch_script())
        os.chmod(launch, 0o755)
        return launch

"""The local runtime: launch.sh runs with the backend's environment first on PATH."""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ftx.core import envs
from ftx.core.runtime.base import Launch, Runtime
from ftx.core.supervise import supervise


class LocalRuntime(Runtime):
    """The embedded default, for machines without a container engine."""

    name = "local"

    def prepare(self, backend: str) -> dict[str, Any]:
        envs.ensure(backend)
        return envs.read_marker(backend) or {}

    def python(
        self,
        backend: str,
        args: list[str],
        *,
        reads: tuple[Path, ...],
        writes: tuple[Path, ...],
        why: str = "",
    ) -> tuple[int, str]:
        python = envs.ensure(backend, why)
        with tempfile.TemporaryDirectory() as scratch:  # frameworks write log folders in cwd
            result = subprocess.run(
                [str(python), *args],
                capture_output=True,
                text=True,
                env=envs.process_env(backend),
                cwd=scratch,
            )
        return result.returncode, result.stdout + result.stderr

    def run(self, launch: Launch, on_line: Callable[[str], None]) -> int:
        layout = launch.layout
        layout.logs.mkdir(parents=True, exist_ok=True)
        env = {**envs.process_env(launch.backend), **launch.env, "PYTHONUNBUFFERED": "1"}
        with launch.log_file.open("a") as handle:

            def tee(line: str) -> None:
                handle.write(line)
                handle.flush()
                on_line(line)

            return supervise(["bash", str(layout.launch_script)], env, layout.root, tee)

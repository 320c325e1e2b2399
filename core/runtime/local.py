"""The local runtime: launch.sh runs with the backend's environment first on PATH."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable
from typing import Any

from ftx.core import envs
from ftx.core.contract import RunLayout
from ftx.core.runtime.base import Runtime


class LocalRuntime(Runtime):
    """The embedded default, for machines without a container engine."""

    name = "local"

    def prepare(self, backend: str) -> dict[str, Any]:
        envs.ensure(backend)
        return envs.read_marker(backend) or {}

    def run(self, layout: RunLayout, backend: str, on_line: Callable[[str], None]) -> int:
        layout.logs.mkdir(parents=True, exist_ok=True)
        env = envs.process_env(backend)
        env["PYTHONUNBUFFERED"] = "1"
        with layout.launch_log.open("a") as handle:
            proc = subprocess.Popen(
                ["bash", str(layout.launch_script)],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=layout.root,
                text=True,
                start_new_session=True,  # signals reach the whole launcher tree, once
            )
            previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

            received: list[int] = []

            def forward(signum: int, _frame: object) -> None:
                received.append(signum)
                os.killpg(proc.pid, signal.SIGTERM)

            for sig in previous:
                signal.signal(sig, forward)
            try:
                assert proc.stdout is not None
                for line in proc.stdout:
                    handle.write(line)
                    handle.flush()
                    on_line(line)
                code = proc.wait()
                # Launchers report a forwarded signal as a plain failure; say what happened.
                return 128 + received[0] if received else code
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

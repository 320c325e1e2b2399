"""The local runtime: launch.sh runs with the backend's environment first on PATH."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import Any

from ftx.core import envs
from ftx.core.console import console, is_quiet
from ftx.core.plan import NativePlan
from ftx.core.runtime.base import Runtime


class LocalRuntime(Runtime):
    """The embedded default, for machines without a container engine."""

    name = "local"

    def prepare(self, environment: str) -> dict[str, Any]:
        envs.ensure(environment)
        return envs.read_marker(environment) or {}

    def run(self, plan: NativePlan, environment: str, log: Path) -> int:
        log.parent.mkdir(parents=True, exist_ok=True)
        env = envs.activated_env(environment)
        env["PYTHONUNBUFFERED"] = "1"
        with log.open("a") as handle:
            proc = subprocess.Popen(
                ["bash", str(plan.plan_dir / "launch.sh")],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=plan.out_dir,
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
                    if not is_quiet() and _worth_showing(line):
                        console.print(line.rstrip("\n"), markup=False)
                code = proc.wait()
                # Launchers report a forwarded signal as a plain failure; say what happened.
                return 128 + received[0] if received else code
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)


def _worth_showing(line: str) -> bool:
    """Worker progress and errors; framework chatter stays in the log file."""
    text = line.strip()
    return text.startswith("[ftx]") or "Error" in text or "Traceback" in text

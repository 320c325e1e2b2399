"""Running a launcher so that Ctrl-C and SIGTERM reach its whole process tree, once.

Standard library only: it is also a backend container's first process,

    python -m ftx.core.supervise OUT/plan/launch.sh

which runs launch.sh and hands the signals the engine delivers (docker stop, podman
kill) to the launcher's process group. (Images hold only their lock's packages.)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path


def supervise(
    command: list[str], env: Mapping[str, str], cwd: Path, on_line: Callable[[str], None]
) -> int:
    """Run ``command`` in its own session, pass each output line to ``on_line``, forward
    SIGINT/SIGTERM to its process group as SIGTERM (workers save a checkpoint on it), and
    return its exit code: 128 + the signal when one was forwarded, since launchers report
    a forwarded signal as a plain failure."""
    proc = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=dict(env),
        cwd=cwd,
        text=True,
        start_new_session=True,
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
            on_line(line)
        code = proc.wait()
        return 128 + received[0] if received else code
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def stop(proc: subprocess.Popen, timeout: float = 10) -> None:
    """Stop a process ftx (or a test) started: SIGTERM, then SIGKILL after ``timeout``."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def main() -> int:
    launch = Path(sys.argv[1])
    return supervise(
        ["bash", str(launch)],
        os.environ,
        launch.parent.parent,
        lambda line: print(line, end="", flush=True),
    )


if __name__ == "__main__":
    sys.exit(main())

"""Daemons the tests start themselves: Debian packages installed when their binaries
are missing (services not started: no systemd here), and each daemon run in the
foreground and stopped by its PID."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from ftx.core.supervise import stop

PACKAGES = {  # binary -> Debian package
    "podman": "podman",
    "runc": "runc",
    "debootstrap": "debootstrap",
    "dockerd": "docker.io",
    "docker-registry": "docker-registry",
    "slurmctld": "slurmctld",
    "slurmd": "slurmd",
    "sbatch": "slurm-client",
    "munged": "munge",
}


def install_missing(*binaries: str) -> None:
    """apt-get install the packages of missing binaries (services are not started: no
    systemd here, and the fixtures start what they need)."""
    missing = sorted({PACKAGES[b] for b in binaries if shutil.which(b) is None})
    if not missing:
        return
    policy = Path("/usr/sbin/policy-rc.d")
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        subprocess.run(["apt-get", "update", "-q"], check=True, env=env, capture_output=True)
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing],
            check=True,
            env=env,
            capture_output=True,
        )
    finally:
        policy.unlink(missing_ok=True)


@contextlib.contextmanager
def daemon(
    command: list[str], log: Path, ready: Callable[[], bool], timeout: float = 60
) -> Iterator[int]:
    """Start a daemon in the foreground, wait until ``ready()``, stop it by PID after."""
    handle = log.open("w")
    proc = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + timeout
        while not ready():
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"{command[0]} did not start: {log.read_text()[-2000:]}")
            time.sleep(0.1)
        yield proc.pid
    finally:
        stop(proc, timeout=30)
        handle.close()


@contextlib.contextmanager
def environment(**values: str) -> Iterator[None]:
    """Set environment variables for the block (ftx commands the tests start inherit
    them), then restore them."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def scratch(prefix: str) -> Iterator[Path]:
    """A short folder under /tmp (sockets need short paths) for a fixture's daemons,
    removed after them, with anything a daemon left mounted inside it (dockerd's netns)."""
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    try:
        yield folder
    finally:
        mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
        for point in sorted((m for m in mounts if m.startswith(f"{folder}/")), reverse=True):
            subprocess.run(["umount", "-l", point], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)

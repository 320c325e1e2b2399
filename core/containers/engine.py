"""Reaching a container engine through the Docker API (the ``docker`` Python SDK).

Docker: ``DOCKER_HOST``, else the socket at /var/run/docker.sock. Podman: its
Docker-compatible API; when no podman socket is listening (``FTX_PODMAN_HOST``,
``CONTAINER_HOST`` or /run/podman/podman.sock), ftx starts ``podman system service``
on a private socket for as long as it needs it and stops it after, by its PID.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ftx.core.errors import FtxError
from ftx.core.supervise import stop

ENGINES = ("docker", "podman")
DOCKER_SOCKET = Path("/var/run/docker.sock")
PODMAN_SOCKET = Path("/run/podman/podman.sock")


@dataclass
class Engine:
    """A connected engine: which kind, where, and the SDK client."""

    kind: str  # "docker" or "podman"
    url: str
    client: Any  # docker.DockerClient

    @property
    def api(self) -> Any:
        """The SDK's low-level client (streams progress as JSON events)."""
        return self.client.api

    def describe(self) -> str:
        version = self.client.version()
        names = [c["Name"] for c in version.get("Components", []) if "Engine" in c["Name"]]
        # Docker calls its component "Engine", podman "Podman Engine"
        name = "Docker Engine" if names in ([], ["Engine"]) else names[0]
        return f"{name} {version.get('Version', '?')} at {self.url}"


def _client(url: str) -> Any:
    import docker

    client = docker.DockerClient(base_url=url, timeout=600)
    client.ping()
    return client


def _unix(path: Path | str) -> str:
    return f"unix://{path}"


def _listening(url: str) -> bool:
    if not url.startswith("unix://"):
        return True  # tcp:// and ssh:// are tried by connecting
    return Path(url.removeprefix("unix://")).exists()


def _podman_urls() -> list[str]:
    urls = [os.environ.get("FTX_PODMAN_HOST", ""), os.environ.get("CONTAINER_HOST", "")]
    return [u for u in urls if u] + [_unix(PODMAN_SOCKET)]


def _docker_url() -> str | None:
    url = os.environ.get("DOCKER_HOST")
    if url:
        return url
    return _unix(DOCKER_SOCKET) if DOCKER_SOCKET.exists() else None


@contextlib.contextmanager
def podman_service() -> Iterator[str]:
    """``podman system service`` on a private socket for the duration (stopped by PID)."""
    if shutil.which("podman") is None:
        raise FtxError(
            "podman is not installed",
            where="--runtime podman",
            fix="install it (Debian: apt-get install podman runc) or use --runtime docker/local",
        )
    folder = Path(tempfile.mkdtemp(prefix="ftx-podman-"))
    socket = folder / "podman.sock"
    log = (folder / "service.log").open("w")
    proc = subprocess.Popen(
        ["podman", "system", "service", "--time=0", _unix(socket)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 30
        while not socket.exists():
            if proc.poll() is not None or time.time() > deadline:
                log.flush()
                tail = (folder / "service.log").read_text().strip().splitlines()[-3:]
                raise FtxError(
                    f"podman's API service did not start: {' | '.join(tail) or 'no output'}",
                    where="podman system service",
                    fix="run `podman info` to see what podman needs (CONTAINERS_CONF, runtime)",
                )
            time.sleep(0.05)
        yield _unix(socket)
    finally:
        stop(proc)
        log.close()
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def connect(kind: str | None = None) -> Iterator[Engine]:
    """The engine called ``kind`` (docker or podman), or with None the first there is:
    ``DOCKER_HOST`` / the Docker socket, a podman socket, or a podman service ftx starts."""
    if kind not in (None, *ENGINES):
        raise FtxError(
            f"unknown container engine '{kind}'",
            where="--engine",
            fix=f"use one of {', '.join(ENGINES)}",
        )
    if kind in (None, "docker"):
        url = _docker_url()
        if url is not None:
            yield Engine("docker", url, _connect(url, "docker"))
            return
        if kind == "docker":
            raise FtxError(
                "no Docker engine: DOCKER_HOST is unset and /var/run/docker.sock does not exist",
                where="--runtime docker",
                fix="start dockerd, set DOCKER_HOST=unix:///path/docker.sock, or use"
                " --runtime podman",
            )
    for url in _podman_urls():
        client = None
        if _listening(url):
            with contextlib.suppress(FtxError):
                client = _connect(url, "podman")
        if client is not None:
            yield Engine("podman", url, client)
            return
    with podman_service() as url:
        yield Engine("podman", url, _connect(url, "podman"))


def _connect(url: str, kind: str) -> Any:
    try:
        return _client(url)
    except Exception as exc:  # the SDK raises DockerException, requests' errors, OSError...
        raise FtxError(
            f"cannot reach the {kind} engine at {url}: {str(exc).splitlines()[0][:200]}",
            where="DOCKER_HOST" if kind == "docker" else "FTX_PODMAN_HOST",
            fix=f"start the {kind} engine or point ftx at its socket",
        ) from exc

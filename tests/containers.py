"""Container engines for the tests, set up the way shared/reference/containers.md says:
podman 4.3 with a containers.conf (runc, ulimits within the hard limits), dockerd
without iptables or a bridge, and Debian's docker-registry on 127.0.0.1. Missing Debian
packages are installed; every daemon is started in the foreground here and stopped by
its PID. Image storage lives under $FTX_HOME/containers, so images (and the layer
cache) outlive one test session; run folders and sockets are per session.
"""

from __future__ import annotations

import contextlib
import os
import resource
from collections.abc import Iterator
from pathlib import Path

from daemons import daemon
from training import free_port


def ftx_home() -> Path:
    return Path(os.environ.get("FTX_HOME") or Path.home() / ".cache" / "ftx")


def podman_settings(folder: Path, registry: str) -> dict[str, str]:
    """Environment variables that make podman work here and trust the test registry."""
    folder.mkdir(parents=True, exist_ok=True)
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    (folder / "containers.conf").write_text(
        f'[containers]\ndefault_ulimits = ["nofile={hard}:{hard}", "nproc=4096:4096"]\n'
        '[engine]\nruntime = "runc"\n'
    )
    store = ftx_home() / "containers" / "podman"
    (folder / "storage.conf").write_text(
        f'[storage]\ndriver = "overlay"\ngraphroot = "{store}"\nrunroot = "{folder / "run"}"\n'
    )
    (folder / "registries.conf").write_text(
        f'unqualified-search-registries = []\n[[registry]]\nlocation = "{registry}"\n'
        "insecure = true\n"
    )
    return {
        "CONTAINERS_CONF": str(folder / "containers.conf"),
        "CONTAINERS_STORAGE_CONF": str(folder / "storage.conf"),
        "CONTAINERS_REGISTRIES_CONF": str(folder / "registries.conf"),
    }


@contextlib.contextmanager
def local_registry(folder: Path) -> Iterator[str]:
    """Debian's docker-registry (the distribution registry) on 127.0.0.1, no auth."""
    port = free_port()
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "config.yml"
    config.write_text(
        "version: 0.1\n"
        f"storage:\n  filesystem:\n    rootdirectory: {folder / 'data'}\n"
        "  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )

    def ready() -> bool:
        import urllib.request

        with contextlib.suppress(OSError):
            return urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/").status == 200
        return False

    with daemon(["docker-registry", "serve", str(config)], folder / "registry.log", ready):
        yield f"127.0.0.1:{port}"


@contextlib.contextmanager
def dockerd(folder: Path) -> Iterator[str]:
    """A Docker engine on a private socket (no iptables, no bridge: --network host or
    none), its images under $FTX_HOME/containers/docker."""
    folder.mkdir(parents=True, exist_ok=True)
    socket = folder / "docker.sock"
    command = [
        "dockerd",
        "--iptables=false",
        "--ip6tables=false",
        "--bridge=none",
        f"--data-root={ftx_home() / 'containers' / 'docker'}",
        f"--exec-root={folder / 'exec'}",
        f"--pidfile={folder / 'docker.pid'}",
        "-H",
        f"unix://{socket}",
    ]
    with daemon(command, folder / "dockerd.log", socket.exists):
        yield f"unix://{socket}"

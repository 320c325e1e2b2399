"""The host's pip configuration, served to an image build for as long as it runs.

An image must build wherever `ftx env create` works: behind a proxy with its own CA,
from a private index, from local find-links folders. None of that may enter a layer,
and the Docker API's build has no secrets. So for the length of a build ftx serves on
127.0.0.1 (the build runs with the host's network): a pip.conf rewritten from the
host's (`pip config list`), its CA bundle and constraints file, the local index and
find-links folders, and the ftx wheel. A RUN step fetches them into /tmp, runs pip and
deletes them in the same step; only the packages pip installed are in the layer.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

from ftx.core.errors import FtxError

PORT_ENV = "FTX_BUILD_PORT"
DEFAULT_PORT = 47311  # fixed, so a build's RUN lines (and so its layer cache) stay the same
INSIDE = "/tmp/ftx-pip"  # where the RUN step puts the fetched files (deleted by it)
LIST_KEYS = ("extra-index-url", "find-links", "trusted-host")

# What a RUN step executes (fetched by a python3 one-liner given the server's URL and pip's
# arguments): pip with the served configuration in /opt/ftx/env; the fetched files are
# removed in the same step.
CLIENT = f'''
import os, shutil, subprocess, sys, urllib.request
base = sys.argv[1]
os.makedirs("{INSIDE}", exist_ok=True)
try:
    names = urllib.request.urlopen(base + "/files").read().decode().split()
    for name in names:
        urllib.request.urlretrieve(base + "/" + name, "{INSIDE}/" + name)
    env = dict(os.environ, PIP_CONFIG_FILE="{INSIDE}/pip.conf", PIP_NO_CACHE_DIR="1")
    code = subprocess.call(["/opt/ftx/env/bin/python", "-m", "pip", *sys.argv[2:]], env=env)
finally:
    shutil.rmtree("{INSIDE}", ignore_errors=True)
sys.exit(code)
'''


def build_port() -> int:
    return int(os.environ.get(PORT_ENV, DEFAULT_PORT))


def host_pip_config() -> dict[str, str]:
    """pip's effective settings on this host (files and PIP_* variables; the
    environment wins over site, user and global files, as in pip)."""
    result = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True
    )
    rank = {":env:": 3, "site": 2, "user": 1, "global": 0}
    found: dict[str, tuple[int, str]] = {}
    for line in result.stdout.splitlines():
        scoped, _, value = line.partition("=")
        scope, _, key = scoped.rpartition(".")
        value = value.strip().strip("'\"")
        level = rank.get(scope, 0)
        if key and (key not in found or level >= found[key][0]):
            found[key] = (level, value)
    return {key: value for key, (_, value) in found.items()}


class _Served:
    """A folder of links the HTTP server exposes: files and local pip folders."""

    def __init__(self, root: Path, port: int):
        self.root = root
        self.base = f"http://127.0.0.1:{port}"
        self.files: list[str] = []  # fetched by the RUN step into INSIDE
        self.folders = 0

    def file(self, source: Path, name: str) -> str:
        shutil.copyfile(source, self.root / name)
        self.files.append(name)
        return f"{INSIDE}/{name}"

    def text(self, name: str, text: str) -> None:
        (self.root / name).write_text(text)
        self.files.append(name)

    def folder(self, location: str) -> str:
        """A local folder (path or file:// URL) as an http URL; remote URLs stay."""
        parsed = urlparse(location)
        if parsed.scheme not in ("", "file"):
            return location
        path = Path(parsed.path if parsed.scheme == "file" else location).resolve()
        name = f"d{self.folders}"
        self.folders += 1
        # The parent is served too: index pages link to files beside the index
        # (simple/x/index.html -> ../../files/x.whl).
        (self.root / name).symlink_to(path.parent, target_is_directory=True)
        return f"{self.base}/{name}/{path.name}/"


def _rewrite(config: dict[str, str], served: _Served) -> str:
    lines = ["[global]"]
    trusted = {"127.0.0.1"}
    for key, value in config.items():
        if key in ("index-url", "extra-index-url", "find-links"):
            value = " ".join(served.folder(v) for v in value.split())
        elif key == "cert":
            value = served.file(Path(value), "ca.pem")
        elif key in ("constraint", "requirement"):
            value = served.file(Path(value), f"{key}.txt")
        elif key == "trusted-host":
            trusted.update(value.split())
            continue
        elif key in ("cache-dir", "no-cache-dir", "target", "prefix", "user"):
            continue  # about the host's filesystem, not about where packages come from
        lines.append(f"{key} = {value}")
    lines.append(f"trusted-host = {' '.join(sorted(trusted))}")
    return "\n".join(lines) + "\n"


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def serve_for_build(extra: dict[str, Path] | None = None) -> Iterator[str]:
    """Serve the host's pip configuration (and ``extra`` files by name) on 127.0.0.1
    while the block runs; yields the base URL the build's RUN steps use."""
    port = build_port()
    with tempfile.TemporaryDirectory(prefix="ftx-build-") as scratch:
        root = Path(scratch)
        os.chmod(root, 0o700)
        served = _Served(root, port)
        served.text("pip.conf", _rewrite(host_pip_config(), served))
        for name, path in (extra or {}).items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, root / name)
        (root / "files").write_text("\n".join(served.files) + "\n")
        (root / "pip.py").write_text(CLIENT)
        handler = functools.partial(_Quiet, directory=str(root))
        try:
            server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
        except OSError as exc:
            raise FtxError(
                f"cannot serve the pip configuration to the build on 127.0.0.1:{port}: {exc}",
                where=PORT_ENV,
                fix=f"another build may be running; wait for it, or set {PORT_ENV} to a free"
                " port (the image's RUN steps then miss the layer cache once)",
            ) from exc
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield served.base
        finally:
            server.shutdown()
            server.server_close()

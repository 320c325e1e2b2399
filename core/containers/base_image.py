"""A base image without a registry: Debian with python3.11, made by debootstrap.

For machines that reach Debian's mirror but no container registry (firewalled
clusters, this project's CI). The root filesystem is made once per machine and kept
as a tarball under $FTX_HOME/images; importing it into an engine takes seconds.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from ftx.core.containers.engine import Engine
from ftx.core.errors import FtxError
from ftx.core.home import ftx_home

SUITE = "bookworm"  # python3 3.11, what every backend's lock is built for
PACKAGES = ("python3", "python3-venv", "ca-certificates", "libgomp1")
BASE_NAME = f"localhost/ftx-base:{SUITE}"


def apt_mirror() -> str:
    """The Debian mirror apt uses here (deb822 sources or sources.list)."""
    candidates = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in candidates:
        if not path.is_file() or path.suffix not in ("", ".list", ".sources"):
            continue
        text = path.read_text(errors="replace")
        for match in re.finditer(r"^(?:URIs:\s*|deb\s+(?:\[[^\]]*\]\s*)?)(\S+)", text, re.M):
            url = match.group(1)
            if "debian" in url and "security" not in url:
                return url
    return "http://deb.debian.org/debian"


def rootfs_tarball(mirror: str | None = None, *, say=print) -> Path:
    """The cached root filesystem tarball, made with debootstrap when missing."""
    tarball = ftx_home() / "images" / f"debian-{SUITE}-python3.tar"
    if tarball.exists():
        return tarball
    if shutil.which("debootstrap") is None:
        raise FtxError(
            "debootstrap is not installed",
            where="ftx image base",
            fix="install it (Debian: apt-get install debootstrap) or pass --base an image"
            " your engine already has",
        )
    mirror = mirror or apt_mirror()
    tarball.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ftx-rootfs-", dir=tarball.parent) as scratch:
        root = Path(scratch) / "rootfs"
        say(f"debootstrap {SUITE} from {mirror} (about a minute; once per machine)")
        command = ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}"]
        result = subprocess.run(
            [*command, SUITE, str(root), mirror], capture_output=True, text=True
        )
        if result.returncode != 0:
            raise FtxError(
                f"debootstrap failed: {result.stdout.strip().splitlines()[-1:]}",
                where=mirror,
                fix="check that the mirror is reachable and that you are root",
            )
        shutil.rmtree(root / "var/cache/apt/archives", ignore_errors=True)
        staged = Path(scratch) / "rootfs.tar"
        subprocess.run(["tar", "-C", str(root), "-cf", str(staged), "."], check=True)
        staged.replace(tarball)
    return tarball


def import_base(engine: Engine, mirror: str | None = None, *, say=print) -> str:
    """Import the debootstrap base into the engine as localhost/ftx-base:bookworm (once:
    an engine that has it keeps it)."""
    import docker.errors

    try:
        engine.client.images.get(BASE_NAME)
        say(f"{BASE_NAME} is already there")
        return BASE_NAME
    except docker.errors.ImageNotFound:
        pass
    tarball = rootfs_tarball(mirror, say=say)
    repository, _, tag = BASE_NAME.rpartition(":")
    said = str(engine.api.import_image(src=str(tarball), repository=repository, tag=tag))
    found = re.search(r"sha256:[0-9a-f]{64}|\b[0-9a-f]{64}\b", said)
    if found is None:
        raise FtxError(
            f"the engine did not import the base image: {said[:200]}",
            where=str(tarball),
            fix="delete the tarball to make it again, and check the engine's log",
        )
    # podman's Docker API drops the tag of an import: name the imported image explicitly
    engine.client.images.get(found.group(0)).tag(repository, tag)
    return BASE_NAME

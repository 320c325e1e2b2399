"""Backend images: their names, how they are built from the lock, pulled, pushed, listed.

An image is ``REGISTRY/ftx-BACKEND:VARIANT-LOCK12-SOURCE12``: LOCK12 is the first 12
hex digits of the sha256 of the lock it installs (for the cpu variant the same digest
as the local environment's ``ftx-env.json``, so the two are known to hold the same
packages), SOURCE12 that of ftx's own files. Labels carry the full digests.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ftx.core import __version__
from ftx.core.backend import ImageVariant
from ftx.core.containers.engine import Engine
from ftx.core.containers.hostpip import DEFAULT_PORT, build_port, serve_for_build
from ftx.core.envs import source_root
from ftx.core.errors import FtxError
from ftx.core.registry import get_spec

REGISTRY_ENV = "FTX_REGISTRY"
BASE_ENV = "FTX_BASE_IMAGE"  # a base for every variant (firewalled hosts: `ftx image base`)
LOCAL_REGISTRY = "localhost"  # images only built here: never pulled, never pushed
SOURCE_URL = "https://github.com/ftx-project/ftx"
LABEL = "io.ftx"


def registry_prefix(registry: str | None = None) -> str:
    """Where images are pulled from and pushed to: --registry, FTX_REGISTRY, or none."""
    return (registry or os.environ.get(REGISTRY_ENV) or LOCAL_REGISTRY).rstrip("/")


def variant_of(backend: str, variant: str) -> ImageVariant:
    images = get_spec(backend, trains=False).environment.images
    if variant not in images:
        raise FtxError(
            f"the {backend} image has no '{variant}' variant",
            where="--variant",
            fix=f"use one of: {', '.join(images)}",
        )
    return images[variant]


def variant_lock(backend: str, variant: str) -> tuple[str, str]:
    """The variant's lock (the backend's, its replaced lines removed) and the lines it
    installs with their dependencies instead."""
    spec = get_spec(backend, trains=False).environment
    text = spec.lock_file.read_text()
    chosen = variant_of(backend, variant)
    extra = []
    for old, new in chosen.replace.items():
        if not re.search(rf"^{re.escape(old)}$", text, re.M):
            raise FtxError(
                f"the {variant} variant replaces '{old}', which {spec.lock_file} no longer pins",
                where=str(spec.lock_file),
                fix="update the variant's replace table in the backend's environment.py",
            )
        text = re.sub(rf"^{re.escape(old)}\n", "", text, flags=re.M)
        extra.append(new)
    return text, "\n".join(extra) + ("\n" if extra else "")


def source_digest() -> str:
    """sha256 of ftx's own files (the package as it would be installed)."""
    root = Path(__file__).resolve().parent.parent.parent
    folders = [root / "core", root / "backends"] if source_root() else [root]
    digest = hashlib.sha256()
    for folder in folders:
        for path in sorted(folder.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                digest.update(str(path.relative_to(root)).encode() + b"\0")
                digest.update(path.read_bytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class ImageRef:
    """One backend image, named by what it holds."""

    backend: str
    variant: str
    lock_sha256: str
    source_sha256: str
    registry: str

    @classmethod
    def of(cls, backend: str, variant: str = "cpu", registry: str | None = None) -> ImageRef:
        lock, extra = variant_lock(backend, variant)
        digest = hashlib.sha256((lock + extra).encode()).hexdigest()
        return cls(backend, variant, digest, source_digest(), registry_prefix(registry))

    @property
    def repository(self) -> str:
        return f"{self.registry}/ftx-{self.backend}"

    @property
    def tag(self) -> str:
        return f"{self.variant}-{self.lock_sha256[:12]}-{self.source_sha256[:12]}"

    @property
    def name(self) -> str:
        return f"{self.repository}:{self.tag}"

    @property
    def pullable(self) -> bool:
        return self.registry != LOCAL_REGISTRY

    def labels(self) -> dict[str, str]:
        return {
            "org.opencontainers.image.title": f"ftx-{self.backend}",
            "org.opencontainers.image.version": __version__,
            "org.opencontainers.image.source": SOURCE_URL,
            "org.opencontainers.image.revision": self.source_sha256,
            f"{LABEL}.backend": self.backend,
            f"{LABEL}.variant": self.variant,
            f"{LABEL}.lock.sha256": self.lock_sha256,
        }


def dockerfile(backend: str) -> Path:
    root = source_root()
    path = root / "docker" / backend / "Dockerfile" if root else None
    if path is None or not path.is_file():
        raise FtxError(
            f"no Dockerfile for the {backend} backend",
            where=f"docker/{backend}/Dockerfile",
            fix="build images from an ftx source checkout, or pull them with --registry",
        )
    return path


def _ftx_wheel(folder: Path) -> Path:
    """ftx's wheel, built from a copy of the checkout (setuptools leaves build/ behind)."""
    checkout = source_root()
    assert checkout is not None
    root = folder / "src"
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("core", "backends"):
        shutil.copytree(checkout / name, root / name, ignore=skip)
    for name in ("pyproject.toml", "README.md"):
        shutil.copyfile(checkout / name, root / name)
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q"]
    result = subprocess.run(
        [*command, "-w", str(folder), str(root)],
        capture_output=True,
        text=True,
    )
    wheels = list(folder.glob("ftx-*.whl"))
    shutil.rmtree(root)
    if result.returncode != 0 or not wheels:
        raise FtxError(
            f"building ftx's wheel failed: {result.stderr.strip().splitlines()[-1:]}",
            where=str(root),
            fix="check that `pip wheel --no-deps .` works in the checkout",
        )
    return wheels[0]


Say = Callable[[str], None]


def build(
    engine: Engine, ref: ImageRef, *, base: str | None = None, say: Say, log: Path
) -> dict[str, Any]:
    """Build the image (layers cached by the engine: the lock's layer comes before
    ftx's, so a change to ftx rebuilds only ftx's). Returns the image's attributes."""
    chosen = variant_of(ref.backend, ref.variant)
    lock, extra = variant_lock(ref.backend, ref.variant)
    with tempfile.TemporaryDirectory(prefix="ftx-context-") as scratch:
        context = Path(scratch)
        shutil.copyfile(dockerfile(ref.backend), context / "Dockerfile")
        (context / "requirements.lock").write_text(lock)
        (context / "variant.txt").write_text(extra)
        wheel = _ftx_wheel(Path(scratch) / "wheel")
        args = {
            "BASE_IMAGE": base or os.environ.get(BASE_ENV) or chosen.base,
            "VARIANT_INDEX": chosen.index,
            "FTX_SOURCE": ref.source_sha256,
            "FTX_VERSION": __version__,
            "LOCK_SHA256": ref.lock_sha256,
            "VARIANT": ref.variant,
        }
        if build_port() != DEFAULT_PORT:
            args["FTX_BUILD_SERVER"] = f"http://127.0.0.1:{build_port()}"
        say(f"building {ref.name} from {args['BASE_IMAGE']} (log: {log})")
        with serve_for_build({f"w/{wheel.name}": wheel}):
            events = engine.api.build(
                path=str(context),
                tag=ref.name,
                buildargs=args,
                labels=ref.labels(),
                network_mode="host",  # the RUN steps reach the pip server on 127.0.0.1
                rm=True,
                forcerm=True,
                pull=False,
                decode=True,
            )
            _follow_build(events, log)
    return engine.client.images.get(ref.name).attrs


def _follow_build(events: Iterator[dict[str, Any]], log: Path) -> None:
    from ftx.core.progress import activity

    log.parent.mkdir(parents=True, exist_ok=True)
    tail: list[str] = []
    with log.open("w") as handle, activity("building") as show:
        for event in events:
            text = event.get("stream") or event.get("status") or ""
            if "error" in event or "errorDetail" in event:
                text = str(event.get("error") or event["errorDetail"].get("message"))
                handle.write(text + "\n")
                tail.append(text)
                raise FtxError(
                    f"the image build failed: {' | '.join(t.strip() for t in tail[-4:])}",
                    where=str(log),
                    fix="read the build log; a failing pip step names the package it missed",
                )
            handle.write(text)
            for line in text.splitlines():
                if line.strip():
                    tail = [*tail[-20:], line]
                    if line.startswith(("STEP", "Step")):
                        show(line.strip()[:100])


def pull(engine: Engine, ref: ImageRef, *, say: Say) -> dict[str, Any] | None:
    """Pull the image from its registry; None when the registry does not have it."""
    from ftx.core.progress import transfer

    say(f"pulling {ref.name}")
    try:
        with transfer("pulling") as update:
            for event in engine.api.pull(ref.repository, ref.tag, stream=True, decode=True):
                if "error" in event:
                    raise RuntimeError(event["error"])
                update(event)
    except Exception as exc:  # its error event, the SDK's NotFound/APIError, no registry
        say(f"the registry has no {ref.name}: {str(exc).splitlines()[0][:160]}")
        return None
    return engine.client.images.get(ref.name).attrs


def push(engine: Engine, ref: ImageRef, *, say: Say) -> str:
    """Push the image to its registry; returns the digest the registry gave it."""
    from ftx.core.progress import transfer

    if not ref.pullable:
        raise FtxError(
            f"{ref.name} names no registry",
            where="--registry",
            fix=f"pass --registry HOST[:PORT][/PATH] or set {REGISTRY_ENV}",
        )
    say(f"pushing {ref.name}")
    digest = ""
    with transfer("pushing") as update:
        for event in engine.api.push(ref.repository, ref.tag, stream=True, decode=True):
            if "error" in event:
                raise FtxError(
                    f"pushing {ref.name} failed: {event['error']}",
                    where="--registry",
                    fix="check that the registry is reachable; for an HTTP registry declare it"
                    " insecure (podman: registries.conf; docker: insecure-registries)",
                )
            digest = event.get("aux", {}).get("Digest", digest)
            found = re.search(r"sha256:[0-9a-f]{64}", event.get("status", ""))
            digest = digest or (found.group(0) if found else "")
            update(event)
    return digest


def ftx_images(engine: Engine, backend: str | None = None) -> list[Any]:
    """Images ftx built (by label), of one backend or all."""
    label = f"{LABEL}.backend" + (f"={backend}" if backend else "")
    return engine.client.images.list(filters={"label": label})


def remove(engine: Engine, backend: str, variant: str | None = None) -> list[str]:
    """Remove the backend's images (one variant's, or all); returns the tags removed."""
    removed = []
    for image in ftx_images(engine, backend):
        if variant and image.labels.get(f"{LABEL}.variant") != variant:
            continue
        for tag in image.tags or [image.id]:
            engine.client.images.remove(tag, force=True)
            removed.append(tag)
    return removed


def find(engine: Engine, ref: ImageRef) -> dict[str, Any] | None:
    import docker.errors

    try:
        return engine.client.images.get(ref.name).attrs
    except docker.errors.ImageNotFound:
        return None


def ensure(engine: Engine, ref: ImageRef, *, say: Say, log: Path) -> tuple[dict[str, Any], str]:
    """The image, as it is here, pulled from its registry, or built (in that order);
    returns its attributes and which of the three happened."""
    found = find(engine, ref)
    if found is not None:
        return found, "present"
    if ref.pullable:
        pulled = pull(engine, ref, say=say)
        if pulled is not None:
            return pulled, "pulled"
    say(f"no registry has {ref.name}; building it here")
    return build(engine, ref, say=say, log=log), "built"


def digest_of(attrs: dict[str, Any]) -> str:
    """The image's registry digest when it has one (repo@sha256:...), else its id."""
    digests = attrs.get("RepoDigests") or []
    return digests[0] if digests else attrs["Id"]

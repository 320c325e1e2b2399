"""Runtimes run a written plan: ``local`` (the backend's environment) or a container."""

from __future__ import annotations

from ftx.core.errors import FtxError
from ftx.core.runtime.base import Runtime
from ftx.core.runtime.local import LocalRuntime

RUNTIMES = ("local", "docker", "podman")


def get_runtime(name: str) -> Runtime:
    """The runtime called ``name``."""
    if name == "local":
        return LocalRuntime()
    if name in ("docker", "podman"):
        raise FtxError(
            f"the {name} runtime is not part of this release yet",
            where="--runtime",
            fix="use --runtime local (the default), which runs in the backend's local environment",
        )
    raise FtxError(
        f"unknown runtime '{name}'", where="--runtime", fix=f"use one of {', '.join(RUNTIMES)}"
    )


__all__ = ["RUNTIMES", "Runtime", "get_runtime"]

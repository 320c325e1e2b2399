"""Runtimes run a written plan: ``local`` (the backend's environment) or a container
engine (``docker``, ``podman``: the backend's image)."""

from __future__ import annotations

from ftx.core.errors import FtxError
from ftx.core.runtime.base import Launch, Runtime
from ftx.core.runtime.local import LocalRuntime

RUNTIMES = ("local", "docker", "podman")


def get_runtime(name: str, *, variant: str | None = None, registry: str | None = None) -> Runtime:
    """The runtime called ``name``; containers take the image variant (default: what this
    host's devices call for) and registry (default: $FTX_REGISTRY)."""
    if name == "local":
        return LocalRuntime()
    if name in ("docker", "podman"):
        from ftx.core.runtime.container import ContainerRuntime

        return ContainerRuntime(name, variant, registry)
    raise FtxError(
        f"unknown runtime '{name}'", where="--runtime", fix=f"use one of {', '.join(RUNTIMES)}"
    )


__all__ = ["RUNTIMES", "Launch", "Runtime", "get_runtime"]

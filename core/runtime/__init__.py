"""Runtimes run a written plan: ``local`` (the backend's environment) or a container
engine (``docker``, ``podman``: the backend's image)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

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


_CURRENT: ContextVar[Runtime | None] = ContextVar("ftx_runtime", default=None)


def current() -> Runtime:
    """The runtime a run is using (local outside a run): where a backend's helpers run
    what needs its framework (the mindformers backend's MindRecord writer)."""
    return _CURRENT.get() or LocalRuntime()


@contextlib.contextmanager
def using(runtime: Runtime) -> Iterator[None]:
    token = _CURRENT.set(runtime)
    try:
        yield
    finally:
        _CURRENT.reset(token)


__all__ = ["RUNTIMES", "Launch", "Runtime", "current", "get_runtime", "using"]

"""Look up backends by name in the registry (ftx.backends.REGISTRY)."""

from __future__ import annotations

from functools import cache
from importlib import import_module

from ftx.core.backend import Backend
from ftx.core.capabilities import Capabilities
from ftx.core.errors import FtxError


def _load(path: str) -> object:
    module, _, attr = path.partition(":")
    return getattr(import_module(module), attr)


def backend_names() -> list[str]:
    """Backends that can translate and run recipes."""
    from ftx.backends import REGISTRY

    return [name for name, entry in REGISTRY.items() if entry.backend]


@cache
def get_backend(name: str) -> Backend:
    """The backend called ``name``, or an FtxError listing the available ones."""
    from ftx.backends import REGISTRY

    entry = REGISTRY.get(name)
    if entry is None or entry.backend is None:
        known = ", ".join(backend_names())
        detail = (
            f"the {name} backend is not available yet (its environment exists: "
            f"`ftx env create {name}`)"
            if entry
            else f"unknown backend '{name}'"
        )
        raise FtxError(detail, where="--backend", fix=f"use one of: {known}")
    return _load(entry.backend)()


def capability_matrix() -> dict[str, Capabilities]:
    """Every available backend's capabilities, by name."""
    return {name: get_backend(name).capabilities for name in backend_names()}

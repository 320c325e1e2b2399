"""Backends by name: the specs that ``ftx.backends.BACKENDS`` lists.

The only place the core reaches into backends/. Standard library only (workers
import it through the inventory), and importing a spec imports no framework.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from importlib import import_module
from typing import TYPE_CHECKING, Any

from ftx.core.backend import BackendSpec, Capabilities, DataExporter
from ftx.core.errors import FtxError

if TYPE_CHECKING:
    from ftx.core.models.architectures import ModelConfig
    from ftx.core.plan import NativePlan
    from ftx.core.recipe.schema import Recipe


def load(path: str) -> Any:
    """The object at ``module:attribute``."""
    module, _, attr = path.partition(":")
    return getattr(import_module(module), attr)


@cache
def specs() -> dict[str, BackendSpec]:
    """Every registered backend's spec, by name, in registry order."""
    from ftx.backends import BACKENDS

    found: dict[str, BackendSpec] = {}
    for package in BACKENDS:
        spec = import_module(package).SPEC
        found[spec.name] = spec
    return found


def backend_names() -> list[str]:
    """Backends that can translate and run recipes."""
    return [name for name, spec in specs().items() if spec.trains]


def get_spec(name: str, *, trains: bool = True) -> BackendSpec:
    """The backend called ``name`` (one that trains, unless ``trains`` is False)."""
    spec = specs().get(name)
    if spec is None or (trains and not spec.trains):
        known = ", ".join(backend_names() if trains else specs())
        detail = (
            f"the {name} backend is not available yet (its environment exists: "
            f"`ftx env create {name}`)"
            if spec
            else f"unknown backend '{name}'"
        )
        raise FtxError(detail, where="--backend", fix=f"use one of: {known}")
    return spec


def translator(spec: BackendSpec) -> Callable[[Recipe, ModelConfig], NativePlan]:
    """The backend's pure translator: (recipe, the model's config.json facts) -> plan."""
    assert spec.translator is not None
    return load(spec.translator)


def capability_matrix() -> dict[str, Capabilities]:
    """Every training backend's capabilities, by name."""
    return {n: s.capabilities for n, s in specs().items() if s.trains and s.capabilities}


def exporters() -> dict[str, DataExporter]:
    """Every backend's data exporters, by the name `ftx data export --to` takes."""
    return {name: e for spec in specs().values() for name, e in spec.exporters.items()}

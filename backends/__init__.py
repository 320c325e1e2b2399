"""Backends: one folder each, and this registry naming them.

Adding a backend means adding a folder (translator, worker, environment,
lock file, capabilities) and one entry here. Entries are import paths, so
listing backends never imports a framework.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RegistryEntry:
    """Where a backend's pieces live (``module:attribute``)."""

    environment: str
    backend: str | None = None  # None: the environment exists, the translator comes later


REGISTRY: dict[str, RegistryEntry] = {
    "torch": RegistryEntry(
        environment="ftx.backends.torch.environment:ENVIRONMENT",
        backend="ftx.backends.torch.backend:TorchBackend",
    ),
    "paddle": RegistryEntry(environment="ftx.backends.paddle.environment:ENVIRONMENT"),
    "mindformers": RegistryEntry(environment="ftx.backends.mindformers.environment:ENVIRONMENT"),
}

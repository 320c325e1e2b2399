"""Backends: one folder each, and this list naming them.

Each entry is a package whose ``__init__`` declares ``SPEC`` (a
:class:`ftx.core.backend.BackendSpec`) using the standard library only, so
listing backends never imports a framework. Adding a backend means adding its
folder and one line here.
"""

BACKENDS = (
    "ftx.backends.torch",
    "ftx.backends.paddle",
    "ftx.backends.mindformers",
)

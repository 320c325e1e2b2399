"""One rich console for the CLI (stderr), with a quiet switch for scripts."""

from __future__ import annotations

from rich.console import Console

console = Console(stderr=True, highlight=False)  # progress and errors
results = Console(highlight=False)  # what a command produces (stdout)
_quiet = False


def set_quiet(value: bool) -> None:
    """Silence progress and chatter (results and errors still print)."""
    global _quiet
    _quiet = value


def is_quiet() -> bool:
    return _quiet


def info(message: str) -> None:
    """A progress line, hidden by --quiet."""
    if not _quiet:
        console.print(message)

"""One rich console for the CLI (stderr), with a quiet switch for scripts."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape

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


_WARNED: set[str] = set()


def warn_once(message: str) -> None:
    """A warning about a legal but surprising value, printed once per command (even
    with --quiet: it is about the result)."""
    if message not in _WARNED:
        _WARNED.add(message)
        console.print(f"[yellow]warning:[/] {escape(message)}", soft_wrap=True)

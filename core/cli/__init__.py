"""The `ftx` command line (click). Each command group lives in its own module."""

from __future__ import annotations

import os
import signal
import sys

import click
from rich.markup import escape

from ftx.core import __version__
from ftx.core.console import console, set_quiet
from ftx.core.errors import FtxError


class FtxGroup(click.Group):
    """Turns FtxError into one paragraph on stderr and its exit code (2 for user errors)."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except FtxError as exc:
            console.print(f"[bold red]error:[/] {escape(exc.render())}", soft_wrap=True)
            sys.exit(exc.exit_code)


@click.group(cls=FtxGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ftx")
@click.option("--quiet", "-q", is_flag=True, help="Only print results and errors (for scripts).")
def cli(quiet: bool) -> None:
    """ftx: one fine-tuning recipe, any framework.

    \b
    Example:
      ftx init-model --arch llama --size tiny --out models/tiny-llama
      ftx run recipes/quickstart.yaml --backend torch
    """
    set_quiet(quiet)


def main() -> None:
    """Console-script entry point."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    # SIGTERM unwinds like Ctrl-C, so staged outputs are removed rather than left half-written.
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))
    from ftx.core.cli import convert_cmds, data_cmds, env_cmds, model_cmds, run_cmds  # noqa: F401

    cli(prog_name="ftx")

"""The `ftx` command line (click). Each command group lives in its own module."""

from __future__ import annotations

import errno
import os
import re
import signal
import sys
import traceback
from typing import NoReturn

import click

from ftx.core import __version__
from ftx.core.console import console, lead, set_quiet
from ftx.core.errors import FtxError
from ftx.core.fsutil import claims_released, destination_of

# What the machine says, and what to do about it, for errors no input check can prevent.
SYSTEM_ERRORS = {
    errno.ENOSPC: "free some disk space (or point the output elsewhere) and run it again",
    errno.EDQUOT: "free some of your disk quota and run it again",
    errno.EACCES: "check the permissions of that path, or choose another one",
    errno.EPERM: "check the permissions of that path, or choose another one",
    errno.EROFS: "that file system is read-only: choose a writable output folder",
    errno.EISDIR: "name a file there, not a folder",
    errno.ENOTDIR: "a part of that path is a file, not a folder: fix the path",
    errno.ENAMETOOLONG: "use a shorter path",
}


SHORT_WRITE = re.compile(r"\d+ requested and \d+ written")


class FtxGroup(click.Group):
    """Turns FtxError into one paragraph on stderr and its exit code (2 for user errors);
    a full disk or a permission problem likewise; anything else is a bug in ftx: its
    traceback, a request to report it, exit code 1."""

    def invoke(self, ctx: click.Context) -> object:
        with claims_released():  # the command's destinations are free again at its end
            return self._explained(ctx)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        _quiet_everywhere(self)
        return super().parse_args(ctx, args)

    def _explained(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except FtxError as exc:
            _fail(exc)
        except OSError as exc:
            code = exc.errno
            if code is None and SHORT_WRITE.search(str(exc)):
                # numpy reports a write cut short by a full disk without an errno
                code, exc.strerror = errno.ENOSPC, f"No space left on device ({exc})"
            if code not in SYSTEM_ERRORS:
                _bug(exc)
            # a copy names its source first and what it was writing second
            _system_error(code, exc.strerror or str(exc), exc.filename2 or exc.filename)
        except KeyboardInterrupt:
            console.print("interrupted", soft_wrap=True)
            sys.exit(130)  # 128 + SIGINT, as a shell reports it (1 means a bug in ftx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except Exception as exc:
            code = _os_code(exc)
            if code in SYSTEM_ERRORS:  # safetensors' Rust writer: the OS error in its text
                _system_error(code, os.strerror(code), None)
            _bug(exc)


RUST_IO_ERROR = re.compile(r"(?:Os \{ code: |os error )(\d+)")


def _os_code(exc: Exception) -> int | None:
    found = RUST_IO_ERROR.search(str(exc))
    return int(found.group(1)) if found else None


def _system_error(code: int, what: str, filename: str | None) -> NoReturn:
    """What the machine refused, against the destination being written when there is
    one (a file of its hidden staging folder means nothing to the user)."""
    destination = destination_of(filename)
    if destination is not None:
        where = str(destination)
        if filename and os.path.abspath(filename) != str(destination):
            what = f"{what} (writing {os.path.basename(filename)})"
    else:
        where = filename or "ftx"
    _fail(FtxError(what, where=where, fix=SYSTEM_ERRORS[code]))


def _quiet(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value:
        set_quiet(True)


def _quiet_everywhere(group: click.Group) -> None:
    """-q/--quiet after a command too (`ftx run recipe.yaml -q`), not only before it."""
    for command in group.commands.values():
        if not any(p.name == "quiet" for p in command.params):
            command.params.append(
                click.Option(
                    ["--quiet", "-q"],
                    is_flag=True,
                    expose_value=False,
                    callback=_quiet,
                    help="Only print results and errors (for scripts).",
                )
            )
        if isinstance(command, click.Group):
            _quiet_everywhere(command)


def _fail(exc: FtxError) -> NoReturn:
    console.print(lead("error:", f" {exc.render()}", "bold red"), soft_wrap=True)
    sys.exit(exc.exit_code)


def _bug(exc: BaseException) -> NoReturn:
    traceback.print_exception(exc)
    console.print(
        lead(
            "This is a bug in ftx",
            " (an error it should have explained). Please report it with the command you ran"
            " and the traceback above.",
            "bold red",
        ),
        soft_wrap=True,
    )
    sys.exit(1)


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
    commands(_command_named(sys.argv[1:]))(prog_name="ftx")


# The module that registers each command: `ftx convert` imports convert_cmds alone (with
# every module, a cold start costs 0.5 s more: pydantic, the recipe schema, rich tables).
COMMAND_MODULES = {
    "backends": "run_cmds",
    "compare": "run_cmds",
    "plan": "run_cmds",
    "report": "run_cmds",
    "run": "run_cmds",
    "validate": "run_cmds",
    "cancel": "cluster_cmds",
    "launch": "cluster_cmds",
    "status": "cluster_cmds",
    "submit": "cluster_cmds",
    "chat": "infer_cmds",
    "eval": "infer_cmds",
    "export": "infer_cmds",
    "generate": "infer_cmds",
    "serve": "infer_cmds",
    "convert": "convert_cmds",
    "merge-lora": "convert_cmds",
    "data": "data_cmds",
    "env": "env_cmds",
    "image": "image_cmds",
    "init-model": "model_cmds",
}


def _command_named(args: list[str]) -> str | None:
    """The command an argument list runs (the first word that is not an option)."""
    return next((a for a in args if not a.startswith("-")), None)


def commands(only: str | None = None) -> click.Group:
    """The `ftx` group with every command registered (each module registers its own), or
    with command ``only`` alone when it is a known one."""
    if only in COMMAND_MODULES:
        import importlib

        importlib.import_module(f"ftx.core.cli.{COMMAND_MODULES[only]}")
        return cli
    from ftx.core.cli import (  # noqa: F401
        cluster_cmds,
        convert_cmds,
        data_cmds,
        env_cmds,
        image_cmds,
        infer_cmds,
        model_cmds,
        run_cmds,
    )

    return cli

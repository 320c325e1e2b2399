"""`ftx env list|create|remove|doctor`: the per-backend local environments."""

from __future__ import annotations

import click
from rich.table import Table

from ftx.core import envs
from ftx.core.cli import cli
from ftx.core.console import results
from ftx.core.errors import FtxError
from ftx.core.home import ftx_home

name_arg = click.argument("name", type=click.Choice(envs.env_names()))


@cli.group()
def env() -> None:
    """Local per-backend environments under $FTX_HOME/envs (default ~/.cache/ftx).

    \b
    Example:
      ftx env create torch --if-missing
      ftx env doctor
    """


@env.command("list")
def list_envs() -> None:
    """Show every backend environment and its state.

    \b
    Example:
      ftx env list
    """
    table = Table(title=f"ftx environments ({ftx_home() / 'envs'})")
    for column in ("name", "state", "frameworks", "lock file"):
        table.add_column(column)
    for name in envs.env_names():
        record = envs.read_marker(name) or {}
        versions = ", ".join(f"{k} {v}" for k, v in record.get("versions", {}).items() if v)
        table.add_row(name, envs.state(name), versions or "-", str(envs.get_spec(name).lock_file))
    results.print(table)


@env.command()
@name_arg
@click.option("--force", is_flag=True, help="Rebuild an existing environment.")
@click.option("--if-missing", is_flag=True, help="Do nothing when it is ready (for scripts).")
def create(name: str, force: bool, if_missing: bool) -> None:
    """Build a backend's environment from its pinned lock file.

    \b
    Example:
      ftx env create paddle --if-missing
    """
    if if_missing and envs.state(name) == "ready":
        results.print(f"{name}: ready at {envs.env_dir(name)}")
        return
    record = envs.create(name, force=force or if_missing)
    versions = ", ".join(f"{k} {v}" for k, v in record["versions"].items() if v)
    results.print(f"{name}: ready in {record['seconds']} s at {envs.env_dir(name)} ({versions})")


@env.command()
@name_arg
def remove(name: str) -> None:
    """Delete a backend's environment.

    \b
    Example:
      ftx env remove mindformers
    """
    removed = envs.remove(name)
    results.print(f"{name}: {'removed' if removed else 'was not there'}")


@env.command()
@click.argument("names", nargs=-1)
def doctor(names: tuple[str, ...]) -> None:
    """Start each environment and show its framework versions and devices.

    \b
    Example:
      ftx env doctor torch
    """
    unknown = sorted(set(names) - set(envs.env_names()))
    if unknown:
        raise FtxError(
            f"no environment named {', '.join(unknown)}",
            where="ftx env doctor",
            fix=f"name one of {', '.join(envs.env_names())}, or none for all",
        )
    table = Table(title="ftx env doctor")
    for column in ("name", "state", "python", "frameworks", "devices"):
        table.add_column(column)
    for name in names or envs.env_names():
        current = envs.state(name)
        if current in ("missing", "incomplete"):
            table.add_row(name, current, "-", "-", f"create it: ftx env create {name}")
            continue
        try:
            found = envs.inventory(name)
        except FtxError as exc:
            table.add_row(name, "broken", "-", "-", exc.detail)
            continue
        versions = "\n".join(f"{k} {v}" for k, v in found["versions"].items() if v)
        table.add_row(name, current, found["python"], versions, "\n".join(found["devices"]))
    results.print(table)

"""`ftx submit`, `ftx launch`, `ftx status`, `ftx cancel`: runs on a scheduler."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ftx.core.cli import cli
from ftx.core.cli.run_cmds import (
    backend_opt,
    out_opt,
    overrides_arg,
    print_summary,
    recipe_arg,
    runtime_opts,
)
from ftx.core.console import results
from ftx.core.recipe import load_recipe

# command-line option -> recipe key (validated like the rest of the recipe)
SLURM_OPTIONS = {
    "nodes": "parallel.nnodes",
    "partition": "scheduler.slurm.partition",
    "account": "scheduler.slurm.account",
    "time": "scheduler.slurm.time",
    "gpus_per_node": "scheduler.slurm.gpus_per_node",
    "job_name": "scheduler.slurm.job_name",
}


def slurm_overrides(values: dict[str, object]) -> list[str]:
    """The command line's Slurm options as recipe overrides (quoted: a time such as
    1:00:00 must stay text)."""
    found = []
    for name, key in SLURM_OPTIONS.items():
        value = values.get(name)
        if value is not None:
            found.append(f"{key}={json.dumps(value)}")
    return found


def slurm_opts(fn):
    """--nodes --partition --account --time --gpus-per-node --job-name."""
    for option in reversed(
        [
            click.option("--nodes", type=int, help="Nodes (parallel.nnodes)."),
            click.option("--partition", help="scheduler.slurm.partition"),
            click.option("--account", help="scheduler.slurm.account"),
            click.option("--time", help="Time limit, e.g. 1:00:00 (scheduler.slurm.time)."),
            click.option("--gpus-per-node", type=int, help="scheduler.slurm.gpus_per_node"),
            click.option("--job-name", help="scheduler.slurm.job_name"),
        ]
    ):
        fn = option(fn)
    return fn


@cli.command()
@recipe_arg
@overrides_arg
@backend_opt
@out_opt
@click.option("--scheduler", type=click.Choice(["slurm"]), default="slurm", show_default=True)
@slurm_opts
@runtime_opts
@click.option("--wait", is_flag=True, help="Follow the job to its end (progress as ftx run).")
@click.option("--force", is_flag=True, help="Replace a non-empty output folder.")
def submit(
    recipe: Path,
    overrides: tuple[str, ...],
    backend: str,
    out: Path | None,
    scheduler: str,
    runtime: str,
    variant: str | None,
    registry: str | None,
    wait: bool,
    force: bool,
    **slurm: object,
) -> None:
    """Prepare data and plan here, then submit one Slurm job: one task per node, each
    running `ftx launch OUT` (OUT on a filesystem the nodes share).

    \b
    Examples:
      ftx submit recipes/llama2_7b_lora_sft.yaml --nodes 2 --gpus-per-node 8 \\
          --partition gpu --time 12:00:00 --wait
      ftx submit recipe.yaml --backend paddle train.resume=auto --out OUT   # continue
    """
    from ftx.core import jobs

    loaded = load_recipe(recipe, [*overrides, *slurm_overrides(slurm)])
    record = jobs.submit(
        loaded,
        backend,
        out=out,
        force=force,
        wait=wait,
        runtime_name=runtime,
        variant=variant,
        registry=registry,
    )
    if wait:
        print_summary(record)
    else:
        results.print(record["scheduler"]["job_id"])


@cli.command()
@click.argument("out", type=click.Path(path_type=Path))
@runtime_opts
def launch(out: Path, runtime: str, variant: str | None, registry: str | None) -> None:
    """Run OUT's plan on this node: what each task of a scheduler's job runs. The node's
    rank and the master's address come from the scheduler (Slurm, Kubeflow Trainer,
    Volcano, MindCluster) or FTX_NODE_RANK / FTX_MASTER_ADDR / FTX_MASTER_PORT.

    \b
    Example:
      srun --ntasks-per-node=1 ftx launch runs/quickstart   # as OUT/plan/job.sbatch does
    """
    from ftx.core import jobs

    record = jobs.launch_node(out, runtime_name=runtime, variant=variant, registry=registry)
    if "backend" in record:  # node 0 keeps run.json; the others only trained
        print_summary(record)
    else:
        results.print(f"this node finished: {record['status']}")


@cli.command()
@click.argument("out", type=click.Path(path_type=Path))
def status(out: Path) -> None:
    """A submitted run's status: run.json's, and Slurm's state of its job.

    \b
    Example:
      ftx status runs/quickstart
    """
    from ftx.core import jobs

    results.print(json.dumps(jobs.status(out), indent=2))


@cli.command()
@click.argument("out", type=click.Path(path_type=Path))
def cancel(out: Path) -> None:
    """Cancel a submitted run's job: its workers get SIGTERM and save a checkpoint.

    \b
    Example:
      ftx cancel runs/quickstart && ftx submit RECIPE train.resume=auto --out runs/quickstart
    """
    from ftx.core import jobs

    results.print(f"cancelled Slurm job {jobs.cancel(out)}")

"""`ftx validate`, `ftx plan`, `ftx run`, `ftx backends`."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import click
from rich.table import Table

from ftx.core.backend import Capabilities
from ftx.core.cli import cli
from ftx.core.console import info, lead, results
from ftx.core.recipe import load_recipe

recipe_arg = click.argument("recipe", type=click.Path(path_type=Path))
overrides_arg = click.argument("overrides", nargs=-1)
backend_opt = click.option(
    "--backend", "-b", default="torch", show_default=True, help="Backend to translate for."
)
out_opt = click.option(
    "--out", "-o", type=click.Path(path_type=Path), help="Run folder (default: output.dir)."
)


def runtime_opts(fn: Callable) -> Callable:
    """--runtime, --variant, --registry: where a plan runs."""
    fn = click.option(
        "--registry", help="Registry to pull the image from (default: $FTX_REGISTRY)."
    )(fn)
    fn = click.option(
        "--variant",
        help="Image variant for docker/podman (default: cpu, cuda or ascend by device).",
    )(fn)
    return click.option(
        "--runtime",
        type=click.Choice(["local", "docker", "podman"]),
        default="local",
        show_default=True,
        help="local: the backend's environment under $FTX_HOME; docker/podman: its image.",
    )(fn)


@cli.command()
@recipe_arg
@overrides_arg
@click.option("--backend", "-b", help="Also check the recipe against this backend's capabilities.")
def validate(recipe: Path, overrides: tuple[str, ...], backend: str | None) -> None:
    """Check a recipe: keys, types, ranges, cross-field rules (and a backend's capabilities).
    It judges the recipe, not this machine: what needs a GPU/NPU this machine lacks is
    valid, with a note that `ftx run` here would refuse it.

    \b
    Example:
      ftx validate recipes/quickstart.yaml --backend torch train.learning_rate=1e-4
    """
    from ftx.core.capabilities import nowhere
    from ftx.core.errors import FtxError
    from ftx.core.registry import capability_matrix
    from ftx.core.runner import check_model, check_overrides, check_target_devices, target_for

    loaded = load_recipe(recipe, overrides)
    check_model(loaded)
    check_overrides(loaded)
    unsupported = nowhere(loaded.recipe, capability_matrix())
    if unsupported:
        raise FtxError(
            "; ".join(unsupported),
            where=str(recipe),
            fix="change those keys (`ftx backends` shows what each backend trains)",
        )
    if backend:
        # The translator too: what the framework cannot express is refused there (pure).
        checked = target_for(loaded, backend, here=False)
        checked.translate()
        try:
            check_target_devices(checked, loaded)
        except FtxError as exc:
            info(lead("note", f": `ftx run` on this machine would refuse it: {exc.detail}"))
    target = f" for the {backend} backend" if backend else ""
    click.echo(f"{recipe}: valid{target} (sha256 {loaded.digest[:12]})")


@cli.command()
@recipe_arg
@overrides_arg
@backend_opt
@out_opt
@click.option(
    "--scheduler",
    type=click.Choice(["slurm", "kubernetes"]),
    help="Also prepare the data and write the job: OUT/plan/job.sbatch (Slurm) or"
    " OUT/plan/kubernetes/*.yaml.",
)
@runtime_opts
@click.option("--force", is_flag=True, help="Replace an existing OUT/plan.")
def plan(
    recipe: Path,
    overrides: tuple[str, ...],
    backend: str,
    out: Path | None,
    scheduler: str | None,
    runtime: str,
    variant: str | None,
    registry: str | None,
    force: bool,
) -> None:
    """Write the native config files and launch.sh under OUT/plan; run nothing.

    \b
    Examples:
      ftx plan recipes/quickstart.yaml --backend torch --out /tmp/qs
      cat /tmp/qs/plan/launch.sh
      ftx plan recipes/quickstart.yaml --scheduler slurm parallel.nnodes=2 --out /tmp/qs-slurm
    """
    loaded = load_recipe(recipe, overrides)
    if scheduler is not None:
        from ftx.core.jobs import plan_job

        _, files = plan_job(
            loaded,
            backend,
            scheduler,
            out=out,
            force=force,
            runtime_name=runtime,
            variant=variant,
            registry=registry,
        )
        for path in files:
            click.echo(str(path))
        return
    from ftx.core.plan import NOTES_FILE
    from ftx.core.runner import make_plan

    layout, written = make_plan(loaded, backend, out, force=force)
    for name in written:
        click.echo(str(layout.plan / name))
    if NOTES_FILE in written:
        click.echo((layout.plan / NOTES_FILE).read_text(encoding="utf-8"), err=True)


@cli.command()
@recipe_arg
@overrides_arg
@backend_opt
@out_opt
@runtime_opts
@click.option(
    "--trainer",
    type=click.Choice(["auto", "ftx", "native"]),
    help="Who trains (the recipe's train.trainer): ftx's loop, the framework's own trainer"
    " on the plan, or auto (native for what only it runs).",
)
@click.option("--force", is_flag=True, help="Replace a non-empty output folder.")
def run(
    recipe: Path,
    overrides: tuple[str, ...],
    backend: str,
    out: Path | None,
    runtime: str,
    variant: str | None,
    registry: str | None,
    trainer: str | None,
    force: bool,
) -> None:
    """Prepare data, translate and train. Overrides are dotted key=value pairs.

    \b
    Examples:
      ftx run recipes/quickstart.yaml --backend torch train.learning_rate=1e-3 --force
      ftx run recipes/quickstart.yaml --backend paddle --runtime podman --registry reg:5000/ml
      ftx run recipes/quickstart.yaml --backend paddle --trainer native
    """
    from ftx.core import runner

    if trainer is not None:
        overrides = (*overrides, f"train.trainer={trainer}")
    record = runner.run(
        load_recipe(recipe, overrides),
        backend,
        runtime_name=runtime,
        out=out,
        force=force,
        variant=variant,
        registry=registry,
    )
    print_summary(record)


def print_summary(record: dict) -> None:
    """The end-of-run summary: loss start -> end and held-out exact match before -> after."""
    table = Table(title="ftx run summary", show_header=False)
    table.add_row("status", record["status"])
    table.add_row("backend", f"{record['backend']} ({record['runtime']} runtime)")
    table.add_row("steps", str(record.get("steps")))
    first, final = record.get("first_loss"), record.get("final_loss")
    if first is not None and final is not None:
        table.add_row("loss", f"{first:.4f} -> {final:.4f}")
    evaluation = record.get("evaluation") or {}
    if "after" in evaluation:
        before = evaluation.get("before", {}).get("exact_match")
        after = evaluation["after"]["exact_match"]
        shown = f"{before:.1%} -> {after:.1%}" if before is not None else f"{after:.1%}"
        table.add_row(
            "held-out exact match", f"{shown} ({evaluation['after']['examples']} examples)"
        )
        for key, name in (("rouge_l", "held-out ROUGE-L"), ("bleu", "held-out BLEU")):
            if key in evaluation["after"]:
                start = evaluation.get("before", {}).get(key)
                was = f"{start:.1f} -> " if start is not None else ""
                table.add_row(name, f"{was}{evaluation['after'][key]:.1f}")
    table.add_row("wall time", f"{record.get('wall_time_s', 0):.1f} s")
    table.add_row("final model", str(record.get("final_dir")))
    results.print(table)
    info(f"run record: {json.dumps({k: record[k] for k in ('status', 'steps', 'final_loss')})}")


@cli.command()
def backends() -> None:
    """Show the capability matrix: what each backend supports.

    \b
    Example:
      ftx backends
    """
    from ftx.core.registry import specs

    every = specs()
    table = Table(title="ftx backends")
    table.add_column("")
    for name in every:
        table.add_column(name)

    def row(read: Callable[[Capabilities], str]) -> list[str]:
        return [read(s.capabilities) if s.capabilities else "-" for s in every.values()]

    rows = {
        "framework": [s.description for s in every.values()],
        "launcher": [s.launcher for s in every.values()],
        "trains": ["yes" if s.trains else "not yet" for s in every.values()],
        "stages": row(lambda c: ", ".join(sorted(c.stages))),
        "finetuning": row(lambda c: ", ".join(sorted(c.finetuning))),
        "precision": row(lambda c: ", ".join(sorted(c.precisions))),
        "parallel": row(lambda c: ", ".join(sorted(c.parallel))),
        "packing": row(lambda c: "yes" if c.packing else "no"),
        "GPU/NPU only": row(
            lambda c: (
                ", ".join(
                    sorted(c.accelerator_only | (c.native.accelerator_only if c.native else set()))
                )
                or "-"
            )
        ),
        "native trainer": row(
            lambda c: (
                f"{c.native.name}: {', '.join(sorted(c.native.stages))};"
                f" {', '.join(sorted(c.native.finetuning))}"
                if c.native
                else "- (the worker is the framework's own stack)"
            )
        ),
        "native only": row(lambda c: ", ".join(sorted(c.native.only)) if c.native else "-"),
        "data export": [", ".join(sorted(s.exporters)) or "-" for s in every.values()],
    }
    for label, cells in rows.items():
        table.add_row(label, *cells)
    results.print(table)
    keys = Table(title="keys of a recipe's backends.<name> section")
    for column in ("backend", "key", "type", "meaning"):
        keys.add_column(column)
    for spec in every.values():
        for key, override in sorted(spec.overrides.items()):
            keys.add_row(spec.name, key, override.kind.__name__, override.help)
    results.print(keys)


@cli.command()
@click.argument("out", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option(
    "--png", type=click.Path(path_type=Path), help="Where to write (default OUT/loss.png)."
)
def report(out: Path, png: Path | None) -> None:
    """Plot a run's loss (and eval loss) against the step as a PNG.

    \b
    Example:
      ftx report runs/quickstart
    """
    from ftx.core.plot import plot_run

    results.print(str(plot_run(out, png)))


@cli.command()
@click.argument("targets", nargs=-1, required=True)
@click.option(
    "--backends",
    help="Backends to run a recipe on, comma-separated (default: every backend that trains).",
)
@click.option("--steps", default=20, show_default=True, help="Optimizer steps per backend.")
@click.option(
    "--out",
    "-o",
    type=click.Path(path_type=Path),
    help="Where the runs, comparison.json and comparison.png go (default: output.dir-compare"
    " beside the recipe's run, which `ftx run --force` replaces; the current folder for run"
    " folders).",
)
def compare(targets: tuple[str, ...], backends: str | None, steps: int, out: Path | None) -> None:
    """Run one recipe on several backends (or line up finished runs) and compare them step
    by step: a table of losses and grad norms (and reward margins for dpo, kto and rm),
    comparison.png, and exit code 1 when they differ beyond the tolerances (first step
    1e-4 relative, later steps 1e-3, the exports' logits 1e-3 absolute; the preference
    stages' rewards and KL 1e-4 absolute, log-probabilities 1e-3 relative).

    \b
    Examples:
      ftx compare recipes/quickstart.yaml --backends torch,paddle,mindformers --steps 20
      ftx compare runs/quickstart-compare/torch runs/quickstart-compare/paddle
    """
    from ftx.core import compare as cmp
    from ftx.core.errors import FtxError
    from ftx.core.registry import backend_names
    from ftx.core.runner import run as run_recipe

    first = Path(targets[0])
    if first.is_file():
        loaded = load_recipe(
            first, [*targets[1:], *cmp.COMPARE_OVERRIDES, f"train.max_steps={steps}"]
        )
        run = Path(loaded.recipe.output.dir)
        root = (out or run.with_name(f"{run.name}-compare")).resolve()
        runs = {}
        chosen = backends.split(",") if backends else backend_names()
        for backend in [b.strip() for b in chosen if b.strip()]:
            info(lead("compare", f": {steps} steps on {backend}"))
            run_recipe(loaded, backend, out=root / backend, force=True)
            runs[backend] = root / backend
    else:
        folders = [Path(t) for t in targets]
        for folder in folders:
            if not folder.is_dir():
                raise FtxError(
                    "not a recipe file or a run folder",
                    where=str(folder),
                    fix="pass one recipe (then key=value overrides) or two or more run folders",
                )
        runs = cmp.label_runs(folders)
        root = (out or Path.cwd()).resolve()
    if len(runs) < 2:
        raise FtxError(
            f"only {len(runs)} run to compare",
            where=", ".join(targets),
            fix="name two or more backends (--backends torch,paddle) or run folders",
        )
    comparison = cmp.line_up(runs)
    comparison.logits_max_diff = cmp.export_logits_diff(runs)
    comparison.judge()
    table = Table(title="ftx compare")
    table.add_column("step")
    for label in runs:
        table.add_column(f"loss {label}")
    table.add_column("max rel. diff")
    for label in runs:
        table.add_column(f"grad norm {label}")
    margins = any("rewards_margins" in row.values for row in comparison.rows)
    if margins:  # a preference stage: the reward margins too
        for label in runs:
            table.add_column(f"margin {label}")
    for row in comparison.rows:
        shown = row.values.get("rewards_margins", {})
        table.add_row(
            str(row.step),
            *[f"{row.losses[k]:.6f}" if k in row.losses else "-" for k in runs],
            f"{row.max_relative:.2e}",
            *[f"{row.grad_norms[k]:.4f}" if k in row.grad_norms else "-" for k in runs],
            *([f"{shown[k]:.6f}" if k in shown else "-" for k in runs] if margins else []),
        )
    results.print(table)
    if comparison.logits_max_diff is not None:
        info(f"exports' logits: max difference {comparison.logits_max_diff:.2e}")
    saved, png = cmp.save(comparison, root)
    info(f"written: {saved}, {png}")
    if not comparison.passed:
        raise FtxError(
            f"the runs differ beyond tolerance: {'; '.join(comparison.problems[:3])}",
            where=str(saved),
            fix="look at the first step that differs: a different mask, learning rate, weight"
            " decay rule or initialisation shows there",
            exit_code=1,
        )
    info(lead("the runs agree", " within tolerance", "bold green"))

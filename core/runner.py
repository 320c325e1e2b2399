"""`ftx plan` and `ftx run`, top to bottom.

apply backends.<name> and check capabilities -> claim OUT -> prepare data ->
translate -> write plan -> (run only) set up the runtime -> launch -> summarise
-> run.json
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ftx.core.backend import BackendSpec
from ftx.core.capabilities import TrainerChoice, check_devices, check_recipe, choose_trainer
from ftx.core.console import info, lead
from ftx.core.contract import (
    ExitCode,
    RunLayout,
    TrainTiming,
    WorkerFailure,
    read_metrics,
    read_record,
    run_status,
)
from ftx.core.data.sources import input_paths
from ftx.core.errors import FtxError
from ftx.core.fsutil import atomic_write_json, claim_destination, regular_file
from ftx.core.models.architectures import ModelConfig
from ftx.core.models.fit import check_fits_model
from ftx.core.models.formats import detect_format
from ftx.core.nodes import NodeContract, plan_digest
from ftx.core.overrides import apply_overrides
from ftx.core.plan import NativePlan
from ftx.core.preflight import Topology, run_preflight
from ftx.core.progress import RunDisplay
from ftx.core.recipe import LoadedRecipe
from ftx.core.recipe.schema import Recipe
from ftx.core.registry import capability_matrix, get_spec, load, specs, translator
from ftx.core.runtime import Launch, Runtime, get_runtime, using


@dataclass(frozen=True)
class Target:
    """A backend and the recipe as it runs there (its ``backends.<name>`` applied)."""

    spec: BackendSpec
    recipe: Recipe  # train.trainer resolved: ftx or native
    trainer: TrainerChoice
    model_type: str | None = None

    def translate(self) -> NativePlan:
        """The backend's plan for the recipe and its model's config.json (read here, so
        translators stay pure)."""
        model = ModelConfig.read(Path(self.recipe.model.path))
        return translator(self.spec)(self.recipe, model)

    def write_plan(self, layout: RunLayout, native: NativePlan) -> list[str]:
        """Write the translated plan to OUT/plan, with the native data when the backend has
        some. (Translate first, before OUT is claimed: what the translator refuses then
        leaves nothing behind.)"""
        name = self.spec.plan_data
        if name is None:
            return native.write(layout)
        export = load(self.spec.exporters[name].function)
        return native.write(layout, lambda folder: export(self.recipe, folder))


def check_model(loaded: LoadedRecipe) -> None:
    """model.path must be a model folder (config.json) that exists here."""
    path = Path(loaded.recipe.model.path)
    regular_file(path / "config.json", "model's config.json")
    if not (path / "config.json").is_file():
        state = "has no config.json" if path.is_dir() else "does not exist"
        raise FtxError(
            f"model.path {path} {state}",
            where=f"{loaded.source}: model.path",
            fix="point it at a model folder (config.json, weights, tokenizer); make a small"
            " random one with `ftx init-model --out PATH`, or convert one with `ftx convert`",
        )


def check_overrides(loaded: LoadedRecipe) -> None:
    """Check every ``backends.<name>`` section against what that backend honours."""
    known = specs()
    unknown = sorted(set(loaded.recipe.backends) - set(known))
    if unknown:
        raise FtxError(
            f"unknown backend section(s) {', '.join(unknown)}",
            where=f"{loaded.source}: backends",
            fix=f"use sections named after backends: {', '.join(known)}",
        )
    for name in loaded.recipe.backends:
        apply_overrides(loaded.recipe, known[name], str(loaded.source))


def target_for(loaded: LoadedRecipe, backend: str, *, here: bool = True) -> Target:
    """The backend and effective recipe, after checking the recipe against the backend's
    overrides and capabilities (and, when ``here``, the devices this machine's
    environment has)."""
    target = checked_target(loaded, backend)
    if here:
        check_target_devices(target, loaded)
    return target


def checked_target(loaded: LoadedRecipe, backend: str) -> Target:
    """:func:`target_for` without the device check: the recipe with its backend section
    applied and ``train.trainer`` resolved, checked against what that trainer runs."""
    check_model(loaded)
    check_overrides(loaded)
    spec = get_spec(backend)
    recipe = apply_overrides(loaded.recipe, spec, str(loaded.source))
    model_dir = Path(recipe.model.path)
    model_format = recipe.model.format or (detect_format(model_dir) if model_dir.exists() else None)
    model = ModelConfig.read(model_dir)
    model_type = model.model_type
    check_fits_model(recipe, model, str(loaded.source))
    caps = spec.capabilities
    assert caps is not None
    source = str(loaded.source)
    choice = choose_trainer(recipe, backend, caps, model_type, source=source)
    recipe = recipe.model_copy(
        update={"train": recipe.train.model_copy(update={"trainer": choice.trainer})}
    )
    check_recipe(
        recipe,
        backend,
        caps,
        capability_matrix(),
        source=source,
        model_format=model_format,
        model_type=model_type,
    )
    if recipe.train.steps_win:
        info(
            lead(
                "Steps",
                f": train.max_steps {recipe.train.max_steps} wins over train.epochs"
                f" {recipe.train.epochs:g} (as in transformers and LLaMA-Factory)",
            )
        )
    return Target(spec, recipe, choice, model_type)


def check_target_devices(target: Target, loaded: LoadedRecipe) -> None:
    """Refuse what the devices the backend's environment saw cannot run."""
    assert target.spec.capabilities is not None
    seen = accelerator_seen(target.spec.name)
    check_devices(
        target.recipe, target.spec.capabilities, seen, str(loaded.source), target.model_type
    )


def accelerator_seen(backend: str) -> bool | None:
    """Whether the backend's local environment saw a GPU/NPU when it was built
    (None when there is no environment yet, so nothing is known)."""
    from ftx.core.envs import read_marker

    record = read_marker(backend)
    if record is None:
        return None
    return any(not d.startswith("cpu") for d in record.get("devices", []))


def layout_for(loaded: LoadedRecipe, out: Path | None) -> RunLayout:
    return RunLayout((out or Path(loaded.recipe.output.dir)).resolve())


def make_plan(
    loaded: LoadedRecipe, backend: str, out: Path | None, *, force: bool = False
) -> tuple[RunLayout, list[str]]:
    """Translate and write the plan under OUT/plan (runs nothing, maybe elsewhere); an
    existing plan, the record of what an earlier run ran, is replaced only with --force."""
    target = target_for(loaded, backend, here=False)
    layout = layout_for(loaded, out)
    native = target.translate()
    claim_destination(layout.plan, force=force, inputs=input_paths(target.recipe, loaded.source))
    return layout, target.write_plan(layout, native)


def claim_output(
    layout: RunLayout, loaded: LoadedRecipe, *, force: bool, resuming: bool
) -> Path | None:
    """Refuse an OUT that is, holds or lies inside an input, and a non-empty OUT unless
    --force (replace) or train.resume (continue). A replaced OUT is moved aside, to be
    deleted once the new run completes; its path is returned."""
    inputs = input_paths(loaded.recipe, loaded.source)
    also = "set train.resume=auto to continue it, " if not resuming else ""
    claim_destination(layout.root, force=force or resuming, inputs=inputs, also=also)
    if resuming or layout.is_fresh():
        return None
    previous = layout.root.with_name(f".{layout.root.name}.replaced")
    shutil.rmtree(previous, ignore_errors=True)  # left by an earlier failed replacement
    os.replace(layout.root, previous)
    return previous


def run(
    loaded: LoadedRecipe,
    backend: str,
    *,
    runtime_name: str = "local",
    out: Path | None = None,
    force: bool = False,
    variant: str | None = None,
    registry: str | None = None,
) -> dict[str, Any]:
    """Run a recipe end to end; return the run.json record."""
    runtime = get_runtime(runtime_name, variant=variant, registry=registry)
    try:
        return _run(loaded, backend, runtime, out=out, force=force)
    finally:
        runtime.close()


@dataclass
class Staged:
    """A run made ready to launch: OUT claimed, data prepared, plan written."""

    target: Target
    layout: RunLayout
    previous: Path | None  # a replaced OUT, deleted once the new run completes
    record: dict[str, Any]  # run.json's opening record


def stage(
    loaded: LoadedRecipe,
    backend: str,
    runtime: Runtime,
    *,
    out: Path | None,
    force: bool,
    here: bool = True,
) -> Staged:
    """Everything up to the launch: set up the runtime, claim OUT, prepare the data into
    OUT/data, write OUT/plan (``here``: also check the devices this host has)."""
    from ftx.core.data.prepare import cached_prepared, prepared_data

    target = checked_target(loaded, backend)
    recipe, spec = target.recipe, target.spec
    info(lead("Trainer", f": {target.trainer.trainer} ({target.trainer.reason})"))
    layout = layout_for(loaded, out)
    # the runtime first: a missing engine or image fails before OUT is touched
    environment = runtime.prepare(spec.name)
    if here:
        check_target_devices(target, loaded)  # the environment exists now: its devices
    info(lead("Preparing data", " (tokenise, mask; cached by content hash)"))
    cached_prepared(recipe)  # what the data can refuse is refused before OUT is claimed
    native = target.translate()  # and what the translator refuses
    previous = claim_output(layout, loaded, force=force, resuming=bool(recipe.train.resume))
    layout.root.mkdir(parents=True, exist_ok=True)
    manifest = prepared_data(recipe, layout.data)  # the cache's entry, linked into OUT
    train = manifest["splits"]["train"]
    info(
        f"  {train['examples']} training examples, {train['tokens']:,} tokens"
        f" ({train['learnable_tokens']:,} learned)"
    )
    # The tokenizer ran in parallel threads above; saying so explicitly keeps it from
    # warning in every process forked from here on (launchers, pip).
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    with using(runtime):  # a backend's plan data is written where it trains
        written = target.write_plan(layout, native)
    info(lead("Plan", f" written to {layout.plan} ({', '.join(written)})"))
    record: dict[str, Any] = {
        "status": "running",
        "backend": spec.name,
        "runtime": runtime.name,
        "recipe": str(loaded.source),
        "recipe_sha256": loaded.digest,
        "trainer": dataclasses.asdict(target.trainer),
        "overrides": list(loaded.overrides),
        "framework_versions": environment.get("versions", {}),
        **({"image": environment["image"]} if "image" in environment else {}),
        "data": {
            "key": manifest["key"],
            "report": manifest["report"],
            "splits": manifest["splits"],
        },
    }
    return Staged(target, layout, previous, record)


def _run(
    loaded: LoadedRecipe, backend: str, runtime: Runtime, *, out: Path | None, force: bool
) -> dict[str, Any]:
    staged = stage(loaded, backend, runtime, out=out, force=force)
    recipe, layout = staged.target.recipe, staged.layout
    node = NodeContract.of_recipe(recipe.parallel)
    if node.nnodes > 1:
        info(lead("Preflight", f": meeting the other nodes at {node.master_addr}"))
        run_preflight(Topology.of(node), plan_digest(layout.plan))
    launch = Launch(
        layout,
        staged.target.spec.name,
        # the recipe's folder too: whatever it names relative to itself
        inputs=(loaded.source.parent, *input_paths(recipe, loaded.source)),
        multinode=node.nnodes > 1,
        env=node.environment() if node.nnodes > 1 else {},
    )
    return launch_and_record(runtime, launch, staged.record, previous=staged.previous)


def launch_and_record(
    runtime: Runtime,
    launch: Launch,
    record: dict[str, Any] | None,
    *,
    previous: Path | None = None,
) -> dict[str, Any]:
    """Launch, show progress, and keep run.json (``record``; None on a node other than
    node 0, which leaves run.json to node 0) up to date; raise on an interrupted or
    failed run."""
    layout, backend = launch.layout, launch.backend
    summary: dict[str, Any] = dict(record or {})
    if record is not None:
        atomic_write_json(layout.run_json, summary)
        layout.error_json.unlink(missing_ok=True)  # from an earlier, resumed attempt
    info(lead("Training", f" with the {backend} backend ({runtime.name} runtime)"))
    started = time.time()
    with RunDisplay(backend) as display:
        code = runtime.run(launch, display.line)
    summary.update(summarize(layout))
    summary["wall_time_s"] = round(time.time() - started, 2)
    summary["exit_code"] = code
    summary["status"] = run_status(code)
    failure = read_record(WorkerFailure, layout.error_json)
    if failure is not None:
        summary["error"] = failure.describe()
    if record is not None:
        atomic_write_json(layout.run_json, summary)
    if previous is not None and summary["status"] == "completed":
        shutil.rmtree(previous, ignore_errors=True)
    elif previous is not None:
        info(f"the replaced output is kept in {previous} until a run completes")
    if summary["status"] == "interrupted":
        raise FtxError(
            f"the run was interrupted (exit code {code}); a checkpoint was saved",
            where=str(layout.root),
            fix="continue it with the same command plus train.resume=auto",
            exit_code=code,
        )
    if summary["status"] == "failed":
        resume = "rerun with train.resume=auto to continue from the last checkpoint"
        fix = f"read the log; {resume}"
        if failure is not None:
            reason = failure.describe()
        elif code in (ExitCode.KILLED, -signal.SIGKILL):
            reason = (
                "it was killed with SIGKILL before it could say why, most often by the"
                f" kernel's out-of-memory killer; {log_tail(layout)}"
            )
            fix = (
                "if memory ran out, train LoRA (method.finetuning=lora) or set a smaller"
                " train.micro_batch_size or data.max_seq_len, or use a machine with more"
                f" memory; then {resume}"
            )
        else:
            reason = f"it left no error.json; {log_tail(layout)}"
        raise FtxError(
            f"the {backend} worker failed (exit code {code}): {reason}",
            where=str(launch.log or layout.launch_log),
            fix=fix,
            exit_code=1,
        )
    return summary


def summarize(layout: RunLayout) -> dict[str, Any]:
    """What a finished run's files say: steps, first/final loss, evaluation, timing."""
    rows = read_metrics(layout)
    losses = [r.loss for r in rows if r.loss is not None]
    summary: dict[str, Any] = {
        "steps": max((r.step for r in rows), default=0),
        "first_loss": losses[0] if losses else None,
        "final_loss": losses[-1] if losses else None,
        "final_dir": str(layout.final) if layout.final.exists() else None,
    }
    if layout.eval_json.exists():
        summary["evaluation"] = scored_evaluation(layout)
    timing = read_record(TrainTiming, layout.timing)
    if timing is not None:
        # seconds spent in the training loop alone, and the real tokens it processed
        summary["training"] = dataclasses.asdict(timing)
    return summary


def scored_evaluation(layout: RunLayout) -> dict[str, Any]:
    """OUT/eval.json with ROUGE-L and BLEU added to each scoring (before, after) from the
    answers the worker wrote there, as `ftx eval` computes them; written back once."""
    from ftx.core.fsutil import atomic_write_json
    from ftx.core.inference.metrics import generation_metrics

    evaluation = json.loads(layout.eval_json.read_text())
    added = False
    for result in evaluation.values():
        if isinstance(result, dict) and "answers" in result and "rouge_l" not in result:
            scored = generation_metrics(result["references"], result["answers"])
            result.update(rouge_l=scored["rouge_l"], bleu=scored["bleu"])
            added = True
    if added:
        atomic_write_json(layout.eval_json, evaluation)
    return evaluation


def log_tail(layout: RunLayout, lines: int = 5) -> str:
    """The last lines of the launch log, for failures that left no error.json (a kill)."""
    if not layout.launch_log.exists():
        return "no launch log either"
    text = layout.launch_log.read_text(errors="replace").splitlines()
    return "last lines of the log: " + " | ".join(ln.strip() for ln in text[-lines:] if ln.strip())

"""`ftx plan` and `ftx run`, top to bottom.

validate for the backend -> claim OUT -> prepare data -> translate -> write
plan -> (run only) set up the runtime -> launch -> collect -> run.json
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

from ftx.core.backend import Backend
from ftx.core.capabilities import check_recipe
from ftx.core.console import info
from ftx.core.errors import FtxError
from ftx.core.fsutil import atomic_write_json
from ftx.core.layout import RunLayout
from ftx.core.models.formats import detect_format
from ftx.core.plan import NativePlan
from ftx.core.preflight import Topology, run_preflight
from ftx.core.recipe import LoadedRecipe, recipe_digest
from ftx.core.registry import capability_matrix, get_backend
from ftx.core.runtime import get_runtime


def check_for_backend(loaded: LoadedRecipe, backend_name: str, *, here: bool = True) -> Backend:
    """The backend, after checking the recipe against its capabilities (and, when
    ``here``, against the devices this machine's environment has)."""
    backend = get_backend(backend_name)
    recipe = loaded.recipe
    model_dir = Path(recipe.model.path)
    model_format = recipe.model.format or (detect_format(model_dir) if model_dir.exists() else None)
    check_recipe(
        recipe,
        backend_name,
        backend.capabilities,
        capability_matrix(),
        source=str(loaded.source),
        model_format=model_format,
        accelerator=accelerator_seen(backend.environment) if here else None,
    )
    return backend


def accelerator_seen(environment: str) -> bool | None:
    """Whether the backend's local environment saw a GPU/NPU when it was built
    (None when there is no environment yet, so nothing is known)."""
    from ftx.core.envs import read_marker

    record = read_marker(environment)
    if record is None:
        return None
    return any(not d.startswith("cpu") for d in record.get("devices", []))


def layout_for(loaded: LoadedRecipe, out: Path | None) -> RunLayout:
    return RunLayout((out or Path(loaded.recipe.output.dir)).resolve())


def make_plan(loaded: LoadedRecipe, backend_name: str, out: Path | None) -> NativePlan:
    """Translate and write the plan under OUT/plan (runs nothing, maybe elsewhere)."""
    backend = check_for_backend(loaded, backend_name, here=False)
    layout = layout_for(loaded, out)
    plan = backend.translate(loaded.recipe, layout)
    plan.write()
    return plan


def claim_output(layout: RunLayout, *, force: bool, resuming: bool) -> None:
    """Refuse to overwrite a non-empty OUT unless --force (wipe) or train.resume (keep)."""
    if layout.is_fresh() or resuming:
        return
    if not force:
        raise FtxError(
            "the output folder exists and is not empty",
            where=str(layout.root),
            fix="pass --force to replace it, set train.resume=auto to continue it,"
            " or choose another --out",
        )
    shutil.rmtree(layout.root)


def run(
    loaded: LoadedRecipe,
    backend_name: str,
    *,
    runtime_name: str = "local",
    out: Path | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Run a recipe end to end; return the run.json record."""
    from ftx.core.data.prepare import prepared_data

    recipe = loaded.recipe
    backend = check_for_backend(loaded, backend_name)
    runtime = get_runtime(runtime_name)
    layout = layout_for(loaded, out)
    claim_output(layout, force=force, resuming=bool(recipe.train.resume))
    layout.root.mkdir(parents=True, exist_ok=True)

    info("[bold]Preparing data[/] (tokenise, mask; cached by content hash)")
    manifest = prepared_data(recipe, layout.data)
    train = manifest["splits"]["train"]
    info(
        f"  {train['examples']} training examples, {train['tokens']:,} tokens"
        f" ({train['learnable_tokens']:,} learned)"
    )
    # The tokenizer ran in parallel threads above; saying so explicitly keeps it from
    # warning in every process forked from here on (launchers, pip).
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    plan = backend.translate(recipe, layout)
    launch = plan.write()
    info(f"[bold]Plan[/] written to {plan.plan_dir} ({', '.join(plan.files)}, {launch.name})")

    environment = runtime.prepare(backend.environment)
    check_for_backend(loaded, backend_name)  # again, now that the devices are known
    if recipe.parallel.nnodes > 1:
        info(f"[bold]Preflight[/]: meeting the other nodes at {recipe.parallel.master_addr}")
        same_on_every_node = recipe.model_copy(
            update={"parallel": recipe.parallel.model_copy(update={"node_rank": 0})}
        )
        run_preflight(
            Topology(
                recipe.parallel.nnodes,
                recipe.parallel.node_rank,
                recipe.parallel.master_addr,
                recipe.parallel.master_port,
            ),
            recipe_digest(same_on_every_node),
        )
    record: dict[str, Any] = {
        "status": "running",
        "backend": backend.name,
        "runtime": runtime.name,
        "recipe": str(loaded.source),
        "recipe_sha256": loaded.digest,
        "overrides": list(loaded.overrides),
        "framework_versions": environment.get("versions", {}),
        "data": {
            "key": manifest["key"],
            "report": manifest["report"],
            "splits": manifest["splits"],
        },
    }
    atomic_write_json(layout.run_json, record)
    info(f"[bold]Training[/] with the {backend.name} backend ({runtime.name} runtime)")
    started = time.time()
    log = layout.logs / "launch.log"
    code = runtime.run(plan, backend.environment, log)
    record.update(backend.collect(layout))
    record["wall_time_s"] = round(time.time() - started, 2)
    record["exit_code"] = code
    record["status"] = (
        "completed" if code == 0 else ("interrupted" if code in (130, 143) else "failed")
    )
    atomic_write_json(layout.run_json, record)
    if record["status"] == "interrupted":
        raise FtxError(
            f"the run was interrupted (exit code {code}); a checkpoint was saved",
            where=str(layout.root),
            fix="continue it with the same command plus train.resume=auto",
            exit_code=code,
        )
    if record["status"] == "failed":
        raise FtxError(
            f"the {backend.name} worker failed (exit code {code}): {failure_reason(log)}",
            where=str(log),
            fix="read the log; rerun with train.resume=auto to continue from the last checkpoint",
            exit_code=1,
        )
    return record


def failure_reason(log: Path) -> str:
    """The worker's own exception line from a launch log (launchers add their own noise)."""
    lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    errors = [
        ln for ln in lines if re.search(r"(Error|Exception)\b.*:", ln) and "elastic" not in ln
    ]
    return errors[-1] if errors else " | ".join(lines[-5:])

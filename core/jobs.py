"""Runs on a scheduler: `ftx submit`, `ftx launch` (what each node runs), `ftx status`,
`ftx cancel`, and the job files `ftx plan --scheduler` writes.

The submitting host claims OUT, prepares the data and writes the plan once (as
`ftx run` would), then the scheduler's job file; OUT lies on a filesystem every node
shares. On each node ``ftx launch OUT`` reads the node contract from the scheduler's
environment and starts that node's launcher; node 0 keeps run.json.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

from ftx.core.console import info, lead
from ftx.core.contract import WORKER_CONFIG, RunLayout, WorkerConfig, read_record
from ftx.core.errors import FtxError
from ftx.core.fsutil import atomic_write_json, atomic_write_text, read_json_object
from ftx.core.home import ftx_home
from ftx.core.nodelaunch import node_log, node_of
from ftx.core.nodes import plan_digest
from ftx.core.preflight import Topology, run_preflight
from ftx.core.progress import RunDisplay
from ftx.core.recipe import LoadedRecipe
from ftx.core.runner import Staged, launch_and_record, layout_for, stage
from ftx.core.runtime import Launch, get_runtime
from ftx.core.schedulers import slurm

# What to do about a run.json that is not the record ftx wrote.
RUN_FIX = "restore run.json from the run's own output (or rerun it): ftx wrote it as a JSON object"


def _ftx_executable() -> str:
    """The ftx command the nodes run: this one (on the shared filesystem)."""
    found = Path(sys.executable).with_name("ftx")
    return str(found if found.exists() else "ftx")


def _image_options(variant: str | None, registry: str | None) -> tuple[str, ...]:
    options: tuple[str, ...] = ()
    if variant:
        options += ("--variant", variant)
    if registry:
        options += ("--registry", registry)
    return options


def write_slurm_job(staged: Staged, runtime: str, image_options: tuple[str, ...]) -> Path:
    """OUT/plan/job.sbatch for a staged run."""
    script = staged.layout.plan / slurm.JOB_SCRIPT
    text = slurm.sbatch_script(
        staged.target.recipe,
        staged.target.spec.name,
        staged.layout,
        ftx=_ftx_executable(),
        ftx_home=str(ftx_home()),
        runtime=runtime,
        image_options=image_options,
    )
    atomic_write_text(script, text)
    script.chmod(0o755)
    staged.layout.logs.mkdir(parents=True, exist_ok=True)
    return script


def plan_job(
    loaded: LoadedRecipe,
    backend: str,
    scheduler: str,
    *,
    out: Path | None,
    force: bool,
    runtime_name: str = "local",
    variant: str | None = None,
    registry: str | None = None,
) -> tuple[Staged, list[Path]]:
    """Prepare the data, write the plan and the scheduler's job files; submit nothing."""
    image = None
    if scheduler == "kubernetes":
        from ftx.core.schedulers.kubernetes import pod_image

        image = pod_image(loaded.recipe, backend, variant, registry)  # before OUT is claimed
    else:
        slurm.log_path(layout_for(loaded, out))  # an OUT #SBATCH lines can carry, checked first
    runtime = get_runtime(runtime_name, variant=variant, registry=registry)
    try:
        staged = stage(loaded, backend, runtime, out=out, force=force, here=False)
    finally:
        runtime.close()
    if scheduler == "slurm":
        files = [write_slurm_job(staged, runtime_name, _image_options(variant, registry))]
    else:
        from ftx.core.schedulers.kubernetes import write_manifests

        assert image is not None
        files = write_manifests(staged, image=image, variant=variant)
    staged.record.update(status="planned", scheduler={"name": scheduler})
    atomic_write_json(staged.layout.run_json, staged.record)
    return staged, files


def submit(
    loaded: LoadedRecipe,
    backend: str,
    *,
    out: Path | None,
    force: bool,
    wait: bool,
    runtime_name: str = "local",
    variant: str | None = None,
    registry: str | None = None,
) -> dict[str, Any]:
    """Stage the run, write the job script, sbatch it; with ``wait``, follow it to the end."""
    staged, (script,) = plan_job(
        loaded,
        backend,
        "slurm",
        out=out,
        force=force,
        runtime_name=runtime_name,
        variant=variant,
        registry=registry,
    )
    layout = staged.layout
    job_id = slurm.submit(script)
    record = {**staged.record, "status": "submitted"}
    if staged.previous is not None:  # deleted once the job completes (see finished())
        record["replaced_output"] = str(staged.previous)
    record["scheduler"] = {"name": "slurm", "job_id": job_id, "script": str(script)}
    atomic_write_json(layout.run_json, record)
    info(lead("Submitted", f" Slurm job {job_id} ({script})"))
    if not wait:
        return record
    with RunDisplay(backend) as display:
        state = slurm.follow(job_id, layout.launch_log, display.line)
    return finished(layout, state)


def finished(layout: RunLayout, state: str | None) -> dict[str, Any]:
    """run.json once the job has ended, reconciled with Slurm's final state; raises like
    `ftx run` when it did not complete."""
    record = read_json_object(layout.run_json, "run record", RUN_FIX)
    scheduler = record.setdefault("scheduler", {})
    scheduler["state"] = state
    if record["status"] in ("submitted", "running"):  # node 0 never got to write it
        record["status"] = "failed"
        record["error"] = f"Slurm ended the job ({state}) before ftx recorded an outcome"
    replaced = record.pop("replaced_output", None)
    if replaced and record["status"] == "completed":
        shutil.rmtree(replaced, ignore_errors=True)
    elif replaced:
        record["replaced_output"] = replaced
        info(f"the replaced output is kept in {replaced} until a run completes")
    atomic_write_json(layout.run_json, record)
    job = scheduler.get("job_id")
    if record["status"] == "interrupted":
        raise FtxError(
            f"Slurm stopped job {job} ({state}); the workers saved a checkpoint",
            where=str(layout.root),
            fix="resubmit the same command plus train.resume=auto to continue",
            exit_code=record.get("exit_code", 143),
        )
    if record["status"] != "completed":
        raise FtxError(
            f"Slurm job {job} ended {state}: {record.get('error', 'see the logs')}",
            where=str(layout.logs),
            fix="read OUT/logs (slurm-JOB.out, launch.log); resubmit with train.resume=auto",
            exit_code=1,
        )
    return record


def launch_node(
    out: Path,
    *,
    runtime_name: str = "local",
    variant: str | None = None,
    registry: str | None = None,
) -> dict[str, Any]:
    """What each node of a job runs: this node's contract from the scheduler, the
    preflight, then the backend's launcher (node 0 keeps run.json)."""
    layout = RunLayout(out.resolve())
    config = read_record(WorkerConfig, layout.at(WORKER_CONFIG))
    if config is None:
        raise FtxError(
            f"{layout.plan} holds no plan",
            where=str(layout.root),
            fix="write it first: `ftx submit` or `ftx plan --scheduler slurm`",
        )
    node, source = node_of(layout)
    info(
        lead(
            f"Node {node.node_rank}",
            f" of {node.nnodes} (from {source}); master {node.master_addr}:{node.master_port}",
        )
    )
    runtime = get_runtime(runtime_name, variant=variant, registry=registry)
    try:
        environment = runtime.prepare(config.backend)
        if node.nnodes > 1:
            run_preflight(Topology.of(node), plan_digest(layout.plan))
        record = None
        if node.node_rank == 0:
            record = (
                read_json_object(layout.run_json, "run record", RUN_FIX)
                if layout.run_json.exists()
                else {}
            )
            record.update(
                status="running",
                runtime=runtime.name,
                framework_versions=environment.get("versions", {}),
                nodes=node.nnodes,
            )
            if "image" in environment:
                record["image"] = environment["image"]
        launch = Launch(
            layout,
            config.backend,
            inputs=(Path(config.model.path),),
            multinode=node.nnodes > 1,
            env=node.environment() if node.nnodes > 1 else {},
            log=node_log(layout, node),
        )
        return launch_and_record(runtime, launch, record)
    finally:
        runtime.close()


def job_of(out: Path) -> tuple[RunLayout, dict[str, Any], str]:
    """OUT's run.json and the Slurm job id it records."""
    layout = RunLayout(out.resolve())
    if not layout.run_json.exists():
        raise FtxError(
            f"{layout.root} has no run.json", where=str(out), fix="give the OUT of a submitted run"
        )
    record = read_json_object(layout.run_json, "run record", RUN_FIX)
    scheduler = record.get("scheduler")
    job = scheduler.get("job_id") if isinstance(scheduler, dict) else None
    if job is None:
        raise FtxError(
            f"{layout.run_json} records no scheduler job (it ran with `ftx run`?)",
            where=f"{layout.run_json}: scheduler.job_id",
            fix="ftx status and ftx cancel follow runs started by `ftx submit`",
        )
    return layout, record, str(job)


def status(out: Path) -> dict[str, Any]:
    """run.json's status with Slurm's state of the job (when the controller knows it)."""
    _, record, job = job_of(out)
    return {
        "job_id": job,
        "slurm_state": slurm.job_state(job),
        "status": record.get("status"),
        "steps": record.get("steps"),
        "final_loss": record.get("final_loss"),
    }


def cancel(out: Path) -> str:
    """scancel the run's job (SIGTERM first: the workers save a checkpoint)."""
    _, _, job = job_of(out)
    slurm.cancel(job)
    return job

"""Slurm: the job script `ftx submit` and `ftx plan --scheduler slurm` write, and the
sbatch/scontrol/scancel calls behind `ftx submit`, `ftx status` and `ftx cancel`.

The job runs one task per node (``srun --ntasks-per-node=1``); each task runs
``ftx launch OUT``, which reads the node contract from Slurm's environment, meets the
other nodes (the preflight) and starts that node's launcher. Data and plan were made
once on the submitting host, so nodes only train. Slurm's SIGTERM (``scancel``, or
``signal_grace_s`` before the time limit) reaches the workers, which save a
checkpoint; resubmitting with ``train.resume=auto`` continues.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from ftx.core import scripts
from ftx.core.contract import RunLayout
from ftx.core.errors import FtxError
from ftx.core.recipe.schema import Recipe

JOB_SCRIPT = "job.sbatch"  # OUT/plan/job.sbatch
FINISHED = {
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "PREEMPTED",
    "BOOT_FAIL",
    "DEADLINE",
}


def job_name(recipe: Recipe, layout: RunLayout) -> str:
    """The recipe's job name, else ftx-<OUT's name> with what Slurm names do not take
    replaced by '-'."""
    derived = re.sub(r"[^A-Za-z0-9_.+-]", "-", layout.root.name)[:190]
    return recipe.scheduler.slurm.job_name or f"ftx-{derived}"


def log_path(layout: RunLayout) -> str:
    """Where the job writes its log: a path #SBATCH lines carry as they are (sbatch
    splits them at white space and expands % patterns)."""
    log = str(layout.logs / "slurm-%j.out")
    odd = sorted({c for c in str(layout.logs) if c.isspace() or c in "%\"'\\" or ord(c) < 32})
    if odd:
        raise FtxError(
            f"the run folder's path holds {', '.join(repr(c) for c in odd)}, which an #SBATCH"
            " line cannot carry",
            where=str(layout.root),
            fix="choose an output folder whose path has no spaces, quotes or %",
        )
    return log


def sbatch_script(
    recipe: Recipe,
    backend: str,
    layout: RunLayout,
    *,
    ftx: str,
    ftx_home: str,
    runtime: str = "local",
    image_options: tuple[str, ...] = (),
) -> str:
    """The job script (pure: the recipe's topology and ``scheduler.slurm`` section)."""
    slurm, p = recipe.scheduler.slurm, recipe.parallel
    log = log_path(layout)
    options = [
        f"--job-name={job_name(recipe, layout)}",
        f"--nodes={p.nnodes}",
        "--ntasks-per-node=1",
        f"--output={log}",
        f"--error={log}",
        "--open-mode=append",
    ]
    if slurm.gpus_per_node:
        options.append(f"--gpus-per-node={slurm.gpus_per_node}")
    if slurm.gres:
        options.append(f"--gres={slurm.gres}")
    for key in ("partition", "account", "time", "cpus_per_task", "mem"):
        value = getattr(slurm, key)
        if value is not None:
            options.append(f"--{key.replace('_', '-')}={value}")
    if slurm.time is not None and slurm.signal_grace_s:
        options.append(f"--signal=TERM@{slurm.signal_grace_s}")
    options += slurm.extra
    launch = [ftx, "launch", str(layout.root), "--runtime", runtime, *image_options]
    return (
        "#!/bin/bash\n"
        f"# Written by ftx for the {backend} backend: one task per node, each starting that\n"
        "# node's launcher through `ftx launch` (node rank, master address and port from\n"
        "# Slurm's environment). Submit with `ftx submit` or `sbatch` this file.\n"
        + "".join(scripts.sbatch_line(option) for option in options)
        + "set -euo pipefail\n"
        + scripts.export("FTX_HOME", ftx_home)
        + "srun --ntasks-per-node=1 --kill-on-bad-exit=1 \\\n"
        f"    {' '.join(scripts.word(part) for part in launch)}\n"
    )


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise FtxError(
            f"{name} is not on PATH: this host is not a Slurm client",
            where="--scheduler slurm",
            fix="submit from a login node (Slurm's client commands and SLURM_CONF set), or"
            " write the script only with `ftx plan --scheduler slurm`",
        )
    return path


def submit(script: Path) -> str:
    """sbatch the script; returns the job id."""
    result = subprocess.run(
        [_tool("sbatch"), "--parsable", str(script)], capture_output=True, text=True
    )
    if result.returncode != 0:
        raise FtxError(
            f"sbatch refused the job: {result.stderr.strip()}",
            where=str(script),
            fix="check the scheduler.slurm options (partition, account, gpus) against"
            " `sinfo`; the script is kept for you to inspect",
        )
    return result.stdout.strip().split(";")[0]


def job_state(job_id: str) -> str | None:
    """Slurm's state of the job (RUNNING, COMPLETED, CANCELLED, TIMEOUT...), or None once
    the controller has forgotten it."""
    result = subprocess.run(
        [_tool("scontrol"), "show", "job", "-o", job_id], capture_output=True, text=True
    )
    found = re.search(r"\bJobState=(\S+)", result.stdout)
    return found.group(1) if found else None


def cancel(job_id: str) -> None:
    """scancel: Slurm sends SIGTERM to every task (the workers checkpoint), then SIGKILL
    after the cluster's KillWait."""
    result = subprocess.run([_tool("scancel"), job_id], capture_output=True, text=True)
    if result.returncode != 0:
        raise FtxError(
            f"scancel {job_id} failed: {result.stderr.strip()}",
            where="run.json: scheduler.job_id",
            fix="check the job with `squeue -j JOB`",
        )


def follow(
    job_id: str, log: Path, on_line: Callable[[str], None], poll_s: float = 0.5
) -> str | None:
    """Pass node 0's launch log to ``on_line`` as it grows until the job ends; returns
    Slurm's final state."""
    offset = 0
    pending = ""
    while True:
        state = job_state(job_id)
        if log.exists():
            with log.open() as handle:
                handle.seek(offset)
                text = handle.read()
                offset = handle.tell()
            pending += text
            *lines, pending = pending.split("\n")
            for line in lines:
                on_line(line + "\n")
        if state is None or state.rstrip("+") in FINISHED:
            return state
        time.sleep(poll_s)

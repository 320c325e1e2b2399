"""`ftx submit` on a real Slurm cluster (slurmctld + two slurmd "nodes" on localhost):
two nodes train together with a two-process local run's losses, `ftx cancel` leaves a
checkpoint a resubmission continues, paddle and mindformers jobs run across both nodes,
and every shipped recipe's job script passes `sbatch --test-only`."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cluster import slurm_cluster
from conftest import FTX, ROOT, run_ftx
from daemons import scratch
from training import free_port, losses, recipe
from training import ftx_ok as ok

pytestmark = [pytest.mark.env, pytest.mark.slow]

QUICKSTART = ROOT / "recipes" / "quickstart.yaml"
STEPS = ("train.epochs=null", "train.max_steps=12", "train.logging_steps=1", "train.save_steps=4")


@pytest.fixture(scope="module")
def cluster() -> Iterator[Path]:
    with scratch("ftxs-") as folder, slurm_cluster(folder):
        yield folder


@pytest.fixture(scope="module")
def two_process_local(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("local") / "out"
    port = f"parallel.master_port={free_port()}"
    ok("run", str(QUICKSTART), "--out", str(out), *STEPS, "parallel.nproc_per_node=2", port)
    return out


def test_submit_trains_across_two_slurm_nodes(
    cluster: Path, two_process_local: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    said = ok("submit", str(QUICKSTART), "--nodes", "2", "--out", str(out), "--wait", *STEPS)
    assert "Submitted Slurm job" in said and "step 12/12" in said
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "completed" and record["nodes"] == 2
    job = record["scheduler"]["job_id"]
    assert record["scheduler"]["state"] == "COMPLETED"
    assert losses(out) == pytest.approx(losses(two_process_local), abs=1e-5)
    script = (out / "plan" / "job.sbatch").read_text()
    assert "#SBATCH --nodes=2" in script and "#SBATCH --ntasks-per-node=1" in script
    log = next((out / "logs").glob(f"slurm-{job}.out")).read_text()
    assert "Node 0 of 2 (from Slurm)" in log and "Node 1 of 2 (from Slurm)" in log


def wait_for(predicate, timeout: float = 300, what: str = "") -> None:
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


@pytest.mark.heavy
def test_cancel_leaves_a_checkpoint_and_resubmission_resumes(
    cluster: Path, two_process_local: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    steps = [*STEPS, "train.max_steps=12"]
    submitted = run_ftx("submit", str(QUICKSTART), "--nodes", "2", "--out", str(out), *steps)
    assert submitted.returncode == 0, submitted.stderr[-2000:]
    job = submitted.stdout.strip()  # the job id, alone on stdout
    metrics = out / "metrics.jsonl"
    wait_for(lambda: metrics.exists() and len(losses(out)) >= 5, what="5 logged steps")
    assert f"cancelled Slurm job {job}" in ok("cancel", str(out))
    wait_for(
        lambda: json.loads((out / "run.json").read_text())["status"] == "interrupted",
        what="node 0 to record the interruption",
    )
    status = json.loads(run_ftx("status", str(out)).stdout)
    assert status["job_id"] == job and status["status"] == "interrupted"
    assert status["slurm_state"] in ("CANCELLED", "COMPLETING", None)
    checkpoints = sorted((out / "checkpoints").iterdir())
    assert checkpoints and 4 <= int(checkpoints[-1].name.split("-")[1]) < 12
    said = ok(
        "submit", str(QUICKSTART), "--nodes", "2", "--out", str(out), "--wait", *steps,
        "train.resume=auto",
    )  # fmt: skip
    assert "resumed from" in said
    assert losses(out)[-1] == pytest.approx(losses(two_process_local)[-1], abs=1e-5)
    assert json.loads((out / "run.json").read_text())["status"] == "completed"


@pytest.mark.heavy
@pytest.mark.parametrize("backend", ["paddle", "mindformers"])
def test_other_backends_train_across_two_slurm_nodes(
    cluster: Path, backend: str, tiny_llama: Path, tmp_path: Path
) -> None:
    path = recipe(tmp_path, tiny_llama, steps=3)
    path.write_text(path.read_text().replace("micro_batch_size: 4", "micro_batch_size: 2"))
    local = tmp_path / "local"
    ok("run", str(path), "--backend", backend, "--out", str(local), "parallel.nproc_per_node=2",
       f"parallel.master_port={free_port()}")  # fmt: skip
    out = tmp_path / "slurm"
    ok("submit", str(path), "--backend", backend, "--nodes", "2", "--out", str(out), "--wait")
    assert json.loads((out / "run.json").read_text())["status"] == "completed"
    assert losses(out) == pytest.approx(losses(local), abs=1e-5)


LOCAL_ONLY = ("#SBATCH --partition=", "#SBATCH --gpus-per-node=")


def test_every_shipped_recipe_job_passes_sbatch_test_only(cluster: Path, tmp_path: Path) -> None:
    """sbatch itself parses the job scripts (--test-only: options checked, nothing run);
    their text is snapshot-tested in test_snapshots.py."""
    from test_snapshots import job_script

    for path in sorted((ROOT / "recipes").glob("*.yaml")):
        script = tmp_path / f"{path.stem}.sbatch"
        text = job_script("torch", path, tmp_path / path.stem)
        # this cluster has no GPUs and one partition: those lines are the recipe's, for its
        # cluster (the snapshot keeps them); sbatch checks everything else here
        kept = [ln for ln in text.splitlines() if not ln.startswith(LOCAL_ONLY)]
        script.write_text("\n".join(kept) + "\n")
        result = subprocess.run(
            ["sbatch", "--test-only", str(script)], capture_output=True, text=True
        )
        assert result.returncode == 0 and "to start at" in result.stderr, (
            path.name,
            result.stderr,
        )


def test_launch_outside_a_scheduler_says_what_is_missing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    ok("plan", str(QUICKSTART), "--out", str(out), "parallel.nnodes=2", "--scheduler", "slurm")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "FTX_NODE"))}
    result = subprocess.run([str(FTX), "launch", str(out)], capture_output=True, text=True, env=env)
    assert result.returncode == 2
    assert "nothing says which one this is" in result.stderr

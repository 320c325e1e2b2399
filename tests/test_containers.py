"""The torch image and the container runtimes, on real engines (podman, dockerd) and a
real local registry: build, push, remove, then `ftx run --runtime podman` pulls it and
trains the quickstart with the local runtime's losses; Docker's API builds, lists,
runs and removes it too."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import ROOT, run_ftx
from containers import dockerd, local_registry, podman_settings
from daemons import environment, install_missing, scratch
from training import ftx_ok as ok
from training import interrupted_run, losses

pytestmark = [pytest.mark.env, pytest.mark.slow, pytest.mark.images]

QUICKSTART = ROOT / "recipes" / "quickstart.yaml"
STEPS = ("train.epochs=null", "train.max_steps=30", "train.logging_steps=1")
BASE = "localhost/ftx-base:bookworm"


@dataclass(frozen=True)
class Podman:
    registry: str
    folder: Path


@pytest.fixture(scope="module")
def podman() -> Iterator[Podman]:
    install_missing("podman", "runc", "debootstrap", "docker-registry")
    with scratch("ftxc-") as folder, local_registry(folder / "registry") as registry:
        settings = podman_settings(folder / "podman", registry)
        with environment(**settings, FTX_BASE_IMAGE=BASE):
            os.environ.pop("DOCKER_HOST", None)
            ok("image", "base", "--engine", "podman")
            yield Podman(registry, folder)


@pytest.fixture(scope="module")
def pushed(podman: Podman) -> str:
    """The torch CPU image built here, pushed to the local registry and removed locally;
    returns the name ftx gives it."""
    registry = ("--registry", podman.registry)
    built = ok("image", "build", "torch", "--engine", "podman", *registry)
    name = next(w for w in built.split() if w.startswith(f"{podman.registry}/ftx-torch:cpu-"))
    ok("image", "push", "torch", "--engine", "podman", *registry)
    removed = ok("image", "rm", "torch", "--engine", "podman")
    assert name in removed
    assert name not in ok("image", "list", "--engine", "podman")
    return name


def inspect(name: str) -> dict:
    out = subprocess.run(["podman", "image", "inspect", name], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)[0]


@pytest.fixture(scope="module")
def local_reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("local") / "out"
    ok("run", str(QUICKSTART), "--backend", "torch", "--out", str(out), *STEPS)
    return out


@pytest.fixture(scope="module")
def podman_run(podman: Podman, pushed: str, tmp_path_factory: pytest.TempPathFactory) -> tuple:
    out = tmp_path_factory.mktemp("podman") / "out"
    said = ok(
        "run", str(QUICKSTART), "--backend", "torch", "--out", str(out), *STEPS,
        "--runtime", "podman", "--registry", podman.registry,
    )  # fmt: skip
    return out, said


def test_run_pulls_the_image_and_trains_like_the_local_runtime(
    podman_run: tuple, pushed: str, local_reference: Path
) -> None:
    out, said = podman_run
    assert f"pulling {pushed}" in said and "(pulled;" in said
    record = json.loads((out / "run.json").read_text())
    assert record["runtime"] == "podman" and record["status"] == "completed"
    image = record["image"]
    assert image["name"] == pushed and image["how"] == "pulled"
    repository = pushed.rsplit(":", 1)[0]
    assert image["digest"].startswith(f"{repository}@sha256:")
    assert record["framework_versions"]["torch"] == "2.13.0+cpu"
    assert len(losses(out)) == 30
    assert losses(out) == pytest.approx(losses(local_reference), abs=1e-5)
    assert (out / "final" / "model.safetensors").exists()


def test_outputs_belong_to_the_caller_not_the_image_user(podman_run: tuple, pushed: str) -> None:
    """The image's own user is ftx (uid 1000); a run's files are the caller's."""
    out, _ = podman_run
    assert inspect(pushed)["Config"]["User"] == "ftx"
    owners = {(p.stat().st_uid, p.stat().st_gid) for p in out.rglob("*")}
    assert owners == {(os.getuid(), os.getgid())}


def test_image_is_labelled_with_the_lock_the_local_environment_has(
    podman_run: tuple, pushed: str
) -> None:
    from ftx.core import envs

    labels = inspect(pushed)["Config"]["Labels"]
    marker = envs.read_marker("torch")
    assert marker is not None
    assert labels["io.ftx.lock.sha256"] == marker["lock_sha256"]
    assert marker["lock_sha256"][:12] in pushed
    assert labels["io.ftx.backend"] == "torch" and labels["io.ftx.variant"] == "cpu"
    assert labels["org.opencontainers.image.version"]


def test_no_pip_configuration_or_local_wheel_in_any_layer(podman_run: tuple, pushed: str) -> None:
    """The host's pip.conf, CA bundle, constraints and find-links were served to the
    build, never copied: no layer holds them, and the history names none of them."""
    probe = subprocess.run(
        ["podman", "run", "--rm", "--network", "none", pushed, "sh", "-c",
         "ls /tmp/ftx-pip /opt/wheels /etc/pip.conf /etc/xdg/pip 2>&1;"
         " find / -xdev -name 'pip.conf' -o -xdev -name 'constraint.txt' 2>/dev/null"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert probe.stdout.count("No such file or directory") == 4, probe.stdout
    assert "pip.conf\n" not in probe.stdout.replace("No such file or directory", "")
    history = subprocess.run(
        ["podman", "history", "--no-trunc", "--format", "{{.CreatedBy}}", pushed],
        capture_output=True, text=True,
    ).stdout  # fmt: skip
    for secret in ("/opt/pypi", "/opt/wheels", "ca-certificates.crt", "constraints"):
        assert secret not in history
    # the lock's layer comes before ftx's, so a change to ftx reinstalls no framework
    lock_step = history.find("requirements.lock")
    ftx_step = history.find("--find-links")
    assert 0 <= ftx_step < lock_step  # history lists the newest layer first


def test_inputs_are_read_only_and_out_writable_inside(
    podman_run: tuple, pushed: str, tmp_path: Path
) -> None:
    """The mounts the runtime gives a run: every input refuses writes (EROFS), OUT takes
    them."""
    from ftx.core.contract import RunLayout
    from ftx.core.runtime.base import Launch
    from ftx.core.runtime.container import mounts

    out = tmp_path / "out"
    out.mkdir()
    model = ROOT / ".ftx" / "models" / "quickstart-llama"
    data = ROOT / "recipes" / "data" / "quickstart_train.jsonl"
    launch = Launch(RunLayout(out), "torch", inputs=(QUICKSTART.parent, QUICKSTART, model, data))
    volumes = [f"{src}:{m['bind']}:{m['mode']}" for src, m in mounts(launch).items()]
    targets = [model / "probe", QUICKSTART.parent / "probe", data, out / "probe"]
    script = "; ".join(f"touch {t} 2>&1 || true" for t in targets)
    probe = subprocess.run(
        ["podman", "run", "--rm", "--network", "none", "--user", f"{os.getuid()}:{os.getgid()}",
         *[a for v in volumes for a in ("-v", v)], pushed, "sh", "-c", script],
        capture_output=True, text=True,
    )  # fmt: skip
    assert probe.stdout.count("Read-only file system") == 3, probe.stdout
    assert (out / "probe").exists()
    assert not (model / "probe").exists()


def test_sigterm_saves_a_checkpoint_that_resume_continues(
    podman: Podman, pushed: str, podman_run: tuple, tmp_path: Path
) -> None:
    reference, _ = podman_run
    out = tmp_path / "interrupted"
    runtime = ("--runtime", "podman", "--registry", podman.registry)
    said = interrupted_run(QUICKSTART, out, "torch", after=3, extra=(*STEPS, *runtime))
    assert "interrupted" in said
    (checkpoint,) = (out / "checkpoints").iterdir()
    assert 3 <= int(checkpoint.name.split("-")[1]) < 30
    leftover = subprocess.run(
        ["podman", "ps", "-a", "--filter", f"label=io.ftx.run={out}", "-q"],
        capture_output=True, text=True,
    ).stdout  # fmt: skip
    assert leftover.strip() == ""  # the stopped container was removed
    ok("run", str(QUICKSTART), "--backend", "torch", "--out", str(out), *STEPS, *runtime,
       "train.resume=auto")  # fmt: skip
    assert losses(out) == pytest.approx(losses(reference), abs=1e-5)


def test_docker_api_builds_runs_lists_and_removes(
    podman: Podman, local_reference: Path, tmp_path: Path
) -> None:
    """Against dockerd: `ftx run --runtime docker` finds no image and no registry, builds
    it (from the same debootstrap base) and trains like the local runtime;
    `ftx image list/rm` see and remove it."""
    install_missing("dockerd")
    with scratch("ftxd-") as folder, dockerd(folder) as url, environment(DOCKER_HOST=url):
        ok("image", "base", "--engine", "docker")
        out = tmp_path / "out"
        said = ok(
            "run", str(QUICKSTART), "--backend", "torch", "--out", str(out), *STEPS,
            "--runtime", "docker",
        )  # fmt: skip
        assert "building it here" in said and "Docker Engine" in said
        record = json.loads((out / "run.json").read_text())
        assert record["image"]["how"] == "built"
        assert losses(out) == pytest.approx(losses(local_reference), abs=1e-5)
        listed = ok("image", "list", "torch", "--engine", "docker")
        assert record["image"]["name"] in listed
        ok("image", "rm", "torch", "--engine", "docker")
        assert record["image"]["name"] not in ok("image", "list", "--engine", "docker")


def test_a_slurm_job_trains_in_the_image_on_both_nodes(
    podman: Podman, pushed: str, podman_run: tuple, tmp_path: Path
) -> None:
    """`ftx submit --runtime podman`: each node's `ftx launch` runs its launcher in the
    image (host network, the node contract passed in), with the losses of the
    two-process run the same image gives on one node."""
    from cluster import slurm_cluster
    from training import free_port

    runtime = ("--runtime", "podman", "--registry", podman.registry)
    steps = ("train.epochs=null", "train.max_steps=4", "train.logging_steps=1")
    one_node = tmp_path / "one"
    ok("run", str(QUICKSTART), "--out", str(one_node), *steps, *runtime,
       "parallel.nproc_per_node=2", f"parallel.master_port={free_port()}")  # fmt: skip
    with scratch("ftxs-") as folder, slurm_cluster(folder):
        out = tmp_path / "slurm"
        said = ok("submit", str(QUICKSTART), "--nodes", "2", "--out", str(out), "--wait",
                  *steps, *runtime)  # fmt: skip
    assert "step 4/4" in said
    record = json.loads((out / "run.json").read_text())
    assert record["runtime"] == "podman" and record["image"]["name"] == pushed
    assert losses(out) == pytest.approx(losses(one_node), abs=1e-5)


def test_the_kubernetes_pod_command_trains_in_the_image(
    podman: Podman, pushed: str, podman_run: tuple, tmp_path: Path
) -> None:
    """The TrainJob's node command, run in the image with the pod's mounts (OUT, the
    model read-only) and the variables Kubeflow's torch runtime sets: it trains. (The
    image holds the lock and ftx, not the core's dependencies: the command is
    standard-library only.)"""
    import yaml

    out = tmp_path / "out"
    ok("plan", str(QUICKSTART), "--out", str(out), "--scheduler", "kubernetes",
       "--registry", podman.registry, "train.epochs=null", "train.max_steps=2",
       "train.logging_steps=1")  # fmt: skip
    (job,) = yaml.safe_load_all((out / "plan" / "kubernetes" / "job.yaml").read_text())
    trainer = job["spec"]["trainer"]
    assert trainer["image"] == pushed
    model = ROOT / ".ftx" / "models" / "quickstart-llama"
    pet = ("PET_NNODES=1", "PET_NODE_RANK=0", "PET_MASTER_ADDR=127.0.0.1", "PET_MASTER_PORT=29500")
    result = subprocess.run(
        ["podman", "run", "--rm", "--network", "none", "--user", f"{os.getuid()}:{os.getgid()}",
         "-v", f"{out}:{out}", "-v", f"{model}:{model}:ro", "-w", str(out),
         *[a for e in (*pet, "HOME=/tmp") for a in ("-e", e)], pushed, *trainer["command"]],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "node 0 of 1 (from Kubeflow Trainer)" in result.stdout
    assert len(losses(out)) == 2


def test_a_failing_worker_in_the_image_is_reported_like_a_local_one(
    podman: Podman, pushed: str, podman_run: tuple, tiny_llama: Path, tmp_path: Path
) -> None:
    """A model folder whose weights belong to another (smaller) model: the worker fails
    loading them inside the container, its error.json reaches OUT and its message the
    user (exit code 1), and the container is gone."""
    import shutil

    model = tmp_path / "model"
    shutil.copytree(ROOT / ".ftx" / "models" / "quickstart-llama", model)
    shutil.copyfile(tiny_llama / "model.safetensors", model / "model.safetensors")
    out = tmp_path / "out"
    result = run_ftx(
        "run", str(QUICKSTART), "--out", str(out), f"model.path={model}", *STEPS,
        "--runtime", "podman", "--registry", podman.registry,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr[-2000:]
    failure = json.loads((out / "error.json").read_text())
    assert "the torch worker failed" in result.stderr
    assert failure["message"][:40] in result.stderr.replace("\n", " ")
    assert json.loads((out / "run.json").read_text())["status"] == "failed"
    leftover = subprocess.run(
        ["podman", "ps", "-a", "--filter", f"label=io.ftx.run={out}", "-q"],
        capture_output=True, text=True,
    ).stdout  # fmt: skip
    assert leftover.strip() == ""

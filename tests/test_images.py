"""`make test-images`: every backend's CPU image built on podman from the debootstrap
base, then the quickstart run in it: its first steps equal the local runtime's, and the
full quickstart learns the task (held-out exact match 0% -> at least 90%). Heavy (the
paddle and mindformers images hold 2-3.5 GB of frameworks), so not part of `make test`;
the torch image's registry round trip and signals are in test_containers.py."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conftest import ROOT
from containers import podman_settings
from daemons import environment, install_missing, scratch
from training import ftx_ok as ok
from training import losses

pytestmark = [pytest.mark.images, pytest.mark.env, pytest.mark.slow]

QUICKSTART = ROOT / "recipes" / "quickstart.yaml"
BASE = "localhost/ftx-base:bookworm"  # `ftx image base`: no registry needed
FEW = ("train.epochs=null", "train.max_steps=8", "train.logging_steps=1")


@pytest.fixture(scope="module")
def podman_engine() -> None:
    install_missing("podman", "runc", "debootstrap", "docker-registry")
    with scratch("ftxi-") as folder:
        settings = podman_settings(folder / "podman", registry="127.0.0.1:5000")  # none pushed
        with environment(**settings, FTX_BASE_IMAGE=BASE):
            os.environ.pop("DOCKER_HOST", None)
            ok("image", "base", "--engine", "podman")
            yield


@pytest.mark.parametrize("backend", ["torch", "paddle", "mindformers"])
def test_image_builds_and_runs_the_quickstart(
    backend: str, podman_engine: None, tmp_path: Path
) -> None:
    built = ok("image", "build", backend, "--engine", "podman")
    line = next(ln for ln in built.splitlines() if ln.startswith(f"localhost/ftx-{backend}:cpu-"))
    print(f"built: {line}")  # name, id, size, seconds (the README's table)
    name = line.split()[0]
    podman = ("--runtime", "podman")
    local = tmp_path / "local"
    ok("run", str(QUICKSTART), "--backend", backend, "--out", str(local), *FEW)
    few = tmp_path / "few"
    ok("run", str(QUICKSTART), "--backend", backend, "--out", str(few), *FEW, *podman)
    assert losses(few) == pytest.approx(losses(local), abs=1e-5)
    full = tmp_path / "full"
    ok("run", str(QUICKSTART), "--backend", backend, "--out", str(full), *podman)
    record = json.loads((full / "run.json").read_text())
    assert record["image"]["name"] == name and record["image"]["how"] == "present"
    evaluation = record["evaluation"]
    assert evaluation["before"]["exact_match"] == 0.0
    assert evaluation["after"]["exact_match"] >= 0.9
    assert record["final_loss"] < record["first_loss"] / 10
    print(f"{backend}: {name} {record['wall_time_s']} s, exact match"
          f" {evaluation['after']['exact_match']}, loss {record['first_loss']:.4f} ->"
          f" {record['final_loss']:.4f}")  # fmt: skip


def test_image_sizes(podman_engine: None) -> None:
    """The table the README's Containers section shows (sizes of the images built above)."""
    listed = ok("image", "list", "--engine", "podman")
    print(listed)
    for backend in ("torch", "paddle", "mindformers"):
        assert f"localhost/ftx-{backend}:cpu-" in listed

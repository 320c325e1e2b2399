"""`ftx plan --scheduler kubernetes`: the manifests validate against the published
schemas vendored in tests/schemas/kubernetes (SOURCES.md: Kubeflow Trainer v2.3.0's
TrainJob CRD, Volcano v1.15.1's Job CRD, MindCluster v26.1.0's AscendJob CRD, and
Kubernetes 1.36's ConfigMap and PersistentVolumeClaim). No cluster runs here: what is
checked is that the API server would accept them, and what each pod is told."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from conftest import ROOT, run_ftx
from ftx.core.contract import RunLayout
from ftx.core.recipe import load_recipe
from ftx.core.registry import backend_names
from ftx.core.runner import target_for
from ftx.core.schedulers.kubernetes import manifests

SCHEMAS = ROOT / "tests" / "schemas" / "kubernetes"
BY_KIND = {
    ("trainer.kubeflow.org/v1alpha1", "TrainJob"): "trainjob.trainer.kubeflow.org.v1alpha1",
    ("batch.volcano.sh/v1alpha1", "Job"): "job.batch.volcano.sh.v1alpha1",
    ("mindxdl.gitee.com/v1", "AscendJob"): "ascendjob.mindxdl.gitee.com.v1",
    ("v1", "ConfigMap"): "configmap.v1",
    ("v1", "PersistentVolumeClaim"): "persistentvolumeclaim.v1",
}
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))
CASES = [(b, r) for b in backend_names() for r in RECIPES]


def validate(document: dict) -> None:
    name = BY_KIND[(document["apiVersion"], document["kind"])]
    schema = json.loads((SCHEMAS / f"{name}.json").read_text())
    jsonschema.Draft202012Validator(schema).validate(document)


def generated(backend: str, recipe: Path, variant: str = "cpu", *overrides: str) -> dict:
    from ftx.core.backend import ImageVariant  # noqa: F401 (the variants' devices)
    from ftx.core.containers.images import variant_of

    target = target_for(load_recipe(recipe, list(overrides)), backend, here=False)
    files = {"recipe.yaml": "model: {}\n", **target.translate().rendered()}
    return manifests(
        target.recipe,
        backend,
        RunLayout(ROOT / "runs" / recipe.stem),
        files,
        image=f"registry.example.com/ml/ftx-{backend}:{variant}-0",
        variant=variant,
        devices=variant_of(backend, variant).devices,
    )


@pytest.mark.parametrize(("backend", "recipe"), CASES, ids=[f"{b}-{r.stem}" for b, r in CASES])
def test_manifests_validate_against_their_schemas(backend: str, recipe: Path) -> None:
    found = generated(backend, recipe, "cpu", "parallel.nnodes=2")
    kinds = [d["kind"] for docs in found.values() for d in docs]
    expected = "TrainJob" if backend == "torch" else "Job"
    assert sorted(kinds) == sorted(["ConfigMap", *["PersistentVolumeClaim"] * 3, expected])
    for documents in found.values():
        for document in documents:
            validate(document)


def test_an_invalid_manifest_is_refused_by_the_schema() -> None:
    """The schemas do reject: a TrainJob whose numNodes is text."""
    (job,) = generated("torch", ROOT / "recipes" / "quickstart.yaml")["job.yaml"]
    job["spec"]["trainer"]["numNodes"] = "two"
    with pytest.raises(jsonschema.ValidationError):
        validate(job)


def test_torch_trainjob_runs_ftx_launch_with_the_plan_and_claims_mounted() -> None:
    recipe = ROOT / "recipes" / "qwen2_7b_full_zero3.yaml"
    found = generated(
        "torch", recipe, "cuda", "parallel.nnodes=4", "scheduler.kubernetes.gpus_per_node=8"
    )
    (job,) = found["job.yaml"]
    trainer = job["spec"]["trainer"]
    assert trainer["numNodes"] == 4 and trainer["numProcPerNode"] == 8
    out = str(ROOT / "runs" / recipe.stem)
    assert trainer["command"] == ["python", "-m", "ftx.core.nodelaunch", out]
    assert trainer["resourcesPerNode"] == {"limits": {"nvidia.com/gpu": 8}}
    pod = job["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]
    pod = pod["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]
    claims = {v["name"]: v for v in pod["volumes"]}
    assert claims["output"]["persistentVolumeClaim"]["claimName"] == "ftx-output"
    mounts = {m["mountPath"]: m for m in pod["containers"][0]["volumeMounts"]}
    out = ROOT / "runs" / recipe.stem
    assert mounts[str(out / "plan")]["name"] == "plan"
    assert mounts[str(out / "data")]["readOnly"] is True
    (configmap,) = found["configmap.yaml"]
    items = {i["path"] for i in claims["plan"]["configMap"]["items"]}
    assert {"worker.json", "launch.sh", "nodes.json", "ds_config.json"} <= items
    assert "${FTX_NODE_RANK}" in configmap["data"]["launch.sh"]


def test_volcano_job_gang_schedules_master_and_workers() -> None:
    found = generated("paddle", ROOT / "recipes" / "quickstart.yaml", "cpu", "parallel.nnodes=3")
    (job,) = found["job.yaml"]
    spec = job["spec"]
    assert spec["minAvailable"] == 3 and spec["schedulerName"] == "volcano"
    assert [(t["name"], t["replicas"]) for t in spec["tasks"]] == [("master", 1), ("worker", 2)]
    assert "--master=master" in spec["plugins"]["pytorch"]


def test_mindformers_ascend_variant_is_an_ascendjob() -> None:
    found = generated(
        "mindformers",
        ROOT / "recipes" / "llama2_7b_mindformers.yaml",
        "ascend",
        "parallel.nnodes=2",
        "scheduler.kubernetes.gpus_per_node=8",
    )
    (job,) = found["job.yaml"]
    assert job["kind"] == "AscendJob"
    validate(job)
    replicas = job["spec"]["replicaSpecs"]
    assert replicas["Worker"]["replicas"] == 2 and replicas["Scheduler"]["replicas"] == 1
    worker = replicas["Worker"]["template"]["spec"]["containers"][0]
    assert worker["resources"] == {"limits": {"huawei.com/Ascend910": 8}}


def test_plan_scheduler_kubernetes_writes_valid_files(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run_ftx(
        "plan", str(ROOT / "recipes" / "quickstart.yaml"), "--out", str(out),
        "--scheduler", "kubernetes", "--registry", "registry.example.com/ml",
        "parallel.nnodes=2", "scheduler.kubernetes.namespace=team-a",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    folder = out / "plan" / "kubernetes"
    assert sorted(p.name for p in folder.iterdir()) == ["claims.yaml", "configmap.yaml", "job.yaml"]
    for path in folder.iterdir():
        for document in yaml.safe_load_all(path.read_text()):
            assert document["metadata"]["namespace"] == "team-a"
            validate(document)
    (job,) = yaml.safe_load_all((folder / "job.yaml").read_text())
    assert job["spec"]["trainer"]["image"].startswith("registry.example.com/ml/ftx-torch:cpu-")
    assert (out / "data" / "manifest.json").exists()  # prepared here, for the data claim


def test_kubernetes_without_a_registry_says_how_to_name_the_image(tmp_path: Path) -> None:
    """Refused before OUT is claimed: nothing is left behind, and the corrected command
    runs without --force."""
    out = tmp_path / "o"
    args = ["plan", str(ROOT / "recipes" / "quickstart.yaml"), "--out", str(out),
            "--scheduler", "kubernetes"]  # fmt: skip
    result = run_ftx(*args)
    assert result.returncode == 2
    assert "scheduler.kubernetes.image" in result.stderr and "--registry" in result.stderr
    assert not out.exists()
    fixed = run_ftx(*args, "--registry", "registry.example.com/ml")
    assert fixed.returncode == 0, fixed.stderr[-2000:]

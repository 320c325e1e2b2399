"""Kubernetes: the manifests `ftx plan --scheduler kubernetes` writes (no cluster needed,
none contacted).

- torchrun backends (torch): a Kubeflow Trainer v2 ``TrainJob``
  (trainer.kubeflow.org/v1alpha1) on the ``torch-distributed`` runtime, which gives each
  node ``PET_NNODES``/``PET_NODE_RANK``/``PET_MASTER_ADDR``/``PET_MASTER_PORT``;
- the others (paddle, mindformers): a Volcano ``Job`` (batch.volcano.sh/v1alpha1) with the
  ``svc`` and ``pytorch`` plugins, which give ``MASTER_ADDR``/``MASTER_PORT``/``RANK``/
  ``WORLD_SIZE``; an image variant for Ascend NPUs: a MindCluster ``AscendJob``
  (mindxdl.gitee.com/v1), whose operator gives ``MS_SCHED_HOST``/``MS_NODE_RANK``...

Every node runs ``python -m ftx.core.nodelaunch OUT`` in the backend's image (what
``ftx launch`` does, standard library only), which reads the node contract from those
variables (ftx.core.nodes). The plan (and the recipe) is a ConfigMap mounted
at OUT/plan; the model, the prepared data and OUT are PersistentVolumeClaims mounted at
the paths the plan names, so the plan's absolute paths hold in the pods.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from ftx.core.contract import RunLayout
from ftx.core.errors import FtxError
from ftx.core.plan import PLAN_DATA
from ftx.core.recipe.schema import Recipe
from ftx.core.registry import get_spec

FOLDER = "kubernetes"  # OUT/plan/kubernetes
CONFIGMAP_LIMIT = 1_000_000  # bytes: Kubernetes refuses larger ConfigMaps
GPU_RESOURCE = {"gpu": "nvidia.com/gpu", "ascend": "huawei.com/Ascend910"}
Manifest = dict[str, Any]
LABELS = {"app.kubernetes.io/name": "ftx"}


def dns_name(text: str, limit: int = 50) -> str:
    """An RFC 1123 label from free text (a run folder's name)."""
    name = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")[:limit].strip("-")
    return name or "ftx"


def _config_key(name: str) -> str:
    return name.replace("/", "__")  # ConfigMap keys hold no '/'; items give the path back


def configmap(name: str, namespace: str, files: dict[str, str]) -> Manifest:
    size = sum(len(text.encode()) for text in files.values())
    if size > CONFIGMAP_LIMIT:
        raise FtxError(
            f"the plan's files hold {size:,} bytes, more than a ConfigMap takes (1 MB)",
            where="OUT/plan",
            fix="keep large native files under OUT/plan/data (it goes on the data claim)",
        )
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/name": "ftx"},
        },
        "data": {_config_key(k): v for k, v in sorted(files.items())},
    }


def claims(recipe: Recipe) -> list[Manifest]:
    """The three PersistentVolumeClaims the job mounts (create them, or point the recipe's
    scheduler.kubernetes claim names at ones you have)."""
    k = recipe.scheduler.kubernetes
    found = []
    for claim, mode in ((k.model_claim, "ReadOnlyMany"), (k.data_claim, "ReadOnlyMany"),
                        (k.output_claim, "ReadWriteMany")):  # fmt: skip
        spec: dict[str, Any] = {
            "accessModes": [mode],
            "resources": {"requests": {"storage": k.claim_size}},
        }
        if k.storage_class:
            spec["storageClassName"] = k.storage_class
        found.append(
            {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {"name": claim, "namespace": k.namespace},
                "spec": spec,
            }
        )
    return found


def pod_parts(
    recipe: Recipe, layout: RunLayout, plan_map: str, files: dict[str, str]
) -> tuple[list[Manifest], list[Manifest]]:
    """The volumes and the node container's mounts: OUT (output claim), OUT/data and
    OUT/plan/data (data claim, read-only), OUT/plan (the ConfigMap), the model folder
    (model claim, read-only)."""
    k = recipe.scheduler.kubernetes
    out = str(layout.root)
    volumes = [
        {
            "name": "plan",
            "configMap": {
                "name": plan_map,
                "defaultMode": 0o755,
                "items": [{"key": _config_key(n), "path": n} for n in sorted(files)],
            },
        },
        {"name": "output", "persistentVolumeClaim": {"claimName": k.output_claim}},
        {"name": "data", "persistentVolumeClaim": {"claimName": k.data_claim, "readOnly": True}},
        {"name": "model", "persistentVolumeClaim": {"claimName": k.model_claim, "readOnly": True}},
    ]
    mounts = [
        {"name": "output", "mountPath": out},
        {"name": "data", "mountPath": str(layout.data), "subPath": "data", "readOnly": True},
        {"name": "plan", "mountPath": str(layout.plan), "readOnly": True},
        {"name": "data", "mountPath": str(layout.plan / PLAN_DATA), "subPath": "plan-data",
         "readOnly": True},
        {"name": "model", "mountPath": recipe.model.path, "readOnly": True},
    ]  # fmt: skip
    return volumes, mounts


def node_container(
    recipe: Recipe, layout: RunLayout, image: str, mounts: list[Manifest], devices: str
) -> Manifest:
    container: Manifest = {
        "name": "node",
        "image": image,
        "command": ["python", "-m", "ftx.core.nodelaunch", str(layout.root)],
        "workingDir": str(layout.root),
        "env": [{"name": "HOME", "value": "/tmp"}, {"name": "FTX_HOME", "value": "/tmp/ftx"}],
        "volumeMounts": mounts,
    }
    gpus = recipe.scheduler.kubernetes.gpus_per_node
    if gpus and devices in GPU_RESOURCE:
        container["resources"] = {"limits": {GPU_RESOURCE[devices]: gpus}}
    return container


def train_job(recipe: Recipe, name: str, container: Manifest, volumes: list[Manifest]) -> Manifest:
    """Kubeflow Trainer v2: the torch-distributed runtime, the pod's volumes and mounts
    given through a runtime patch (v2.3's way to change the runtime's pod template)."""
    k, p = recipe.scheduler.kubernetes, recipe.parallel
    trainer: Manifest = {
        "image": container["image"],
        "command": container["command"],
        "env": container["env"],
        "numNodes": p.nnodes,
        "numProcPerNode": p.nproc_per_node,
    }
    if "resources" in container:
        trainer["resourcesPerNode"] = container["resources"]
    pod = {
        "volumes": volumes,
        "containers": [{"name": "node", "volumeMounts": container["volumeMounts"]}],
    }
    node = {"name": "node", "template": {"spec": {"template": {"spec": pod}}}}
    return {
        "apiVersion": "trainer.kubeflow.org/v1alpha1",
        "kind": "TrainJob",
        "metadata": {"name": name, "namespace": k.namespace},
        "spec": {
            "runtimeRef": {"name": k.runtime_ref},
            "trainer": trainer,
            "runtimePatches": [
                {
                    "manager": "ftx",
                    "trainingRuntimeSpec": {"template": {"spec": {"replicatedJobs": [node]}}},
                }
            ],
        },
    }


def volcano_job(
    recipe: Recipe, name: str, container: Manifest, volumes: list[Manifest], port: int
) -> Manifest:
    """A Volcano Job: a ``master`` task (node 0) and ``worker`` tasks, gang-scheduled; the
    pytorch plugin gives every pod MASTER_ADDR (the master pod), MASTER_PORT, RANK and
    WORLD_SIZE (counted in pods: nodes)."""
    k, p = recipe.scheduler.kubernetes, recipe.parallel

    def task(role: str, replicas: int) -> Manifest:
        return {
            "name": role,
            "replicas": replicas,
            "template": {
                "metadata": {"labels": LABELS},
                "spec": {"restartPolicy": "Never", "containers": [container], "volumes": volumes},
            },
        }

    tasks = [task("master", 1)] + ([task("worker", p.nnodes - 1)] if p.nnodes > 1 else [])
    return {
        "apiVersion": "batch.volcano.sh/v1alpha1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": k.namespace},
        "spec": {
            "schedulerName": "volcano",
            "queue": k.queue,
            "minAvailable": p.nnodes,
            "maxRetry": 0,
            "plugins": {
                "svc": [],
                "pytorch": ["--master=master", "--worker=worker", f"--port={port}"],
            },
            "policies": [
                {"event": "PodEvicted", "action": "AbortJob"},
                {"event": "PodFailed", "action": "AbortJob"},
                {"event": "TaskCompleted", "action": "CompleteJob"},
            ],
            "tasks": tasks,
        },
    }


def ascend_job(
    recipe: Recipe, name: str, container: Manifest, volumes: list[Manifest], worker: str
) -> Manifest:
    """MindCluster's AscendJob for MindSpore: a Scheduler pod (the worker in MindSpore's
    scheduler role, MS_ROLE=MS_SCHED, set by the operator) and one Worker pod per node;
    the operator gives MS_SCHED_HOST, MS_SCHED_PORT, MS_NODE_RANK."""
    k, p = recipe.scheduler.kubernetes, recipe.parallel
    scheduler = {
        **container,
        "name": "ascend",  # the operator fills in the container called "ascend"
        "command": ["python", "-m", worker, "plan/worker.json"],
    }
    scheduler.pop("resources", None)
    worker = {**container, "name": "ascend"}

    def replica(count: int, body: Manifest) -> Manifest:
        return {
            "replicas": count,
            "restartPolicy": "Never",
            "template": {"spec": {"containers": [body], "volumes": volumes}},
        }

    return {
        "apiVersion": "mindxdl.gitee.com/v1",
        "kind": "AscendJob",
        "metadata": {
            "name": name,
            "namespace": k.namespace,
            "labels": {"framework": "mindspore", "ring-controller.atlas": "ascend-910b"},
        },
        "spec": {
            "schedulerName": "volcano",
            "runPolicy": {"schedulingPolicy": {"minAvailable": p.nnodes + 1, "queue": k.queue}},
            "successPolicy": "AllWorkers",
            "replicaSpecs": {
                "Scheduler": replica(1, scheduler),
                "Worker": replica(p.nnodes, worker),
            },
        },
    }


def manifests(
    recipe: Recipe,
    backend: str,
    layout: RunLayout,
    plan_files: dict[str, str],
    *,
    image: str,
    variant: str,
    devices: str,
) -> dict[str, list[Manifest]]:
    """Every manifest, by file name (pure: the recipe, its plan's files, the image)."""
    k = recipe.scheduler.kubernetes
    name = dns_name(f"ftx-{layout.root.name}")
    plan_map = f"{name}-plan"
    volumes, mounts = pod_parts(recipe, layout, plan_map, plan_files)
    container = node_container(recipe, layout, image, mounts, devices)
    spec = get_spec(backend)
    if spec.launcher == "torchrun":  # Kubeflow Trainer's torch runtime gives torchrun's PET_*
        job = train_job(recipe, name, container, volumes)
    elif devices == "ascend":
        job = ascend_job(recipe, name, container, volumes, spec.worker or "")
    else:
        job = volcano_job(recipe, name, container, volumes, recipe.parallel.master_port)
    return {
        "configmap.yaml": [configmap(plan_map, k.namespace, plan_files)],
        "claims.yaml": claims(recipe),
        "job.yaml": [job],
    }


def render(documents: list[Manifest]) -> str:
    return "---\n".join(yaml.safe_dump(d, sort_keys=False) for d in documents)


def plan_files(layout: RunLayout, recipe_text: str) -> dict[str, str]:
    """OUT/plan's small files (not its data, not the job files) and the recipe as it runs
    (overrides applied)."""
    files = {"recipe.yaml": recipe_text}
    for path in sorted(layout.plan.rglob("*")):
        relative = path.relative_to(layout.plan)
        if path.is_file() and relative.parts[0] not in (PLAN_DATA, FOLDER):
            files[str(relative)] = path.read_text()
    return files


def pod_image(recipe: Recipe, backend: str, variant: str | None, registry: str | None) -> str:
    """The image the pods run: scheduler.kubernetes.image, or the backend's image in
    ``registry``. Checked before a command claims OUT (nothing is left behind)."""
    from ftx.core.containers.images import ImageRef

    image = recipe.scheduler.kubernetes.image
    if image is not None:
        return image
    ref = ImageRef.of(backend, variant or "cpu", registry)
    if not ref.pullable:
        raise FtxError(
            "the pods need an image a registry serves",
            where="scheduler.kubernetes.image",
            fix="pass --registry HOST/PATH (where `ftx image push` put it) or set"
            " scheduler.kubernetes.image",
        )
    return ref.name


def write_manifests(staged: Any, *, image: str, variant: str | None) -> list[Path]:
    """OUT/plan/kubernetes/*.yaml for a staged run whose pods run ``image``."""
    from ftx.core.containers.images import variant_of
    from ftx.core.fsutil import atomic_write_text

    recipe, backend = staged.target.recipe, staged.target.spec.name
    chosen = variant or "cpu"
    layout = staged.layout
    effective = yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)
    files = plan_files(layout, effective)
    found = manifests(
        recipe,
        backend,
        layout,
        files,
        image=image,
        variant=chosen,
        devices=variant_of(backend, chosen).devices,
    )
    folder = layout.plan / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, documents in found.items():
        atomic_write_text(folder / name, render(documents))
        written.append(folder / name)
    return written

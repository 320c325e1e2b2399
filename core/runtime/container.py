"""The docker and podman runtimes: launch.sh runs in the backend's image.

The same plan and outputs as the local runtime. Every path the run reads (the recipe,
model and data files) is mounted read-only at its own path, OUT read-write at its own
path, so the plan's absolute paths hold inside. The container runs as the caller's
uid:gid (outputs belong to them), with no network for one node and the host's for
several. SIGINT/SIGTERM are passed to the container, whose first process
(ftx.core.supervise) hands them to the launcher's process group: the worker saves
a checkpoint, and the container is removed whatever happened.
"""

from __future__ import annotations

import contextlib
import glob
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ftx.core.containers import images
from ftx.core.containers.engine import Engine, connect
from ftx.core.home import ftx_home
from ftx.core.registry import get_spec
from ftx.core.runtime.base import Launch, Runtime

ASCEND_DEVICES = ("/dev/davinci_manager", "/dev/devmm_svm", "/dev/hisi_hdc")
ASCEND_DRIVER = ("/usr/local/Ascend/driver", "/usr/local/bin/npu-smi", "/usr/local/dcmi")


def detected_variant(backend: str) -> str:
    """The variant this host's devices call for: ascend with /dev/davinci*, cuda with
    /dev/nvidia*, else cpu (among the variants the backend's image has)."""
    offered = get_spec(backend, trains=False).environment.images
    for variant, pattern in (("ascend", "/dev/davinci[0-9]*"), ("cuda", "/dev/nvidia[0-9]*")):
        if variant in offered and glob.glob(pattern):
            return variant
    return "cpu"


def mounts(launch: Launch) -> dict[str, dict[str, str]]:
    """Bind mounts at the same paths: inputs read-only (a path inside another input is
    covered by it), OUT read-write (also when it lies inside an input's folder: engines
    mount a parent before what lies inside it)."""
    paths = sorted({Path(p).resolve() for p in launch.inputs if Path(p).exists()})
    kept = [p for p in paths if not any(q != p and q in p.parents for q in paths)]
    out = launch.layout.root.resolve()
    found = {str(p): {"bind": str(p), "mode": "ro"} for p in kept if p != out}
    found[str(out)] = {"bind": str(out), "mode": "rw"}
    return found


def device_options(variant_devices: str, engine: Engine) -> dict[str, Any]:
    """What a GPU or Ascend variant's container needs from the host."""
    if variant_devices == "gpu":
        if engine.kind == "podman":  # CDI: nvidia-ctk cdi generate on the host
            return {"devices": ["nvidia.com/gpu=all"]}
        import docker.types

        return {"device_requests": [docker.types.DeviceRequest(count=-1, capabilities=[["gpu"]])]}
    if variant_devices == "ascend":
        nodes = [*sorted(glob.glob("/dev/davinci[0-9]*")), *ASCEND_DEVICES]
        volumes = {p: {"bind": p, "mode": "ro"} for p in ASCEND_DRIVER if os.path.exists(p)}
        return {"devices": [f"{n}:{n}:rwm" for n in nodes if os.path.exists(n)], "volumes": volumes}
    return {}


class ContainerRuntime(Runtime):
    """A run in the backend's image, through the docker or podman engine."""

    def __init__(self, engine: str, variant: str | None = None, registry: str | None = None):
        self.name = engine
        self.variant = variant
        self.registry = registry
        self._stack = contextlib.ExitStack()
        self._engine: Engine | None = None
        self._image: dict[str, Any] = {}
        self._ref: images.ImageRef | None = None

    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = self._stack.enter_context(connect(self.name))
        return self._engine

    def prepare(self, backend: str) -> dict[str, Any]:
        from ftx.core.console import info, lead

        engine = self.engine()
        variant = self.variant or detected_variant(backend)
        ref = images.ImageRef.of(backend, variant, self.registry)
        log = ftx_home() / "logs" / f"image-{backend}-{variant}.log"
        attrs, how = images.ensure(engine, ref, say=info, log=log)
        info(lead("Image", f" {ref.name} ({how}; {engine.describe()})"))
        self._ref, self._image = ref, attrs
        lock, extra = images.variant_lock(backend, variant)
        frameworks = get_spec(backend, trains=False).environment.frameworks
        return {
            "versions": lock_versions(lock + extra, frameworks),
            "image": {
                "name": ref.name,
                "id": attrs["Id"],
                "digest": images.digest_of(attrs),
                "how": how,
                "variant": variant,
                "engine": engine.describe(),
            },
        }

    @contextlib.contextmanager
    def _container(self, command: list[str], **options: Any) -> Iterator[Any]:
        """A container of the prepared image running as the caller, removed after."""
        assert self._ref is not None, "prepare() first"
        container = self.engine().client.containers.create(
            self._image["Id"], command, user=f"{os.getuid()}:{os.getgid()}", **options
        )
        try:
            yield container
        finally:
            with contextlib.suppress(Exception):  # already gone
                container.remove(force=True)

    def python(
        self,
        backend: str,
        args: list[str],
        *,
        reads: tuple[Path, ...],
        writes: tuple[Path, ...],
        why: str = "",
    ) -> tuple[int, str]:
        volumes = {str(p): {"bind": str(p), "mode": "ro"} for p in reads}
        for path in writes:
            path.mkdir(parents=True, exist_ok=True)
            volumes[str(path)] = {"bind": str(path), "mode": "rw"}
        with self._container(
            ["python", *args],
            working_dir="/tmp",
            environment={"HOME": "/tmp"},
            volumes=volumes,
            network_mode="none",
        ) as container:
            container.start()
            code = int(container.wait()["StatusCode"])
            return code, container.logs().decode(errors="replace")

    def run(self, launch: Launch, on_line: Callable[[str], None]) -> int:
        assert self._ref is not None, "prepare() first"
        layout = launch.layout
        layout.logs.mkdir(parents=True, exist_ok=True)
        devices = images.variant_of(launch.backend, self._ref.variant).devices
        options = device_options(devices, self.engine())
        volumes = {**mounts(launch), **options.pop("volumes", {})}
        received: list[int] = []
        with self._container(
            ["python", "-m", "ftx.core.supervise", str(layout.launch_script)],
            working_dir=str(layout.root),
            environment={
                "HOME": "/tmp",
                "PYTHONUNBUFFERED": "1",
                "TOKENIZERS_PARALLELISM": "false",
                **launch.env,
            },
            volumes=volumes,
            network_mode="host" if launch.multinode else "none",
            ipc_mode="host" if launch.multinode else None,
            shm_size=None if launch.multinode else "1g",
            labels={"io.ftx.run": str(layout.root)},
            **options,
        ) as container:

            def forward(signum: int, _frame: object) -> None:
                received.append(signum)
                with contextlib.suppress(Exception):  # already gone
                    container.kill(signal="SIGTERM")

            previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
            for sig in previous:
                signal.signal(sig, forward)
            try:
                container.start()
                _stream(container, launch.log_file, on_line)
                code = int(container.wait()["StatusCode"])
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)
        return 128 + received[0] if received else code

    def close(self) -> None:
        self._stack.close()
        self._engine = None


def _stream(container: Any, log: Path, on_line: Callable[[str], None]) -> None:
    """The container's output, line by line, into the log and to ``on_line``."""
    with log.open("a") as handle:
        pending = ""
        for chunk in container.logs(stream=True, follow=True):
            pending += chunk.decode(errors="replace")
            *lines, pending = pending.split("\n")
            for line in lines:
                handle.write(line + "\n")
                handle.flush()
                on_line(line + "\n")
        if pending:
            handle.write(pending)
            on_line(pending)


def lock_versions(lock: str, frameworks: tuple[str, ...]) -> dict[str, str]:
    """The versions the lock pins for the named distributions."""
    pins = {}
    for line in lock.splitlines():
        name, sep, version = line.strip().partition("==")
        if sep:
            pins[name.lower().replace("_", "-")] = version
    return {f: pins[f.lower()] for f in frameworks if f.lower() in pins}

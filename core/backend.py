"""What a backend declares: one :class:`BackendSpec` in ``backends/<name>/__init__.py``.

Standard library only: workers import their backend's package inside its own
environment, and listing backends (``ftx backends``, ``ftx env list``) must
import no framework. Everything a spec names lazily is an import path
(``module:attribute``), loaded by :mod:`ftx.core.registry` when needed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PYTHON_BASE = "docker.io/library/python:3.11-slim-bookworm"  # the locks are cp311 wheels


@dataclass(frozen=True)
class ImageVariant:
    """One build of a backend's image (docker/<name>/Dockerfile): its base and devices.

    ``replace`` swaps lock lines for the variant's (a GPU wheel for the CPU one); those
    lines are installed with their dependencies from ``index`` (the CUDA runtime wheels a
    GPU framework pulls in), after the lock's own ``--no-deps`` install.
    """

    base: str = PYTHON_BASE
    devices: str = "none"  # "none", "gpu" (NVIDIA, CDI or --gpus) or "ascend" (/dev/davinci*)
    replace: Mapping[str, str] = field(default_factory=dict)  # lock line -> variant line
    index: str = ""  # pip --extra-index-url for the replaced lines
    note: str = ""


@dataclass(frozen=True)
class EnvironmentSpec:
    """A backend's local environment: a pinned lock file and how to inspect it, and the
    image variants its Dockerfile builds from the same lock."""

    lock_file: Path
    frameworks: tuple[str, ...]  # distributions whose versions `ftx env doctor` reports
    import_check: str  # a statement that must run in the finished environment
    devices: str  # "module:function" run inside the environment: the devices it sees
    images: Mapping[str, ImageVariant] = field(default_factory=lambda: {"cpu": ImageVariant()})
    footprint: str = ""  # what building it costs, said before it is built ("about 2 GB ...")
    # An environment whose packages this one sees beneath its own (its lock then adds to
    # that one's: only what differs is installed); "" for a self-contained one.
    base: str = ""


@dataclass(frozen=True)
class NativeTrainer:
    """The framework's own trainer, which ``train.trainer: native`` runs on the plan ftx
    wrote, under ftx's launcher, with ftx's outputs (metrics, checkpoints, OUT/final)."""

    name: str  # "PaddleFormers' Trainer"
    command: str  # what a native user types on the plan, from OUT
    stages: frozenset[str]
    finetuning: frozenset[str]
    # Values (precisions, parallel modes, model types) only this trainer runs: `auto` picks
    # it for them, and `train.trainer: ftx` refuses them.
    only: frozenset[str] = frozenset()
    # Values it runs only where the environment sees a GPU/NPU (the CPU kernels lack them).
    accelerator_only: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Capabilities:
    """What a backend can train. ``notes`` explain limits a row cannot show."""

    stages: frozenset[str]
    finetuning: frozenset[str]
    precisions: frozenset[str]
    parallel: frozenset[str]  # dp, tp, pp, zero1-3, offload, multinode
    packing: bool = True
    model_formats: frozenset[str] = frozenset({"hf"})  # checkpoint formats it trains from
    accelerator_only: frozenset[str] = frozenset()  # methods that need a GPU/NPU
    # The framework's own trainer (``train.trainer: native``); None: ftx's worker is the
    # framework's own training stack already (torch: transformers + peft + DeepSpeed).
    native: NativeTrainer | None = None
    notes: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Override:
    """A key of the recipe's ``backends.<name>`` section that the backend honours.

    With ``recipe_key`` it is the native spelling of a recipe key: the value is
    written into that key (through ``values`` when given), so everything derived
    from it agrees. Without, the translator passes it to the framework as is.
    """

    kind: type  # bool, int, float or str
    example: Any  # a valid value that changes the plan (the tests try each one)
    help: str
    recipe_key: str | None = None
    values: Mapping[Any, Any] | None = None  # native value -> recipe value; others refused


def alias(recipe_key: str, kind: type, example: Any, values: Mapping | None = None) -> Override:
    """An Override that is a native spelling of ``recipe_key``."""
    return Override(
        kind, example, f"the recipe's {recipe_key}", recipe_key=recipe_key, values=values
    )


# The TrainingArguments names transformers and PaddleFormers share, each written into its
# recipe key, plus the Adam settings (no recipe key: they reach the worker's AdamW as they
# are). Backends whose users think in those names start their OVERRIDES from these.
TRAINING_ARGUMENTS = {
    "adam_beta1": Override(float, 0.8, "AdamW beta1 (default 0.9)"),
    "adam_beta2": Override(float, 0.95, "AdamW beta2 (default 0.999)"),
    "adam_epsilon": Override(float, 1e-6, "AdamW epsilon (default 1e-8)"),
    "learning_rate": alias("train.learning_rate", float, 3e-4),
    "num_train_epochs": alias("train.epochs", float, 7.0),
    "max_steps": alias("train.max_steps", int, 11),
    "lr_scheduler_type": alias("train.scheduler", str, "linear"),
    "warmup_ratio": alias("train.warmup_ratio", float, 0.2),
    "warmup_steps": alias("train.warmup_steps", int, 9),
    "per_device_train_batch_size": alias("train.micro_batch_size", int, 3),
    "gradient_accumulation_steps": alias("train.grad_accum", int, 4),
    "weight_decay": alias("train.weight_decay", float, 0.05),
    "max_grad_norm": alias("train.max_grad_norm", float, 0.5),
    "seed": alias("train.seed", int, 7),
    "logging_steps": alias("train.logging_steps", int, 3),
    "save_steps": alias("train.save_steps", int, 13),
    "save_total_limit": alias("train.save_total_limit", int, 5),
    "eval_steps": alias("train.eval_steps", int, 17),
}


@dataclass(frozen=True)
class DataExporter:
    """``ftx data export --to NAME``: the recipe's data in a native tool's own format."""

    description: str
    function: str  # "module:function"; export(recipe, folder) -> one-line summary, in the core


@dataclass(frozen=True)
class BackendSpec:
    """A backend: its environment, and when it trains, how to translate a recipe for it."""

    name: str
    description: str
    launcher: str
    environment: EnvironmentSpec
    capabilities: Capabilities | None = None  # None: the environment exists, training comes later
    # "module:function": translate(recipe, model_config) -> NativePlan, pure (the core reads
    # the model's config.json into a ftx.core.models.architectures.ModelConfig)
    translator: str | None = None
    worker: str | None = None  # the module the launcher runs with OUT/plan/worker.json
    # The module that loads a model and serves ftx.core.contract's DecodeRequests
    # (ftx generate, chat, eval, serve); ``decoder_adapters``: it puts a PEFT adapter on
    # the base itself (else the core merges the adapter first).
    decoder: str | None = None
    decoder_adapters: bool = False
    overrides: Mapping[str, Override] = field(default_factory=dict)
    exporters: Mapping[str, DataExporter] = field(default_factory=dict)
    # An exporter (a key of ``exporters``) that writes the data the native configs of a
    # plan read into OUT/plan/data, so the plan also runs with the framework's own CLI.
    plan_data: str | None = None

    @property
    def trains(self) -> bool:
        return self.translator is not None and self.capabilities is not None

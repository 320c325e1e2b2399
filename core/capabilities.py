"""Check a recipe against a backend's capabilities.

Each backend declares one :class:`~ftx.core.backend.Capabilities` value in its
spec; the registry gathers them, and this module is the single place that turns
them into recipe checks (``ftx validate --backend``), so the checks and the
``ftx backends`` table can never disagree.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from ftx.core.backend import Capabilities
from ftx.core.errors import FtxError
from ftx.core.recipe.schema import Recipe


def parallel_modes(recipe: Recipe) -> list[str]:
    """The parallel features a recipe asks for: dp, tp, pp, zero1-3, offload, multinode."""
    p = recipe.parallel
    modes = []
    if p.dp > 1:
        modes.append("dp")
    if p.tp > 1:
        modes.append("tp")
    if p.pp > 1:
        modes.append("pp")
    if p.zero:
        modes.append(f"zero{p.zero}")
    if p.offload != "none":
        modes.append("offload")
    if p.nnodes > 1:
        modes.append("multinode")
    return modes


def device_problems(recipe: Recipe, caps: Capabilities, accelerator: bool | None) -> list[str]:
    """What this machine's devices cannot run (``accelerator``: whether the backend's
    environment saw a GPU/NPU; None: unknown, nothing refused)."""
    if recipe.method.finetuning in caps.accelerator_only and accelerator is False:
        note = caps.notes.get(recipe.method.finetuning, "it needs a GPU")
        return [
            f"method.finetuning: '{recipe.method.finetuning}' cannot run on this machine: {note}"
        ]
    return []


def check_devices(
    recipe: Recipe, caps: Capabilities, accelerator: bool | None, source: str
) -> None:
    """Raise an FtxError when this machine's devices cannot run the recipe."""
    problems = device_problems(recipe, caps, accelerator)
    if problems:
        raise FtxError(
            f"{'; '.join(problems)}.",
            where=source,
            fix="run it where the backend's environment sees a GPU, or pick another method",
        )


def check_recipe(
    recipe: Recipe,
    backend: str,
    caps: Capabilities,
    every: Mapping[str, Capabilities],
    *,
    source: str,
    accelerator: bool | None = None,
    model_format: str | None = None,
    model_type: str | None = None,
    running: bool = True,
) -> None:
    """Raise an FtxError naming every key the backend cannot honour.

    ``every`` is the whole matrix, used to say which backends would run it.
    ``accelerator`` is whether a GPU/NPU is known to be present (None: unknown).
    ``running`` is False for `ftx plan`, which also takes the backend's plan-only values
    (finetuning methods, precisions, parallel modes, and model types: config.json's
    ``model_type``).
    """
    problems: list[str] = []

    def need(key: str, value: str, supported: Iterable[str], attr: str) -> None:
        if value in caps.plan_only:
            if not running:
                return
            note = caps.notes.get(value, "")
            problems.append(
                f"{key}: '{value}' is written into the {backend} backend's native plan"
                f" (`ftx plan --backend {backend}`) for the framework's own trainer, but"
                f" ftx's {backend} worker does not run it{': ' + note if note else ''}"
            )
            return
        if value in supported:
            return
        others = sorted(n for n, c in every.items() if value in getattr(c, attr))
        alt = f"; backends that have it: {', '.join(others)}" if others else ""
        problems.append(
            f"{key}: '{value}' is not supported by the {backend} backend"
            f" (it has: {', '.join(sorted(supported))}){alt}"
        )

    need("method.stage", recipe.method.stage, caps.stages, "stages")
    need("method.finetuning", recipe.method.finetuning, caps.finetuning, "finetuning")
    need("train.precision", recipe.train.precision, caps.precisions, "precisions")
    for mode in parallel_modes(recipe):
        need("parallel", mode, caps.parallel, "parallel")
    if model_format and model_format not in caps.model_formats:
        problems.append(
            f"model.path holds a {model_format} checkpoint and the {backend} backend trains from"
            f" {', '.join(sorted(caps.model_formats))}: convert it first with"
            f" `ftx convert {recipe.model.path} OUT --to {sorted(caps.model_formats)[0]}`"
        )
    if model_type in caps.plan_only and running:
        note = caps.notes.get(model_type, "")
        problems.append(
            f"model.path: a {model_type} model is written into the {backend} backend's native"
            f" plan (`ftx plan --backend {backend}`), but ftx's {backend} worker does not train"
            f" it{': ' + note if note else ''}"
        )
    if recipe.data.packing and not caps.packing:
        problems.append(f"data.packing: the {backend} backend cannot pack examples; set it false")
    problems += device_problems(recipe, caps, accelerator)
    if problems:
        first, *rest = problems
        more = f" Also: {'; '.join(rest)}." if rest else ""
        raise FtxError(
            f"{first}.{more}",
            where=source,
            fix="change those keys or pick another backend with --backend (see `ftx backends`)",
        )

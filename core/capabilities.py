"""Check a recipe against a backend's capabilities.

Each backend declares one :class:`~ftx.core.backend.Capabilities` value in its
spec; the registry gathers them, and this module is the single place that turns
them into recipe checks (``ftx validate --backend``), so the checks and the
``ftx backends`` table can never disagree.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

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


@dataclass(frozen=True)
class TrainerChoice:
    """Who trains a run (``train.trainer`` resolved), and why, as the run says it."""

    trainer: Literal["ftx", "native"]
    reason: str


def asked_values(recipe: Recipe, model_type: str | None) -> list[tuple[str, str]]:
    """The (recipe key, value) pairs a backend's capabilities are checked against."""
    pairs = [
        ("method.stage", recipe.method.stage),
        ("method.finetuning", recipe.method.finetuning),
        ("train.precision", recipe.train.precision),
        *(("parallel", mode) for mode in parallel_modes(recipe)),
    ]
    if model_type:
        pairs.append(("model.path", model_type))
    return pairs


def nowhere(recipe: Recipe, every: Mapping[str, Capabilities]) -> list[str]:
    """The recipe's values no backend trains (not even with its native trainer)."""
    found = []
    for key, value, attr in (
        ("method.stage", recipe.method.stage, "stages"),
        ("method.finetuning", recipe.method.finetuning, "finetuning"),
        ("train.precision", recipe.train.precision, "precisions"),
        *(("parallel", mode, "parallel") for mode in parallel_modes(recipe)),
    ):
        native = [c.native.only for c in every.values() if c.native is not None]
        if not any(value in getattr(c, attr) for c in every.values()) and not any(
            value in only for only in native
        ):
            found.append(f"{key}: '{value}' is trained by no backend ({', '.join(every)})")
    return found


def choose_trainer(
    recipe: Recipe, backend: str, caps: Capabilities, model_type: str | None, *, source: str
) -> TrainerChoice:
    """``train.trainer`` resolved: ``auto`` is the framework's own trainer for what only it
    runs (its ``only`` values), ftx's loop otherwise."""
    asked, native = recipe.train.trainer, caps.native
    if asked == "ftx":
        return TrainerChoice("ftx", "train.trainer is ftx")
    if native is None:
        if asked == "native":
            raise FtxError(
                f"train.trainer is native, and the {backend} backend has no separate native"
                f" trainer: its worker is the framework's own training stack",
                where=source,
                fix="set train.trainer to auto or ftx",
            )
        return TrainerChoice("ftx", f"the {backend} worker is the framework's own stack")
    if asked == "native":
        return TrainerChoice("native", f"train.trainer is native: {native.name}")
    needs = [value for _, value in asked_values(recipe, model_type) if value in native.only]
    if needs:
        return TrainerChoice(
            "native",
            f"{', '.join(needs)} run{'s' if len(needs) == 1 else ''} in {native.name} only",
        )
    return TrainerChoice("ftx", "ftx's loop runs this recipe (the same loop on every backend)")


def device_problems(
    recipe: Recipe, caps: Capabilities, accelerator: bool | None, model_type: str | None = None
) -> list[str]:
    """What this machine's devices cannot run (``accelerator``: whether the backend's
    environment saw a GPU/NPU; None: unknown, nothing refused)."""
    if accelerator is not False:
        return []
    if recipe.method.finetuning in caps.accelerator_only:
        note = caps.notes.get(recipe.method.finetuning, "it needs a GPU")
        return [
            f"method.finetuning: '{recipe.method.finetuning}' cannot run on this machine: {note}"
        ]
    native = caps.native
    if native is None or recipe.train.trainer != "native":
        return []
    problems = [
        f"{key}: '{value}' runs in {native.name} on a GPU/NPU only, and the backend's"
        f" environment on this machine sees only the CPU"
        + (f" ({caps.notes[value]})" if value in caps.notes else "")
        for key, value in asked_values(recipe, model_type)
        if value in native.accelerator_only
    ]
    if problems:
        problems[-1] += (
            f"; where one is seen `ftx run` trains it, as does `{native.command}` run from"
            " OUT after `ftx plan`"
        )
    return problems


def check_devices(
    recipe: Recipe,
    caps: Capabilities,
    accelerator: bool | None,
    source: str,
    model_type: str | None = None,
) -> None:
    """Raise an FtxError when this machine's devices cannot run the recipe."""
    problems = device_problems(recipe, caps, accelerator, model_type)
    if problems:
        raise FtxError(
            f"{'; '.join(problems)}.",
            where=source,
            fix="run it where the backend's environment sees a GPU/NPU (`ftx plan` writes it"
            " for one), or change those keys",
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
) -> None:
    """Raise an FtxError naming every key the backend cannot honour with the trainer
    ``recipe.train.trainer`` names (resolved: ftx or native, see :func:`choose_trainer`).

    ``every`` is the whole matrix, used to say which backends would run it.
    ``accelerator`` is whether a GPU/NPU is known to be present (None: unknown).
    """
    problems: list[str] = []
    native = caps.native if recipe.train.trainer == "native" else None
    only = caps.native.only if caps.native else frozenset()

    def need(key: str, value: str, supported: Iterable[str], attr: str) -> None:
        if native is not None and value in native.only:
            return
        if value in only:
            assert caps.native is not None
            note = caps.notes.get(value, "")
            problems.append(
                f"{key}: '{value}' runs in {caps.native.name} only (train.trainer: native),"
                f" and train.trainer is ftx{': ' + note if note else ''}"
            )
            return
        if value in supported:
            return
        others = sorted(n for n, c in every.items() if value in getattr(c, attr))
        alt = f"; backends that have it: {', '.join(others)}" if others else "; no backend has it"
        problems.append(
            f"{key}: '{value}' is not supported by the {backend} backend"
            f" (it has: {', '.join(sorted(supported))}){alt}"
        )

    for key, value, attr in (
        ("method.stage", recipe.method.stage, "stages"),
        ("method.finetuning", recipe.method.finetuning, "finetuning"),
    ):
        if native is not None and value not in getattr(native, attr):
            ours = value in getattr(caps, attr)
            problems.append(
                f"{key}: '{value}' is not trained by {native.name} (train.trainer: native)"
                + ("; ftx's loop trains it (train.trainer: ftx or auto)" if ours else "")
            )
        else:
            need(key, value, getattr(caps, attr), attr)
    need("train.precision", recipe.train.precision, caps.precisions, "precisions")
    for mode in parallel_modes(recipe):
        need("parallel", mode, caps.parallel, "parallel")
    if model_format and model_format not in caps.model_formats:
        problems.append(
            f"model.path holds a {model_format} checkpoint and the {backend} backend trains from"
            f" {', '.join(sorted(caps.model_formats))}: convert it first with"
            f" `ftx convert {recipe.model.path} OUT --to {sorted(caps.model_formats)[0]}`"
        )
    if model_type in only and native is None:
        assert caps.native is not None
        note = caps.notes.get(model_type, "")
        problems.append(
            f"model.path: a {model_type} model is trained by {caps.native.name} only"
            f" (train.trainer: native), and train.trainer is ftx{': ' + note if note else ''}"
        )
    if recipe.data.packing and not caps.packing:
        problems.append(f"data.packing: the {backend} backend cannot pack examples; set it false")
    problems += device_problems(recipe, caps, accelerator, model_type)
    if problems:
        first, *rest = problems
        more = f" Also: {'; '.join(rest)}." if rest else ""
        raise FtxError(
            f"{first}.{more}",
            where=source,
            fix="change those keys or pick another backend with --backend (see `ftx backends`)",
        )

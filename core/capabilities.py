"""The capability matrix: what each backend can run.

Each backend declares one :class:`Capabilities` value in its folder; the
registry gathers them, and this module is the single place that turns them
into recipe checks (``ftx validate --backend``) and into the ``ftx backends``
table, so the two can never disagree.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from ftx.core.errors import FtxError
from ftx.core.recipe.schema import DATA_FORMATS, Recipe

PARALLEL_MODES = ("dp", "tp", "pp", "zero1", "zero2", "zero3", "offload", "multinode")


@dataclass(frozen=True)
class Capabilities:
    """What one backend supports. ``notes`` explain limits a row cannot show."""

    stages: frozenset[str]
    finetuning: frozenset[str]
    precisions: frozenset[str]
    parallel: frozenset[str]
    data_formats: frozenset[str] = frozenset(DATA_FORMATS)
    packing: bool = True
    model_formats: frozenset[str] = frozenset({"hf"})  # checkpoint formats it trains from
    accelerator_only: frozenset[str] = frozenset()  # methods that need a GPU/NPU
    notes: Mapping[str, str] = field(default_factory=dict)


def parallel_modes(recipe: Recipe) -> list[str]:
    """The parallel features a recipe asks for, in PARALLEL_MODES names."""
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


def check_recipe(
    recipe: Recipe,
    backend: str,
    caps: Capabilities,
    every: Mapping[str, Capabilities],
    *,
    source: str,
    accelerator: bool | None = None,
    model_format: str | None = None,
) -> None:
    """Raise an FtxError naming every key the backend cannot honour.

    ``every`` is the whole matrix, used to say which backends would run it.
    ``accelerator`` is whether a GPU/NPU is known to be present (None: unknown).
    """
    problems: list[str] = []

    def need(key: str, value: str, supported: Iterable[str], attr: str) -> None:
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
    for i, spec in enumerate(recipe.data.datasets):
        if spec.format:
            need(f"data.datasets[{i}].format", spec.format, caps.data_formats, "data_formats")
    for mode in parallel_modes(recipe):
        need("parallel", mode, caps.parallel, "parallel")
    if model_format and model_format not in caps.model_formats:
        problems.append(
            f"model.path holds a {model_format} checkpoint and the {backend} backend trains from"
            f" {', '.join(sorted(caps.model_formats))}: convert it first with"
            f" `ftx convert {recipe.model.path} OUT --to {sorted(caps.model_formats)[0]}`"
        )
    if recipe.data.packing and not caps.packing:
        problems.append(f"data.packing: the {backend} backend cannot pack examples; set it false")
    if recipe.method.finetuning in caps.accelerator_only and accelerator is False:
        note = caps.notes.get(recipe.method.finetuning, "it needs a GPU")
        problems.append(
            f"method.finetuning: '{recipe.method.finetuning}' cannot run on this machine: {note}"
        )
    unknown = sorted(set(recipe.backends) - set(every))
    if unknown:
        problems.append(
            f"backends: unknown backend section(s) {', '.join(unknown)};"
            f" known: {', '.join(sorted(every))}"
        )
    if problems:
        first, *rest = problems
        more = f" Also: {'; '.join(rest)}." if rest else ""
        raise FtxError(
            f"{first}.{more}",
            where=source,
            fix="change those keys or pick another backend with --backend (see `ftx backends`)",
        )

"""Apply a recipe's ``backends.<name>`` section: checked against what the backend honours.

Keys that are a native spelling of a recipe key are written into that key and the
recipe is validated again, so every file derived from it agrees (an override of
``gradient_accumulation_steps`` reaches the loop and the DeepSpeed config alike).
Other keys stay in ``recipe.backends[name]`` for the translator, type-checked.
"""

from __future__ import annotations

import math
from typing import Any

from ftx.core.backend import BackendSpec, Override
from ftx.core.errors import FtxError
from ftx.core.recipe.loader import validate_recipe
from ftx.core.recipe.schema import Recipe


def apply_overrides(recipe: Recipe, spec: BackendSpec, source: str) -> Recipe:
    """The recipe with the backend's section applied; an FtxError for any bad key."""
    section = recipe.backends.get(spec.name, {})
    if not section:
        return recipe
    where = f"{source}: backends.{spec.name}"
    unknown = sorted(set(section) - set(spec.overrides))
    if unknown:
        honoured = ", ".join(sorted(spec.overrides)) or "none"
        raise FtxError(
            f"unknown key(s) {', '.join(unknown)} for the {spec.name} worker",
            where=where,
            fix=f"use keys the {spec.name} worker honours: {honoured}",
        )
    raw = recipe.model_dump(mode="python")
    native: dict[str, Any] = {}
    for key, value in section.items():
        override = spec.overrides[key]
        checked = _checked(override, value, f"{where}.{key}")
        if override.recipe_key is None:
            native[key] = checked
            continue
        if override.values is not None:
            if checked not in override.values:
                allowed = ", ".join(repr(v) for v in override.values)
                raise FtxError(
                    f"{key}: {value!r} is not one of {allowed}",
                    where=where,
                    fix=f"set {override.recipe_key} in the recipe instead",
                )
            checked = override.values[checked]
        section_name, _, recipe_key = override.recipe_key.partition(".")
        raw[section_name][recipe_key] = checked
    raw["backends"] = {**raw["backends"], spec.name: native}
    return validate_recipe(raw, source=f"{where} (applied to the recipe)")


def _checked(override: Override, value: Any, where: str) -> Any:
    kind = override.kind
    if kind is float and isinstance(value, str):
        # YAML 1.1 reads 1e-6 (no dot) as a string; accept what is plainly a number.
        try:
            return float(value)
        except ValueError:
            pass
    ok = isinstance(value, kind) and not (kind in (int, float) and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if ok and kind is float and not math.isfinite(value):
        raise FtxError(
            f"{value!r} is not a finite number",
            where=where,
            fix=f"{override.help}; for example {override.example!r}",
        )
    if not ok:
        raise FtxError(
            f"expected a {kind.__name__}, got {value!r}",
            where=where,
            fix=f"{override.help}; for example {override.example!r}",
        )
    return value

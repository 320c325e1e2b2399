"""Load a recipe file: YAML -> dotted overrides -> validation -> absolute paths.

Every mistake comes back as one :class:`FtxError` naming the file, the line
and key path, and the fix (with a did-you-mean for misspelt keys).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from ftx.core.errors import FtxError
from ftx.core.fsutil import regular_file
from ftx.core.recipe.schema import Recipe

Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class LoadedRecipe:
    """A validated recipe plus where it came from."""

    recipe: Recipe
    source: Path
    overrides: tuple[str, ...]

    @property
    def digest(self) -> str:
        """Stable hash of the effective recipe (after overrides and path resolution)."""
        return recipe_digest(self.recipe)


def recipe_digest(recipe: Recipe) -> str:
    """sha256 of the canonical JSON of a recipe."""
    text = json.dumps(recipe.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def load_recipe(path: str | Path, overrides: typing.Sequence[str] = ()) -> LoadedRecipe:
    """Read, override, validate and resolve a recipe file."""
    source = regular_file(Path(path), "recipe")
    if not source.is_file():
        raise FtxError(
            "recipe file not found",
            where=str(source),
            fix="pass the path of a recipe YAML file (see recipes/ for examples)",
        )
    try:
        text = source.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        line = source.read_bytes()[: exc.start].count(b"\n") + 1
        raise FtxError(
            f"the recipe is not UTF-8 text (byte {exc.start})",
            where=f"{source}:{line}",
            fix="save the recipe as UTF-8",
        ) from None
    raw, lines = _parse_yaml(text, source)
    for item in overrides:
        _apply_override(raw, item)
    recipe = validate_recipe(raw, source=str(source), lines=lines)
    return LoadedRecipe(_absolutize(recipe, source.resolve().parent), source, tuple(overrides))


def validate_recipe(raw: Any, *, source: str, lines: dict[Loc, int] | None = None) -> Recipe:
    """Validate a parsed recipe mapping; raise one FtxError listing every problem."""
    if not isinstance(raw, dict):
        raise FtxError(
            "a recipe must be a YAML mapping with sections model, data, method, train, ...",
            where=source,
            fix="start from recipes/quickstart.yaml",
        )
    try:
        return Recipe.model_validate(raw)
    except ValidationError as exc:
        problems = [_describe(err, lines or {}) for err in exc.errors()]
        raise _combine(problems, source) from None


def _combine(problems: list[tuple[str, str]], source: str) -> FtxError:
    where, first = problems[0]
    if len(problems) == 1:
        return FtxError(first, where=f"{source}:{where}" if where else source)
    rest = "; ".join(f"{w}: {p}" for w, p in problems[1:])
    return FtxError(f"{first} (and {len(problems) - 1} more: {rest})", where=f"{source}:{where}")


def _describe(err: dict[str, Any], lines: dict[Loc, int]) -> tuple[str, str]:
    loc: Loc = tuple(err["loc"])
    # Unions and tagged members add their own entries to loc; keep the user's path.
    loc = tuple(
        p for p in loc if not (isinstance(p, str) and ("[" in p or p.startswith("function")))
    )
    key = _key_path(loc)
    line = _line_for(loc, lines)
    where = f"{line}: {key}" if line else key
    kind = err["type"]
    if kind == "extra_forbidden":
        known = _fields_at(loc[:-1])
        guess = difflib.get_close_matches(str(loc[-1]), known, n=1, cutoff=0.6)
        parent = _key_path(loc[:-1]) or "the top level"
        hint = f"did you mean '{guess[0]}'? " if guess else ""
        return where, (
            f"unknown key '{loc[-1]}' in {parent}; {hint}valid keys: {', '.join(sorted(known))}"
        )
    if kind == "missing":
        return where, "required key is missing; add it"
    message = err["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
    if "input" in err and kind not in ("value_error", "assertion_error") and loc:
        message = f"{message} (got {err['input']!r})"
    return where, message


def _key_path(loc: Loc) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _line_for(loc: Loc, lines: dict[Loc, int]) -> int | None:
    for n in range(len(loc), 0, -1):
        if loc[:n] in lines:
            return lines[loc[:n]]
    return None


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside an annotation such as ``list[X] | None``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType, list, tuple, typing.Annotated):
        for arg in typing.get_args(annotation):
            found = _model_in(arg)
            if found is not None:
                return found
    return None


def _fields_at(loc: Loc) -> list[str]:
    """Names of the keys that are valid at a key path."""
    model: type[BaseModel] | None = Recipe
    for part in loc:
        if isinstance(part, int) or model is None:
            continue
        field = model.model_fields.get(part)
        model = _model_in(field.annotation) if field else None
    return list(model.model_fields) if model else []


def _parse_yaml(text: str, source: Path) -> tuple[Any, dict[Loc, int]]:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else str(source)
        problem = getattr(exc, "problem", None) or str(exc)
        raise FtxError(
            f"not valid YAML: {problem}", where=where, fix="check indentation and quoting there"
        ) from None
    except RecursionError:
        raise FtxError(
            "the YAML is nested too deeply to read",
            where=str(source),
            fix="a recipe is a few levels deep: remove the runaway brackets or indentation",
        ) from None
    lines: dict[Loc, int] = {}
    if node is not None:
        _check_expansion(node, source)
        _index_lines(node, (), lines, source)
    return (data if data is not None else {}), lines


MAX_NODES = 20_000  # a recipe has a few hundred; YAML aliases can multiply them exponentially


def _check_expansion(root: yaml.Node, source: Path) -> None:
    """Refuse a document whose aliases expand to more than MAX_NODES nodes (an alias
    bomb), before anything walks the expanded structure."""
    seen, stack = 0, [root]
    while stack:
        node = stack.pop()
        seen += 1
        if seen > MAX_NODES:
            raise FtxError(
                f"the recipe expands to more than {MAX_NODES:,} YAML nodes (aliases"
                " repeating aliases)",
                where=str(source),
                fix="write the values out instead of nesting anchors and aliases",
            )
        if isinstance(node, yaml.MappingNode):
            stack.extend(v for pair in node.value for v in pair)
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)


def _index_lines(node: yaml.Node, loc: Loc, lines: dict[Loc, int], source: Path) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = key_node.value
            if key in seen:
                raise FtxError(
                    f"key '{_key_path((*loc, key))}' appears twice",
                    where=f"{source}:{key_node.start_mark.line + 1}",
                    fix="keep one of them",
                )
            seen.add(key)
            lines[(*loc, key)] = key_node.start_mark.line + 1
            _index_lines(value_node, (*loc, key), lines, source)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[(*loc, i)] = item.start_mark.line + 1
            _index_lines(item, (*loc, i), lines, source)


def _apply_override(raw: dict[str, Any], item: str) -> None:
    """Merge one ``a.b.c=value`` override into the raw recipe (value parsed as YAML)."""
    key, sep, value_text = item.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(parts):
        raise FtxError(
            f"override '{item}' is not of the form section.key=value",
            where="command line",
            fix="write it like train.learning_rate=1e-4",
        )
    try:
        value = yaml.safe_load(value_text) if value_text.strip() else ""
    except yaml.YAMLError:
        value = value_text
    node = raw
    for depth, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise FtxError(
                f"override '{item}': '{'.'.join(parts[: depth + 1])}' is not a section",
                where="command line",
                fix="override a key inside a section, like train.learning_rate=1e-4",
            )
        node = child
    node[parts[-1]] = value


def _absolutize(recipe: Recipe, base: Path) -> Recipe:
    """Resolve every relative path in the recipe against the recipe file's folder."""

    def resolve(p: str) -> str:
        path = Path(p).expanduser()
        return str(path if path.is_absolute() else (base / path).resolve())

    data = recipe.data
    dataset_dir = Path(resolve(data.dataset_dir))

    def fix_sets(sets: list[Any]) -> list[Any]:
        fixed = []
        for spec in sets:
            if spec.path is not None and not Path(spec.path).expanduser().is_absolute():
                # A file path is looked up in dataset_dir first, like LLaMA-Factory does.
                in_dir = dataset_dir / spec.path
                spec = spec.model_copy(
                    update={"path": str(in_dir) if in_dir.exists() else resolve(spec.path)}
                )
            fixed.append(spec)
        return fixed

    update: dict[str, Any] = {
        "model": recipe.model.model_copy(update={"path": resolve(recipe.model.path)}),
        "data": data.model_copy(
            update={"dataset_dir": str(dataset_dir), "datasets": fix_sets(data.datasets)}
        ),
        "output": recipe.output.model_copy(update={"dir": resolve(recipe.output.dir)}),
    }
    if recipe.evaluate is not None:
        update["evaluate"] = recipe.evaluate.model_copy(
            update={"datasets": fix_sets(recipe.evaluate.datasets)}
        )
    resume = recipe.train.resume
    if isinstance(resume, str) and resume != "auto":
        update["train"] = recipe.train.model_copy(update={"resume": resolve(resume)})
    return recipe.model_copy(update=update)

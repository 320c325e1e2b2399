"""Resolve recipe datasets to files: direct paths or dataset_info.json entries."""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from ftx.core.console import warn_once
from ftx.core.errors import FtxError
from ftx.core.fsutil import confined, inside, regular_file
from ftx.core.recipe.schema import DatasetSpec, Recipe


@dataclass(frozen=True)
class Source:
    """One dataset file with how to read it."""

    label: str
    files: tuple[Path, ...]
    format: str
    columns: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    num_samples: int | None = None
    ranking: bool = False


def resolve(spec: DatasetSpec, dataset_dir: Path, where: str) -> Source:
    """Turn a recipe dataset entry into a Source (reads dataset_info.json for names)."""
    if spec.path is not None:
        path = Path(spec.path)
        files = _files(path, f"{where} ({path})")
        return Source(
            label=path.name,
            files=files,
            format=spec.format or "alpaca",
            columns=dict(spec.columns),
            tags=dict(spec.tags),
            num_samples=spec.num_samples,
        )
    info_path = dataset_dir / "dataset_info.json"
    if not info_path.is_file():
        raise FtxError(
            f"dataset '{spec.name}' is a name, but there is no dataset_info.json in {dataset_dir}",
            where=where,
            fix="set data.dataset_dir to the folder holding dataset_info.json, or give a file path",
        )
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise FtxError(
            f"not valid JSON ({exc.msg})",
            where=f"{info_path}:{exc.lineno}",
            fix="fix the JSON there",
        ) from None
    except UnicodeDecodeError as exc:
        raise FtxError(
            f"not UTF-8 text (byte {exc.start})",
            where=str(info_path),
            fix="save dataset_info.json as UTF-8",
        ) from None
    if not isinstance(info, dict):
        raise FtxError(
            "dataset_info.json must be a JSON object of named entries",
            where=str(info_path),
            fix='write {"name": {"file_name": "data.json", ...}, ...}',
        )
    entry = info.get(spec.name)
    if not isinstance(entry, dict):
        names = ", ".join(sorted(info)) or "(none)"
        raise FtxError(
            f"dataset '{spec.name}' is not in {info_path}",
            where=where,
            fix=f"use one of: {names}",
        )
    file_name = entry.get("file_name")
    if not file_name:
        hub = [k for k in ("hf_hub_url", "ms_hub_url", "om_hub_url", "script_url") if k in entry]
        raise FtxError(
            f"dataset '{spec.name}' has no 'file_name'"
            + (f" (it points at {hub[0]}, and ftx never downloads)" if hub else ""),
            where=str(info_path),
            fix="download the data yourself and set file_name to the local file",
        )
    where_entry = f"{info_path}: {spec.name}"
    if not isinstance(file_name, str) or not isinstance(entry.get("folder", ""), str):
        raise FtxError(
            "file_name and folder must be strings",
            where=where_entry,
            fix="write the file's name relative to dataset_info.json's folder",
        )
    base = inside(dataset_dir, entry.get("folder", ""), f"{where_entry}.folder")
    path = inside(base, file_name, f"{where_entry}.file_name")
    files = _files(path, f"{where} ({spec.name}: {path})")
    entry_samples = _typed(entry, "num_samples", int, where_entry)
    if entry_samples is not None and entry_samples < 0:
        raise FtxError(
            f"num_samples is {entry_samples}",
            where=where_entry,
            fix="give a count of rows to take (0 or none: every row)",
        )
    if entry_samples == 0 and not spec.num_samples:
        warn_once(f"{where_entry}: num_samples 0 takes every row (give a count to take fewer)")
    return Source(
        label=spec.name or path.name,
        files=files,
        format=spec.format or _formatting(entry, where_entry),
        columns={**_mapping(entry, "columns", where_entry), **spec.columns},
        tags={**_mapping(entry, "tags", where_entry), **spec.tags},
        num_samples=spec.num_samples or entry_samples,
        ranking=bool(_typed(entry, "ranking", bool, where_entry)),
    )


def _files(path: Path, where: str) -> tuple[Path, ...]:
    """A dataset's files: the file itself, or every file of a folder."""
    if path.is_dir():
        return tuple(sorted(confined(p, path, where) for p in path.iterdir() if p.is_file()))
    regular_file(path, "dataset file")
    if not path.is_file():
        raise FtxError(
            "dataset file not found", where=where, fix="check the dataset's path in the recipe"
        )
    return (path,)


def _formatting(entry: dict, where: str) -> str:
    """The entry's row format (LLaMA-Factory's default: alpaca)."""
    from ftx.core.recipe.schema import DATA_FORMATS

    value = _typed(entry, "formatting", str, where) or "alpaca"
    if value not in DATA_FORMATS:
        raise FtxError(
            f"unknown formatting {value!r}",
            where=f"{where}.formatting",
            fix=f"use one of {', '.join(DATA_FORMATS)}",
        )
    return str(value)


def _typed(entry: dict, key: str, kind: type, where: str) -> object:
    """An optional entry field of type ``kind`` (None when absent)."""
    value = entry.get(key)
    if value is not None and (not isinstance(value, kind) or (kind is int and value is True)):
        raise FtxError(
            f"'{key}' must be a {kind.__name__}, not {value!r}",
            where=f"{where}.{key}",
            fix="see LLaMA-Factory's dataset_info.json format",
        )
    return value


def _mapping(entry: dict, key: str, where: str) -> dict[str, str]:
    """An optional name -> name mapping (columns, tags)."""
    value = entry.get(key) or {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise FtxError(
            f"'{key}' must map names to names, not {value!r}",
            where=f"{where}.{key}",
            fix='write it like {"prompt": "instruction", "response": "output"}',
        )
    return value


def input_paths(recipe: Recipe, recipe_file: Path) -> list[Path]:
    """Everything a run of ``recipe`` reads: no output may be, hold or lie inside these."""
    paths = [recipe_file, Path(recipe.model.path)]
    dataset_dir = Path(recipe.data.dataset_dir)
    specs = [*recipe.data.datasets, *(recipe.evaluate.datasets if recipe.evaluate else [])]
    for spec in specs:
        if spec.path is not None:
            paths.append(Path(spec.path))
            continue
        paths.append(dataset_dir / "dataset_info.json")
        with contextlib.suppress(FtxError):  # a bad entry is reported when the data is read
            paths.extend(resolve(spec, dataset_dir, "data.datasets").files)
    return paths

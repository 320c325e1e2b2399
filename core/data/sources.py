"""Resolve recipe datasets to files: direct paths or dataset_info.json entries."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ftx.core.errors import FtxError
from ftx.core.recipe.schema import DatasetSpec


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
        files = (
            tuple(sorted(p for p in path.iterdir() if p.is_file())) if path.is_dir() else (path,)
        )
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
        raise FtxError(f"not valid JSON ({exc.msg})", where=f"{info_path}:{exc.lineno}") from None
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
    base = dataset_dir / entry.get("folder", "")
    path = base / file_name
    files = tuple(sorted(p for p in path.iterdir() if p.is_file())) if path.is_dir() else (path,)
    return Source(
        label=spec.name or path.name,
        files=files,
        format=spec.format or entry.get("formatting", "alpaca"),
        columns={**entry.get("columns", {}), **spec.columns},
        tags={**entry.get("tags", {}), **spec.tags},
        num_samples=spec.num_samples or entry.get("num_samples"),
        ranking=bool(entry.get("ranking", False)),
    )

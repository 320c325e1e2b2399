"""Read dataset files row by row, keeping the line number of each row."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ftx.core.errors import FtxError

SUFFIXES = (".json", ".jsonl", ".csv", ".parquet", ".txt")


def read_rows(path: Path) -> Iterator[tuple[int, Any]]:
    """Yield ``(line_or_row_number, row)`` from a json, jsonl, csv, parquet or txt file."""
    if not path.is_file():
        raise FtxError(
            "dataset file not found", where=str(path), fix="check the path in data.datasets"
        )
    suffix = path.suffix.lower()
    if suffix == ".jsonl" or (suffix == ".json" and _looks_like_jsonl(path)):
        yield from _jsonl(path)
    elif suffix == ".json":
        yield from _json_array(path)
    elif suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as handle:
            for number, row in enumerate(csv.DictReader(handle), start=2):
                yield number, row
    elif suffix == ".parquet":
        yield from _parquet(path)
    elif suffix == ".txt":
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if line.strip():
                    yield number, {"text": line.rstrip("\n")}
    else:
        raise FtxError(
            f"unsupported dataset file type '{suffix}'",
            where=str(path),
            fix=f"use one of {', '.join(SUFFIXES)}",
        )


def _looks_like_jsonl(path: Path) -> bool:
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                return line.lstrip().startswith("{")
    return False


def _jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as exc:
                raise FtxError(
                    f"line {number} is not valid JSON ({exc.msg} at column {exc.colno})",
                    where=f"{path}:{number}",
                    fix="fix or remove that line",
                ) from None


def _json_array(path: Path) -> Iterator[tuple[int, Any]]:
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise FtxError(
            f"not valid JSON ({exc.msg} at column {exc.colno})",
            where=f"{path}:{exc.lineno}",
            fix="fix the JSON there",
        ) from None
    if not isinstance(data, list):
        raise FtxError(
            "a .json dataset must hold a list of rows (or one JSON object per line)",
            where=str(path),
            fix="wrap the rows in [ ... ] or save them as .jsonl",
        )
    # Line numbers of the top-level objects, so errors point into the file.
    starts = _object_lines(text)
    for index, row in enumerate(data):
        yield (starts[index] if index < len(starts) else index + 1), row


def _object_lines(text: str) -> list[int]:
    """1-based line of each top-level element of a JSON array."""
    lines, depth, line, in_str, escape = [], 0, 1, False, False
    for ch in text:
        if ch == "\n":
            line += 1
        if in_str:
            if escape:
                escape = False
            elif ch == "\\":
                escape = True
            elif ch == '"':
                in_str = False
            continue
        if ch == '"':
            in_str = True
            if depth == 1:
                lines.append(line)
        elif ch in "[{":
            if depth == 1:
                lines.append(line)
            depth += 1
        elif ch in "]}":
            depth -= 1
    return lines


def _parquet(path: Path) -> Iterator[tuple[int, Any]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise FtxError(
            "reading parquet needs pyarrow",
            where=str(path),
            fix="pip install pyarrow (or convert the file to jsonl)",
        ) from None
    yield from enumerate(pq.read_table(path).to_pylist(), start=1)

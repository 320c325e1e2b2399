"""Read dataset files row by row, streaming, keeping the line number of each row.

Memory stays bounded whatever the file holds: no reader keeps more than one row
(at most ``max_row_bytes``) plus a read buffer. A row that is larger than that,
not UTF-8, or not valid JSON is yielded as a :class:`BadRow`, which the caller
reports or skips (``data.on_error``) like any other bad row; a file that cannot
be read at all is an FtxError.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from ftx.core.errors import FtxError
from ftx.core.fsutil import regular_file

SUFFIXES = (".json", ".jsonl", ".csv", ".parquet", ".txt")
CHUNK = 1 << 20
_SURROGATE = re.compile("[\udc80-\udcff]")  # bytes that were not UTF-8 (surrogateescape)
_ANY_SURROGATE = re.compile("[\ud800-\udfff]")  # half of a pair: no character at all


@dataclass(frozen=True)
class BadRow:
    """A row that could not be read; ``reason`` says why."""

    reason: str


BOM = b"\xef\xbb\xbf"


def read_rows(
    path: Path, max_row_bytes: int = 2 << 20, digests: dict[str, str] | None = None
) -> Iterator[tuple[int, Any]]:
    """Yield ``(line_or_row_number, row or BadRow)`` from a json, jsonl, csv, parquet or
    txt file.

    With ``digests``, the SHA-256 of the bytes the rows came from is stored under the
    file's name once the caller is done with it (the rest of the file is hashed when the
    caller stops early), so a cache can be keyed by what was read, not by what was there
    before."""
    regular_file(path, "dataset file")
    if not path.is_file():
        raise FtxError(
            "dataset file not found", where=str(path), fix="check the path in data.datasets"
        )
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise FtxError(
            f"unsupported dataset file type '{suffix}'",
            where=str(path),
            fix=f"use one of {', '.join(SUFFIXES)}",
        )
    if suffix == ".parquet":  # read in column chunks, not in order: hashed once it is read
        yield from _parquet(path, max_row_bytes)
        if digests is not None:
            digests[str(path)] = file_sha256(path)
        return
    with path.open("rb", buffering=0) as raw:
        hashing = HashingReader(raw)
        handle = io.BufferedReader(hashing, CHUNK)
        try:
            yield from _text_rows(handle, suffix, path, max_row_bytes)
        except GeneratorExit:  # the caller took what it needed (num_samples)
            if digests is not None:
                digests[str(path)] = hashing.finish()
            raise
        if digests is not None:
            digests[str(path)] = hashing.finish()


def _text_rows(
    handle: BinaryIO, suffix: str, path: Path, max_row_bytes: int
) -> Iterator[tuple[int, Any]]:
    if handle.read(len(BOM)) != BOM:  # a UTF-8 byte-order mark (Windows editors) is skipped
        handle.seek(0)
    if suffix == ".jsonl" or (suffix == ".json" and _first_char(handle) == b"{"):
        yield from _jsonl(handle, max_row_bytes)
    elif suffix == ".json":
        yield from _json_array(handle, path, max_row_bytes)
    elif suffix == ".csv":
        yield from _csv(handle, max_row_bytes)
    else:
        for number, line in _lines(handle, max_row_bytes):
            if isinstance(line, BadRow) or line.strip():
                yield number, line if isinstance(line, BadRow) else {"text": line}


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


class HashingReader(io.RawIOBase):
    """A raw file that hashes its bytes as they are read from the disk, in file order.

    The readers look back only at the file's start (a byte-order mark, the first
    character of a .json file): bytes read again there are compared with what was hashed,
    and a difference makes :meth:`finish` return a digest no file has. The underlying
    file is left open for :meth:`finish` and closed by its owner."""

    HEAD = 4 * CHUNK  # how much of the start is kept to compare a second read with

    def __init__(self, raw: BinaryIO):
        self.raw = raw
        self.sha = hashlib.sha256()
        self.position = 0
        self.hashed = 0  # bytes [0, hashed) are in the digest
        self.head = bytearray()
        self.reread_differs = False

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        count = self.raw.readinto(buffer) or 0
        start, end = self.position, self.position + count
        view = memoryview(buffer)[:count]
        if start < self.hashed:  # a second read of the start
            seen = self.head[start : min(end, self.hashed)]
            self.reread_differs |= bytes(view[: len(seen)]) != seen
        if end > self.hashed and start <= self.hashed:
            new = view[self.hashed - start :]
            self.sha.update(new)
            if len(self.head) < self.HEAD:
                self.head += new[: self.HEAD - len(self.head)]
            self.hashed = end
        self.position = end
        return count

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self.position = self.raw.seek(offset, whence)
        return self.position

    def tell(self) -> int:
        return self.position

    def finish(self) -> str:
        """The digest of the whole file: what was read, then whatever was not."""
        self.raw.seek(self.hashed)
        for block in iter(lambda: self.raw.read(CHUNK), b""):
            self.sha.update(block)
            self.hashed += len(block)
        return "changed-while-read" if self.reread_differs else self.sha.hexdigest()


def _first_char(handle: BinaryIO) -> bytes:
    """The first non-blank byte (the file position is restored)."""
    start = handle.tell()
    while True:
        chunk = handle.read(CHUNK)
        stripped = chunk.lstrip()
        if stripped or not chunk:
            handle.seek(start)
            return stripped[:1]


def _too_large(size: int, limit: int) -> BadRow:
    return BadRow(
        f"row of more than {limit:,} bytes (found at least {size:,}); raise data.max_row_bytes"
        " (tokenising costs about 400 bytes of memory per byte of text)"
        " if it is meant to be that long"
    )


def _lines(handle: BinaryIO, limit: int) -> Iterator[tuple[int, str | BadRow]]:
    """Lines as text (without the newline), or BadRow for over-long or non-UTF-8 lines;
    an over-long line is skipped without ever being held in memory."""
    number = 0
    while True:
        raw = handle.readline(limit + 1)
        if not raw:
            return
        number += 1
        if len(raw) > limit and not raw.endswith(b"\n"):
            size = len(raw)
            while raw and not raw.endswith(b"\n"):  # drain the rest of the line
                raw = handle.readline(CHUNK)
                size += len(raw)
            yield number, _too_large(size, limit)
            continue
        try:
            yield number, raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError as exc:
            yield number, BadRow(f"not UTF-8 text (byte {exc.start} of the line)")


def _jsonl(handle: BinaryIO, limit: int) -> Iterator[tuple[int, Any]]:
    for number, line in _lines(handle, limit):
        if isinstance(line, BadRow):
            yield number, line
            continue
        if line.strip():
            yield number, _parse_json(line)


def _parse_json(text: str) -> Any:
    """One row's JSON, or the BadRow that says why it is not."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        return BadRow(f"not valid JSON ({exc.msg} at column {exc.colno})")
    except RecursionError:
        return BadRow("JSON nested too deeply")
    except ValueError as exc:  # an integer of thousands of digits (Python's own limit)
        return BadRow(f"a number too long to read ({str(exc).split(':')[0]})")
    if "\\u" in text and _lone_surrogate(value):
        return BadRow("a lone surrogate escape (\\udXXX without its pair): not valid text")
    return value


def _lone_surrogate(value: Any) -> bool:
    """Whether a parsed row holds a string that is no valid Unicode text."""
    if isinstance(value, str):
        return _ANY_SURROGATE.search(value) is not None
    if isinstance(value, dict):
        return any(_lone_surrogate(k) or _lone_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_lone_surrogate(v) for v in value)
    return False


# The rest of a string, closing quote included (unrolled: one step per escape, not per character).
_STRING_REST = re.compile(r'[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_PLAIN = re.compile(r'[^"\[\]{},]*')  # up to the next character that matters outside strings


class _ArrayReader:
    """The elements of a top-level JSON array, found by scanning (strings, brackets) and
    decoded one at a time; an element larger than ``limit`` is skipped while scanning,
    so it is never held in memory."""

    def __init__(self, handle: BinaryIO, path: Path, limit: int):
        self.text = io.TextIOWrapper(handle, encoding="utf-8", errors="surrogateescape")
        self.path, self.limit = path, limit
        self.buffer, self.pos, self.line, self.eof = "", 0, 1, False

    def _more(self, keep_from: int) -> int:
        """Read another chunk, dropping the buffer before ``keep_from``; return the shift."""
        if self.eof:
            raise FtxError(
                "the JSON array ends in the middle of a row",
                where=f"{self.path}:{self.line}",
                fix="the file is cut short: restore its end",
            )
        chunk = self.text.read(CHUNK)
        self.eof = not chunk
        self.buffer = self.buffer[keep_from:] + chunk
        self.pos -= keep_from
        return keep_from

    def _skip_space(self) -> str:
        """Skip white space; the next character ('' at the end of the file)."""
        while True:
            end = len(self.buffer) - len(self.buffer[self.pos :].lstrip())
            self.line += self.buffer.count("\n", self.pos, end)
            self.pos = end
            if self.pos < len(self.buffer):
                return self.buffer[self.pos]
            if self.eof:
                return ""
            self._more(self.pos)

    def rows(self) -> Iterator[tuple[int, Any]]:
        if self._skip_space() != "[":
            raise FtxError(
                "a .json dataset must hold a list of rows (or one JSON object per line)",
                where=str(self.path),
                fix="wrap the rows in [ ... ] or save them as .jsonl",
            )
        self.pos += 1
        if self._skip_space() == "]":
            self.pos += 1
            if self._skip_space():
                raise FtxError(
                    "text after the list of rows",
                    where=f"{self.path}:{self.line}",
                    fix="remove what follows the closing ']' (one list per .json file)",
                )
            return
        while True:
            start_line = self.line
            text, size = self._element()
            if text is None:
                yield start_line, _too_large(size, self.limit)
            elif _SURROGATE.search(text):
                yield start_line, BadRow("not UTF-8 text")
            else:
                yield start_line, _parse_json(text)
            following = self._skip_space()
            if following == "]":
                self.pos += 1
                after = self._skip_space()
                if after:
                    raise FtxError(
                        f"text after the list of rows, starting {after!r}",
                        where=f"{self.path}:{self.line}",
                        fix="remove what follows the closing ']' (one list per .json file)",
                    )
                return
            if following != ",":
                raise FtxError(
                    f"expected ',' or ']' after a row, found {following or 'the end'!r}",
                    where=f"{self.path}:{self.line}",
                    fix="fix the JSON there",
                )
            self.pos += 1
            self._skip_space()

    def _element(self) -> tuple[str | None, int]:
        """The next element's text (None when over the limit) and its size in characters."""
        start = scan = self.pos
        depth, dropped, in_string = 0, 0, False
        while True:
            if dropped or scan - start > self.limit:
                dropped += scan - start  # too large: forget what was scanned so far
                self.line += self.buffer.count("\n", start, scan)
                start = scan
            if scan >= len(self.buffer):
                shift = self._more(start)
                start, scan = start - shift, scan - shift
                continue
            if in_string:
                found = _STRING_REST.match(self.buffer, scan)
                if found is None:  # the string goes on in the next chunk
                    end = back = len(self.buffer)
                    while back > scan and self.buffer[back - 1] == "\\":
                        back -= 1
                    scan = end - (end - back) % 2  # never split an escape pair
                    shift = self._more(start)
                    start, scan = start - shift, scan - shift
                    continue
                scan, in_string = found.end(), False
                if depth == 0:
                    break
                continue
            char = self.buffer[scan]
            if char == '"':
                scan, in_string = scan + 1, True
            elif char in "[{":
                depth, scan = depth + 1, scan + 1
            elif char in "]}" and depth > 0:
                depth, scan = depth - 1, scan + 1
                if depth == 0:
                    break
            elif char in ",]" and depth == 0:
                break
            else:  # numbers, literals, ':' and ',' inside containers, white space, junk
                plain = _PLAIN.match(self.buffer, scan + 1)
                assert plain is not None
                scan = plain.end()
                if scan == len(self.buffer) and self.eof:
                    break
        self.line += self.buffer.count("\n", start, scan)
        self.pos = scan
        if dropped:
            return None, dropped + scan - start
        return self.buffer[start:scan], scan - start


def _json_array(handle: BinaryIO, path: Path, limit: int) -> Iterator[tuple[int, Any]]:
    yield from _ArrayReader(handle, path, limit).rows()


_TOO_LONG = "\x00ftx: line over the limit\x00"  # what an over-long line reaches csv as


def _bounded_lines(text: io.TextIOWrapper, limit: int) -> Iterator[str]:
    """The file's lines as csv reads them, none held beyond ``limit`` characters: an
    over-long line is read past in pieces and handed on as a marker row."""
    while True:
        line = text.readline(limit + 1)
        if not line:
            return
        if len(line) > limit and not line.endswith("\n"):
            while line and not line.endswith("\n"):
                line = text.readline(CHUNK)
            yield _TOO_LONG + "\n"
            continue
        yield line


def _csv(handle: BinaryIO, limit: int) -> Iterator[tuple[int, Any]]:
    csv.field_size_limit(limit)
    text = io.TextIOWrapper(handle, encoding="utf-8", errors="surrogateescape", newline="")
    reader = csv.DictReader(_bounded_lines(text, limit))
    number = 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            number = reader.line_num
            yield number, BadRow(f"not a valid CSV row ({exc})")
            continue
        number = reader.line_num
        values = [v for v in row.values() if isinstance(v, str)]
        if any(_TOO_LONG in v for v in [*values, *(k for k in row if isinstance(k, str))]):
            yield number, _too_large(limit + 1, limit)
            continue
        if any(_SURROGATE.search(v) for v in values) or any(
            _SURROGATE.search(k) for k in row if isinstance(k, str)
        ):
            yield number, BadRow("not UTF-8 text")
        elif sum(len(v) for v in values) > limit:
            yield number, _too_large(sum(len(v) for v in values), limit)
        else:
            yield number, row


def _parquet(path: Path, limit: int) -> Iterator[tuple[int, Any]]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise FtxError(
            "reading parquet needs pyarrow",
            where=str(path),
            fix="pip install pyarrow (or convert the file to jsonl)",
        ) from None
    try:
        table = pq.ParquetFile(path)
        number = 0
        for batch in table.iter_batches(batch_size=256):
            for row in batch.to_pylist():
                number += 1
                size = sum(len(v) for v in row.values() if isinstance(v, str | bytes))
                yield number, _too_large(size, limit) if size > limit else row
    except (pa.ArrowException, OSError) as exc:
        raise FtxError(
            f"not a readable parquet file ({exc})",
            where=str(path),
            fix="check the file, or convert it to jsonl",
        ) from None

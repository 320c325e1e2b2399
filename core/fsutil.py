"""Filesystem rules every command that writes follows.

- A destination is claimed first (:func:`claim_destination`): never one that is, holds or
  lies inside an input, whatever the flags; a non-empty one only with ``--force``; and
  by one ftx process at a time (a claim file beside it, created exclusively; a killed
  writer's claim and hidden partial files are cleared by the next writer).
- Outputs are staged beside the destination and renamed into place
  (:func:`staged_dir`, :func:`atomic_write_text`): the old output survives any failure,
  and no half-written output is ever left.
- Outputs get the permissions the user's umask gives (temporary files start private).
- A file an input names (an index's shard, a dataset_info.json entry) must stay inside
  the input's folder (:func:`inside`).
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import json
import os
import shutil
import socket
import stat
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from ftx.core.errors import FtxError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _publish(path: Path, directory: bool) -> None:
    """Give a staged file or folder the mode a plain mkdir/open would have had (libraries
    and temporary files often create 0600 files)."""
    executable = not directory and bool(path.stat().st_mode & 0o111)
    os.chmod(path, (0o777 if directory or executable else 0o666) & ~_umask())


def publish_tree(root: Path) -> None:
    """Give a staged folder and everything in it the modes the user's umask gives."""
    _publish(root, directory=True)
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            _publish(Path(folder) / name, directory=True)
        for name in files:
            path = Path(folder) / name
            if path.stat().st_nlink == 1:  # a hard link's mode belongs to its other names too
                _publish(path, directory=False)


def atomic_write_text(path: Path, text: str) -> None:
    """Write a text file through a temporary sibling and rename it into place."""
    with staged_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (indented, keys in insertion order)."""
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


@contextlib.contextmanager
def staged_file(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write to; rename it into place on success."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        _publish(Path(tmp), directory=False)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


@contextlib.contextmanager
def staged_dir(final: Path, *, replace: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``final``; rename it to ``final`` on success.

    On any error the temporary folder is removed, so ``final`` is either the complete
    new result or exactly what it was. A replaced ``final`` is moved aside first and
    deleted only once the new one is in place.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent))
    old: Path | None = None
    try:
        yield tmp
        publish_tree(tmp)
        if final.exists() or final.is_symlink():
            if not replace:
                raise FileExistsError(final)
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".old", dir=final.parent))
            os.replace(final, old / "previous")
        os.replace(tmp, final)
    except BaseException:
        if old is not None and not (final.exists() or final.is_symlink()):
            os.replace(old / "previous", final)  # put the old output back
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))


def _within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def claim_destination(dst: Path, *, force: bool, inputs: Iterable[Path], also: str = "") -> None:
    """Check that ``dst`` may be written and claim it: an FtxError (exit 2) when it is,
    holds or lies inside any of ``inputs`` (whatever the flags), is a file, is a non-empty
    folder and ``force`` is not set, or another ftx process is writing it. Nothing of
    ``dst`` is written or deleted here; its claim file is created beside it."""
    target = _real(dst)
    for given in inputs:
        source = _real(given)
        if _within(source, target) or (source.is_dir() and _within(target, source)):
            relation = (
                "is"
                if source == target
                else ("holds" if _within(source, target) else "lies inside")
            )
            raise FtxError(
                f"the destination {relation} an input ({given}); writing there could destroy it",
                where=str(dst),
                fix="choose a destination outside every input folder (no flag overrides this)",
            )
    if dst.exists() and not dst.is_dir():
        raise FtxError(
            "the destination is a file, not a folder",
            where=str(dst),
            fix="name a new or existing folder",
        )
    blocking = next((p for p in Path(os.path.abspath(dst)).parents if p.is_file()), None)
    if blocking is not None:
        raise FtxError(
            f"{blocking} is a file, so there can be no folder inside it",
            where=str(dst),
            fix="name a destination whose parent folders are folders",
        )
    if dst.is_dir() and any(dst.iterdir()) and not force:
        raise FtxError(
            "the destination exists and is not empty",
            where=str(dst),
            fix="pass --force to replace it (the old contents are removed only once the new"
            f" output is complete), {also}or choose another folder",
        )
    _claim(dst)


_CLAIMS: dict[Path, dict[str, Any]] = {}  # this process's claims, released at exit


def _claim_file(dst: Path) -> Path:
    return dst.parent / f".{dst.name}.claim"


def _start_time(pid: int) -> str | None:
    """A process's start (clock ticks since boot): tells a reused pid from the writer."""
    with contextlib.suppress(OSError, IndexError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    return None


def _alive(holder: dict[str, Any]) -> bool:
    """Whether the claim's writer still runs (another host's: assumed so)."""
    if holder.get("host") != socket.gethostname():
        return True
    pid = holder.get("pid")
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    started = holder.get("started_ticks")
    return started is None or started == _start_time(pid)


def _claim(dst: Path) -> None:
    """Take ``dst`` for this process, or fail naming the process that holds it. A claim
    whose writer is gone (killed) is removed with the hidden partial files it left."""
    dst = Path(os.path.abspath(dst))
    if dst in _CLAIMS:
        return
    claim = _claim_file(dst)
    record = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started_ticks": _start_time(os.getpid()),
        "since": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": " ".join(["ftx", *sys.argv[1:]])[:500],
    }
    for _ in range(3):
        try:
            dst.parent.mkdir(parents=True, exist_ok=True)
            _publish_claim(claim, record)
        except FileExistsError:
            try:
                holder = json.loads(claim.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                holder = {}
            if isinstance(holder, dict) and holder and _alive(holder):
                raise FtxError(
                    f"another ftx is writing there: pid {holder.get('pid')} on"
                    f" {holder.get('host')} since {holder.get('since')}"
                    f" (`{holder.get('command')}`)",
                    where=str(dst),
                    fix=f"wait for it to end, or choose another destination (if that process"
                    f" is gone, delete {claim})",
                ) from None
            _clear_leftovers(dst, claim)
            continue
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC):
                exc.filename = exc.filename or str(dst)
                raise  # the CLI names these with their fix
            raise FtxError(
                f"cannot create files in {dst.parent} ({exc.strerror})",
                where=str(dst),
                fix="choose a destination in a writable folder of a real file system",
            ) from None
        _clear_dead_asides(claim)
        _CLAIMS[dst] = record
        if len(_CLAIMS) == 1:
            atexit.register(release_claims)
        return
    raise FtxError(
        "the destination's claim keeps changing under ftx",
        where=str(dst),
        fix="make sure no other program writes there, then run the command again",
    )


def _publish_claim(claim: Path, record: dict[str, Any]) -> None:
    """Create ``claim`` holding ``record`` in one step, or raise FileExistsError: the
    record is written aside and hard-linked into place, so that another writer never
    reads a claim still empty (and takes it for a dead writer's). Where the file system
    has no hard links, an exclusive create and a write."""
    aside = claim.with_name(f"{claim.name}-{os.getpid()}")
    aside.write_text(json.dumps(record), encoding="utf-8")
    try:
        os.link(aside, claim)
        return
    except FileExistsError:
        raise
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise
    finally:
        aside.unlink(missing_ok=True)
    fd = os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(record, handle)


def _clear_dead_asides(claim: Path) -> None:
    """Records that writers killed between writing them aside and linking them into
    place (:func:`_publish_claim`) left beside the claim."""
    for aside in claim.parent.glob(f"{claim.name}-*"):
        try:
            holder = json.loads(aside.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue  # being written this moment, or not ftx's
        if isinstance(holder, dict) and holder.get("pid") and not _alive(holder):
            with contextlib.suppress(FileNotFoundError):
                aside.unlink()


def _clear_leftovers(dst: Path, claim: Path) -> None:
    """A killed writer's claim and the hidden files it staged beside ``dst``."""
    with contextlib.suppress(FileNotFoundError):
        claim.unlink()
    for leftover in dst.parent.glob(f".{dst.name}.*"):
        if leftover.suffix in (".partial", ".old", ".tmp"):
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    leftover.unlink()


def destination_of(path: str | os.PathLike[str] | None) -> Path | None:
    """The destination this process claimed that ``path`` is written for (the
    destination itself, a file in it, or its hidden staging beside it); with no path,
    the one it claimed last (the command's own, claimed after anything before it)."""
    if path is None:
        return list(_CLAIMS)[-1] if _CLAIMS else None
    found = Path(os.path.abspath(path))
    for dst in _CLAIMS:
        for part in (found, *found.parents):
            if part == dst or (part.parent == dst.parent and part.name.startswith(f".{dst.name}.")):
                return dst
    return None


def release_claims(keep: Iterable[Path] = ()) -> None:
    """Give back the destinations this process claimed, except ``keep``."""
    kept = set(keep)
    for dst, record in list(_CLAIMS.items()):
        if dst in kept:
            continue
        claim = _claim_file(dst)
        with contextlib.suppress(OSError, ValueError):
            if json.loads(claim.read_text(encoding="utf-8")).get("pid") == record["pid"]:
                claim.unlink()
        _CLAIMS.pop(dst, None)


@contextlib.contextmanager
def claims_released() -> Iterator[None]:
    """What is claimed inside the block is given back at its end (a CLI command's)."""
    before = set(_CLAIMS)
    try:
        yield
    finally:
        release_claims(keep=before)


def read_json_object(path: Path, what: str, fix: str) -> dict[str, Any]:
    """A JSON object from ``path`` (a record ftx wrote), or the usual paragraph when the
    file is not one (cut short, edited by hand, another program's)."""
    regular_file(path, what)
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise FtxError(f"the {what} cannot be read ({exc})", where=str(path), fix=fix) from None
    if not isinstance(value, dict):
        raise FtxError(f"the {what} is not a JSON object", where=str(path), fix=fix)
    return value


def not_regular(path: Path) -> str | None:
    """What ``path`` is when it exists but is no regular file (reading a FIFO blocks
    forever, a device never ends), else None."""
    try:
        mode = path.stat().st_mode
    except (OSError, ValueError):  # ValueError: a NUL in the name (it exists nowhere)
        return None
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a device"


def regular_file(path: Path, what: str) -> Path:
    """``path``, refused when it is a FIFO, socket or device instead of a file, or a
    symbolic link to nothing (a path that does not exist is left to the caller)."""
    if path.is_symlink() and not path.exists():
        raise FtxError(
            f"the {what} is a link to {os.readlink(path)}, which does not exist",
            where=str(path),
            fix=f"point the link at the {what}, or replace it with the file",
        )
    kind = not_regular(path)
    if kind is not None:
        raise FtxError(
            f"the {what} is {kind}, not a regular file; ftx reads files only",
            where=str(path),
            fix=f"point at the {what} itself (copy the data into a file first)",
        )
    return path


def inside(folder: Path, name: str, where: str) -> Path:
    """``folder / name``, refusing a name that leads out of ``folder``: absolute, ``..``,
    or through a symbolic link (links are resolved before the check)."""
    if "\x00" in name or any("\ud800" <= c <= "\udfff" for c in name):
        raise FtxError(
            f"{name!r} is no file name (a NUL character or half a surrogate pair)",
            where=where,
            fix="write the file's name as plain text",
        )
    candidate = Path(os.path.normpath(folder / name))
    if Path(name).is_absolute() or not _within(candidate, Path(os.path.normpath(folder))):
        raise FtxError(
            f"'{name}' points outside {folder}",
            where=where,
            fix=f"name a file inside {folder} (relative, without '..'), or copy it there",
        )
    confined(candidate, folder, where)
    return candidate


def confined(path: Path, folder: Path, where: str) -> Path:
    """``path``, refused when following its links leads out of ``folder``. A folder in a
    Hugging Face cache snapshot (``<repo>/snapshots/<revision>``) may link into that
    repository's ``blobs``: that is how the cache stores every file."""
    real, root = _real(path), _real(folder)
    allowed = [root]
    for parent in (folder.absolute(), *folder.absolute().parents):
        if parent.parent.name == "snapshots":
            allowed.append(_real(parent.parent.parent / "blobs"))
            break
    if not any(_within(real, place) for place in allowed):
        raise FtxError(
            f"{path} is a link to {real}, outside {folder}",
            where=where,
            fix=f"copy the file into {folder} (ftx does not follow links out of an input's folder)",
        )
    return path

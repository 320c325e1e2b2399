"""Detect a checkpoint folder's format: hf, paddle or mindspore."""

from __future__ import annotations

from pathlib import Path

from ftx.core.errors import FtxError

FORMATS = ("hf", "paddle", "mindspore")


def safetensors_metadata(path: Path) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file (reads and checks only its header)."""
    from ftx.core.convert.safetensors_stream import SafetensorsReader

    return SafetensorsReader(path).metadata


def detect_format(folder: Path) -> str:
    """hf, paddle or mindspore, from the files in ``folder`` (weights, else config)."""
    if not folder.is_dir():
        raise FtxError("model folder not found", where=str(folder), fix="check model.path")
    if any(folder.glob("*.ckpt")) or any(folder.glob("rank_*/*.ckpt")):
        return "mindspore"
    if any(folder.glob("*.pdparams")):
        return "paddle"
    shards = sorted(folder.glob("*.safetensors"))
    if shards:
        kind = safetensors_metadata(shards[0]).get("format", "pt")
        return {"np": "paddle", "ms": "mindspore"}.get(kind, "hf")
    if any(folder.glob("pytorch_model*.bin")) or (folder / "config.json").exists():
        return "hf"
    raise FtxError(
        "cannot tell the checkpoint format: no config.json, safetensors, .pdparams or .ckpt",
        where=str(folder),
        fix="point model.path at a model folder, or set model.format",
    )

"""`ftx convert`: rename (and where needed transpose) every tensor, one at a time.

Source shards are memory-mapped and each output tensor is produced just before it
is written, so peak memory is about one tensor. The output is assembled in a
temporary folder beside the destination and renamed into place when complete.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ftx.core.convert.adapters import adapter_format, convert_adapter
from ftx.core.convert.bytecopy import Tensor, read_ranges
from ftx.core.convert.configs import convert_config, load_config
from ftx.core.convert.layout import METADATA, copy_side_files, transpose_2d
from ftx.core.convert.names import NameMap
from ftx.core.convert.safetensors_stream import (
    DTYPES,
    TensorInfo,
    WeightFile,
    write_safetensors,
)
from ftx.core.convert.sources import TRAINING_STATE, open_weights, weight_files
from ftx.core.errors import FtxError
from ftx.core.fsutil import claim_destination, staged_dir
from ftx.core.models.architectures import ARCHITECTURES, parameter_shapes
from ftx.core.models.formats import detect_format


@dataclass(frozen=True)
class Planned:
    source: WeightFile
    source_name: str
    target: TensorInfo
    transpose: bool


def plan_tensors(
    src: Path, source: str, target: str, config: dict, *, trust_pickle: bool = False
) -> list[list[Planned]]:
    """Per source shard, the output tensors in order (names mapped, shapes checked against
    config.json; optimizer state saved beside the weights is left out)."""
    model_type = config["model_type"]
    names = NameMap(model_type, source, target)
    to_hf = NameMap(model_type, source, "hf")
    expected = parameter_shapes(ARCHITECTURES[model_type], config)
    implied = set(expected)
    planned = []
    for reader in weight_files(src, config, trust_pickle=trust_pickle):
        group = []
        for name in reader.names:
            if TRAINING_STATE.match(name):
                continue
            mapped = names.map(name)
            if mapped is None:
                raise FtxError(
                    f"tensor {name} has no {target} name in the {model_type} table",
                    where=str(reader.path),
                    fix="check that the checkpoint matches config.json's model_type",
                )
            info = reader.info(name)
            hf = to_hf.map(name)
            hf_shape = info.shape[::-1] if hf.transpose else info.shape
            if hf.name not in expected:
                seen = hf.name in implied
                raise FtxError(
                    f"tensor {name} is {'there twice' if seen else 'not part of the model'}"
                    f" config.json describes ({config.get('num_hidden_layers')} layers,"
                    f" {model_type})",
                    where=str(reader.path),
                    fix="pair the weights with the config.json they were saved with",
                )
            want = expected.pop(hf.name)
            if tuple(hf_shape) != want:
                raise FtxError(
                    f"tensor {name} has shape {list(info.shape)}, but config.json implies"
                    f" {list(want[::-1] if hf.transpose else want)}",
                    where=str(reader.path),
                    fix="pair the weights with the config.json they were saved with",
                )
            shape = info.shape[::-1] if mapped.transpose else info.shape
            target_info = TensorInfo(mapped.name, info.dtype, shape)
            group.append(Planned(reader, name, target_info, mapped.transpose))
        planned.append(_in_source_order(group))
    if expected:
        missing = next(iter(expected))
        raise FtxError(
            f"the checkpoint lacks {missing} (HF name), which config.json implies",
            where=str(src),
            fix="copy the missing weight file, or pair the weights with their own config.json",
        )
    return planned


def _in_source_order(group: list[Planned]) -> list[Planned]:
    """The shard's tensors in the order their bytes lie in the source file, so that the
    unchanged ones are copied as one region (the header may list them in any order)."""
    starts = [item.source.byte_ranges(item.source_name) for item in group]
    if any(not ranges for ranges in starts):
        return group
    order = sorted(range(len(group)), key=lambda i: (starts[i][0].path, starts[i][0].offset))
    return [group[i] for i in order]


def _produce(item: Planned) -> Tensor:
    """The output tensor: the source bytes as they are (copied by the kernel), or
    transposed."""

    ranges = item.source.byte_ranges(item.source_name)

    def make() -> np.ndarray:
        if item.transpose and ranges is not None:
            info = item.source.info(item.source_name)
            return transpose_2d(read_ranges(ranges, DTYPES[info.dtype], info.shape))
        array = item.source.read(item.source_name)
        return transpose_2d(array) if item.transpose else array

    same_dtype = item.source.info(item.source_name).dtype == item.target.dtype
    return Tensor(make, ranges, passthrough=not item.transpose and same_dtype)


FILE_FORMATS = {"safetensors": ("hf", "paddle", "mindspore"), "ckpt": ("mindspore",),
                "pdparams": ("paddle",)}  # fmt: skip


def check_file_format(file_format: str, to: str) -> None:
    if to not in FILE_FORMATS[file_format]:
        raise FtxError(
            f"--format {file_format} is not a {to} format",
            fix=f"use --format {file_format} with --to {' or '.join(FILE_FORMATS[file_format])}",
        )


def write_weights(
    folder: Path, groups: list[list[tuple[TensorInfo, Any]]], to: str, file_format: str
) -> dict[str, str]:
    """Write each group of (info, produce) as one file in ``folder`` (plus a safetensors
    index when sharded); return tensor name -> file name."""
    weight_map: dict[str, str] = {}
    if file_format == "pdparams":  # a pickle holds everything at once: one file
        from ftx.core.convert.pickled import write_pdparams

        write_pdparams(folder / "model_state.pdparams", [t for g in groups for t in g])
        return {info.name: "model_state.pdparams" for g in groups for info, _ in g}
    total = 0
    for i, items in enumerate(groups):
        if file_format == "ckpt":
            from ftx.core.convert.mindspore_ckpt import write_ckpt

            name = "model.ckpt" if len(groups) == 1 else f"model-{i + 1:05d}.ckpt"
            write_ckpt(folder / name, items)
        else:
            name = (
                "model.safetensors"
                if len(groups) == 1
                else f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
            )
            write_safetensors(folder / name, items, {"format": METADATA[to]})
        for info, _ in items:
            weight_map[info.name] = name
            total += info.nbytes
    if len(groups) > 1 and file_format == "safetensors":
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return weight_map


def convert(
    src: Path,
    dst: Path,
    to: str,
    *,
    file_format: str = "safetensors",
    force: bool = False,
    verify: bool = False,
    trust_pickle: bool = False,
    model_type: str | None = None,
    config_path: Path | None = None,
) -> dict:
    """Convert the checkpoint folder ``src`` to format ``to`` in ``dst``; a LoRA adapter
    folder is converted as an adapter (``model_type`` names its base's family when the
    adapter does not). ``config_path`` overrides ``src``/config.json (a config.json or
    the MindFormers YAML the weights were trained with). ``file_format`` "ckpt" writes
    MindSpore .ckpt, "pdparams" Paddle's pickle, instead of safetensors."""
    check_file_format(file_format, to)
    inputs = [src] if config_path is None else [src, config_path]
    claim_destination(dst, force=force, inputs=inputs)
    if adapter_format(src):
        return convert_adapter(
            src,
            dst,
            to,
            file_format=file_format,
            verify=verify,
            model_type=model_type,
            trust_pickle=trust_pickle,
        )
    source = detect_format(src)
    if source == to:
        raise FtxError(f"{src} is already in {to} format", fix="pick another --to")
    config = load_config(src, config_path)
    planned = plan_tensors(src, source, to, config, trust_pickle=trust_pickle)
    with staged_dir(dst, replace=True) as tmp:
        groups = [[(item.target, _produce(item)) for item in group] for group in planned]
        write_weights(tmp, groups, to, file_format)
        (tmp / "config.json").write_text(json.dumps(convert_config(config, to), indent=2) + "\n")
        copy_side_files(src, tmp)
        if verify:
            checked = verify_folder(planned, tmp)
    total = sum(item.target.nbytes for group in planned for item in group)
    summary = {"from": source, "to": to, "tensors": sum(len(g) for g in planned), "bytes": total}
    if verify:
        summary["verified"] = checked
    return summary


def verify_folder(planned: list[list[Planned]], out: Path) -> int:
    """Re-read every written tensor and compare it with its source (transposes included)."""
    checked = 0
    written: dict[str, Any] = {}
    for path in [*out.glob("*.safetensors"), *out.glob("*.ckpt"), *out.glob("*.pdparams")]:
        reader = open_weights(path, trust_pickle=True)  # ftx wrote it a moment ago
        for name in reader.names:
            written[name] = reader
    for group in planned:
        for item in group:
            reader = written.get(item.target.name)
            if reader is None:
                raise FtxError(f"verify: tensor {item.target.name} is missing", where=str(out))
            expected = item.source.read(item.source_name)
            expected = expected.T if item.transpose else expected
            got = reader.read(item.target.name)
            same = (
                got.shape == expected.shape
                and got.dtype == expected.dtype
                and np.ascontiguousarray(expected).tobytes() == np.asarray(got).tobytes()
            )
            if not same:
                raise FtxError(
                    f"verify: tensor {item.target.name} differs from {item.source_name}",
                    where=str(out),
                )
            checked += 1
    return checked

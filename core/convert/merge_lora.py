"""`ftx merge-lora BASE ADAPTER OUT`: fold a LoRA adapter into the base weights.

W' = W + (B @ A) * scaling, computed in float32 and cast back to W's dtype, tensor by
tensor; scaling = alpha / r (alpha / sqrt(r) with rsLoRA). The adapter may be PEFT,
PaddleNLP or MindFormers; the base any format ftx reads. The output has the base's
format and file kind (names, layout, safetensors/.ckpt/.pdparams), staged, then renamed.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ftx.core.convert.adapters import read_adapter
from ftx.core.convert.configs import load_config
from ftx.core.convert.convert import write_weights
from ftx.core.convert.floats import from_float32, to_float32
from ftx.core.convert.layout import copy_side_files, transpose_2d
from ftx.core.convert.names import NameMap
from ftx.core.convert.safetensors_stream import TensorInfo, WeightFile
from ftx.core.convert.sources import weight_files
from ftx.core.errors import FtxError
from ftx.core.fsutil import claim_destination, staged_dir
from ftx.core.models.formats import detect_format


def base_file_format(readers: list[WeightFile]) -> str:
    suffix = readers[0].path.suffix
    return {".ckpt": "ckpt", ".pdparams": "pdparams"}.get(suffix, "safetensors")


def merge_lora(
    base: Path, adapter_dir: Path, out: Path, *, force: bool = False, trust_pickle: bool = False
) -> dict:
    """Write base + adapter to ``out`` in the base's format; return a summary."""
    claim_destination(out, force=force, inputs=[base, adapter_dir])
    fmt = detect_format(base)
    config = load_config(base)
    adapter = read_adapter(adapter_dir, trust_pickle=trust_pickle)
    to_base = NameMap(config["model_type"], "hf", fmt)
    targets = {}
    for hf_name, pair in adapter.pairs.items():
        mapped = to_base.map(hf_name)
        if mapped is None:
            raise FtxError(
                f"adapter targets {hf_name}, which the base does not have", where=str(adapter_dir)
            )
        targets[mapped.name] = (pair, mapped.transpose)
    readers = weight_files(base, config, trust_pickle=trust_pickle)
    present = {name for reader in readers for name in reader.names}
    missing = sorted(set(targets) - present)
    if missing:
        raise FtxError(f"the base has no tensor {missing[0]}", where=str(base))
    for reader in readers:
        for name in set(reader.names) & set(targets):
            pair, flip = targets[name]
            a, b = pair["A"].info.shape, pair["B"].info.shape
            rows, cols = reader.info(name).shape[::-1] if flip else reader.info(name).shape
            if len(a) != 2 or len(b) != 2 or a[0] != b[1] or (b[0], a[1]) != (rows, cols):
                raise FtxError(
                    f"the adapter's {name} has A {list(a)} and B {list(b)}, which do not make"
                    f" the base weight's [{rows}, {cols}]",
                    where=str(adapter_dir),
                    fix="merge the adapter into the base model it was trained on",
                )

    def produce(reader: WeightFile, name: str, info: TensorInfo):
        def make() -> np.ndarray:
            weight = reader.read(name)
            if name not in targets:
                return weight
            pair, flip = targets[name]
            a = to_float32(pair["A"].read(), pair["A"].info.dtype)
            b = to_float32(pair["B"].read(), pair["B"].info.dtype)
            delta = (b @ a) * np.float32(adapter.scaling)
            delta = transpose_2d(delta) if flip else delta
            return from_float32(to_float32(weight, info.dtype) + delta, info.dtype)

        return make

    groups = [
        [(reader.info(n), produce(reader, n, reader.info(n))) for n in reader.names]
        for reader in readers
    ]
    with staged_dir(out, replace=True) as tmp:
        write_weights(tmp, groups, fmt, base_file_format(readers))
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        copy_side_files(base, tmp)
    return {"format": fmt, "merged": len(targets), "scaling": adapter.scaling}

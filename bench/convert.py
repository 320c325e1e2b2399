"""Conversion memory and throughput on a multi-GB checkpoint, next to `cp` of the same files.

    .venv/bin/python bench/convert.py [--layers 8] [--workdir /tmp/ftx-bench-convert]

Writes a random Llama-2-7B-shaped checkpoint in bf16 (hidden 4096, intermediate 11008,
vocab 32000; 8 of the 32 layers by default: about 3.6 GB, --layers 32 for the full
13.5 GB) as 2 GB shards with an index, then times, each in a fresh process with its peak
RSS read from the kernel (ru_maxrss of the child):
  cp -r + sync              the floor: every byte read and written once, on disk
  ftx convert --to mindspore  renames only (safetensors, then .ckpt, then .ckpt back to HF)
  ftx convert --to paddle     every Linear weight transposed
Targets: peak RSS < 1.5 GB; throughput >= 50% of cp (renames) and >= 30% (transposes).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SHARD_BYTES = 2 * 1024**3


def make_checkpoint(folder: Path, layers: int) -> int:
    """A random bf16 Llama-2-7B-shaped checkpoint, written shard by shard; returns bytes."""
    from ftx.core.convert.safetensors_stream import TensorInfo, write_safetensors
    from ftx.core.models.architectures import ARCHITECTURES, parameter_shapes

    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 4096,
        "intermediate_size": 11008,
        "num_hidden_layers": layers,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "vocab_size": 32000,
        "rms_norm_eps": 1e-5,
        "torch_dtype": "bfloat16",
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    shapes = parameter_shapes(ARCHITECTURES["llama"], config)
    rng = np.random.default_rng(0)
    groups: list[list[TensorInfo]] = [[]]
    size = 0
    for name, shape in shapes.items():
        info = TensorInfo(name, "BF16", shape)
        if size + info.nbytes > SHARD_BYTES and groups[-1]:
            groups.append([])
            size = 0
        groups[-1].append(info)
        size += info.nbytes
    weight_map, total = {}, 0
    block = rng.integers(0, 2**16, size=1 << 24, dtype=np.uint16)  # reused random bits
    for i, group in enumerate(groups):
        name = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"

        def produce(info: TensorInfo):
            count = int(np.prod(info.shape))
            return lambda: np.resize(block, count).reshape(info.shape)

        write_safetensors(folder / name, [(g, produce(g)) for g in group], {"format": "pt"})
        for info in group:
            weight_map[info.name] = name
            total += info.nbytes
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return total


def drop_caches() -> None:
    os.sync()
    # Where this is not allowed, every run reads from the page cache alike.
    with contextlib.suppress(OSError):
        Path("/proc/sys/vm/drop_caches").write_text("3\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/ftx-bench-convert"))
    args = parser.parse_args()
    work = args.workdir
    source = work / "llama-hf"
    if not (source / "model.safetensors.index.json").exists():
        shutil.rmtree(source, ignore_errors=True)
        print(f"writing a {args.layers}-layer 7B-shaped bf16 checkpoint ...", flush=True)
        make_checkpoint(source, args.layers)
    size = sum(p.stat().st_size for p in source.iterdir())
    ftx = str(Path(sys.executable).with_name("ftx"))

    def convert_to(out: Path, target: str, src: Path = source) -> list[str]:
        return [ftx, "-q", "convert", str(src), str(out), "--to", target, "--force"]

    runs = [
        # cp, then sync: ftx fsyncs what it writes, so the floor must reach the disk too
        ("cp -r + sync (floor)", ["sh", "-c", f"cp -r '{source}' '{work / 'copy'}' && sync"]),
        (
            "ftx convert --to mindspore (renames)",
            convert_to(work / "ms", "mindspore"),
        ),
        (
            "ftx convert --to mindspore --format ckpt",
            [*convert_to(work / "ckpt", "mindspore"), "--format", "ckpt"],
        ),
        (
            "ftx convert .ckpt --to hf (reads .ckpt)",
            convert_to(work / "back", "hf", work / "ckpt"),
        ),
        (
            "ftx convert --to paddle (transposes)",
            convert_to(work / "pd", "paddle"),
        ),
    ]
    rows = []
    for label, command in runs:
        shutil.rmtree(work / "copy", ignore_errors=True)
        drop_caches()
        # Each measurement in its own child of a fresh interpreter, so ru_maxrss is its own.
        probe = (
            "import resource, subprocess, sys, time, json;"
            "t = time.perf_counter();"
            "subprocess.run(sys.argv[1:], check=True, capture_output=True);"
            "s = time.perf_counter() - t;"
            "print(json.dumps([s, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss]))"
        )
        out = subprocess.run(
            [sys.executable, "-c", probe, *command], check=True, capture_output=True, text=True
        ).stdout
        seconds, peak_kb = json.loads(out.strip().splitlines()[-1])
        rows.append((label, seconds, peak_kb / 1024**2))
    floor = rows[0][1]
    print(
        f"\n{size / 1e9:.2f} GB checkpoint ({args.layers} layers, bf16, 2 GB shards), largest"
        f" tensor {32000 * 4096 * 2 / 1e6:.0f} MB\n"
    )
    print("| run | seconds | GB/s | vs cp | peak RSS (GB) |")
    print("| --- | --- | --- | --- | --- |")
    for label, seconds, peak in rows:
        print(
            f"| {label} | {seconds:.1f} | {size / seconds / 1e9:.2f} | {floor / seconds:.0%} |"
            f" {peak:.2f} |"
        )


if __name__ == "__main__":
    main()

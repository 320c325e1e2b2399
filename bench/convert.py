"""Conversion speed and memory on a multi-GB checkpoint, next to copying the same files.

    .venv/bin/python bench/convert.py [--layers 8] [--repeats 3] [--workdir /tmp/ftx-bench-convert]

Writes a random Llama-2-7B-shaped checkpoint in bf16 (hidden 4096, intermediate 11008,
vocab 32000; 8 of the 32 layers by default: 3.76 GB, --layers 32 for the full 13.5 GB)
as 2 GB shards with an index, then runs, interleaved (bench/harness.py), each in a fresh
process after dropping the page cache:
  copy + fsync          the floor: every file copied (the kernel's copy) and fsynced, as
                        ftx fsyncs what it writes; nothing else flushed
  renames               ftx convert --to mindspore (safetensors: names change, bytes do not)
  .ckpt write           ftx convert --to mindspore --format ckpt
  .ckpt read            ftx convert of that .ckpt --to hf
  transposes            ftx convert --to paddle (every Linear weight transposed)
Targets: renames >= 90% of the floor, transposes >= 60%, .ckpt write and read >= 70%,
peak RSS <= 2x the largest tensor (262 MB) + 0.3 GB, and not growing with the model.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

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


COPY = """
import os, shutil, sys
from pathlib import Path
src, dst = Path(sys.argv[1]), Path(sys.argv[2])
dst.mkdir(parents=True)
for path in sorted(src.iterdir()):
    shutil.copyfile(path, dst / path.name)  # copy_file_range / sendfile, as ftx
    fd = os.open(dst / path.name, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
"""


def main() -> None:
    from harness import Run, header, interleave, machine, spread

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/ftx-bench-convert"))
    args = parser.parse_args()
    work = args.workdir
    source = work / f"llama-hf-{args.layers}"  # one source per size: never the other size's
    if not (source / "model.safetensors.index.json").exists():
        shutil.rmtree(source, ignore_errors=True)
        print(f"writing a {args.layers}-layer 7B-shaped bf16 checkpoint ...", flush=True)
        make_checkpoint(source, args.layers)
    size = sum(p.stat().st_size for p in source.iterdir())
    ftx = str(Path(sys.executable).with_name("ftx"))
    ckpt = work / f"ckpt-source-{args.layers}"
    if not ckpt.exists():
        subprocess.run(
            [ftx, "-q", "convert", str(source), str(ckpt), "--to", "mindspore", "--format", "ckpt"],
            check=True,
        )
    started = machine()

    outputs = [work / name for name in ("copy", "ms", "ckpt", "back", "pd")]

    def fresh(out: Path) -> Callable[[], None]:
        def clear() -> None:
            for folder in outputs:  # one output on disk at a time (the 32-layer one is 13.5 GB)
                shutil.rmtree(folder, ignore_errors=True)
            drop_caches()

        return clear

    def convert(out: str, target: str, *extra: str, src: Path = source) -> list[str]:
        return [ftx, "-q", "convert", str(src), str(work / out), "--to", target, *extra]

    runs = [
        Run("copy + fsync (floor)", [sys.executable, "-c", COPY, str(source), str(work / "copy")],
            before=fresh(work / "copy")),
        Run("renames: --to mindspore", convert("ms", "mindspore"), before=fresh(work / "ms")),
        Run(".ckpt write: --to mindspore --format ckpt",
            convert("ckpt", "mindspore", "--format", "ckpt"), before=fresh(work / "ckpt")),
        Run(".ckpt read: .ckpt --to hf", convert("back", "hf", src=ckpt),
            before=fresh(work / "back")),
        Run("transposes: --to paddle", convert("pd", "paddle"), before=fresh(work / "pd")),
    ]  # fmt: skip
    interleave(runs, args.repeats)
    floor = runs[0].median
    print(header(f"bench/convert.py --layers {args.layers} --repeats {args.repeats}", started))
    print(
        f"{size / 1e9:.2f} GB checkpoint ({args.layers} layers, bf16, 2 GB shards), largest"
        f" tensor {32000 * 4096 * 2 / 1e6:.0f} MB; seconds are median (min-max) of"
        f" {args.repeats}, interleaved, page cache dropped before each\n"
    )
    print("| run | seconds | GB/s | vs copy + fsync | peak RSS (GB) |")
    print("| --- | --- | --- | --- | --- |")
    for run in runs:
        print(
            f"| {run.label} | {spread(run)} | {size / run.median / 1e9:.2f} |"
            f" {floor / run.median:.0%} | {run.peak_mb / 1e3:.2f} |"
        )


if __name__ == "__main__":
    main()

"""The torch backend on a GPU, through ftx itself, beside transformers' Trainer.

    python bench/gpu.py [--sizes 0.5b 1.5b] [--budget 450] [--workdir /tmp/ftx-bench-gpu]
    python bench/gpu.py --tiny          # the same code paths on a CPU, in about a minute

On a CUDA machine (bench/gpu_device.sh installs ftx and its few missing packages there
from carried wheels and runs this with FTX_IMAGE=torch, so the machine's own torch is the
torch backend's environment). For each model size, random Qwen2.5-shaped models made by
`ftx init-model` (0.5b: 494M parameters, 1.5b: 1.54B), on alpaca-like rows, bf16 autocast:

  ftx full / LoRA, packed       `ftx run` (the plan, the worker, the prepared data), rows
                                of 2048 tokens, each example attending to itself only
  Trainer full / LoRA, flatten  transformers' Trainer (+ peft) on the same prepared
                                examples with DataCollatorWithFlattening, about as many
                                real tokens a step
  ftx / Trainer full, padded    micro-batches of examples padded to their longest
  ftx QLoRA 4-bit and 8-bit     when bitsandbytes is importable (the table says when not)
  ftx DPO, LoRA and full        the preference step, on pairs made from the same rows

Each run is a fresh process; the first --warmup optimizer steps are not timed, the next
--steps are: real (non-pad) tokens/s, MFU against the matmul peak this script measures
on the card (6N FLOPs a token for full fine-tuning, 4N for LoRA, plus attention's
12 * layers * hidden * example length), and the peak GPU memory the run added
(nvidia-smi, sampled every 0.1 s; on a CPU the peak RSS of the run's process tree).
FlashAttention-2 is used on both sides when flash_attn is importable, sdpa otherwise.
Runs are ordered by importance and the ones that would not fit in --budget seconds are
listed as skipped. Prints one markdown table with the card, the versions and the commit.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))


# What the torch backend's python has and can do: versions, the device, the measured
# dense matmul peak (bf16 8192^3 on a GPU; fp32 on a CPU, for the tiny run only).
PROBE = r"""
import importlib.util, json, time, torch, transformers, peft
cuda = torch.cuda.is_available()
device = "cuda" if cuda else "cpu"
n, dtype = (8192, torch.bfloat16) if cuda else (256, torch.float32)
a = torch.randn(n, n, device=device, dtype=dtype)
b = torch.randn(n, n, device=device, dtype=dtype)
def sync():
    if cuda: torch.cuda.synchronize()
for _ in range(5): a @ b
sync()
reps = 100 if cuda else 20
start = time.perf_counter()
for _ in range(reps): a @ b
sync()
seconds = time.perf_counter() - start
print(json.dumps({
    "device": torch.cuda.get_device_name(0) if cuda else "CPU",
    "cuda": cuda,
    "memory_gb": (round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
                  if cuda else None),
    "peak_flops": 2 * n**3 * reps / seconds,
    "peak_dtype": str(dtype).replace("torch.", ""),
    "torch": torch.__version__, "transformers": transformers.__version__,
    "peft": peft.__version__,
    "bitsandbytes": importlib.util.find_spec("bitsandbytes") is not None,
    "flash_attn": importlib.util.find_spec("flash_attn") is not None,
}))
"""


@dataclass
class Setting:
    """One size's models and batch shapes."""

    size: str
    model: Path
    params: int
    layers: int
    hidden: int
    packed_rows: int  # rows of max_seq_len a packed micro-batch
    padded_examples: int  # examples a padded micro-batch


@dataclass
class Measured:
    label: str
    size: str
    tokens_per_s: float | None = None
    mfu: float | None = None
    memory_gb: float | None = None
    note: str = ""
    extra: dict = field(default_factory=dict)


class MemorySampler:
    """The peak of what a run adds to the GPU's used memory (nvidia-smi), or where there
    is no GPU, the peak RSS of the run's process tree (bench/harness.py)."""

    def __init__(self, gpu: bool) -> None:
        self.gpu = gpu and shutil.which("nvidia-smi") is not None
        self.base = self._gpu_used() if self.gpu else 0.0
        self.peak = 0.0
        self._stop = threading.Event()

    @staticmethod
    def _gpu_used() -> float:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
        ).stdout.split()
        return float(out[0]) / 1024 if out else 0.0  # MiB -> GiB

    def watch(self, pid: int) -> threading.Thread:
        from harness import _tree_rss_mb

        def loop() -> None:
            while not self._stop.is_set():
                used = self._gpu_used() - self.base if self.gpu else _tree_rss_mb(pid) / 1024
                self.peak = max(self.peak, used)
                self._stop.wait(0.1)

        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        return thread

    def stop(self, thread: threading.Thread) -> float:
        self._stop.set()
        thread.join()
        return self.peak


def run_child(command: list[str], env: dict[str, str], gpu: bool) -> tuple[str, float]:
    """Run one measured process; its output and the peak memory it added (GiB)."""
    sampler = MemorySampler(gpu)
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    thread = sampler.watch(proc.pid)
    output, _ = proc.communicate()
    peak = sampler.stop(thread)
    if proc.returncode != 0:
        raise RuntimeError(f"exit {proc.returncode}: {output[-2500:]}")
    return output, peak


def flops_per_token(setting: Setting, full: bool, example_tokens: float) -> float:
    from ftx.core.worker.throughput import flops_per_token as formula

    return formula(setting.params, setting.layers, setting.hidden, example_tokens, full)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="a CPU check of every path")
    parser.add_argument("--sizes", nargs="+", default=None, choices=["0.5b", "1.5b"])
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--rows", type=int, default=None)
    parser.add_argument("--budget", type=float, default=450.0, help="seconds for all runs")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/ftx-bench-gpu"))
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    tiny = args.tiny
    sizes = args.sizes or (["tiny"] if tiny else ["0.5b", "1.5b"])
    warmup = args.warmup if args.warmup is not None else (1 if tiny else 3)
    steps = args.steps if args.steps is not None else (2 if tiny else 10)
    rows = args.rows or (200 if tiny else 6000)
    seq = 256 if tiny else 2048
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()

    from harness import machine
    from steps import TRAINER, ftx_command, steady_rate

    sys.path.insert(0, str(ROOT))
    from ftx.core import envs

    started = machine()
    python = str(envs.ensure("torch", "(the GPU benchmark)"))
    env = {**envs.process_env("torch"), "PYTHONUNBUFFERED": "1"}
    probe = json.loads(subprocess.run([python, "-c", PROBE], env=env, check=True,
                                      capture_output=True, text=True).stdout)  # fmt: skip
    gpu = probe["cuda"]
    precision = "bf16" if gpu else "fp32"
    attention = "flash_attention_2" if probe["flash_attn"] and gpu else "sdpa"
    print(f"device: {probe['device']}, measured {probe['peak_dtype']} matmul peak"
          f" {probe['peak_flops'] / 1e12:,.1f} TFLOP/s", flush=True)  # fmt: skip

    data = work / "alpaca_like.jsonl"
    subprocess.run([sys.executable, str(ROOT / "bench/make_alpaca_like.py"), str(data),
                    "--rows", str(rows)], check=True, capture_output=True)  # fmt: skip
    pairs_dir = work / "pairs"
    make_pairs(data, pairs_dir)

    def ftx(*command: str) -> subprocess.CompletedProcess:
        return subprocess.run(ftx_command(*command), capture_output=True,
                              text=True, check=False)  # fmt: skip

    settings = []
    for size in sizes:
        model = work / f"model-{size}"
        if not (model / "config.json").exists():
            made = ftx("init-model", "--arch", "qwen2", "--size", size, "--out", str(model),
                       "--force")  # fmt: skip
            if made.returncode != 0:
                raise SystemExit(made.stderr)
        config = json.loads((model / "config.json").read_text())
        params = parameter_count(model)
        packed_rows = {"tiny": 2, "0.5b": 8, "1.5b": 4}[size]
        settings.append(Setting(size, model, params, config["num_hidden_layers"],
                                config["hidden_size"], packed_rows, 2 * packed_rows))  # fmt: skip

    results: list[Measured] = []

    def recipe_for(setting: Setting, name: str, body: str) -> Path:
        path = work / f"{name}.yaml"
        path.write_text(
            f"model: {{path: {setting.model}}}\n{body}"
            f"train: {{max_steps: {warmup + steps}, learning_rate: 1.0e-5, scheduler: constant,"
            f" warmup_ratio: 0.0, logging_steps: 1, precision: {precision}}}\n"
        )
        return path

    prepared_for: dict[str, tuple[Path, float]] = {}

    def prepared(setting: Setting) -> tuple[Path, float]:
        """ftx's prepared examples of the SFT set (shared by every run of a size), and
        their mean length."""
        if setting.size not in prepared_for:
            path = recipe_for(setting, f"sft-{setting.size}",
                              f"data: {{datasets: [{data}], max_seq_len: {seq}}}\n")  # fmt: skip
            out = work / f"prepared-{setting.size}"
            done = ftx("-q", "data", "prepare", str(path), "--out", str(out), "--force")
            if done.returncode != 0:
                raise SystemExit(done.stderr)
            manifest = json.loads((out / "manifest.json").read_text())
            train = manifest["splits"]["train"]
            prepared_for[setting.size] = (out, train["tokens"] / train["examples"])
        return prepared_for[setting.size]

    def ftx_run(setting: Setting, label: str, body: str, full: bool, *overrides: str) -> None:
        name = label.replace(" ", "-").replace(",", "")
        path = recipe_for(setting, f"{setting.size}-{name}", body)
        out = work / "runs" / f"{setting.size}-{name}"
        command = [*ftx_command("-q", "run"), str(path), "--backend", "torch",
                   "--out", str(out), "--force", *overrides]  # fmt: skip
        _, memory = run_child(command, env, gpu)
        rate, _ = steady_rate(out / "metrics.jsonl", warmup)
        _, example = prepared(setting)
        mfu = rate * flops_per_token(setting, full, example) / probe["peak_flops"]
        results.append(Measured(label, setting.size, rate, mfu, memory))

    def trainer_run(setting: Setting, label: str, collator: str, finetuning: str) -> None:
        folder, example = prepared(setting)
        if collator == "flattening":  # about the real tokens of a packed micro-batch
            batch = max(1, round(setting.packed_rows * seq / example))
        else:
            batch = setting.padded_examples
        out = work / "runs" / f"{setting.size}-trainer-{collator}-{finetuning}"
        command = [python, "-c", TRAINER, str(folder), str(setting.model), str(out), str(batch),
                   collator, finetuning, str(warmup), str(steps), precision, "8", "16",
                   attention]  # fmt: skip
        output, memory = run_child(command, env, gpu)
        found = json.loads(output.strip().splitlines()[-1])
        rate = found["tokens"] / found["seconds"]
        mfu = rate * flops_per_token(setting, finetuning == "full", example) / probe["peak_flops"]
        results.append(Measured(label, setting.size, rate, mfu, memory, extra={"batch": batch}))

    sft = f"data: {{datasets: [{data}], max_seq_len: {seq}, packing: true}}\n"
    padded = f"data: {{datasets: [{data}], max_seq_len: {seq}}}\n"

    def micro(n: int) -> str:
        return f"train.micro_batch_size={n}"

    plan: list[tuple[str, str, Callable[[], None] | str]] = []
    for s in settings:
        plan += [
            (s.size, "ftx full, packed",
             lambda s=s: ftx_run(s, "ftx full, packed", sft, True, micro(s.packed_rows))),
            (s.size, "Trainer full, flattening",
             lambda s=s: trainer_run(s, "Trainer full, flattening", "flattening", "full")),
            (s.size, "ftx LoRA, packed",
             lambda s=s: ftx_run(s, "ftx LoRA, packed", sft, False, micro(s.packed_rows),
                                 "method.finetuning=lora")),
            (s.size, "Trainer LoRA, flattening",
             lambda s=s: trainer_run(s, "Trainer LoRA, flattening", "flattening", "lora")),
        ]  # fmt: skip
    for s in settings:
        plan += [
            (s.size, "ftx full, padded",
             lambda s=s: ftx_run(s, "ftx full, padded", padded, True, micro(s.padded_examples))),
            (s.size, "Trainer full, padded",
             lambda s=s: trainer_run(s, "Trainer full, padded", "padded", "full")),
        ]  # fmt: skip
    first = settings[0]
    for bits in (4, 8):
        label = f"ftx QLoRA {bits}-bit, packed"
        if probe["bitsandbytes"] and gpu:
            plan.append((first.size, label, lambda b=bits, lb=label: ftx_run(
                first, lb, sft, False, micro(first.packed_rows), "method.finetuning=qlora",
                f"method.quantization.bits={b}")))  # fmt: skip
        else:
            why = "no CUDA GPU" if not gpu else "bitsandbytes is not importable"
            plan.append((first.size, label, f"not run: {why}"))
    dpo = (f"data: {{dataset_dir: {pairs_dir}, datasets: [pairs], max_seq_len: {seq}}}\n"
           "method: {stage: dpo, finetuning: FT}\n")  # fmt: skip
    for finetuning in ("lora", "full"):
        label = f"ftx DPO {'LoRA' if finetuning == 'lora' else 'full'}"
        body = dpo.replace("FT", finetuning)
        plan.append((first.size, label, lambda lb=label, b=body, f=finetuning: ftx_run(
            first, lb, b, f == "full", micro(max(1, first.packed_rows // 2)))))  # fmt: skip

    spent: list[float] = []
    for size, label, action in plan:
        if isinstance(action, str):  # what cannot run here, said in its place
            results.append(Measured(label, size, note=action))
            continue
        elapsed = time.perf_counter() - began
        expected = statistics.median(spent) if spent else 0.0
        if elapsed + expected > args.budget:
            results.append(
                Measured(label, size, note=f"skipped: over the {args.budget:.0f} s budget")
            )
            continue
        started_at = time.perf_counter()
        try:
            action()
        except RuntimeError as exc:
            results.append(Measured(label, size, note=f"failed: {str(exc)[:300]}"))
        spent.append(time.perf_counter() - started_at)
        print(f"  {size} {label}: {time.perf_counter() - started_at:.0f} s", flush=True)

    print_table(results, settings, probe, started, args, warmup, steps, seq, attention, began)
    if args.json:
        args.json.write_text(json.dumps({"probe": probe, "results": [r.__dict__ for r in results]},
                                        indent=2, default=str))  # fmt: skip


def parameter_count(model: Path) -> int:
    """The model's parameters, from its safetensors headers."""
    import math

    from ftx.core.convert.safetensors_stream import SafetensorsReader

    total = 0
    for file in sorted(model.glob("*.safetensors")):
        reader = SafetensorsReader(file)
        total += sum(math.prod(reader.info(name).shape) for name in reader.names)
    return total


def make_pairs(data: Path, folder: Path) -> None:
    """Preference pairs from the alpaca-like rows: the row's answer chosen, the next
    row's answer rejected."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = [json.loads(line) for line in data.read_text().splitlines() if line.strip()]
    with (folder / "pairs.jsonl").open("w") as handle:
        for i, row in enumerate(rows):
            other = rows[(i + 1) % len(rows)]["output"]
            pair = {"instruction": row["instruction"], "input": row["input"],
                    "chosen": row["output"], "rejected": other}  # fmt: skip
            handle.write(json.dumps(pair) + "\n")
    (folder / "dataset_info.json").write_text(
        json.dumps({"pairs": {"file_name": "pairs.jsonl", "ranking": True}})
    )


def print_table(results, settings, probe, started, args, warmup, steps, seq, attention, began):
    from harness import header

    command = "bench/gpu.py" + (" --tiny" if args.tiny else "")
    print()
    print(header(command, started))
    memory = f", {probe['memory_gb']} GiB" if probe["memory_gb"] else ""
    print(
        f"{probe['device']}{memory}; torch {probe['torch']}, transformers"
        f" {probe['transformers']}, peft {probe['peft']}; attention {attention};"
        f" measured {probe['peak_dtype']} matmul peak {probe['peak_flops'] / 1e12:,.1f} TFLOP/s."
    )
    shapes = ", ".join(f"{s.size}: {s.params / 1e6:,.1f}M parameters" for s in settings)
    print(
        f"Random Qwen2.5-shaped models ({shapes}), rows of {seq} tokens, {warmup} warm-up"
        f" steps then {steps} timed; {time.perf_counter() - began:.0f} s in all.\n"
    )
    unit = "GPU memory added (GiB)" if probe["cuda"] else "peak RSS (GiB)"
    print(f"| size | run | real tokens/s | MFU | {unit} | ratio | note |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    by = {(r.size, r.label): r for r in results}
    for r in results:
        partner = by.get((r.size, counterpart(r.label)))
        ratio = (
            f"{r.tokens_per_s / partner.tokens_per_s:.2f}x"
            if r.label.startswith("ftx") and partner and partner.tokens_per_s and r.tokens_per_s
            else ""
        )
        note = r.note or (f"{r.extra['batch']} examples a step" if "batch" in r.extra else "")
        rate = f"{r.tokens_per_s:,.0f}" if r.tokens_per_s else "-"
        mfu = f"{100 * r.mfu:.1f}%" if r.mfu is not None else "-"
        mem = f"{r.memory_gb:.1f}" if r.memory_gb is not None else "-"
        print(f"| {r.size} | {r.label} | {rate} | {mfu} | {mem} | {ratio} | {note} |")
    print("\n(ratio: ftx's tokens/s over the Trainer's on the same examples and layout)")


def counterpart(label: str) -> str:
    """The Trainer run an ftx run is compared with."""
    pairs = {
        "ftx full, packed": "Trainer full, flattening",
        "ftx LoRA, packed": "Trainer LoRA, flattening",
        "ftx full, padded": "Trainer full, padded",
    }
    return pairs.get(label, "")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()

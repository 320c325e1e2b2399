"""Training throughput of the torch backend on this machine's CPU.

    .venv/bin/python bench/train_torch.py [--rows 1024] [--workdir /tmp/ftx-bench-train]

1. ftx vs a plain transformers Trainer script, same model, same prepared examples,
   same batch size, batches padded to their longest example: real (non-pad) tokens
   per second of the training loop alone (model loading excluded on both sides).
2. ftx padded vs ftx packed on a variable-length (alpaca-like) set: real tokens/s.

Everything runs in the torch backend's environment; the table is printed at the end.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FTX = Path(sys.executable).with_name("ftx")

PLAIN_TRAINER = r"""
import json, sys, numpy as np, torch
from pathlib import Path
from transformers import AutoModelForCausalLM, Trainer, TrainingArguments
from ftx.core.prepared import load_split, read_manifest
prepared, model_dir, out, batch = Path(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
split = load_split(prepared, "train")
pad = read_manifest(prepared)["pad_token_id"]
rows = [split[i] for i in range(len(split))]

class Rows(torch.utils.data.Dataset):
    def __len__(self): return len(rows)
    def __getitem__(self, i):
        return {"input_ids": rows[i][0].tolist(), "labels": rows[i][1].tolist()}

def collate(items):
    width = max(len(x["input_ids"]) for x in items)
    ids = torch.full((len(items), width), pad)
    labels = torch.full((len(items), width), -100)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    for r, x in enumerate(items):
        n = len(x["input_ids"])
        ids[r, :n] = torch.tensor(x["input_ids"])
        labels[r, :n] = torch.tensor(x["labels"])
        mask[r, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}

model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="sdpa")
args = TrainingArguments(
    out, per_device_train_batch_size=batch, num_train_epochs=1, learning_rate=1e-3,
    lr_scheduler_type="cosine", logging_steps=10, save_strategy="no", report_to=[],
    dataloader_num_workers=0, seed=0, disable_tqdm=True, use_cpu=True,
)
result = Trainer(model=model, args=args, train_dataset=Rows(), data_collator=collate).train()
tokens = int(sum(len(r[0]) for r in rows))
print(json.dumps({"train_seconds": result.metrics["train_runtime"], "tokens": tokens}))
"""


def sh(*command: str) -> str:
    result = subprocess.run(command, text=True, capture_output=True)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command[:3])} failed:\n{result.stderr[-3000:]}")
    return result.stdout


def ftx_run(recipe: Path, out: Path, *overrides: str) -> dict:
    sh(str(FTX), "-q", "run", str(recipe), "--out", str(out), "--force", *overrides)
    return json.loads((out / "run.json").read_text())["training"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1024)  # alpaca-like rows
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/ftx-bench-train"))
    args = parser.parse_args()
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    model = work / "model"
    if not (model / "config.json").exists():
        sh(
            str(FTX),
            "init-model",
            "--arch",
            "llama",
            "--size",
            "small",
            "--out",
            str(model),
            "--force",
        )
    data = work / "alpaca_like.jsonl"
    sh(sys.executable, str(ROOT / "bench/make_alpaca_like.py"), str(data), "--rows", str(args.rows))
    recipe = work / "bench.yaml"
    recipe.write_text(
        f"model: {{path: {model}, template: llama3}}\n"
        f"data: {{datasets: [{data}], max_seq_len: 512}}\n"
        "method: {finetuning: full}\n"
        f"train: {{epochs: 1, micro_batch_size: {args.batch}, learning_rate: 1.0e-3,"
        " logging_steps: 10}\n"
    )
    padded = ftx_run(recipe, work / "padded")
    packed = ftx_run(recipe, work / "packed", "data.packing=true")

    sys.path.insert(0, str(ROOT))
    from ftx.core import envs

    python = envs.ensure("torch")
    plain = json.loads(
        subprocess.run(
            [
                str(python),
                "-c",
                PLAIN_TRAINER,
                str(work / "padded/data"),
                str(model),
                str(work / "plain"),
                str(args.batch),
            ],
            text=True,
            capture_output=True,
            check=True,
            env=envs.process_env("torch"),
        )
        .stdout.strip()
        .splitlines()[-1]
    )

    def rate(result: dict) -> float:
        return result["tokens"] / result["train_seconds"]

    print(
        f"\nTorch backend on CPU: {args.rows} alpaca-like rows (max 512 tokens), llama 'small'"
        " (3.4M parameters), fp32, one epoch\n"
    )
    print("| run | real tokens/s | vs plain Trainer | vs ftx padded |")
    print("| --- | --- | --- | --- |")
    base, ours = rate(plain), rate(padded)
    print(f"| plain transformers Trainer, padded, batch {args.batch} | {base:,.0f} | 1.00x | - |")
    print(f"| ftx, padded, batch {args.batch} | {ours:,.0f} | {ours / base:.2f}x | 1.00x |")
    print(
        f"| ftx, packed rows of 512, batch {args.batch} | {rate(packed):,.0f} |"
        f" {rate(packed) / base:.2f}x |"
        f" {rate(packed) / ours:.2f}x |"
    )


if __name__ == "__main__":
    main()

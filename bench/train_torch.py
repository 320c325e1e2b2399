"""Training throughput of the torch backend on this machine's CPU, with its baselines.

    .venv/bin/python bench/train_torch.py [--rows 1024] [--batch 8] [--repeats 3]
                                          [--workdir /tmp/ftx-bench-train]

Same model (llama "small", 3.4M parameters, fp32), same prepared examples (alpaca-like,
max 512 tokens), same batch size, one epoch; four runs interleaved (bench/harness.py),
--repeats rounds, each in a fresh process:
  ftx padded          `ftx run`, micro-batches padded to their longest example
  Trainer padded      a plain transformers Trainer script on ftx's prepared examples
  ftx packed          `ftx run data.packing=true` (rows of 512, attention kept per example)
  Trainer flattening  the Trainer with transformers' own padding-free collator
                      (DataCollatorWithFlattening: each batch one row with position ids)
Real (non-pad) tokens per second of the training loop alone (model loading excluded on
every side), median (min-max), and the final logged loss of each. Targets: ftx padded
>= 0.95x the padded Trainer; ftx packed >= 1.0x the flattening collator.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FTX = Path(sys.executable).with_name("ftx")
sys.path.insert(0, str(ROOT / "bench"))

from steps import ROWS  # noqa: E402

PLAIN_TRAINER = (
    r"""
import json, sys, numpy as np, torch
from pathlib import Path
from transformers import AutoModelForCausalLM, Trainer, TrainingArguments
from ftx.core.prepared import load_split, read_manifest
prepared, model_dir, out, batch = Path(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
split = load_split(prepared, "train")
pad = read_manifest(prepared)["pad_token_id"]
rows = [split[i] for i in range(len(split))]

"""
    + ROWS
    + r"""
collate = padded

model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="sdpa")
args = TrainingArguments(
    out, per_device_train_batch_size=batch, num_train_epochs=1, learning_rate=1e-3,
    lr_scheduler_type="cosine", logging_steps=10, save_strategy="no", report_to=[],
    dataloader_num_workers=0, seed=0, disable_tqdm=True, use_cpu=True,
)
if sys.argv[5] == "flattening":
    from transformers import DataCollatorWithFlattening
    collate = DataCollatorWithFlattening(return_position_ids=True)
trainer = Trainer(model=model, args=args, train_dataset=Rows(), data_collator=collate)
result = trainer.train()
tokens = int(sum(len(r[0]) for r in rows))
losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
print(json.dumps({"train_seconds": result.metrics["train_runtime"], "tokens": tokens,
                  "final_loss": losses[-1]}))
"""
)


def main() -> None:
    from harness import FTX_RUN, Run, header, interleave, machine, sh, training_bench

    args, model, data = training_bench(__doc__, 1024, "/tmp/ftx-bench-train")
    work = args.workdir
    recipe = work / "bench.yaml"
    recipe.write_text(
        f"model: {{path: {model}, template: llama3}}\n"
        f"data: {{datasets: [{data}], max_seq_len: 512}}\n"
        "method: {finetuning: full}\n"
        f"train: {{epochs: 1, micro_batch_size: {args.batch}, learning_rate: 1.0e-3,"
        " logging_steps: 10}\n"
    )
    prepared = work / "prepared"
    if not (prepared / "manifest.json").exists():
        sh(str(FTX), "-q", "data", "prepare", str(recipe), "--out", str(prepared))

    sys.path.insert(0, str(ROOT))
    from ftx.core import envs

    python = str(envs.ensure("torch"))
    env = envs.process_env("torch")

    def ftx(name: str, *overrides: str) -> list[str]:
        out = work / name
        run = [str(FTX), "-q", "run", str(recipe), "--out", str(out), "--force", *overrides]
        return [sys.executable, "-c", FTX_RUN, *run, str(out / "run.json")]

    def trainer(collator: str) -> list[str]:
        out = str(work / f"trainer-{collator}")
        return [python, "-c", PLAIN_TRAINER, str(prepared), str(model), out, str(args.batch),
                collator]  # fmt: skip

    runs = [
        Run(f"ftx, padded, batch {args.batch}", ftx("padded")),
        Run(f"transformers Trainer, padded, batch {args.batch}", trainer("padded"), env=env),
        Run(f"ftx, packed rows of 512, batch {args.batch}", ftx("packed", "data.packing=true")),
        Run(
            f"Trainer + DataCollatorWithFlattening, batch {args.batch}",
            trainer("flattening"),
            env=env,
        ),
    ]
    started = machine()
    interleave(runs, args.repeats)

    def results(run: Run) -> list[dict]:
        return [json.loads(s.output.strip().splitlines()[-1]) for s in run.samples]

    def rates(run: Run) -> list[float]:
        return sorted(r["tokens"] / r["train_seconds"] for r in results(run))

    medians = [rates(r)[len(r.samples) // 2] for r in runs]
    print(header(f"bench/train_torch.py --rows {args.rows} --repeats {args.repeats}", started))
    print(
        f"Torch backend on CPU: {args.rows} alpaca-like rows (max 512 tokens), llama 'small'"
        " (3.4M parameters), fp32, one epoch; real tokens/s of the training loop, median"
        f" (min-max) of {args.repeats} interleaved runs\n"
    )
    print("| run | real tokens/s | ratio | final loss |")
    print("| --- | --- | --- | --- |")
    baseline = {0: medians[1], 1: medians[1], 2: medians[3], 3: medians[3]}
    for i, run in enumerate(runs):
        found = rates(run)
        loss = results(run)[0]["final_loss"]
        print(
            f"| {run.label} | {medians[i]:,.0f} ({found[0]:,.0f}-{found[-1]:,.0f}) |"
            f" {medians[i] / baseline[i]:.2f}x | {loss:.4f} |"
        )
    print("\n(ratio: ftx padded vs the padded Trainer, ftx packed vs the flattening collator)")


if __name__ == "__main__":
    main()

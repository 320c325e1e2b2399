"""What the training benchmarks share: transformers' Trainer timed step by step on ftx's
prepared examples, and the steady tokens/s of an ftx run from its metrics."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def ftx_command(*args: str) -> list[str]:
    """``ftx ARGS`` as this python runs it (a GPU box has ftx installed without its script)."""
    return [sys.executable, "-c", "from ftx.core.cli import main; main()", *args]


# ftx's prepared rows as a torch Dataset, and the padding collator (pads to the longest
# row): for the Trainer scripts, which define ``rows`` and ``pad`` first.
ROWS = r"""
class Rows(torch.utils.data.Dataset):
    def __len__(self): return len(rows)
    def __getitem__(self, i):
        return {"input_ids": rows[i][0].tolist(), "labels": rows[i][1].tolist()}

def padded(items):
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
"""

# transformers' Trainer on ftx's prepared examples. Arguments: prepared dir, model, out,
# examples a micro-batch, collator (flattening|padded), finetuning (full|lora), warmup,
# steps, precision, lora rank, lora alpha, attention implementation. Prints one JSON line:
# the timed steps' real tokens and seconds, and when the first step ended (epoch seconds).
TRAINER = (
    r"""
import json, sys, time, torch
from pathlib import Path
from transformers import (AutoModelForCausalLM, DataCollatorWithFlattening, Trainer,
                          TrainerCallback, TrainingArguments)
from ftx.core.prepared import load_split, read_manifest
(prepared, model_dir, out, batch, collator, finetuning, warmup, steps, precision, rank,
 alpha, attention) = sys.argv[1:13]
batch, warmup, steps = int(batch), int(warmup), int(steps)
split = load_split(Path(prepared), "train")
pad = read_manifest(Path(prepared))["pad_token_id"]
rows = [split[i] for i in range(len(split))]
cuda = torch.cuda.is_available()

"""
    + ROWS
    + r"""

flatten = DataCollatorWithFlattening(return_position_ids=True)
counted = []  # real tokens of every micro-batch, in the order the Trainer asked for them

def collate(items):
    counted.append(sum(len(x["input_ids"]) for x in items))
    return flatten(items) if collator == "flattening" else padded(items)

marks = {}
class Clock(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 1:
            marks["first"] = time.time()
        if state.global_step in (warmup, warmup + steps):
            if cuda: torch.cuda.synchronize()
            marks[state.global_step] = (time.perf_counter(), len(counted))

model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation=attention,
                                             dtype=torch.float32)
if finetuning == "lora":
    from peft import LoraConfig, get_peft_model
    model = get_peft_model(model, LoraConfig(r=int(rank), lora_alpha=float(alpha),
                                             lora_dropout=0.0, target_modules="all-linear",
                                             task_type="CAUSAL_LM"))
args = TrainingArguments(
    out, per_device_train_batch_size=batch, max_steps=warmup + steps, learning_rate=1e-5,
    lr_scheduler_type="constant", logging_steps=1, save_strategy="no", report_to=[],
    dataloader_num_workers=0, seed=0, disable_tqdm=True, use_cpu=not cuda,
    bf16=precision == "bf16", remove_unused_columns=False,
)
Trainer(model=model, args=args, train_dataset=Rows(), data_collator=collate,
        callbacks=[Clock()]).train()
(t0, i0), (t1, i1) = marks[warmup], marks[warmup + steps]
print(json.dumps({"tokens": sum(counted[i0:i1]), "seconds": t1 - t0,
                  "first_step_at": marks["first"]}))
"""
)


def steady_rate(metrics: Path, warmup: int) -> tuple[float, int]:
    """Real tokens/s over the steps after ``warmup`` from a run's metrics.jsonl (logged
    every step: cumulative tokens and each step's tokens/s)."""
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    steps = [r for r in rows if r.get("tokens_per_s") and r.get("loss") is not None]
    tokens = seconds = 0.0
    previous = next((r["tokens"] for r in steps if r["step"] == warmup), None)
    if previous is None:
        raise RuntimeError(f"{metrics} has no step {warmup}")
    for row in steps:
        if row["step"] > warmup:
            done = row["tokens"] - previous
            tokens, seconds, previous = (
                tokens + done,
                seconds + done / row["tokens_per_s"],
                row["tokens"],
            )
    return tokens / seconds, int(tokens)

"""DPO on the torch backend against TRL's DPOTrainer, and what a preference run holds in
memory, side by side in one run.

    .venv/bin/python bench/train_dpo.py [--pairs 512] [--batch 16] [--repeats 2]
                                        [--hidden 512] [--layers 8]
                                        [--workdir /tmp/ftx-bench-dpo]

One random Llama (--hidden, --layers: 26M parameters by default, fp32, the quickstart's
tokenizer), the preference quickstart's first --pairs pairs, prepared once by ftx; one
epoch, batch --batch pairs, lr 5e-4 cosine; runs interleaved (bench/harness.py), each a
fresh process:

  ftx dpo lora / TRL dpo lora   LoRA rank 8 on every linear layer, the reference the base
                                with the adapter switched off (both sides)
  ftx dpo full / TRL dpo full   full fine-tuning, the reference a frozen copy (both sides)
  ftx sft lora, ftx sft full    SFT on the same rows (every chosen and rejected row an
                                example, batch 2 x --batch: the rows of a DPO batch)
  ftx dpo full precomputed      the reference's log-probs written before training

(--only TEXT keeps the runs whose label holds TEXT, e.g. --only "full (frozen".)

Speed: real (non-pad) tokens per second of the training loop (model loading and the
precomputation excluded), chosen and rejected rows counted alike on both sides; TRL
gets ftx's token ids as its pre-tokenised dataset (its own collator and loss). Memory:
the peak RSS of each run's process tree. Targets: ftx's DPO >= 0.95x TRL's tokens/s;
LoRA DPO with the adapter off within 10% of LoRA SFT's peak; full DPO with precomputed
log-probs within 10% of full SFT's, where the frozen copy holds a second model.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FTX = Path(sys.executable).with_name("ftx")
sys.path.insert(0, str(ROOT / "bench"))

MAKE_MODEL = r"""
import shutil, sys, torch
from pathlib import Path
from transformers import AutoConfig, LlamaForCausalLM
small, out = Path(sys.argv[1]), Path(sys.argv[2])
hidden, layers = int(sys.argv[3]), int(sys.argv[4])
config = AutoConfig.from_pretrained(small)
config.hidden_size, config.num_hidden_layers = hidden, layers
config.intermediate_size = (hidden * 8 // 3 + 63) // 64 * 64
config.num_attention_heads = config.num_key_value_heads = hidden // 64
config.head_dim = 64
torch.manual_seed(0)
model = LlamaForCausalLM(config)
model.save_pretrained(out, safe_serialization=True)
for item in small.iterdir():
    if item.name.startswith(("tokenizer", "special_tokens", "chat_template", "generation")):
        shutil.copy2(item, out / item.name)
print(sum(p.numel() for p in model.parameters()))
"""

TRL_DPO = r"""
import json, sys, tempfile, torch
from pathlib import Path
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import DPOConfig, DPOTrainer
from ftx.core.prepared import load_split
prepared, model_dir, kind, batch = Path(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
split = load_split(prepared, "train")  # ftx's reader (the oracle has ftx installed)
chosen = [split.chosen[i][0].tolist() for i in range(len(split))]
rejected = [split.rejected[i][0].tolist() for i in range(len(split))]
prompts = split.column("prompt_lengths")
data = Dataset.from_list([{"prompt_ids": c[:p], "chosen_ids": c[p:], "rejected_ids": r[p:]}
                          for c, r, p in zip(chosen, rejected, prompts)])
tokens = sum(len(c) + len(r) for c, r in zip(chosen, rejected))
# ftx's token ids are the dataset: TRL's own tokenisation of text is skipped
DPOTrainer._prepare_dataset = lambda self, dataset, *args, **kwargs: dataset
tokenizer = AutoTokenizer.from_pretrained(model_dir)
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32,
                                             attn_implementation="sdpa")
peft = None
if kind == "lora":
    from peft import LoraConfig
    peft = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear",
                      task_type="CAUSAL_LM")
args = DPOConfig(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=batch,
                 num_train_epochs=1, learning_rate=5e-4, lr_scheduler_type="cosine",
                 logging_steps=10, save_strategy="no", report_to=[], use_cpu=True,
                 dataloader_num_workers=0, seed=0, disable_tqdm=True, beta=0.1,
                 max_length=None, bf16=False, fp16=False,
                 gradient_checkpointing=False)  # TRL's default is on; ftx's (and the run's) off
trainer = DPOTrainer(model=model, ref_model=None, args=args, train_dataset=data,
                     processing_class=tokenizer, peft_config=peft)
result = trainer.train()
losses = [h["loss"] for h in trainer.state.log_history if "loss" in h] or [result.training_loss]
print(json.dumps({"train_seconds": result.metrics["train_runtime"], "tokens": tokens,
                  "final_loss": losses[-1]}))
"""


def main() -> None:
    from harness import FTX_RUN, Run, header, interleave, machine, sh

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=512)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/ftx-bench-dpo"))
    parser.add_argument("--only", help="run only the runs whose label holds this text")
    args = parser.parse_args()
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "tests"))
    from ftx.core import envs
    from oracles import ORACLES, TRL

    for name, spec in ORACLES.items():
        envs.register(name, spec)
    torch_python, trl_python = str(envs.ensure("torch")), str(envs.ensure(TRL))
    env = envs.process_env("torch")

    small, model = work / "small", work / f"llama-{args.hidden}x{args.layers}"
    if not (small / "config.json").exists():
        sh(str(FTX), "init-model", "--arch", "llama", "--size", "small", "--out", str(small))
    if not (model / "config.json").exists():
        sh(torch_python, "-c", MAKE_MODEL, str(small), str(model), str(args.hidden),
           str(args.layers))  # fmt: skip
    params = _parameters(model)

    pairs = (ROOT / "recipes/data/quickstart_dpo_train.jsonl").read_text().splitlines()
    pairs = [json.loads(line) for line in pairs[: args.pairs]]
    (work / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    rows = [{"instruction": p["instruction"], "input": p["input"], "output": p[side]}
            for p in pairs for side in ("chosen", "rejected")]  # fmt: skip
    (work / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    columns = {"prompt": "instruction", "query": "input", "chosen": "chosen",
               "rejected": "rejected"}  # fmt: skip
    info = {"pairs": {"file_name": "pairs.jsonl", "ranking": True, "columns": columns},
            "rows": {"file_name": "rows.jsonl"}}  # fmt: skip
    (work / "dataset_info.json").write_text(json.dumps(info))

    def recipe(name: str, stage: str, finetuning: str, extra: str = "") -> Path:
        batch = args.batch if stage == "dpo" else 2 * args.batch
        path = work / f"{name}.yaml"
        path.write_text(
            f"model: {{path: {model}}}\n"
            f"data: {{dataset_dir: {work}, datasets: [{'pairs' if stage == 'dpo' else 'rows'}],"
            " max_seq_len: 64}\n"
            f"method: {{stage: {stage}, finetuning: {finetuning},"
            " lora: {rank: 8, alpha: 16, targets: all}" + extra + "}\n"
            f"train: {{epochs: 1, micro_batch_size: {batch}, learning_rate: 5.0e-4,"
            " scheduler: cosine, logging_steps: 10}\n"
        )
        return path

    def ftx(name: str, recipe_path: Path) -> list[str]:
        out = work / name
        run = [str(FTX), "-q", "run", str(recipe_path), "--out", str(out), "--force"]
        return [sys.executable, "-c", FTX_RUN, *run, str(out / "run.json")]

    dpo_lora = recipe("dpo-lora", "dpo", "lora")
    prepared = work / "prepared"
    if not (prepared / "manifest.json").exists():
        sh(str(FTX), "-q", "data", "prepare", str(dpo_lora), "--out", str(prepared))

    def trl(kind: str) -> list[str]:
        return [trl_python, "-c", TRL_DPO, str(prepared), str(model), kind, str(args.batch)]

    runs = [
        Run("ftx dpo lora (adapter off)", ftx("dpo-lora", dpo_lora)),
        Run("TRL DPOTrainer lora (adapter off)", trl("lora"), env=env),
        Run("ftx dpo full (frozen copy)", ftx("dpo-full", recipe("dpo-full", "dpo", "full"))),
        Run("TRL DPOTrainer full (frozen copy)", trl("full"), env=env),
        Run("ftx sft lora, same rows", ftx("sft-lora", recipe("sft-lora", "sft", "lora"))),
        Run("ftx sft full, same rows", ftx("sft-full", recipe("sft-full", "sft", "full"))),
        Run(
            "ftx dpo full (precomputed)",
            ftx(
                "dpo-pre",
                recipe("dpo-pre", "dpo", "full", ", preference: {reference: precomputed}"),
            ),
        ),
    ]
    if args.only:
        runs = [run for run in runs if args.only in run.label]
    started = machine()
    interleave(runs, args.repeats)

    def rate(run: Run) -> float:
        found = sorted(r["tokens"] / r["train_seconds"] for r in map(result, run.samples))
        return found[len(found) // 2]

    def loss(run: Run) -> float:
        return result(run.samples[0])["final_loss"]

    by = {run.label: run for run in runs}
    print(header(f"bench/train_dpo.py --pairs {args.pairs} --batch {args.batch}"
                 f" --repeats {args.repeats}", started))  # fmt: skip
    print(
        f"Torch on CPU: {params / 1e6:.1f}M-parameter random Llama ({args.hidden} x"
        f" {args.layers} layers), fp32, {args.pairs} preference pairs (max 64 tokens), one"
        f" epoch, batch {args.batch} pairs; medians of {args.repeats} interleaved runs\n"
    )
    print("| run | real tokens/s | vs TRL | peak RSS (MB) | final loss |")
    print("| --- | --- | --- | --- | --- |")
    versus = {"ftx dpo lora (adapter off)": "TRL DPOTrainer lora (adapter off)",
              "ftx dpo full (frozen copy)": "TRL DPOTrainer full (frozen copy)"}  # fmt: skip
    for run in runs:
        other = by.get(versus.get(run.label, ""))
        ratio = f"{rate(run) / rate(other):.2f}x" if other else ""
        print(f"| {run.label} | {rate(run):,.0f} | {ratio} | {run.peak_mb:,.0f} |"
              f" {loss(run):.4f} |")  # fmt: skip
    if len(by) == 7:
        lora = by["ftx dpo lora (adapter off)"].peak_mb / by["ftx sft lora, same rows"].peak_mb
        full = by["ftx dpo full (precomputed)"].peak_mb / by["ftx sft full, same rows"].peak_mb
        copy = by["ftx dpo full (frozen copy)"].peak_mb / by["ftx sft full, same rows"].peak_mb
        print(f"\npeak memory: LoRA DPO / LoRA SFT {lora:.2f}x; full DPO precomputed / full"
              f" SFT {full:.2f}x (a frozen copy: {copy:.2f}x)")  # fmt: skip


def result(sample: object) -> dict:
    """The JSON line a run prints last."""
    return json.loads(sample.output.strip().splitlines()[-1])  # type: ignore[attr-defined]


def _parameters(model: Path) -> int:
    """The parameter count, from the safetensors headers (ftx's reader; no framework)."""
    import numpy as np

    from ftx.core.convert.safetensors_stream import SafetensorsReader

    total = 0
    for file in model.glob("*.safetensors"):
        reader = SafetensorsReader(file)
        total += sum(int(np.prod(reader.info(name).shape)) for name in reader.names)
    return total


if __name__ == "__main__":
    main()

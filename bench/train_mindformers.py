"""The mindformers backend's overhead: ftx's mindformers worker, and MindFormers' own Trainer
under ftx, vs a plain MindSpore loop training the same MindFormers model on the same
MindRecord, on this machine's CPU.

    .venv/bin/python bench/train_mindformers.py [--rows 128] [--batch 4] [--repeats 3]
                                                [--workdir /tmp/ftx-bench-mindformers]

One recipe (llama "small", 3.4M parameters, fp32, alpaca-like rows, max_seq_len 256, one
epoch, micro batch --batch, no accumulation, no evaluation, no checkpoints) runs three
ways, interleaved (bench/harness.py), each --repeats times in a fresh process:
  ftx mindformers   `ftx run --backend mindformers` (the worker on the core's tokens)
  ftx native        `ftx run --backend mindformers --trainer native`: MindFormers' Trainer
                    (its run wrapper and Model.train loop, graph mode) on the core's tokens
  plain MindSpore   the loop a MindSpore user writes by hand (PLAIN_LOOP below): the model
                    built by MindFormers from the OUT/plan/finetune.yaml that same `ftx plan`
                    wrote, HF weights loaded, the plan's train.mindrecord read with
                    mindspore.dataset.MindDataset, MindFormers' AdamW and warm-up schedule,
                    value_and_grad under ms.jit, global-norm clipping; nothing else
Both sides train fixed rows of max_seq_len + 1 (the legacy model's causal mask is built
for seq_length), the same rows once. Measured: real (non-pad) tokens per second of the
training loop alone (ftx: OUT/logs/train_timing.json; the plain loop times its own loop,
after building the model and reading the weights on every side), median (min-max); the
ratio is each row / plain. Target: ftx >= 0.95x (overhead <= 5%).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FTX = Path(sys.executable).with_name("ftx")
sys.path.insert(0, str(ROOT / "bench"))

PLAIN_LOOP = """
import json, math, sys, time
from pathlib import Path
import mindspore as ms
import mindspore.dataset as ds
import numpy as np
from mindspore import Tensor, ops
from mindformers import MindFormerConfig
from mindformers.core.lr import build_lr
from mindformers.core.optim import AdamW
from ftx.backends.mindformers.modeling import build_model, cpu_profile, load_hf_weights

out = Path(sys.argv[1])
config = MindFormerConfig(str(out / "plan/finetune.yaml"))
cpu_profile(config)
ms.set_seed(config.seed)
net = build_model(config)
load_hf_weights(net, Path(config.load_checkpoint), config)
pad = config.model.model_config.pad_token_id
data = ds.MindDataset(str(out / "plan/data/train.mindrecord"), columns_list=["input_ids", "labels"],
                      shuffle=True).batch(config.runner_config.batch_size, drop_remainder=False)
steps = data.get_dataset_size()
settings = dict(config.lr_schedule)
settings["total_steps"] = steps
settings["warmup_steps"] = math.ceil(settings.pop("warmup_ratio", 0.0) * steps)
lr = build_lr(settings)
optimizer = AdamW(net.trainable_params(), learning_rate=lr, betas=tuple(config.optimizer.betas),
                  eps=config.optimizer.eps, weight_decay=config.optimizer.weight_decay)

def forward(ids, labels):
    return net(ids, labels)

grad = ms.jit(ms.value_and_grad(forward, None, optimizer.parameters))
clip = config.runner_wrapper.max_grad_norm

@ms.jit
def update(grads):
    return optimizer(ops.clip_by_global_norm(grads, clip))

net.set_train(True)
started = time.time()
for batch in data.create_dict_iterator(output_numpy=True):
    ids, labels = batch["input_ids"], batch["labels"]
    loss, grads = grad(Tensor(ids), Tensor(labels))
    update(ms.mutable(grads))  # one compiled update (a plain tuple recompiles per step)
seconds = time.time() - started
print(json.dumps({"train_seconds": seconds, "steps": steps, "final_loss": float(loss)}))
"""


def main() -> None:
    from harness import FTX_RUN, Run, header, interleave, machine, sh, training_bench

    args, model, data = training_bench(__doc__, 128, "/tmp/ftx-bench-mindformers", batch=4)
    work = args.workdir
    recipe = work / "bench.yaml"
    recipe.write_text(
        f"model: {{path: {model}, template: auto}}\n"
        f"data: {{datasets: [{data}], max_seq_len: 256, val_size: 0}}\n"
        "method: {finetuning: full}\n"
        f"train: {{epochs: 1, micro_batch_size: {args.batch}, learning_rate: 1.0e-3,"
        " logging_steps: 1000}\n"
    )
    native = work / "native-plan"
    shutil.rmtree(native, ignore_errors=True)
    sh(str(FTX), "-q", "plan", str(recipe), "--backend", "mindformers", "--out", str(native))

    sys.path.insert(0, str(ROOT))
    from ftx.core import envs

    python = envs.ensure("mindformers")
    env = {**envs.process_env("mindformers"), "LOCAL_DEFAULT_PATH": str(work / "plain-logs")}
    ftx_out = work / "ftx"
    ftx_run = [str(FTX), "-q", "run", str(recipe), "--backend", "mindformers"]
    native_out = work / "ftx-native"
    native_run = [*ftx_run, "--trainer", "native", "--out", str(native_out), "--force"]
    ftx_run += ["--out", str(ftx_out), "--force"]
    plain = work / "plain_loop.py"  # ms.jit compiles from source files only, not from -c
    plain.write_text(PLAIN_LOOP)
    runs = [
        Run(
            "ftx run --backend mindformers",
            [sys.executable, "-c", FTX_RUN, *ftx_run, str(ftx_out / "run.json")],
        ),
        Run(
            "ftx run --backend mindformers --trainer native",
            [sys.executable, "-c", FTX_RUN, *native_run, str(native_out / "run.json")],
        ),
        Run(
            "plain MindSpore loop (the same plan)",
            [str(python), str(plain), str(native)],
            env=env,
        ),
    ]
    started = machine()
    interleave(runs, args.repeats)

    def results(run: Run) -> list[dict]:
        return [json.loads(s.output.strip().splitlines()[-1]) for s in run.samples]

    ftx_found = results(runs[0])
    tokens = ftx_found[0]["tokens"]  # real tokens of the epoch: the same rows on both sides
    ftx_rates = sorted(r["tokens"] / r["train_seconds"] for r in ftx_found)
    native_rates = sorted(r["tokens"] / r["train_seconds"] for r in results(runs[1]))
    plain_rates = sorted(tokens / r["train_seconds"] for r in results(runs[2]))
    mid = args.repeats // 2
    title = f"bench/train_mindformers.py --rows {args.rows} --repeats {args.repeats}"
    print(header(title, started))
    print(
        f"MindFormers backend on CPU (mindspore 2.9.0, MindFormers 1.9.0): {args.rows}"
        f" alpaca-like rows ({tokens:,} real tokens), llama 'small' (3.4M parameters), fp32,"
        f" rows of 257 tokens, one epoch, batch {args.batch}; the training loop alone, median"
        f" (min-max) of {args.repeats} interleaved runs, {os.cpu_count()} CPUs\n"
    )
    print("| run | real tokens/s | ratio |")
    print("| --- | --- | --- |")
    for label, rates in zip(
        (run.label for run in runs), (ftx_rates, native_rates, plain_rates), strict=True
    ):
        print(
            f"| {label} | {rates[mid]:,.0f} ({rates[0]:,.0f}-{rates[-1]:,.0f}) |"
            f" {rates[mid] / plain_rates[mid]:.2f}x |"
        )


if __name__ == "__main__":
    main()

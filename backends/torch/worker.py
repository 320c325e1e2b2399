"""The torch worker: runs inside the torch environment, launched by torchrun.

    torchrun --standalone --nproc_per_node=1 -m ftx.backends.torch.worker OUT/plan/train_args.json

It reads the core's prepared data (numpy), trains with transformers + peft
(and DeepSpeed ZeRO when the plan has a ds_config.json) and writes the run
layout every backend shares: metrics.jsonl, checkpoints/, final/, eval.json.

Why a plain loop rather than transformers' Trainer: ftx must guarantee the
same example order on every backend, a loss normalised by the number of
learned tokens across gradient accumulation and ranks, the shared
metrics.jsonl schema, atomic checkpoints and a checkpoint on SIGTERM. Each of
those needs a Trainer subclass or callback; written out here they are one
screen of code you can follow top to bottom.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ftx.backends.torch.engines import (
    DeepSpeedEngine,
    PlainEngine,
    Rank,
    all_reduce_sum,
    deepspeed_config,
)
from ftx.backends.torch.evaluation import eval_loss, exact_match
from ftx.backends.torch.flops import flops_per_token, mfu, peak_flops
from ftx.backends.torch.modeling import collate, load_model, shifted_targets, token_loss_sum
from ftx.core.layout import RunLayout
from ftx.core.prepared import load_split, read_eval_prompts, read_manifest

IGNORE = -100


def micro_batch_order(
    n: int, per_step: int, epochs: float, max_micro_batches: int, seed: int
) -> list[list[int]]:
    """Example indices of every micro-batch of the run, over all ranks.

    Each epoch is a seeded permutation; ``per_step`` = micro batch * world size.
    The order depends only on the data and the seed, never on the backend.
    """
    per_epoch = math.ceil(n / per_step)
    total = max_micro_batches if max_micro_batches > 0 else math.ceil(epochs * per_epoch)
    batches: list[list[int]] = []
    epoch = 0
    while len(batches) < total:
        order = np.random.default_rng(seed + epoch).permutation(n).tolist()
        # Wrap around so every micro-batch is full and every rank gets its rows.
        order += order[: per_epoch * per_step - n]
        batches += [order[i : i + per_step] for i in range(0, len(order), per_step)]
        epoch += 1
    return batches[:total]


class StopRequested:
    """Set by SIGTERM/SIGINT; the loop saves a checkpoint and exits after the current step."""

    def __init__(self) -> None:
        self.signal: int | None = None
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, _frame: Any) -> None:
        self.signal = signum


def build_optimizer(model: Any, args: dict[str, Any]) -> torch.optim.Optimizer:
    """AdamW; no weight decay on biases and norm weights (as transformers does)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if param.ndim < 2 or "norm" in name else decay).append(param)
    return torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": args["weight_decay"]},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=args["learning_rate"],
        betas=(args["adam_beta1"], args["adam_beta2"]),
        eps=args["adam_epsilon"],
    )


def build_scheduler(optimizer: torch.optim.Optimizer, args: dict[str, Any], total: int) -> Any:
    from transformers import get_scheduler

    warmup = args["warmup_steps"] or math.ceil(args["warmup_ratio"] * total)
    kind = args["lr_scheduler_type"]
    name = "constant_with_warmup" if kind == "constant" else kind
    return get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total)


def score_exact_match(
    when: str,
    results: dict[str, Any],
    engine: Any,
    tokenizer: Any,
    prompts: list[dict[str, Any]],
    evaluate: dict[str, Any],
    layout: RunLayout,
) -> None:
    """Held-out exact match ``before`` or ``after`` training, into OUT/eval.json."""
    device = next(engine.inner.parameters()).device
    results[when] = exact_match(
        engine.inner,
        tokenizer,
        prompts,
        evaluate["max_new_tokens"],
        device,
        synced=engine.gathers_for_forward,
    )
    if engine.rank.main:
        write_json(layout.eval_json, results)
        score = results[when]["exact_match"]
        print(f"[ftx] exact match {when} training: {score:.3f}", flush=True)


def new_window() -> dict[str, float]:
    """Running sums between two logged steps."""
    return {"loss": 0.0, "learned": 0, "tokens": 0, "rows": 0, "start": time.time()}


# --------------------------------------------------------------------------- outputs


def write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def append_metrics(layout: RunLayout, row: dict[str, Any]) -> None:
    with layout.metrics.open("a") as handle:
        handle.write(json.dumps(row) + "\n")


def keep_metrics_until(layout: RunLayout, step: int) -> None:
    """On resume, drop logged rows past the checkpoint so the log reads as one run."""
    if not layout.metrics.exists():
        return
    rows = [json.loads(x) for x in layout.metrics.read_text().splitlines() if x.strip()]
    kept = "".join(json.dumps(r) + "\n" for r in rows if r.get("step", 0) <= step)
    tmp = layout.metrics.with_suffix(".tmp")
    tmp.write_text(kept)
    os.replace(tmp, layout.metrics)


def save_hf(engine: Any, tokenizer: Any, folder: Path) -> None:
    """HF format (the full model or the PEFT adapter, plus the tokenizer) on rank 0.

    A collective under ZeRO-3 (weights are gathered), so every rank calls it.
    """
    state = engine.export_state_dict()
    if engine.rank.main:
        kwargs = {"state_dict": state} if state is not None else {}
        engine.inner.save_pretrained(str(folder), safe_serialization=True, **kwargs)
        tokenizer.save_pretrained(str(folder))


def list_checkpoints(layout: RunLayout) -> list[Path]:
    """Complete checkpoints, oldest first."""
    found = [
        p for p in layout.checkpoints.glob("checkpoint-*") if (p / "trainer_state.json").exists()
    ]
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]))


def save_checkpoint(
    layout: RunLayout,
    step: int,
    engine: Any,
    tokenizer: Any,
    scheduler: Any,
    state: dict,
    keep: int | None,
) -> None:
    """checkpoint-<step>, written into a temporary folder and renamed when complete."""
    rank = engine.rank
    tmp = layout.checkpoints / f".checkpoint-{step}.partial"
    if rank.main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    rank.barrier()
    save_hf(engine, tokenizer, tmp)
    engine.save(tmp)
    rank.barrier()
    if rank.main:
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        rng = {
            "python": random.getstate(),
            "numpy": np.random.get_state(),
            "torch": torch.get_rng_state(),
        }
        torch.save(rng, tmp / "rng_state.pt")
        (tmp / "trainer_state.json").write_text(json.dumps({**state, "step": step}, indent=2))
        final = layout.checkpoints / f"checkpoint-{step}"
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in list_checkpoints(layout)[:-keep] if keep else []:
            shutil.rmtree(old, ignore_errors=True)
    rank.barrier()


def resume_point(setting: Any, layout: RunLayout) -> Path | None:
    """The checkpoint to resume from: 'auto' = the newest in OUT, a path, or None."""
    if not setting:
        return None
    if setting == "auto":
        found = list_checkpoints(layout)
        return found[-1] if found else None
    return Path(setting)


def load_checkpoint(folder: Path, engine: Any, scheduler: Any) -> dict[str, Any]:
    engine.load(folder)
    scheduler.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=True))
    rng = torch.load(folder / "rng_state.pt", weights_only=False)
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])
    return json.loads((folder / "trainer_state.json").read_text())


def write_final(layout: RunLayout, engine: Any, tokenizer: Any, merge_lora: bool) -> None:
    """OUT/final in HF format; final/merged too when asked (LoRA folded into the weights)."""
    tmp = layout.root / ".final.partial"
    if engine.rank.main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    engine.rank.barrier()
    save_hf(engine, tokenizer, tmp)
    if engine.rank.main:
        if merge_lora:
            merged = engine.inner.merge_and_unload()
            merged.save_pretrained(str(tmp / "merged"), safe_serialization=True)
            tokenizer.save_pretrained(str(tmp / "merged"))
        shutil.rmtree(layout.final, ignore_errors=True)
        os.replace(tmp, layout.final)


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    config_path = Path(argv[0]).resolve()
    plan_dir = config_path.parent
    cfg = json.loads(config_path.read_text())
    args = cfg["training_args"]
    layout = RunLayout(Path(args["output_dir"]))
    ds_config = deepspeed_config(plan_dir, cfg.get("deepspeed"))

    # 1. Processes, seeds, signals.
    rank = Rank.from_env()
    if rank.world > 1 or ds_config:
        import torch.distributed as dist

        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if ds_config:
            import deepspeed

            deepspeed.init_distributed(dist_backend=backend)
        else:
            dist.init_process_group(backend)
    if torch.cuda.is_available():
        torch.cuda.set_device(rank.local_rank)
    device = (
        torch.device("cuda", rank.local_rank) if torch.cuda.is_available() else torch.device("cpu")
    )
    torch.manual_seed(args["seed"])
    random.seed(args["seed"])
    np.random.seed(args["seed"] % 2**32)
    stop = StopRequested()

    # 2. Model, data, schedule.
    prepared = Path(cfg["data"]["prepared_dir"])
    pad_id = read_manifest(prepared)["pad_token_id"]
    train, val = load_split(prepared, "train"), load_split(prepared, "val")
    tokenizer, model = load_model(cfg, plan_dir, device, ds_config, packed=train.packed)
    mbs, ga = args["per_device_train_batch_size"], args["gradient_accumulation_steps"]
    max_micro = args["max_steps"] * ga if args["max_steps"] > 0 else -1
    batches = micro_batch_order(
        len(train), mbs * rank.world, args["num_train_epochs"], max_micro, args["data_seed"]
    )
    total_steps = math.ceil(len(batches) / ga)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    every = sum(p.numel() for p in model.parameters())
    peak = peak_flops(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
    config = getattr(model, "config", None)
    shape = (config.num_hidden_layers, config.hidden_size) if config is not None else None

    # 3. Optimizer, schedule and the engine that applies them.
    optimizer = build_optimizer(model, args)
    if ds_config:
        engine: Any = DeepSpeedEngine(model, optimizer, rank, ds_config)
    else:
        engine = PlainEngine(model, optimizer, rank, cfg["precision"], args["max_grad_norm"])
    scheduler = build_scheduler(engine.torch_optimizer, args, total_steps)

    step, tokens_seen = 0, 0
    checkpoint = resume_point(args["resume_from_checkpoint"], layout)
    if checkpoint is not None:
        state = load_checkpoint(checkpoint, engine, scheduler)
        step, tokens_seen = state["step"], state["tokens"]
        if rank.main:
            keep_metrics_until(layout, step)
            print(f"[ftx] resumed from {checkpoint} at step {step}", flush=True)

    # 4. Held-out exact match before training (every rank runs it under ZeRO-3).
    evaluate = cfg.get("evaluate")
    prompts = read_eval_prompts(prepared) if evaluate else []
    results = (
        json.loads(layout.eval_json.read_text()) if checkpoint and layout.eval_json.exists() else {}
    )
    scoring = rank.main or engine.gathers_for_forward
    if prompts and evaluate["before_training"] and "before" not in results and scoring:
        score_exact_match("before", results, engine, tokenizer, prompts, evaluate, layout)
    if rank.main:
        print(
            f"[ftx] training {trainable:,} of {every:,} parameters for {total_steps} steps",
            flush=True,
        )

    # 5. The loop: one optimizer step = grad_accum micro-batches on every rank.
    tensorboard = None
    if rank.main and cfg.get("report_to") == "tensorboard":
        from torch.utils.tensorboard import SummaryWriter

        tensorboard = SummaryWriter(str(layout.logs / "tensorboard"))
    engine.model.train()
    keep = args["save_total_limit"]
    train_started, steps_at_start, tokens_at_start = time.time(), step, tokens_seen
    window = new_window()
    while step < total_steps:
        micro = batches[step * ga : (step + 1) * ga]
        mine = [
            collate(train, b[rank.rank * mbs : (rank.rank + 1) * mbs], pad_id, device)
            for b in micro
        ]
        local = [
            float(sum(int((shifted_targets(c) != IGNORE).sum()) for c in mine)),
            float(sum(int(c["token_mask"].sum()) for c in mine)),
        ]
        learned, step_tokens = all_reduce_sum(local, rank)
        step_loss = 0.0
        for i, batch in enumerate(mine):
            with engine.forward_context(last_micro_batch=i == len(mine) - 1):
                loss_sum, _ = token_loss_sum(engine.model, batch)
            # Gradients are averaged over ranks, so scale by world for the global token mean.
            engine.backward(loss_sum * rank.world / max(learned, 1), i == len(mine) - 1)
            step_loss += float(loss_sum.detach())
        grad_norm = engine.step()
        scheduler.step()
        step += 1
        tokens_seen += int(step_tokens)
        (global_loss,) = all_reduce_sum([step_loss], rank)
        window["loss"] += global_loss
        window["learned"] += int(learned)
        window["tokens"] += int(step_tokens)
        window["rows"] += ga * mbs * rank.world

        if step % args["logging_steps"] == 0 or step == total_steps:
            elapsed = max(time.time() - window["start"], 1e-9)
            row = {
                "step": step,
                "epoch": round(step * ga * mbs * rank.world / len(train), 4),
                "loss": round(window["loss"] / max(window["learned"], 1), 6),
                "lr": scheduler.get_last_lr()[0],
                "grad_norm": round(grad_norm, 6),
                "tokens": tokens_seen,
                "tokens_per_s": round(window["tokens"] / elapsed, 1),
                "backend": "torch",
            }
            if peak and shape:
                mean_len = window["tokens"] / max(1, window["rows"])
                per_token = flops_per_token(every, *shape, mean_len, full=trainable == every)
                row["mfu"] = round(mfu(row["tokens_per_s"] / rank.world, per_token, peak), 4)
            if val is not None and args["eval_steps"] and step % args["eval_steps"] == 0:
                row["eval_loss"] = round(
                    eval_loss(engine, val, args["per_device_eval_batch_size"], pad_id, device), 6
                )
            if rank.main:
                append_metrics(layout, row)
                if tensorboard is not None:
                    for key, value in row.items():
                        if key not in ("step", "backend"):
                            tensorboard.add_scalar(f"train/{key}", value, step)
                print(
                    f"[ftx] step {step}/{total_steps} loss {row['loss']:.4f} lr {row['lr']:.2e}",
                    flush=True,
                )
            window = new_window()

        if args["save_steps"] and step % args["save_steps"] == 0:
            save_checkpoint(
                layout, step, engine, tokenizer, scheduler, {"tokens": tokens_seen}, keep
            )
        if stop.signal is not None:
            break

    # A signal that arrived during any step, the last one included, stops here with a checkpoint.

    if stop.signal is not None:
        if not (args["save_steps"] and step % args["save_steps"] == 0):
            save_checkpoint(
                layout, step, engine, tokenizer, scheduler, {"tokens": tokens_seen}, keep
            )
        if rank.main:
            print(
                f"[ftx] stopped by signal {stop.signal} at step {step}; checkpoint saved",
                flush=True,
            )
        return 128 + stop.signal

    if rank.main:
        timing = {
            "train_seconds": round(time.time() - train_started, 3),
            "steps": step - steps_at_start,
            "tokens": tokens_seen - tokens_at_start,
        }
        write_json(layout.logs / "train_timing.json", timing)

    # 6. Final eval loss, exact match after training, the HF output.
    if val is not None and not (args["eval_steps"] and step % args["eval_steps"] == 0):
        final_eval = eval_loss(engine, val, args["per_device_eval_batch_size"], pad_id, device)
        if rank.main:
            append_metrics(
                layout, {"step": step, "eval_loss": round(final_eval, 6), "backend": "torch"}
            )
    if prompts and scoring:
        score_exact_match("after", results, engine, tokenizer, prompts, evaluate, layout)
    if tensorboard is not None:
        tensorboard.close()
    write_final(layout, engine, tokenizer, cfg["method"]["merge_lora"])
    rank.barrier()
    return 0


if __name__ == "__main__":
    sys.exit(main())

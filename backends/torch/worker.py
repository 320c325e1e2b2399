"""The torch worker: runs inside the torch environment, launched by torchrun.

    torchrun --standalone --nproc_per_node=1 -m ftx.backends.torch.worker OUT/plan/train_args.json

It reads the core's prepared data (numpy), trains with transformers + peft and
writes the run layout every backend shares (metrics.jsonl, checkpoints/,
final/, eval.json).

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from ftx.core.layout import RunLayout
from ftx.core.prepared import PreparedSplit, load_split, read_eval_prompts, read_manifest

IGNORE = -100


# --------------------------------------------------------------------------- setup


@dataclass(frozen=True)
class Rank:
    """This process's place in the job (torchrun's environment variables)."""

    rank: int
    world: int
    local_rank: int

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> Rank:
        return cls(
            int(os.environ.get("RANK", 0)),
            int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)),
        )


def device_for(rank: Rank) -> torch.device:
    if torch.cuda.is_available():
        torch.cuda.set_device(rank.local_rank)
        return torch.device("cuda", rank.local_rank)
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def load_model(cfg: dict[str, Any], plan_dir: Path, device: torch.device) -> tuple[Any, Any]:
    """Tokenizer and model, with the fine-tuning method applied."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_cfg, method = cfg["model"], cfg["method"]
    path = model_cfg["model_name_or_path"]
    tokenizer = AutoTokenizer.from_pretrained(
        path, trust_remote_code=model_cfg["trust_remote_code"]
    )
    model = AutoModelForCausalLM.from_pretrained(
        path,
        dtype=getattr(torch, model_cfg["torch_dtype"]),
        trust_remote_code=model_cfg["trust_remote_code"],
    ).to(device)
    kind = method["finetuning_type"]
    if kind == "lora":
        from peft import LoraConfig, get_peft_model

        peft_kwargs = json.loads((plan_dir / method["peft_config"]).read_text())
        model = get_peft_model(model, LoraConfig(**peft_kwargs))
    elif kind == "freeze":
        freeze_layers(model, method["freeze_trainable_layers"])
    if cfg["training_args"]["gradient_checkpointing"]:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if kind == "lora":
            model.enable_input_require_grads()
        model.config.use_cache = False
    return tokenizer, model


def freeze_layers(model: Any, trainable: int) -> None:
    """Train only the last ``trainable`` decoder layers (the first ones when negative)."""
    layers = model.model.layers
    keep = range(len(layers) - trainable, len(layers)) if trainable > 0 else range(-trainable)
    for param in model.parameters():
        param.requires_grad = False
    for index in keep:
        for param in layers[index].parameters():
            param.requires_grad = True


# --------------------------------------------------------------------------- data


def micro_batch_order(
    n: int, per_step: int, epochs: float, max_steps: int, seed: int
) -> list[list[int]]:
    """Example indices of every micro-batch of the run, over all ranks.

    Each epoch is a seeded permutation; ``per_step`` = micro batch * world size.
    The order depends only on the data and the seed, never on the backend.
    """
    per_epoch = math.ceil(n / per_step)
    total = max_steps if max_steps > 0 else math.ceil(epochs * per_epoch)
    batches: list[list[int]] = []
    epoch = 0
    while len(batches) < total:
        order = np.random.default_rng(seed + epoch).permutation(n).tolist()
        # Wrap around so every micro-batch is full and every rank gets mbs rows.
        order += order[: per_epoch * per_step - n]
        batches += [order[i : i + per_step] for i in range(0, len(order), per_step)]
        epoch += 1
    return batches[:total]


def collate(
    split: PreparedSplit, indices: list[int], pad_id: int, device: torch.device
) -> dict[str, torch.Tensor]:
    """Pad a micro-batch to its longest example (labels -100 on padding)."""
    rows = [split[i] for i in indices]
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    for r, (ids, lab) in enumerate(rows):
        input_ids[r, : len(ids)] = torch.from_numpy(ids.astype(np.int64))
        labels[r, : len(lab)] = torch.from_numpy(lab.astype(np.int64))
        attention[r, : len(ids)] = 1
    return {
        "input_ids": input_ids.to(device),
        "labels": labels.to(device),
        "attention_mask": attention.to(device),
    }


def token_loss_sum(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Sum of next-token cross-entropy over learned tokens, and their count."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    targets = batch["labels"][:, 1:]
    loss = torch.nn.functional.cross_entropy(
        logits[:, :-1].float().reshape(-1, logits.size(-1)),
        targets.reshape(-1),
        ignore_index=IGNORE,
        reduction="sum",
    )
    return loss, int((targets != IGNORE).sum())


def all_reduce_sum(values: list[float], rank: Rank) -> list[float]:
    if rank.world == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(tensor)
    return tensor.tolist()


# --------------------------------------------------------------------------- checkpoints


def unwrap(model: Any) -> Any:
    return model.module if hasattr(model, "module") else model


def save_model(model: Any, tokenizer: Any, folder: Path) -> None:
    """HF format: the full model, or the PEFT adapter; plus the tokenizer."""
    unwrap(model).save_pretrained(str(folder), safe_serialization=True)
    tokenizer.save_pretrained(str(folder))


def save_checkpoint(
    layout: RunLayout,
    step: int,
    model: Any,
    tokenizer: Any,
    optimizer: Any,
    scheduler: Any,
    state: dict[str, Any],
    keep: int | None,
) -> Path:
    """Write checkpoint-<step> atomically (temporary folder, then rename); prune old ones."""
    final = layout.checkpoints / f"checkpoint-{step}"
    tmp = layout.checkpoints / f".checkpoint-{step}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_model(model, tokenizer, tmp)
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    torch.save(
        {
            "python": random.getstate(),
            "numpy": np.random.get_state(),
            "torch": torch.get_rng_state(),
        },
        tmp / "rng_state.pt",
    )
    (tmp / "trainer_state.json").write_text(json.dumps({**state, "step": step}, indent=2))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    if keep:
        for old in list_checkpoints(layout)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(layout: RunLayout) -> list[Path]:
    """Complete checkpoints, oldest first."""
    found = [
        p for p in layout.checkpoints.glob("checkpoint-*") if (p / "trainer_state.json").exists()
    ]
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]))


def resume_from(setting: Any, layout: RunLayout) -> Path | None:
    """The checkpoint to resume from: 'auto' = newest in OUT, a path, or None."""
    if not setting:
        return None
    if setting == "auto":
        found = list_checkpoints(layout)
        return found[-1] if found else None
    return Path(setting)


def load_checkpoint(folder: Path, model: Any, optimizer: Any, scheduler: Any) -> dict[str, Any]:
    from safetensors.torch import load_file

    inner = unwrap(model)
    if (folder / "adapter_model.safetensors").exists():
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(inner, load_file(str(folder / "adapter_model.safetensors")))
    else:
        state = {}
        for shard in sorted(folder.glob("model*.safetensors")):
            state.update(load_file(str(shard)))
        missing, unexpected = inner.load_state_dict(state, strict=False)
        if unexpected or [m for m in missing if "lm_head" not in m]:
            raise RuntimeError(
                f"checkpoint {folder} does not match the model: {missing[:3]} {unexpected[:3]}"
            )
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=True))
    rng = torch.load(folder / "rng_state.pt", weights_only=False)
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])
    return json.loads((folder / "trainer_state.json").read_text())


# --------------------------------------------------------------------------- evaluation


@torch.no_grad()
def eval_loss(
    model: Any, split: PreparedSplit, batch_size: int, pad_id: int, device: torch.device, rank: Rank
) -> float:
    """Token-weighted loss over a split, sharded over ranks."""
    model.eval()
    total, count = 0.0, 0
    indices = list(range(rank.rank, len(split), rank.world))
    for i in range(0, len(indices), batch_size):
        loss, n = token_loss_sum(model, collate(split, indices[i : i + batch_size], pad_id, device))
        total, count = total + float(loss), count + n
    model.train()
    total, count = all_reduce_sum([total, float(count)], rank)
    return total / max(count, 1)


@torch.no_grad()
def exact_match(
    model: Any,
    tokenizer: Any,
    prompts: list[dict[str, Any]],
    max_new_tokens: int,
    device: torch.device,
    batch_size: int = 32,
) -> dict[str, Any]:
    """Greedy generation on held-out prompts; share of answers equal to the reference."""
    inner = unwrap(model)
    inner.eval()
    stop = {tokenizer.eos_token_id}
    gen_eos = getattr(inner.generation_config, "eos_token_id", None)
    stop |= set(gen_eos if isinstance(gen_eos, list) else [gen_eos])
    stop.discard(None)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    hits, samples = 0, []
    for start in range(0, len(prompts), batch_size):
        rows = prompts[start : start + batch_size]
        width = max(len(r["input_ids"]) for r in rows)
        # Left padding, so every prompt ends where generation starts.
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, width - len(r["input_ids"]) :] = torch.tensor(r["input_ids"])
            mask[i, width - len(r["input_ids"]) :] = 1
        out = inner.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=sorted(stop),
            pad_token_id=pad,
        )
        for i, r in enumerate(rows):
            answer = tokenizer.decode(out[i, width:], skip_special_tokens=True).strip()
            hit = answer == r["reference"].strip()
            hits += hit
            if len(samples) < 5:
                samples.append({"reference": r["reference"], "answer": answer, "match": hit})
    inner.train()
    return {
        "exact_match": hits / max(len(prompts), 1),
        "examples": len(prompts),
        "samples": samples,
    }


# --------------------------------------------------------------------------- main


class StopRequested:
    """Set by SIGTERM/SIGINT; the loop saves a checkpoint and exits at the next step."""

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


def build_scheduler(
    optimizer: torch.optim.Optimizer, args: dict[str, Any], total_steps: int
) -> Any:
    from transformers import get_scheduler

    warmup = args["warmup_steps"] or math.ceil(args["warmup_ratio"] * total_steps)
    name = (
        "constant_with_warmup"
        if args["lr_scheduler_type"] == "constant"
        else args["lr_scheduler_type"]
    )
    return get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    config_path = Path(argv[0]).resolve()
    cfg = json.loads(config_path.read_text())
    args = cfg["training_args"]
    layout = RunLayout(Path(args["output_dir"]))
    rank = Rank.from_env()
    if rank.world > 1:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    device = device_for(rank)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    seed_everything(args["seed"])
    stop = StopRequested()

    tokenizer, model = load_model(cfg, config_path.parent, device)
    prepared = Path(cfg["data"]["prepared_dir"])
    manifest = read_manifest(prepared)
    pad_id = manifest["pad_token_id"]
    train, val = load_split(prepared, "train"), load_split(prepared, "val")
    mbs, ga = args["per_device_train_batch_size"], args["gradient_accumulation_steps"]
    batches = micro_batch_order(
        len(train),
        mbs * rank.world,
        args["num_train_epochs"],
        args["max_steps"] * ga if args["max_steps"] > 0 else -1,
        args["data_seed"],
    )
    total_steps = math.ceil(len(batches) / ga)

    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total_params = sum(p.numel() for p in model.parameters())
    if rank.world > 1:
        model = torch.nn.parallel.DistributedDataParallel(model)
    optimizer = build_optimizer(model, args)
    scheduler = build_scheduler(optimizer, args, total_steps)
    autocast_dtype = torch.bfloat16 if args["bf16"] else torch.float16 if args["fp16"] else None
    scaler = torch.amp.GradScaler(device.type, enabled=bool(args["fp16"]))

    step, tokens_seen = 0, 0
    checkpoint = resume_from(args["resume_from_checkpoint"], layout)
    if checkpoint is not None:
        state = load_checkpoint(checkpoint, model, optimizer, scheduler)
        step, tokens_seen = state["step"], state["tokens"]
        if rank.main:
            keep_metrics_until(layout, step)
            print(f"[ftx] resumed from {checkpoint} at step {step}", flush=True)

    evaluate = cfg.get("evaluate")
    prompts = read_eval_prompts(prepared) if evaluate else []
    results: dict[str, Any] = (
        json.loads(layout.eval_json.read_text()) if checkpoint and layout.eval_json.exists() else {}
    )
    if rank.main and prompts and evaluate["before_training"] and "before" not in results:
        results["before"] = exact_match(
            model, tokenizer, prompts, evaluate["max_new_tokens"], device
        )
        write_json(layout.eval_json, results)
        print(
            f"[ftx] exact match before training: {results['before']['exact_match']:.3f}", flush=True
        )

    if rank.main:
        print(
            f"[ftx] training {trainable:,} of {total_params:,} parameters for {total_steps} steps",
            flush=True,
        )
    model.train()
    window_loss, window_tokens, window_all_tokens, window_start = 0.0, 0, 0, time.time()
    while step < total_steps:
        micro = batches[step * ga : (step + 1) * ga]
        mine = [b[rank.rank * mbs : (rank.rank + 1) * mbs] for b in micro]
        collated = [collate(train, b, pad_id, device) for b in mine]
        local_learned = sum(int((c["labels"][:, 1:] != IGNORE).sum()) for c in collated)
        local_tokens = sum(int(c["attention_mask"].sum()) for c in collated)
        learned, step_tokens = all_reduce_sum([float(local_learned), float(local_tokens)], rank)
        step_loss = 0.0
        for i, batch in enumerate(collated):
            sync = i == len(collated) - 1 or rank.world == 1
            context = model.no_sync() if (rank.world > 1 and not sync) else _null()
            with (
                context,
                torch.autocast(
                    device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None
                ),
            ):
                loss_sum, _ = token_loss_sum(model, batch)
            # DDP averages gradients over ranks, so scale by world to get the global token mean.
            scaler.scale(loss_sum * rank.world / max(learned, 1)).backward()
            step_loss += float(loss_sum.detach())
        scaler.unscale_(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(
            [p for p in model.parameters() if p.requires_grad],
            args["max_grad_norm"] or float("inf"),
        )
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        tokens_seen += int(step_tokens)
        (global_loss,) = all_reduce_sum([step_loss], rank)
        window_loss += global_loss
        window_tokens += int(learned)
        window_all_tokens += int(step_tokens)

        if step % args["logging_steps"] == 0 or step == total_steps:
            elapsed = time.time() - window_start
            row = {
                "step": step,
                "epoch": round(step * ga * mbs * rank.world / len(train), 4),
                "loss": round(window_loss / max(window_tokens, 1), 6),
                "lr": scheduler.get_last_lr()[0],
                "grad_norm": round(float(grad_norm), 6),
                "tokens": tokens_seen,
                "tokens_per_s": round(window_all_tokens / max(elapsed, 1e-9), 1),
                "backend": "torch",
            }
            window_loss, window_tokens, window_all_tokens, window_start = 0.0, 0, 0, time.time()
            if val is not None and args["eval_steps"] and step % args["eval_steps"] == 0:
                row["eval_loss"] = round(
                    eval_loss(model, val, args["per_device_eval_batch_size"], pad_id, device, rank),
                    6,
                )
            if rank.main:
                append_metrics(layout, row)
                print(
                    f"[ftx] step {step}/{total_steps} loss {row['loss']:.4f} lr {row['lr']:.2e}",
                    flush=True,
                )

        stopping = stop.signal is not None
        if (args["save_steps"] and step % args["save_steps"] == 0) or stopping:
            if rank.main:
                save_checkpoint(
                    layout,
                    step,
                    model,
                    tokenizer,
                    optimizer,
                    scheduler,
                    {"tokens": tokens_seen},
                    args["save_total_limit"],
                )
            if stopping:
                if rank.main:
                    print(
                        f"[ftx] stopped by signal {stop.signal} at step {step}; checkpoint saved",
                        flush=True,
                    )
                return 128 + stop.signal

    if val is not None:
        final_eval = eval_loss(model, val, args["per_device_eval_batch_size"], pad_id, device, rank)
        if rank.main:
            append_metrics(
                layout, {"step": step, "eval_loss": round(final_eval, 6), "backend": "torch"}
            )
    if rank.main:
        if prompts:
            results["after"] = exact_match(
                model, tokenizer, prompts, evaluate["max_new_tokens"], device
            )
            write_json(layout.eval_json, results)
            print(
                f"[ftx] exact match after training: {results['after']['exact_match']:.3f}",
                flush=True,
            )
        write_final(layout, model, tokenizer, cfg)
    if rank.world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return 0


class _null:
    """A do-nothing context manager (DDP's no_sync where it is not needed)."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


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


def write_final(layout: RunLayout, model: Any, tokenizer: Any, cfg: dict[str, Any]) -> None:
    """OUT/final in HF format (model or adapter + tokenizer); final/merged when asked."""
    tmp = layout.root / ".final.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_model(model, tokenizer, tmp)
    if cfg["method"]["merge_lora"]:
        merged = unwrap(model).merge_and_unload()
        merged.save_pretrained(str(tmp / "merged"), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp / "merged"))
    shutil.rmtree(layout.final, ignore_errors=True)
    os.replace(tmp, layout.final)


if __name__ == "__main__":
    sys.exit(main())

"""The torch backend for real: tiny models, real torchrun, outputs loaded by transformers/peft."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import ROOT, run_ftx, run_in_env

DATA = ROOT / "recipes" / "data"

LOAD_AND_COMPARE = """
import json, sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained(sys.argv[1])
tok = AutoTokenizer.from_pretrained(sys.argv[1])
ids = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True)
ids = ids if isinstance(ids, list) else ids["input_ids"]
logits = model(torch.tensor([ids])).logits
print(json.dumps({"finite": bool(torch.isfinite(logits).all()), "vocab": logits.shape[-1],
                  "n_params": sum(p.numel() for p in model.parameters()),
                  "chat_template": bool(tok.chat_template)}))
"""


@pytest.mark.parametrize("arch", ["tiny_llama", "tiny_qwen2"])
def test_init_model_loads_in_transformers(arch: str, request) -> None:
    model = request.getfixturevalue(arch)
    found = run_in_env("torch", LOAD_AND_COMPARE, str(model))
    config = json.loads((model / "config.json").read_text())
    assert found["finite"] and found["chat_template"]
    assert found["vocab"] == config["vocab_size"]


def lora_recipe(tmp_path: Path, model: Path) -> Path:
    recipe = tmp_path / "lora.yaml"
    recipe.write_text(
        f"""
model: {{path: {model}}}
data:
  dataset_dir: {DATA}
  datasets: [sharegpt_demo, alpaca_demo]
  max_seq_len: 128
  val_size: 2
method:
  finetuning: lora
  lora: {{rank: 4, alpha: 8, targets: [q_proj, v_proj]}}
train:
  max_steps: 6
  learning_rate: 1.0e-2
  micro_batch_size: 2
  grad_accum: 2
  logging_steps: 2
  eval_steps: 2
  save_steps: 3
  save_total_limit: 1
output:
  dir: {tmp_path / "out"}
  merge_lora: true
"""
    )
    return recipe


LOAD_ADAPTER = """
import json, sys, torch
from transformers import AutoModelForCausalLM
from peft import PeftModel
base = AutoModelForCausalLM.from_pretrained(sys.argv[1])
x = torch.tensor([[5, 6, 7, 8, 9]])
before = base(x).logits
model = PeftModel.from_pretrained(base, sys.argv[2])
adapted = model(x).logits
merged = AutoModelForCausalLM.from_pretrained(sys.argv[2] + "/merged")(x).logits
print(json.dumps({"changed": float((adapted - before).abs().max()),
                  "merged_diff": float((adapted - merged).abs().max()),
                  "targets": sorted(model.peft_config["default"].target_modules)}))
"""


def test_lora_run_on_sharegpt_and_alpaca(tmp_path: Path, tiny_qwen2: Path) -> None:
    result = run_ftx("run", str(lora_recipe(tmp_path, tiny_qwen2)), "--backend", "torch")
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "out"
    final = out / "final"
    assert (final / "adapter_config.json").exists() and (
        final / "adapter_model.safetensors"
    ).exists()
    assert (final / "tokenizer.json").exists() and (final / "merged" / "config.json").exists()
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    assert [r["step"] for r in steps] == [2, 4, 6]
    for row in steps:
        assert {"step", "loss", "lr", "tokens", "tokens_per_s", "backend", "grad_norm"} <= set(row)
        assert row["backend"] == "torch" and row["tokens_per_s"] > 0
    assert any("eval_loss" in r for r in rows)
    assert steps[-1]["tokens"] > steps[0]["tokens"]
    # save_steps 3, keep 1: only the newest checkpoint remains, complete.
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-6"]
    assert (out / "checkpoints/checkpoint-6/optimizer.pt").exists()
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "completed" and run["steps"] == 6 and run["backend"] == "torch"
    assert run["framework_versions"]["torch"].startswith("2.13.0")
    assert run["final_loss"] == steps[-1]["loss"] and run["wall_time_s"] > 0
    assert (out / "plan" / "peft_config.json").exists() and (out / "logs" / "launch.log").exists()
    found = run_in_env("torch", LOAD_ADAPTER, str(tiny_qwen2), str(final))
    assert found["changed"] > 1e-4  # the adapter learned something
    assert found["merged_diff"] < 1e-4  # merged weights reproduce base + adapter
    assert found["targets"] == ["q_proj", "v_proj"]


def test_freeze_and_pt_stage(tmp_path: Path, tiny_llama: Path) -> None:
    text = tmp_path / "corpus.txt"
    text.write_text(
        "\n".join(f"line {i}: the quick brown fox jumps over the lazy dog" for i in range(60))
    )
    recipe = tmp_path / "pt.yaml"
    recipe.write_text(
        f"""
model: {{path: {tiny_llama}}}
data: {{datasets: [{{path: {text}, format: text}}], max_seq_len: 64}}
method: {{stage: pt, finetuning: freeze, freeze: {{trainable_layers: 1}}}}
train: {{max_steps: 4, learning_rate: 1.0e-3, micro_batch_size: 4, logging_steps: 1}}
output: {{dir: {tmp_path / "out"}}}
"""
    )
    result = run_ftx("run", str(recipe))
    assert result.returncode == 0, result.stderr[-3000:]
    log = (tmp_path / "out/logs/launch.log").read_text()
    # 2 layers, 1 trainable: one decoder layer's parameters only
    assert "training 184,576 of 569,472 parameters" in log
    found = run_in_env("torch", LOAD_AND_COMPARE, str(tmp_path / "out/final"))
    assert found["finite"]


READ_EVENTS = """
import json, sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
acc = EventAccumulator(sys.argv[1]); acc.Reload()
print(json.dumps({tag: [e.value for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}))
"""


def test_dora_tensorboard_and_report(tmp_path: Path, tiny_llama: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"""
model: {{path: {tiny_llama}}}
data:
  datasets: [{ROOT / "recipes/data/quickstart_train.jsonl"}]
  max_seq_len: 64
  max_samples: 40
  val_size: 8
method: {{finetuning: lora, lora: {{rank: 4, dora: true}}}}
train: {{max_steps: 4, micro_batch_size: 4, logging_steps: 1, eval_steps: 2, learning_rate: 1.0e-3}}
output: {{dir: {tmp_path / "out"}, report_to: tensorboard}}
"""
    )
    result = run_ftx("run", str(recipe))
    assert result.returncode == 0, result.stderr[-2000:]
    adapter = json.loads((tmp_path / "out/final/adapter_config.json").read_text())
    assert adapter["use_dora"] is True and adapter["r"] == 4
    events = run_in_env("torch", READ_EVENTS, str(tmp_path / "out/logs/tensorboard"))
    assert len(events["train/loss"]) == 4 and len(events["train/eval_loss"]) == 2
    report = run_ftx("report", str(tmp_path / "out"))
    assert report.returncode == 0, report.stderr
    png = tmp_path / "out/loss.png"
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (960, 540)
    empty = run_ftx("report", str(tmp_path))
    assert empty.returncode == 2 and "no logged steps" in empty.stderr

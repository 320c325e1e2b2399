"""Preference training on the one loop (method.stage dpo), torch first: the first step of a
policy equal to its reference, every loss against its formula computed apart in plain
torch, the three references (adapter off, a frozen copy, precomputed), metrics, resume."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from conftest import run_ftx, run_in_env
from training import PAIRS, interrupted_run, losses, pairs_recipe, rows, train

pytestmark = pytest.mark.env

KEYS = {"rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
        "logps/chosen", "logps/rejected"}  # fmt: skip


def test_dpo_starts_at_ln2_with_zero_rewards_and_learns(tmp_path: Path, tiny_llama: Path) -> None:
    """LoRA: the reference is the base with the adapter off, equal to the policy at first."""
    out = train(pairs_recipe(tmp_path, tiny_llama, steps=6), tmp_path / "out", "torch")
    first, *later = [r for r in rows(out) if "loss" in r]
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert set(first) >= KEYS
    assert first["rewards/chosen"] == first["rewards/rejected"] == first["rewards/margins"] == 0
    assert first["logps/chosen"] < 0 and first["logps/rejected"] < 0
    assert any(r["rewards/margins"] != 0 for r in later)  # the policy left its reference
    assert any("eval_loss" in r for r in rows(out))
    final = out / "final"
    config = json.loads((final / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA"
    manifest = json.loads((out / "data/manifest.json").read_text())
    assert manifest["splits"]["train"]["pairs"] == PAIRS - 8


def test_a_frozen_copy_and_precomputed_log_probs_are_the_same_reference(
    tmp_path: Path, tiny_llama: Path
) -> None:
    """Full fine-tuning: the reference as a frozen copy of the model, or its log-probs
    written before training (one model held): the same run, row for row."""
    path = pairs_recipe(tmp_path, tiny_llama)
    full = ["method.finetuning=full"]
    copy = train(path, tmp_path / "copy", "torch", *full)
    kept = train(path, tmp_path / "kept", "torch", *full, "method.preference.reference=precomputed")
    assert [r["loss"] for r in rows(copy) if "loss" in r] == pytest.approx(
        [r["loss"] for r in rows(kept) if "loss" in r], abs=1e-6
    )
    assert rows(copy)[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    found = run_in_env(
        "torch",
        "import json, sys, numpy as np; a = np.load(sys.argv[1]);"
        "print(json.dumps({'shape': list(a.shape), 'negative': bool((a < 0).all())}))",
        str(kept / "data/train/reference_logps.npy"),
    )
    assert found == {"shape": [PAIRS - 8, 2], "negative": True}


FORMULAS = """
import json, math, sys, torch
import torch.nn.functional as F
from pathlib import Path
from transformers import AutoModelForCausalLM
from ftx.core.prepared import load_split
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32).eval()
split = load_split(Path(sys.argv[2]), "train")
def row_logps(ids, labels):
    with torch.no_grad():
        logits = model(torch.tensor([ids.astype("int64")])).logits[0, :-1].float()
    targets = torch.tensor(labels[1:].astype("int64"))
    mask = targets != -100
    picked = torch.log_softmax(logits, -1)[torch.arange(len(targets)), targets.clamp(min=0)]
    return float(picked[mask].sum()), int(mask.sum())
pc, pr, nc, nr = [], [], [], []
for i in range(len(split)):
    (ci, cl), (ri, rl) = split[i]
    a, n = row_logps(ci, cl); b, m = row_logps(ri, rl)
    pc.append(a); nc.append(n); pr.append(b); nr.append(m)
pc, pr, nc, nr = map(lambda x: torch.tensor(x, dtype=torch.float64), (pc, pr, nc, nr))
beta, gamma, weight = 0.1, 0.5, 0.5
ac, ar = pc / nc, pr / nr
odds = (ac - ar) - (torch.log1p(-torch.exp(ac)) - torch.log1p(-torch.exp(ar)))
print(json.dumps({
    "sigmoid": math.log(2),
    "sigmoid_sft": float((math.log(2) - weight * ac).mean()),
    "ipo": (1 / (2 * beta)) ** 2,
    "hinge": 1.0,
    "simpo": float((-F.logsigmoid(beta * (ac - ar) - gamma)).mean()),
    "orpo": float((-ac - beta * F.logsigmoid(odds)).mean()),
    "simpo_margin": float((beta * (ac - ar)).mean()),
}))
"""


def test_every_loss_starts_where_its_formula_says(tmp_path: Path, tiny_llama: Path) -> None:
    """One step over every training pair (micro batch = the set): the first loss of each
    loss type equals its formula over log-probs computed apart in plain transformers."""
    path = pairs_recipe(tmp_path, tiny_llama, steps=1)
    text = path.read_text().replace("micro_batch_size: 4", f"micro_batch_size: {PAIRS - 8}")
    path.write_text(text.replace("grad_accum: 2", "grad_accum: 1"))
    runs = {
        "sigmoid": [],
        "sigmoid_sft": ["method.preference.sft_weight=0.5"],
        "ipo": ["method.preference.loss=ipo"],
        "hinge": ["method.preference.loss=hinge"],
        "simpo": ["method.preference.loss=simpo"],
        "orpo": ["method.preference.loss=orpo"],
    }
    first = {}
    for name, overrides in runs.items():
        out = train(path, tmp_path / name, "torch", *overrides)
        first[name] = rows(out)[0]
    expected = run_in_env("torch", FORMULAS, str(tiny_llama), str(tmp_path / "sigmoid/data"))
    for name in runs:
        assert first[name]["loss"] == pytest.approx(expected[name], abs=2e-6), name
    assert first["simpo"]["rewards/margins"] == pytest.approx(expected["simpo_margin"], abs=2e-6)


def test_sigterm_and_resume_continue_a_dpo_run_identically(
    tmp_path: Path, tiny_llama: Path
) -> None:
    path = pairs_recipe(tmp_path, tiny_llama, steps=16)
    reference = train(path, tmp_path / "reference", "torch")
    out = tmp_path / "interrupted"
    interrupted_run(path, out, "torch")
    train(path, out, "torch", "train.resume=auto")
    assert losses(out) == pytest.approx(losses(reference), abs=1e-5)
    margins = [r["rewards/margins"] for r in rows(out) if "loss" in r]
    assert margins == pytest.approx([r["rewards/margins"] for r in rows(reference) if "loss" in r],
                                    abs=1e-5)  # fmt: skip


def test_backends_without_a_preference_stage_refuse_it(tmp_path: Path, tiny_llama: Path) -> None:
    path = pairs_recipe(tmp_path, tiny_llama)
    path.write_text(path.read_text().replace("stage: dpo", "stage: rm"))
    refused = run_ftx("validate", str(path), "--backend", "mindformers")
    assert refused.returncode == 2 and "method.stage: 'rm'" in refused.stderr, refused.stderr

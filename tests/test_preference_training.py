"""Preference training on the one loop (method.stage dpo), torch first: the first step of a
policy equal to its reference, every loss against its formula computed apart in plain
torch, the three references (adapter off, a frozen copy, precomputed), metrics, resume."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from conftest import run_ftx, run_in_env
from training import PAIRS, feedback_recipe, interrupted_run, losses, pairs_recipe, rows, train

pytestmark = pytest.mark.env

KEYS = {"rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
        "logps/chosen", "logps/rejected"}  # fmt: skip


def test_dpo_starts_at_ln2_with_zero_rewards_and_learns(tmp_path: Path, tiny_llama: Path) -> None:
    """LoRA: the reference is the base with the adapter off, equal to the policy at first.
    The progress lines show the reward margin and accuracy; `ftx report` plots the rewards
    under the loss."""
    out = tmp_path / "out"
    path = pairs_recipe(tmp_path, tiny_llama, steps=6)
    result = run_ftx("run", str(path), "--backend", "torch", "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("step ")]
    assert lines and all("margin " in ln and "acc " in ln for ln in lines), lines
    report = run_ftx("report", str(out))
    assert report.returncode == 0, report.stderr
    data = (out / "loss.png").read_bytes()
    size = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert size == (960, 840)  # two panels: the loss, the rewards (an SFT run's is 960 x 540)
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


def stage_recipe(tmp_path: Path, model: Path, stage: str, steps: int) -> Path:
    """The toy set of ``stage``: pairs for dpo and rm, judged answers for kto."""
    if stage == "kto":
        return feedback_recipe(tmp_path, model, steps=steps)
    path = pairs_recipe(tmp_path, model, steps=steps)
    path.write_text(path.read_text().replace("stage: dpo", f"stage: {stage}"))
    return path


@pytest.mark.parametrize(
    "stage", ["dpo", *(pytest.param(s, marks=pytest.mark.heavy) for s in ("kto", "rm"))]
)
def test_sigterm_and_resume_continue_a_preference_run_identically(
    tmp_path: Path, tiny_llama: Path, stage: str
) -> None:
    path = stage_recipe(tmp_path, tiny_llama, stage, steps=16)
    reference = train(path, tmp_path / "reference", "torch")
    out = tmp_path / "interrupted"
    interrupted_run(path, out, "torch")
    train(path, out, "torch", "train.resume=auto")
    assert losses(out) == pytest.approx(losses(reference), abs=1e-5)
    margins = [r["rewards/margins"] for r in rows(out) if "loss" in r]
    assert margins == pytest.approx([r["rewards/margins"] for r in rows(reference) if "loss" in r],
                                    abs=1e-5)  # fmt: skip


# --------------------------------------------------------------------------- kto

KTO_KEYS = {"rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen",
            "logps/rejected", "kl"}  # fmt: skip


def test_kto_starts_at_half_with_zero_rewards_and_learns(tmp_path: Path, tiny_llama: Path) -> None:
    """With the policy equal to its reference every log-ratio and the KL estimate are 0, so
    each row's loss is its weight times 1 - sigmoid(0)."""
    path = feedback_recipe(tmp_path, tiny_llama, steps=6)
    out = train(path, tmp_path / "out", "torch", "method.preference.undesirable_weight=1.5")
    first, *later = [r for r in rows(out) if "loss" in r]
    manifest = json.loads((out / "data/manifest.json").read_text())["splits"]["train"]
    good, bad = manifest["desirable"], manifest["undesirable"]
    assert good and bad and good + bad == PAIRS - 8
    # step 1 is 8 rows of the 16 (4 x 2): the weights of those rows, halved
    assert 0.5 <= first["loss"] <= 0.75 and set(first) >= KTO_KEYS
    assert first["kl"] == first["rewards/chosen"] == first["rewards/rejected"] == 0
    assert all(r["kl"] >= 0 for r in later)  # clamped: the answers grow less likely at first
    assert any(r["rewards/margins"] != 0 for r in later)
    assert later[-1]["loss"] < first["loss"]
    assert any("eval_loss" in r for r in rows(out))


KTO_FORMULA = """
import json, sys, torch
from pathlib import Path
from peft import PeftModel
from transformers import AutoModelForCausalLM
from ftx.core.prepared import load_split
base = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32)
model = PeftModel.from_pretrained(base, sys.argv[3]).eval()
split = load_split(Path(sys.argv[2]), "train")
beta, good_w, bad_w = 0.1, 1.0, 1.5
def logp(ids, labels, adapter):
    with torch.no_grad():
        if adapter:
            logits = model(torch.tensor([ids.astype("int64")])).logits
        else:
            with model.disable_adapter():
                logits = model(torch.tensor([ids.astype("int64")])).logits
    logits = logits[0, :-1].double()
    targets = torch.tensor(labels[1:].astype("int64"))
    mask = targets != -100
    picked = torch.log_softmax(logits, -1)[torch.arange(len(targets)), targets.clamp(min=0)]
    return float(picked[mask].sum())
tags = split.column("kto_tag")
ratio = [logp(*split[i], True) - logp(*split[i], False) for i in range(len(split))]
kl_ratio = [logp(*split.kl[i], True) - logp(*split.kl[i], False) for i in range(len(split))]
kl = max(sum(kl_ratio) / len(kl_ratio), 0.0)
r = torch.tensor(ratio, dtype=torch.float64)
t = torch.tensor(tags.astype("float64"))
losses = t * good_w * (1 - torch.sigmoid(beta * (r - kl))) + (1 - t) * bad_w * (
    1 - torch.sigmoid(beta * (kl - r)))
print(json.dumps({"loss": float(losses.mean()), "kl": kl,
                  "chosen": float((beta * r)[t > 0].mean()),
                  "rejected": float((beta * r)[t == 0].mean())}))
"""


def test_kto_step_equals_its_formula_and_precomputed_is_the_same_reference(
    tmp_path: Path, tiny_llama: Path
) -> None:
    """Step 2 of a run whose step is the whole set: its loss, KL estimate and rewards equal
    KTO's formula over log-probs computed apart (the checkpoint after step 1 against the
    base); precomputed reference log-probs give the same run."""
    # Mostly desirable rows and a large step: every answer, the mismatched ones too, grows
    # more likely after step 1, so the KL estimate is positive (not clamped to 0).
    path = feedback_recipe(tmp_path, tiny_llama, steps=3, desirable=0.8)
    text = path.read_text().replace("learning_rate: 5.0e-3", "learning_rate: 5.0e-2")
    text = text.replace("micro_batch_size: 4", f"micro_batch_size: {PAIRS - 8}")
    path.write_text(text.replace("grad_accum: 2", "grad_accum: 1"))
    asks = ["method.preference.undesirable_weight=1.5", "train.save_steps=1",
            "train.save_total_limit=3"]  # fmt: skip
    auto = train(path, tmp_path / "auto", "torch", *asks)
    kept = train(path, tmp_path / "kept", "torch", *asks, "method.preference.reference=precomputed")
    assert losses(kept) == pytest.approx(losses(auto), abs=1e-6)
    second = [r for r in rows(auto) if "loss" in r][1]
    expected = run_in_env(
        "torch",
        KTO_FORMULA,
        str(tiny_llama),
        str(auto / "data"),
        str(auto / "checkpoints/checkpoint-1"),
    )
    assert expected["kl"] > 0
    assert second["loss"] == pytest.approx(expected["loss"], abs=2e-6)
    assert second["kl"] == pytest.approx(expected["kl"], abs=2e-6)
    assert second["rewards/chosen"] == pytest.approx(expected["chosen"], abs=2e-6)
    assert second["rewards/rejected"] == pytest.approx(expected["rejected"], abs=2e-6)
    found = np.load(kept / "data/train/reference_logps.npy")
    assert found.shape == (PAIRS - 8, 2) and (found < 0).all()


def test_kto_refuses_a_run_without_a_reference(tmp_path: Path, tiny_llama: Path) -> None:
    path = feedback_recipe(tmp_path, tiny_llama)
    refused = run_ftx("validate", str(path), "method.preference.reference=none")
    assert refused.returncode == 2 and "KTO compares each answer" in refused.stderr


# --------------------------------------------------------------------------- rm


def test_a_reward_model_refuses_held_out_generation(tmp_path: Path, tiny_llama: Path) -> None:
    path = pairs_recipe(tmp_path, tiny_llama)
    path.write_text(
        path.read_text().replace("stage: dpo", "stage: rm") + "evaluate: {datasets: [toy]}\n"
    )
    refused = run_ftx("validate", str(path))
    assert refused.returncode == 2 and "generates none" in refused.stderr, refused.stderr

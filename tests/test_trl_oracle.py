"""TRL's own trainers as the oracle of ftx's preference losses (issue 24).

Each case trains two ftx steps on torch, every training example in one micro-batch, and
keeps the checkpoint after step 1: a policy that has left its reference. TRL's trainer
(``DPOTrainer``, ``KTOTrainer``, ``RewardTrainer``, 1.16, in the test-only ``trl-oracle``
environment: the torch backend's lock plus TRL) is built on that checkpoint, its reference
the base, and computes the loss and the logged values of the same examples with its own
collator and its own loss: they must equal ftx's step 2 (1e-5)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import run_in_env
from oracles import TRL
from training import PAIRS, feedback_recipe, pairs_recipe, rows, train

pytestmark = pytest.mark.env

TRL_STEP = r"""
import json, sys, tempfile
from pathlib import Path
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
from ftx.core.prepared import load_split

stage, loss, base, checkpoint, data = sys.argv[1:6]
settings = json.loads(sys.argv[6])
split = load_split(Path(data), "train")  # ftx's reader (the oracle has ftx installed)

def rows_of(part):
    return [part[i][0].tolist() for i in range(len(part))]

tokenizer = AutoTokenizer.from_pretrained(base)
if tokenizer.pad_token is None:
    tokenizer.pad_token = tokenizer.eos_token
common = dict(output_dir=tempfile.mkdtemp(), report_to=[], per_device_train_batch_size=64,
              use_cpu=True, bf16=False, fp16=False, max_length=None)

def peft_policy():
    from peft import PeftModel
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    return PeftModel.from_pretrained(model, checkpoint, is_trainable=True)

# The base itself as the reference (TRL would otherwise copy the loaded adapter as "ref")
reference = lambda: AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()

if stage == "dpo":
    from trl import DPOConfig, DPOTrainer
    chosen, rejected = rows_of(split.chosen), rows_of(split.rejected)
    prompts = split.column("prompt_lengths")
    examples = [{"prompt_ids": c[:p], "chosen_ids": c[p:], "rejected_ids": r[p:]}
                for c, r, p in zip(chosen, rejected, prompts)]
    dummy = Dataset.from_list([{"prompt": "a", "chosen": "b", "rejected": "c"}])
    args = DPOConfig(loss_type=[loss], beta=settings["beta"], **common)
    trainer = DPOTrainer(model=peft_policy(), ref_model=reference(), args=args,
                         train_dataset=dummy, processing_class=tokenizer)
elif stage == "kto":
    from trl import KTOConfig, KTOTrainer
    rows, kl = rows_of(split), rows_of(split.kl)
    prompts, tags = split.column("prompt_lengths"), split.column("kto_tag")
    examples = [{"prompt_ids": r[:p], "completion_ids": r[p:], "KL_completion_ids": k[p:],
                 "label": bool(t)} for r, k, p, t in zip(rows, kl, prompts, tags)]
    dummy = Dataset.from_list([{"prompt": "a", "completion": "b", "label": True}])
    args = KTOConfig(beta=settings["beta"], desirable_weight=settings["desirable_weight"],
                     undesirable_weight=settings["undesirable_weight"], **common)
    trainer = KTOTrainer(model=peft_policy(), ref_model=reference(), args=args,
                         train_dataset=dummy, processing_class=tokenizer)
elif stage in ("simpo", "orpo"):  # TRL's experimental CPO (loss simpo) and ORPO trainers
    chosen, rejected = rows_of(split.chosen), rows_of(split.rejected)
    prompts = split.column("prompt_lengths")
    def answer(name, ids, p):
        return {f"{name}_input_ids": ids, f"{name}_attention_mask": [1] * len(ids),
                f"{name}_labels": [-100] * p + ids[p:]}
    examples = [{"prompt_input_ids": c[:p], "prompt_attention_mask": [1] * p,
                 **answer("chosen", c, p), **answer("rejected", r, p)}
                for c, r, p in zip(chosen, rejected, prompts)]
    dummy = Dataset.from_list([{"prompt": "a", "chosen": "b", "rejected": "c"}])
    extra = dict(output_dir=common["output_dir"], report_to=[], use_cpu=True,
                 per_device_train_batch_size=64, remove_unused_columns=False,
                 beta=settings["beta"], max_length=512)
    if stage == "simpo":
        from trl.experimental.cpo import CPOConfig, CPOTrainer
        args = CPOConfig(loss_type="simpo", cpo_alpha=0.0, simpo_gamma=settings["gamma"], **extra)
        made = CPOTrainer
    else:
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer
        args, made = ORPOConfig(**extra), ORPOTrainer
    trainer = made(model=peft_policy(), args=args, train_dataset=dummy,
                   processing_class=tokenizer)
    trainer.model.train()
    batch = {k: v.to(trainer.accelerator.device) if torch.is_tensor(v) else v
             for k, v in trainer.data_collator(examples).items()}
    with torch.no_grad():
        value, logged = trainer.get_batch_loss_metrics(trainer.model, batch, train_eval="train")
    logged = {k: float(v) for k, v in logged.items()}
    print(json.dumps({"loss": float(value), "logged": logged, "examples": len(examples)}))
    sys.exit(0)
else:
    from trl import RewardConfig, RewardTrainer
    chosen, rejected = rows_of(split.chosen), rows_of(split.rejected)
    examples = [{"chosen_ids": c, "rejected_ids": r} for c, r in zip(chosen, rejected)]
    model = AutoModelForSequenceClassification.from_pretrained(checkpoint, dtype=torch.float32)
    dummy = Dataset.from_list([{"chosen": "a", "rejected": "b"}])
    trainer = RewardTrainer(model=model, args=RewardConfig(**common), train_dataset=dummy,
                            processing_class=tokenizer)

trainer.model.train()
batch = {k: v.to(trainer.accelerator.device) if torch.is_tensor(v) else v
         for k, v in trainer.data_collator(examples).items()}
with torch.no_grad():
    value = trainer.compute_loss(trainer.model, batch)
logged = {k: v[-1] for k, v in trainer._metrics["train"].items() if v}
print(json.dumps({"loss": float(value), "logged": logged, "examples": len(examples)}))
"""


def two_steps(path: Path, out: Path, *overrides: str) -> dict:
    """ftx's step 2 (the whole train split one micro-batch) and the step-1 checkpoint."""
    text = path.read_text().replace("micro_batch_size: 4", f"micro_batch_size: {PAIRS - 8}")
    path.write_text(text.replace("grad_accum: 2", "grad_accum: 1"))
    run = train(path, out, "torch", "train.max_steps=2", "train.save_steps=1",
                "train.save_total_limit=2", *overrides)  # fmt: skip
    return [r for r in rows(run) if "loss" in r][1]


def trl_step(stage: str, loss: str, base: Path, out: Path, **settings: float) -> dict:
    found = run_in_env(TRL, TRL_STEP, stage, loss, str(base), str(out / "checkpoints/checkpoint-1"),
                    str(out / "data"), json.dumps(settings))  # fmt: skip
    assert found["examples"] == PAIRS - 8
    return found


@pytest.mark.parametrize(
    "loss", ["sigmoid", *(pytest.param(x, marks=pytest.mark.heavy) for x in ("ipo", "hinge"))]
)
def test_dpo_equals_trls_dpo_trainer(tmp_path: Path, tiny_llama: Path, loss: str) -> None:
    ours = two_steps(pairs_recipe(tmp_path, tiny_llama), tmp_path / "out",
                     f"method.preference.loss={loss}")  # fmt: skip
    theirs = trl_step("dpo", loss, tiny_llama, tmp_path / "out", beta=0.1)
    assert ours["loss"] == pytest.approx(theirs["loss"], abs=1e-5)
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
                "logps/chosen", "logps/rejected"):  # fmt: skip
        assert ours[key] == pytest.approx(theirs["logged"][key], abs=1e-5), key
    assert ours["rewards/margins"] != 0  # the policy has left its reference


@pytest.mark.heavy
@pytest.mark.parametrize("loss", ["simpo", "orpo"])
def test_simpo_and_orpo_equal_trls_cpo_and_orpo_trainers(
    tmp_path: Path, tiny_llama: Path, loss: str
) -> None:
    """The reference-free losses against TRL's CPOTrainer (loss simpo, no NLL term) and
    ORPOTrainer. ORPO's NLL term differs by design: TRL's decoder-only ORPO learns the
    whole chosen sequence, prompt included, where ftx (as LLaMA-Factory) learns the chosen
    answer only, averaged per pair; the odds-ratio term and the rewards are the same."""
    ours = two_steps(pairs_recipe(tmp_path, tiny_llama), tmp_path / "out",
                     f"method.preference.loss={loss}")  # fmt: skip
    theirs = trl_step(loss, loss, tiny_llama, tmp_path / "out", beta=0.1, gamma=0.5)
    if loss == "simpo":
        assert ours["loss"] == pytest.approx(theirs["loss"], abs=1e-5)
    else:  # ftx's NLL term is -logps/chosen (the chosen answer's mean log-probability)
        odds_term = theirs["loss"] - theirs["logged"]["nll_loss"]
        assert ours["loss"] + ours["logps/chosen"] == pytest.approx(odds_term, abs=1e-5)
        assert theirs["logged"]["nll_loss"] != pytest.approx(-ours["logps/chosen"], abs=1e-3)
    for key in ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins"):
        assert ours[key] == pytest.approx(theirs["logged"][key], abs=1e-5), key


def test_kto_equals_trls_kto_trainer(tmp_path: Path, tiny_llama: Path) -> None:
    path = feedback_recipe(tmp_path, tiny_llama, desirable=0.8)
    path.write_text(path.read_text().replace("learning_rate: 5.0e-3", "learning_rate: 5.0e-2"))
    ours = two_steps(path, tmp_path / "out", "method.preference.undesirable_weight=1.5")
    theirs = trl_step("kto", "kto", tiny_llama, tmp_path / "out", beta=0.1,
                      desirable_weight=1.0, undesirable_weight=1.5)  # fmt: skip
    assert ours["kl"] > 0 and ours["kl"] == pytest.approx(theirs["logged"]["kl"], abs=1e-5)
    assert ours["loss"] == pytest.approx(theirs["loss"], abs=1e-5)


def test_a_reward_model_equals_trls_reward_trainer(tmp_path: Path, tiny_llama: Path) -> None:
    path = pairs_recipe(tmp_path, tiny_llama)
    path.write_text(path.read_text().replace("stage: dpo", "stage: rm"))
    ours = two_steps(path, tmp_path / "out", "method.finetuning=full")
    theirs = trl_step("rm", "pairwise", tiny_llama, tmp_path / "out")
    assert ours["loss"] == pytest.approx(theirs["loss"], abs=1e-5)
    assert ours["rewards/margins"] != 0

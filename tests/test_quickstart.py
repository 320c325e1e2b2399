"""The quickstart end to end, as `make run` does it: the model must really learn."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import ROOT, run_ftx, run_in_env


def test_quickstart_learns_the_task(tmp_path: Path) -> None:
    model = tmp_path / "quickstart-llama"
    made = run_ftx("init-model", "--arch", "llama", "--size", "small", "--out", str(model))
    assert made.returncode == 0, made.stderr
    out = tmp_path / "run"
    result = run_ftx(
        "run",
        "recipes/quickstart.yaml",
        "--backend",
        "torch",
        "--out",
        str(out),
        f"model.path={model}",
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # The summary a user sees.
    assert "held-out exact match" in result.stdout and "loss" in result.stdout
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "completed"
    assert run["final_loss"] < 0.25 * run["first_loss"], run
    before = run["evaluation"]["before"]["exact_match"]
    after = run["evaluation"]["after"]["exact_match"]
    assert before <= 0.05 and after >= 0.8, (before, after)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r["eval_loss"] for r in rows if "eval_loss" in r]
    assert evals[-1] < evals[0]  # held-out loss falls too
    # ROUGE-L and BLEU beside exact match, in the summary and the record
    scored = run["evaluation"]
    assert scored["after"]["rouge_l"] > scored["before"]["rouge_l"], scored
    assert "held-out ROUGE-L" in result.stdout and "held-out BLEU" in result.stdout
    # `ftx eval` of the run on its evaluate section gives the run's own after-training scores
    report = tmp_path / "eval.json"
    evaluated = run_ftx("eval", str(out), "--data", "recipes/quickstart.yaml",
                        "--max-new-tokens", "12", "--out", str(report), cwd=ROOT)  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    again = json.loads(report.read_text())
    for key in ("examples", "exact_match", "rouge_l", "bleu"):
        assert again[key] == scored["after"][key], key
    # The final model is a plain HF folder that transformers loads as is.
    found = run_in_env(
        "torch",
        "import json, sys; from transformers import AutoModelForCausalLM, AutoTokenizer;"
        "m = AutoModelForCausalLM.from_pretrained(sys.argv[1]);"
        "t = AutoTokenizer.from_pretrained(sys.argv[1]);"
        "print(json.dumps({'params': sum(p.numel() for p in m.parameters()),"
        " 'template': bool(t.chat_template)}))",
        str(out / "final"),
    )
    assert found == {"params": 3_351_808, "template": True}


@pytest.mark.heavy
def test_the_preference_quickstart_learns_the_task(tmp_path: Path) -> None:
    """recipes/quickstart_dpo.yaml on torch (bench/quickstart_dpo.py runs every backend):
    the reward accuracy goes from chance to all but certain, and the held-out exact match
    from nothing up (the chosen answer's NLL teaches a model that starts from nothing)."""
    model = tmp_path / "quickstart-llama"
    made = run_ftx("init-model", "--arch", "llama", "--size", "small", "--out", str(model))
    assert made.returncode == 0, made.stderr
    out = tmp_path / "run"
    result = run_ftx("run", "recipes/quickstart_dpo.yaml", "--backend", "torch", "--out",
                     str(out), f"model.path={model}", cwd=ROOT)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in rows if "loss" in r]
    assert logged[0]["rewards/accuracies"] <= 0.6 and logged[-1]["rewards/accuracies"] >= 0.95
    assert logged[-1]["rewards/margins"] > logged[0]["rewards/margins"] + 1
    run = json.loads((out / "run.json").read_text())
    before = run["evaluation"]["before"]["exact_match"]
    after = run["evaluation"]["after"]["exact_match"]
    assert before <= 0.05 and after >= 0.4, (before, after)
    assert (out / "data/train/reference_logps.npy").exists()  # reference: precomputed

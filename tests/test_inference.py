"""Using a trained model: `ftx generate` and `ftx eval` on a run's OUT with every
backend's framework, checked against transformers' own generate and loss, and the
libraries' own ROUGE-L and BLEU."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, run_ftx, run_in_env
from ftx.core.contract import Sampling
from ftx.core.inference.decoding import choose, row_nll

HELD_OUT = ROOT / "recipes/data/quickstart_heldout.jsonl"
BACKENDS = ("torch", "paddle", "mindformers")


def answers(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# ---------------------------------------------------------------- the shared arithmetic


def test_greedy_takes_the_first_of_equal_logits_and_sampling_is_seeded() -> None:
    logits = np.array([0.5, 2.0, 2.0, -1.0], dtype=np.float32)
    assert choose(logits, Sampling(temperature=0.0), np.random.default_rng(0)) == 1
    draws = [
        choose(logits, Sampling(temperature=1.0, seed=7), np.random.default_rng(7))
        for _ in range(2)
    ]
    assert draws[0] == draws[1]
    # top-p 0.5: only the two most likely tokens (each ~0.44) can be drawn
    rng = np.random.default_rng(1)
    nucleus = {choose(logits, Sampling(temperature=1.0, top_p=0.5), rng) for _ in range(200)}
    assert nucleus <= {1, 2} and len(nucleus) == 2
    rng = np.random.default_rng(1)
    everything = {choose(logits, Sampling(temperature=5.0), rng) for _ in range(400)}
    assert everything == {0, 1, 2, 3}


def test_row_nll_is_the_cross_entropy_of_the_next_tokens() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(5, 11)).astype(np.float32)
    labels = [-100, -100, 3, 7, 2]  # positions 1 and 2 predict 3 and 7, position 3 predicts 2
    nll, count = row_nll(logits, labels)
    log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    expected = -(log_probs[1, 3] + log_probs[2, 7] + log_probs[3, 2])
    assert count == 3 and nll == pytest.approx(float(expected), rel=1e-6)


# ---------------------------------------------------------------- generate and eval

TRANSFORMERS_GENERATE = """
import json, sys, torch
from transformers import AutoModelForCausalLM
from peft import PeftModel
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32)
model = PeftModel.from_pretrained(model, sys.argv[2]).eval()
ids, stop, n = json.loads(sys.argv[3]), json.loads(sys.argv[4]), int(sys.argv[5])
out = model.generate(input_ids=torch.tensor([ids]), max_new_tokens=n, do_sample=False,
                     eos_token_id=stop, pad_token_id=stop[0])
new = out[0, len(ids):].tolist()
cut = [i for i, t in enumerate(new) if t in stop]
print(json.dumps({"ids": new[: cut[0]] if cut else new}))
"""


@pytest.mark.env
@pytest.mark.slow
def test_every_backend_decodes_the_same_tokens_from_one_run(
    runs, tiny_llama: Path, tmp_path: Path
) -> None:
    """A LoRA run's OUT (base + PEFT adapter) answered by transformers (adapter on top),
    PaddleFormers and MindFormers (adapter merged first): the same greedy tokens, which
    are transformers' own generate's; the same sampled tokens at one seed (the shared
    sampler over each framework's logits); `ftx eval` the same loss on every backend."""
    from ftx.core.inference.examples import read_examples
    from ftx.core.inference.prompting import Prompter
    from ftx.core.inference.source import resolve

    out = runs.get("torch", "lora")
    found = {}
    for backend in BACKENDS:
        for mode, flags in (("greedy", []), ("sampled", ["--temperature", "1.0", "--seed", "3"])):
            path = tmp_path / f"{backend}-{mode}.jsonl"
            result = run_ftx("generate", str(out), "--backend", backend, "--data",
                             str(HELD_OUT), "--max-samples", "4", "--max-new-tokens", "12",
                             "--context", "96", "--out", str(path), *flags)  # fmt: skip
            assert result.returncode == 0, result.stderr[-3000:]
            found[backend, mode] = answers(path)
    for mode in ("greedy", "sampled"):
        assert found["paddle", mode] == found["torch", mode] == found["mindformers", mode]
    greedy = found["torch", "greedy"]
    assert [r["tokens"] for r in greedy] and all(r["label"] for r in greedy)
    assert found["torch", "sampled"] != greedy  # sampling did sample

    target = resolve(out)
    prompter = Prompter(target)
    ids = read_examples(HELD_OUT, prompter, fmt=None, limit=1, max_len=96)[0].prompt_ids
    oracle = run_in_env("torch", TRANSFORMERS_GENERATE, str(target.model), str(target.adapter),
                        json.dumps(ids), json.dumps(sorted(prompter.stop)), "12")  # fmt: skip
    assert prompter.text(oracle["ids"]) == greedy[0]["completion"]

    losses = {}
    for backend in BACKENDS:
        report = tmp_path / f"eval-{backend}.json"
        result = run_ftx("eval", str(out), "--backend", backend, "--data", str(HELD_OUT),
                         "--max-samples", "4", "--max-new-tokens", "12", "--context", "96",
                         "--out", str(report))  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        losses[backend] = json.loads(report.read_text())["loss"]
    assert losses["paddle"] == pytest.approx(losses["torch"], rel=1e-4)
    assert losses["mindformers"] == pytest.approx(losses["torch"], rel=1e-4)


TRANSFORMERS_LOSS = """
import json, sys, torch
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32).eval()
total, count = 0.0, 0
for ids, labels in json.loads(sys.argv[2]):
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels]))
    scored = sum(1 for x in labels[1:] if x != -100)
    total, count = total + out.loss.item() * scored, count + scored
print(json.dumps({"loss": total / count}))
"""


@pytest.mark.env
def test_eval_reports_the_loss_transformers_computes_and_the_libraries_scores(
    tiny_llama: Path, tmp_path: Path
) -> None:
    """`ftx eval` on a model folder: its loss is transformers' own over the same tokens
    and labels, its exact match, ROUGE-L and BLEU are rouge-score's and sacrebleu's on
    the answers it wrote; the table is printed; an existing --out is kept without
    --force."""
    import sacrebleu
    from rouge_score import rouge_scorer

    from ftx.core.inference.examples import read_examples
    from ftx.core.inference.prompting import Prompter
    from ftx.core.inference.source import resolve

    report, written = tmp_path / "eval.json", tmp_path / "predictions.jsonl"
    args = ["eval", str(tiny_llama), "--data", str(HELD_OUT), "--max-samples", "5",
            "--max-new-tokens", "6", "--out", str(report),
            "--predictions", str(written)]  # fmt: skip
    result = run_ftx(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("loss", "perplexity", "exact match", "ROUGE-L", "BLEU"):
        assert name in result.stdout, result.stdout
    metrics = json.loads(report.read_text())
    rows = answers(written)
    assert metrics["examples"] == len(rows) == 5
    refs, said = [r["label"] for r in rows], [r["completion"] for r in rows]
    pairs = list(zip(refs, said, strict=True))
    assert metrics["exact_match"] == sum(a.strip() == b.strip() for a, b in pairs) / 5
    assert metrics["bleu"] == pytest.approx(sacrebleu.corpus_bleu(said, [refs]).score)
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    rouge = [scorer.score(r, a)["rougeL"].fmeasure for r, a in pairs]
    assert metrics["rouge_l"] == pytest.approx(100 * sum(rouge) / 5)  # ASCII: the same words

    prompter = Prompter(resolve(tiny_llama))
    examples = read_examples(HELD_OUT, prompter, fmt=None, limit=5, max_len=2048)
    scored = [[list(e.row.input_ids), list(e.row.labels)] for e in examples if e.row]
    oracle = run_in_env("torch", TRANSFORMERS_LOSS, str(tiny_llama), json.dumps(scored))
    assert metrics["loss"] == pytest.approx(oracle["loss"], rel=1e-5)
    assert metrics["perplexity"] == pytest.approx(np.exp(oracle["loss"]), rel=1e-4)

    again = run_ftx(*args)
    assert again.returncode == 2 and "--force" in again.stderr
    assert json.loads(report.read_text()) == metrics


def test_what_cannot_be_answered_is_one_paragraph_and_exit_2(
    tiny_llama: Path, tmp_path: Path
) -> None:
    """A folder without a model, an adapter whose base is not here, an unknown template,
    a prompt longer than the context, nothing to answer: exit 2, the place and the fix,
    before any framework starts."""
    empty = tmp_path / "empty"
    empty.mkdir()
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(
        json.dumps({"base_model_name_or_path": "/nowhere/base", "peft_type": "LORA"})
    )
    cases = {
        "holds no model": ["generate", str(empty), "-p", "hi"],
        "without its base": ["generate", str(adapter), "-p", "hi"],
        "unknown chat template": ["generate", str(tiny_llama), "-p", "hi", "--template", "nope"],
        "does not have as a token": ["generate", str(tiny_llama), "-p", "hi", "--template", "qwen"],
        "nothing to answer": ["generate", str(tiny_llama)],
        "no such folder": ["eval", str(tmp_path / "missing"), "--data", str(HELD_OUT)],
    }
    for expected, args in cases.items():
        result = run_ftx(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert expected in result.stderr and "Fix:" in result.stderr, result.stderr
        assert "Traceback" not in result.stderr


@pytest.mark.env
def test_a_prompt_longer_than_the_context_is_refused(tiny_llama: Path) -> None:
    result = run_ftx("generate", str(tiny_llama), "-p", "a b c d e f g h " * 20,
                     "--context", "16")  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "--prompt 1" in result.stderr and "tokens and the model takes 16" in result.stderr


@pytest.mark.env
def test_chat_streams_keeps_the_conversation_and_survives_ctrl_c(tiny_llama: Path) -> None:
    """`ftx chat` under a pseudo-terminal, typed at as a person does: an answer streams
    onto the screen; /system and /reset answer; Ctrl-C during a long answer stops it
    (" [stopped]") and the next prompt comes; Ctrl-C at the prompt does not end the
    program; /exit does, with exit code 0."""
    import pexpect

    from conftest import FTX

    child = pexpect.spawn(
        str(FTX),
        ["chat", str(tiny_llama), "--max-new-tokens", "1500", "--context", "2048"],
        encoding="utf-8",
        timeout=120,
        env={**os.environ, "NO_COLOR": "1"},
    )
    child.expect("you> ")
    child.sendline("/system Answer briefly.")
    child.expect(r"\(system prompt set\)")
    child.expect("you> ")
    child.sendline("hello there")
    child.expect("model> ")
    child.expect(r"\S")  # the first words of the answer are on the screen while it runs
    child.sendintr()
    child.expect(r" \[stopped\]")
    child.expect("you> ")
    child.sendintr()  # at the prompt: a reminder, not the end
    child.expect(r"/exit ends the chat")
    child.expect("you> ")
    child.sendline("/reset")
    child.expect(r"\(conversation forgotten\)")
    child.expect("you> ")
    child.sendline("/exit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0, child.before


@pytest.mark.env
def test_serve_answers_the_official_openai_client(tiny_llama: Path, tmp_path: Path) -> None:
    """`ftx serve` with the official openai client: the model listed; a chat answer equal to
    `ftx generate`'s greedy answer, streamed and whole alike, with its usage; a completion;
    four concurrent requests each answered in full; an unknown model (404), malformed
    messages and max_tokens past the context (400) as OpenAI errors, after which the
    server still answers; a wrong API key refused (401); a port in use refused before
    the model loads (exit 2)."""
    import signal
    import subprocess
    import time
    from concurrent.futures import ThreadPoolExecutor

    import openai

    from conftest import FTX
    from training import free_port

    port = free_port()
    command = [str(FTX), "serve", str(tiny_llama), "--port", str(port), "--name", "tiny",
               "--context", "256", "--api-key", "secret"]  # fmt: skip
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="secret")
    try:
        deadline = time.time() + 120
        while True:
            try:
                listed = [m.id for m in client.models.list()]
                break
            except openai.APIConnectionError:
                assert server.poll() is None and time.time() < deadline, server.stderr.read()
                time.sleep(0.5)
        assert listed == ["tiny"]
        ask = {"model": "tiny", "messages": [{"role": "user", "content": "Reverse: a b c"}],
               "temperature": 0, "max_tokens": 10}  # fmt: skip
        whole = client.chat.completions.create(**ask)
        text = whole.choices[0].message.content
        assert whole.usage.prompt_tokens > 0 and whole.usage.completion_tokens <= 10
        assert whole.choices[0].finish_reason in ("stop", "length")
        streamed = "".join(
            chunk.choices[0].delta.content or ""
            for chunk in client.chat.completions.create(**ask, stream=True)
        )
        assert streamed == text
        generated = run_ftx("generate", str(tiny_llama), "-p", "Reverse: a b c",
                            "--max-new-tokens", "10")  # fmt: skip
        assert generated.returncode == 0 and generated.stdout.rstrip("\n") == text

        completion = client.completions.create(model="tiny", prompt="a b", max_tokens=5,
                                               temperature=0)  # fmt: skip
        assert completion.usage.completion_tokens <= 5 and completion.choices[0].text is not None
        with ThreadPoolExecutor(4) as pool:
            together = list(pool.map(lambda _: client.chat.completions.create(**ask), range(4)))
        assert [r.choices[0].message.content for r in together] == [text] * 4

        with pytest.raises(openai.NotFoundError) as unknown:
            client.chat.completions.create(**{**ask, "model": "gpt-9"})
        assert unknown.value.body["code"] == "model_not_found"
        with pytest.raises(openai.BadRequestError) as malformed:
            client.chat.completions.create(**{**ask, "messages": [{"role": "wizard"}]})
        assert "messages" in malformed.value.body["message"]
        with pytest.raises(openai.BadRequestError) as too_long:
            client.chat.completions.create(**{**ask, "max_tokens": 100_000})
        assert too_long.value.body["code"] == "context_length_exceeded"
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="wrong").models.list()
        assert client.chat.completions.create(**ask).choices[0].message.content == text

        taken = run_ftx("serve", str(tiny_llama), "--port", str(port))
        assert taken.returncode == 2 and f"port {port} is in use" in taken.stderr
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=60)

"""Preference and KTO data as LLaMA-Factory defines them (dataset_info.json unchanged),
prepared once for every backend: the conversation is the prompt (never learned), each
answer is learned with the end of its turn, and over-long pairs are cut by ftx's rule or
LLaMA-Factory's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import run_ftx
from ftx.core.data.conversation import Conversation, Message
from ftx.core.data.prepare import prepare
from ftx.core.data.render import ChatEncoder, infer_seqlen
from ftx.core.prepared import IGNORE_INDEX, PairedSplit, load_split
from ftx.core.recipe import load_recipe

SHAREGPT = [
    {
        "conversations": [{"from": "human", "value": "What is two plus two?"}],
        "chosen": {"from": "gpt", "value": "Four."},
        "rejected": {"from": "gpt", "value": "Five, I think."},
    },
    {
        "system": "Answer in one word.",
        "conversations": [
            {"from": "human", "value": "Hi there"},
            {"from": "gpt", "value": "Hello!"},
            {"from": "human", "value": "Name a colour."},
        ],
        "chosen": {"from": "gpt", "value": "Blue."},
        "rejected": {"from": "gpt", "value": "Seven."},
    },
]
ALPACA = [
    {"instruction": "Reverse: a b c", "input": "", "chosen": "c b a", "rejected": "a b c"},
    {"instruction": "Say yes.", "chosen": "yes", "rejected": "no"},
]
KTO = [
    {"messages": [{"role": "user", "content": "Reverse: x y"}, {"role": "assistant",
     "content": "y x"}], "label": True},
    {"messages": [{"role": "user", "content": "Reverse: p q"}, {"role": "assistant",
     "content": "p q"}], "label": False},
    {"messages": [{"role": "user", "content": "Reverse: m n"}, {"role": "assistant",
     "content": "n m"}], "label": True},
]  # fmt: skip
INFO = {
    "pairs_sharegpt": {
        "file_name": "pairs_sharegpt.jsonl",
        "formatting": "sharegpt",
        "ranking": True,
        "columns": {
            "messages": "conversations",
            "system": "system",
            "chosen": "chosen",
            "rejected": "rejected",
        },
    },
    "pairs_alpaca": {
        "file_name": "pairs_alpaca.jsonl",
        "ranking": True,
        "columns": {
            "prompt": "instruction",
            "query": "input",
            "chosen": "chosen",
            "rejected": "rejected",
        },
    },
    "kto_openai": {
        "file_name": "kto_openai.jsonl",
        "formatting": "sharegpt",
        "columns": {"messages": "messages", "kto_tag": "label"},
        "tags": {
            "role_tag": "role",
            "content_tag": "content",
            "user_tag": "user",
            "assistant_tag": "assistant",
        },
    },
}


def dataset_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    folder.mkdir(exist_ok=True)
    for name, rows in (("pairs_sharegpt", SHAREGPT), ("pairs_alpaca", ALPACA), ("kto_openai", KTO)):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "dataset_info.json").write_text(json.dumps(INFO))
    return folder


def write_recipe(tmp_path: Path, model: Path, stage: str, datasets: str, extra: str = "") -> Path:
    path = tmp_path / f"{stage}.yaml"
    path.write_text(
        f"model: {{path: {model}}}\n"
        f"data: {{dataset_dir: {dataset_dir(tmp_path)}, datasets: [{datasets}],"
        f" max_seq_len: 256{extra}}}\n"
        f"method: {{stage: {stage}}}\n"
    )
    return path


@pytest.fixture()
def pairs(tmp_path: Path, tiny_qwen2: Path) -> PairedSplit:
    recipe = load_recipe(write_recipe(tmp_path, tiny_qwen2, "dpo", "pairs_sharegpt, pairs_alpaca"))
    manifest = prepare(recipe.recipe, tmp_path / "out")
    assert manifest["splits"]["train"]["pairs"] == 4
    split = load_split(tmp_path / "out", "train")
    assert isinstance(split, PairedSplit)
    return split


def test_each_pair_shares_the_prompt_and_learns_only_its_answer(
    pairs: PairedSplit, tiny_qwen2: Path
) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_qwen2))
    prompts = pairs.column("prompt_lengths")
    rows = [
        (SHAREGPT[0]["conversations"], "Four.", "Five, I think.", None),
        (SHAREGPT[1]["conversations"], "Blue.", "Seven.", "Answer in one word."),
        ([{"from": "human", "value": "Reverse: a b c"}], "c b a", "a b c", None),
        ([{"from": "human", "value": "Say yes."}], "yes", "no", None),
    ]
    for i, (turns, chosen, rejected, system) in enumerate(rows):
        (c_ids, c_labels), (r_ids, r_labels) = pairs[i]
        n = int(prompts[i])
        assert c_ids[:n].tolist() == r_ids[:n].tolist()  # one prompt for both answers
        assert (c_labels[:n] == IGNORE_INDEX).all() and (r_labels[:n] == IGNORE_INDEX).all()
        assert (c_labels[n:] == c_ids[n:]).all() and (r_labels[n:] == r_ids[n:]).all()
        # the prompt is the tokenizer's own chat template with the generation prompt, and
        # each row the template's rendering of the conversation with that answer
        chat = [{"role": "system", "content": system}] if system else []
        chat += [{"role": "user" if t["from"] == "human" else "assistant", "content": t["value"]}
                 for t in turns]  # fmt: skip
        prompt = tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
        assert tokenizer.decode(c_ids[:n]) == prompt
        for ids, answer in ((c_ids, chosen), (r_ids, rejected)):
            full = [*chat, {"role": "assistant", "content": answer}]
            text = tokenizer.apply_chat_template(full, tokenize=False)
            assert tokenizer.decode(ids) == text
            assert tokenizer.decode(ids[n:]).startswith(answer)
            assert tokenizer.convert_tokens_to_ids("<|im_end|>") in ids[n:].tolist()  # learned


def qwen_encoder(model: Path) -> ChatEncoder:
    from transformers import AutoTokenizer

    return ChatEncoder(AutoTokenizer.from_pretrained(str(model)), "qwen2_5", where="t")


LONG = Conversation(
    (
        Message("user", "first question " * 30),
        Message("assistant", "first answer " * 10),
        Message("user", "second question " * 10),
    ),
    system="Be terse.",
)
ANSWERS = [Message("assistant", "a long chosen answer " * 12), Message("assistant", "no " * 5)]


def test_lf_split_cuts_pairs_as_llamafactory_does(tiny_qwen2: Path) -> None:
    encoder = qwen_encoder(tiny_qwen2)
    whole = encoder.encode_answers(LONG, ANSWERS, max_len=10_000, truncation="lf_split")
    prompt, longest = len(whole.prompt), max(len(ids) for ids, _ in whole.answers)
    budget = prompt + longest - 50
    cut = encoder.encode_answers(LONG, ANSWERS, max_len=budget, truncation="lf_split")
    keep_prompt, keep_answer = infer_seqlen(prompt, longest, budget)
    assert cut.truncated and cut.prompt == whole.prompt[:keep_prompt]  # keeps its start
    for (ids, labels), (full, _) in zip(cut.answers, whole.answers, strict=True):
        assert ids == full[:keep_answer]  # both answers get the same budget
        assert labels == ids
    assert max(len(cut.prompt) + len(ids) for ids, _ in cut.answers) <= budget


def test_oldest_rounds_drops_history_first_and_keeps_the_question(tiny_qwen2: Path) -> None:
    encoder = qwen_encoder(tiny_qwen2)
    whole = encoder.encode_answers(LONG, ANSWERS, max_len=10_000, truncation="oldest_rounds")
    longest = max(len(ids) for ids, _ in whole.answers)
    budget = len(whole.prompt) + longest - 20
    cut = encoder.encode_answers(LONG, ANSWERS, max_len=budget, truncation="oldest_rounds")
    text = encoder.tokenizer.decode(cut.prompt)
    assert cut.truncated and "Be terse." in text and "second question" in text
    assert "first question" not in text  # the oldest round went first
    assert [ids for ids, _ in cut.answers] == [ids for ids, _ in whole.answers]  # whole
    tight = encoder.encode_answers(LONG, ANSWERS, max_len=40, truncation="oldest_rounds")
    # past that, the prompt keeps its end: the question and the assistant header
    assert encoder.tokenizer.decode(tight.prompt).endswith("<|im_start|>assistant\n")
    assert max(len(tight.prompt) + len(ids) for ids, _ in tight.answers) <= 40


def test_kto_rows_keep_their_tag_and_learn_the_last_answer(
    tmp_path: Path, tiny_qwen2: Path
) -> None:
    out = tmp_path / "out"
    prepare(load_recipe(write_recipe(tmp_path, tiny_qwen2, "kto", "kto_openai")).recipe, out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["splits"]["train"]["desirable"] == 2
    assert manifest["splits"]["train"]["undesirable"] == 1
    split = load_split(out, "train")
    assert split.column("kto_tag").tolist() == [True, False, True]
    for i, row in enumerate(KTO):
        ids, labels = split[i]
        n = int(split.column("prompt_lengths")[i])
        assert (labels[:n] == IGNORE_INDEX).all() and (labels[n:] == ids[n:]).all()
        from transformers import AutoTokenizer

        answer = AutoTokenizer.from_pretrained(str(tiny_qwen2)).decode(ids[n:])
        assert answer.startswith(row["messages"][-1]["content"])
    shown = run_ftx("data", "show", str(out), "-n", "3", "--json")
    assert shown.returncode == 0, shown.stderr
    rows = [json.loads(line) for line in shown.stdout.splitlines()]
    assert [r["kto_tag"] for r in rows] == [True, False, True]
    # KL rows, LLaMA-Factory's: each prompt with the answer of the rows reversed (2, 1, 0)
    for i, row in enumerate(rows):
        n = int(split.column("prompt_lengths")[i])
        partner = rows[2 - i]
        m = int(split.column("prompt_lengths")[2 - i])
        assert row["kl_input_ids"] == row["input_ids"][:n] + partner["input_ids"][m:]
        assert row["kl_labels"] == [IGNORE_INDEX] * n + partner["labels"][m:]
    stats = run_ftx("data", "stats", str(tmp_path / "kto.yaml"))
    assert stats.returncode == 0 and "2 desirable, 1 undesirable" in stats.stdout


def test_show_and_stats_speak_of_pairs(tmp_path: Path, tiny_qwen2: Path) -> None:
    recipe = write_recipe(tmp_path, tiny_qwen2, "dpo", "pairs_sharegpt, pairs_alpaca")
    shown = run_ftx("data", "show", str(recipe), "-n", "1", "--json")
    assert shown.returncode == 0, shown.stderr
    row = json.loads(shown.stdout.splitlines()[-1])
    assert set(row) == {"chosen_input_ids", "chosen_labels", "rejected_input_ids",
                        "rejected_labels"}  # fmt: skip
    text = run_ftx("data", "show", str(recipe), "-n", "1")
    assert "chosen" in text.stdout and "rejected" in text.stdout and "Four." in text.stdout
    stats = run_ftx("data", "stats", str(recipe))
    assert stats.returncode == 0 and "4 (chosen and rejected rows)" in stats.stdout


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"instruction": "q", "chosen": "a"}, "preference field 'rejected' must be"),
        ({"instruction": "q", "chosen": "a", "rejected": "  "}, "'rejected' must be a non-empty"),
        ({"instruction": "q", "chosen": "same", "rejected": "same"}, "answers are the same"),
    ],
)
def test_a_broken_pair_is_an_error_naming_its_line_or_is_skipped(
    tmp_path: Path, tiny_qwen2: Path, row: dict, message: str
) -> None:
    recipe = write_recipe(tmp_path, tiny_qwen2, "dpo", "pairs_alpaca")
    path = dataset_dir(tmp_path) / "pairs_alpaca.jsonl"
    path.write_text(path.read_text() + json.dumps(row) + "\n")
    out = tmp_path / "out"
    result = run_ftx("data", "prepare", str(recipe), "--out", str(out))
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert f"{path}:3" in result.stderr and not out.exists()
    skipped = run_ftx("data", "prepare", str(recipe), "--out", str(out), "data.on_error=skip")
    assert skipped.returncode == 0, skipped.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["report"]["skipped"] == 1 and manifest["splits"]["train"]["pairs"] == 2


@pytest.mark.parametrize(
    ("stage", "datasets", "message"),
    [
        ("dpo", "kto_openai", "a KTO row (kto_tag), and method.stage 'dpo' trains on preference"),
        ("kto", "pairs_alpaca", "a preference row (chosen/rejected answers), and method.stage"),
        ("rm", "kto_openai", "trains on preference pairs"),
        ("sft", "pairs_alpaca", "method.stage 'sft' trains on plain rows"),
    ],
)
def test_data_that_does_not_fit_the_stage_is_refused(
    tmp_path: Path, tiny_qwen2: Path, stage: str, datasets: str, message: str
) -> None:
    recipe = write_recipe(tmp_path, tiny_qwen2, stage, datasets)
    result = run_ftx("data", "prepare", str(recipe), "--out", str(tmp_path / "out"))
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert ".jsonl:1" in result.stderr


def test_plain_rows_under_a_preference_stage_are_refused(tmp_path: Path, tiny_qwen2: Path) -> None:
    data = tmp_path / "plain.jsonl"
    data.write_text(json.dumps({"instruction": "q", "output": "a"}) + "\n")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: {{path: {tiny_qwen2}}}\ndata: {{datasets: [{data}]}}\n"
                      "method: {stage: dpo}\n")  # fmt: skip
    result = run_ftx("data", "prepare", str(recipe), "--out", str(tmp_path / "out"))
    assert result.returncode == 2 and "a row with one answer and no kto_tag" in result.stderr


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["data.packing=true"], "data.packing"),
        (["data.train_on_prompt=true"], "data.train_on_prompt"),
        (["method.preference.loss=simpo", "method.preference.reference=auto"],
         "preference.reference"),
        (["method.stage=kto", "method.preference.loss=ipo"], "preference.loss"),
        (["method.stage=sft", "method.preference.beta=0.2"], "preference.beta"),
        (["method.preference.simpo_gamma=1.0"], "preference.simpo_gamma"),
        (["method.stage=rm", "method.finetuning=prefix"], "finetuning 'prefix'"),
        (["method.preference.beta=0"], "method.preference.beta"),
    ],
)  # fmt: skip
def test_the_recipe_refuses_what_does_not_fit_a_preference_stage(
    tmp_path: Path, tiny_qwen2: Path, overrides: list[str], key: str
) -> None:
    recipe = write_recipe(tmp_path, tiny_qwen2, "dpo", "pairs_alpaca")
    result = run_ftx("validate", str(recipe), *overrides)
    assert result.returncode == 2 and key in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_a_preference_recipe_validates(tmp_path: Path, tiny_qwen2: Path) -> None:
    recipe = write_recipe(tmp_path, tiny_qwen2, "dpo", "pairs_alpaca")
    assert run_ftx("validate", str(recipe), "method.preference.loss=simpo").returncode == 0
    assert run_ftx("validate", str(recipe), "--backend", "torch").returncode == 0

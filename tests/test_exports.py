"""Native data exports, read back by the native tools' own loaders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import ROOT, run_ftx, run_in_env
from ftx.core.data.templates import TEMPLATES, to_paddlenlp
from ftx.core.prepared import load_split, read_manifest

DATA = ROOT / "recipes" / "data"


def recipe(tmp_path: Path, model: Path, extra: str = "") -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(
        f"model: {{path: {model}, template: llama3}}\n"
        f"data:\n  dataset_dir: {DATA}\n  datasets: [alpaca_demo, sharegpt_demo]\n"
        f"  max_seq_len: 96\n  val_size: 2\n{extra}"
    )
    return path


def test_paddlenlp_export(tmp_path: Path, tiny_llama: Path) -> None:
    out = tmp_path / "paddlenlp"
    result = run_ftx(
        "data", "export", str(recipe(tmp_path, tiny_llama)), "--to", "paddlenlp", "--out", str(out)
    )
    assert result.returncode == 0, result.stderr
    train = [json.loads(x) for x in (out / "train.json").read_text().splitlines()]
    dev = [json.loads(x) for x in (out / "dev.json").read_text().splitlines()]
    assert len(train) == 6 and len(dev) == 2
    for row in train + dev:
        assert len(row["src"]) == len(row["tgt"]) >= 1
    assert any(
        r.get("context", {}).get("system") == "You are a concise assistant." for r in train + dev
    )
    assert any(len(r["src"]) == 2 for r in train + dev)  # multi-turn kept as rounds
    chat = json.loads((out / "chat_template.json").read_text())
    assert chat == to_paddlenlp(TEMPLATES["llama3"], bos="<|begin_of_text|>", eos="<|eot_id|>")
    again = run_ftx(
        "data", "export", str(recipe(tmp_path, tiny_llama)), "--to", "paddlenlp", "--out", str(out)
    )
    assert again.returncode == 2 and "--force" in again.stderr


READ_MINDRECORD = """
import json, sys
from mindformers.dataset import CausalLanguageModelDataset
dataset = CausalLanguageModelDataset(
    data_loader={"type": "MindDataset", "dataset_dir": sys.argv[1], "shuffle": False},
    input_columns=["input_ids", "labels"], batch_size=1, drop_remainder=False,
    num_parallel_workers=1,
)
batches = dataset.create_tuple_iterator()
rows = [[column.asnumpy()[0].tolist() for column in item] for item in batches]
print(json.dumps(rows))
"""


@pytest.mark.env
def test_mindrecord_export_reads_back_with_mindformers(tmp_path: Path, tiny_llama: Path) -> None:
    out = tmp_path / "mindrecord"
    path = recipe(tmp_path, tiny_llama)
    result = run_ftx("data", "export", str(path), "--to", "mindrecord", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert (out / "train.mindrecord").exists() and (out / "train.mindrecord.db").exists()
    rows = run_in_env("mindformers", READ_MINDRECORD, str(out / "train.mindrecord"))
    prepared = tmp_path / "prepared"
    assert run_ftx("data", "prepare", str(path), "--out", str(prepared)).returncode == 0
    split = load_split(prepared, "train")
    manifest = read_manifest(prepared)
    assert len(rows) == len(split) == 6
    for i, (input_ids, labels) in enumerate(rows):
        ids, lab = split[i]
        assert len(input_ids) == len(labels) == manifest["max_seq_len"] + 1
        assert input_ids[: len(ids)] == ids.tolist() and labels[: len(lab)] == lab.tolist()
        assert set(input_ids[len(ids) :]) <= {manifest["pad_token_id"]}
        assert set(labels[len(lab) :]) <= {-100}
    # held-out rows are seq_length wide: MindFormers' eval network takes its rows whole
    held_out = run_in_env("mindformers", READ_MINDRECORD, str(out / "val.mindrecord"))
    val = load_split(prepared, "val")
    assert len(held_out) == len(val) == 2
    for i, (input_ids, labels) in enumerate(held_out):
        assert len(input_ids) == len(labels) == manifest["max_seq_len"]
        assert input_ids[: len(val[i][0])] == val[i][0].tolist()

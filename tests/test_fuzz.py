"""Fuzzing the CLI: mutated recipes, datasets in every format, dataset_info.json entries,
safetensors headers and offsets, index files, adapters and .ckpt files.

Every case must end with exit code 0 or 2 (1 is a bug: a traceback), print no traceback,
change no file outside its output, and leave no half-written output. The commands run
in-process (click's runner: the real CLI, minus interpreter start-up) so a CI budget
covers many cases. ``make test`` runs FTX_FUZZ_EXAMPLES cases per target (default 25);
``make fuzz`` runs 500.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from conftest import ROOT

EXAMPLES = int(os.environ.get("FTX_FUZZ_EXAMPLES", "25"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=os.environ.get("FTX_FUZZ_RANDOM") != "1",  # CI: the same cases every run
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
CASES = {"count": 0}


def tree(folder: Path, skip: Path | None = None) -> dict[str, str]:
    found = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not (skip and (path == skip or skip in path.parents)):
            found[str(path.relative_to(folder))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def ftx(*args: str, watch: Path, out: Path | None = None) -> int:
    """Run one CLI case and check the invariants; return its exit code."""
    from ftx.core.cli import commands

    cli = commands()
    before = tree(watch, skip=out)
    out_before = tree(out) if out is not None and out.is_dir() else None
    result = CliRunner().invoke(cli, list(args), catch_exceptions=True)
    CASES["count"] += 1
    text = result.output + (result.stderr if result.stderr_bytes is not None else "")
    CASES["output"] = text
    case = f"ftx {' '.join(args)}\n{text[-3000:]}"
    assert result.exit_code in (0, 2), case
    assert "Traceback" not in text and "bug in ftx" not in text, case
    if result.exception is not None:
        assert isinstance(result.exception, SystemExit), case
    assert tree(watch, skip=out) == before, f"an input changed: {case}"
    if out is not None:
        leftovers = [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]
        assert leftovers == [], f"staging left behind: {leftovers}\n{case}"
        if result.exit_code != 0:
            now = tree(out) if out.is_dir() else None
            assert now == out_before, f"a failed command changed its output: {case}"
    return result.exit_code


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A project (model, data, recipe) the cases read; outputs go to ``out`` beside it."""
    from ftx.core.models.init import init_model

    root = tmp_path_factory.mktemp("fuzz")
    init_model("llama", "tiny", root / "project" / "model")
    (root / "project" / "data").mkdir()
    shutil.copy(ROOT / "recipes/data/alpaca_demo.jsonl", root / "project/data/train.jsonl")
    (root / "project" / "recipe.yaml").write_text(yaml.safe_dump(base_recipe(root)))
    previous = os.environ.get("FTX_HOME")
    os.environ["FTX_HOME"] = str(root / "home")  # the cases' own prepared-data cache
    yield root
    if previous is None:
        os.environ.pop("FTX_HOME", None)
    else:
        os.environ["FTX_HOME"] = previous


def base_recipe(root: Path) -> dict:
    return {
        "model": {"path": str(root / "project" / "model")},
        "data": {"datasets": [str(root / "project/data/train.jsonl")], "max_seq_len": 64},
        "method": {"finetuning": "lora", "lora": {"rank": 4}},
        "train": {"max_steps": 2, "learning_rate": 1e-3},
        "output": {"dir": str(root / "out")},
    }


def fresh(path: Path) -> Path:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
    return path


# --------------------------------------------------------------------------- values

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["auto", "lora", "full", "sft", "pt", "../../etc", "/", "", "1e308"]),
    # what issue 26 found: markup and emoji codes printed, lone surrogates, huge integers
    st.sampled_from(["x:fire:y", "[bold]a[/x]", "\ud800", "$(touch x)", "a\nb"]),
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def mutate(document: dict, draw_path: list[str], value: object, delete: bool) -> dict:
    """The document with the value at a key path replaced (or deleted, or added)."""
    node = document
    for key in draw_path[:-1]:
        child = node.get(key) if isinstance(node, dict) else None
        if not isinstance(child, dict):
            child = {}
            node[key] = child
        node = child
    if delete:
        node.pop(draw_path[-1], None)
    else:
        node[draw_path[-1]] = value
    return document


KEY_PATHS = [
    ["model", "path"], ["model", "template"], ["model", "format"], ["model", "dtype"],
    ["data", "datasets"], ["data", "max_seq_len"], ["data", "packing"], ["data", "val_size"],
    ["data", "on_error"], ["data", "max_row_bytes"], ["data", "dataset_dir"],
    ["method", "stage"], ["method", "finetuning"], ["method", "lora", "rank"],
    ["method", "lora", "targets"], ["train", "epochs"], ["train", "max_steps"],
    ["train", "micro_batch_size"], ["train", "learning_rate"], ["train", "scheduler"],
    ["train", "resume"], ["parallel", "nproc_per_node"], ["parallel", "tp"], ["parallel", "zero"],
    ["output", "dir"], ["evaluate"], ["backends"], ["backends", "torch"],
    ["backends", "torch", "gradient_accumulation_steps"], ["backends", "torch", "bf16"],
    ["unknown_section"], ["train", "learning_rat"], ["parallel", "master_addr"],
    ["scheduler", "slurm", "partition"], ["method", "lora", "alpha"], ["train", "weight_decay"],
]  # fmt: skip


@FUZZ
@given(
    edits=st.lists(
        st.tuples(st.sampled_from(KEY_PATHS), values, st.booleans()), min_size=1, max_size=3
    ),
    noise=st.one_of(st.none(), st.binary(min_size=1, max_size=8)),
)
@example(edits=[(["backends", "torch", "bf16"], False, False)], noise=None)
@example(edits=[(["train", "epochs"], 1e308, False)], noise=None)
@example(edits=[(["model", "path"], "/nowhere", False)], noise=b"\xe9")
@example(edits=[(["data", "max_seq_len"], "x" * 3, False)], noise=b"&a [*a]")
def test_fuzz_recipes(workspace: Path, edits: list, noise: bytes | None) -> None:
    document = base_recipe(workspace)
    for path, value, delete in edits:
        document = mutate(document, list(path), value, delete)
    text = yaml.safe_dump(document, allow_unicode=True).encode("utf-8", "surrogatepass")
    if noise is not None:
        at = random.Random(len(text)).randrange(len(text))
        text = text[:at] + noise + text[at:]
    recipe = workspace / "project" / "fuzz.yaml"
    recipe.write_bytes(text)
    out = fresh(workspace / "out")
    ftx("validate", str(recipe), watch=workspace / "project")
    ftx("plan", str(recipe), "--out", str(out), watch=workspace / "project", out=out)
    ftx("validate", str(recipe), "--backend", "torch", watch=workspace / "project")


# --------------------------------------------------------------------------- datasets

COLUMNS = ["instruction", "input", "output", "system", "history", "conversations", "messages",
           "text", "from", "value", "role", "content", "tools", "chosen", "rejected"]  # fmt: skip
rows = st.lists(st.dictionaries(st.sampled_from(COLUMNS), values, max_size=5), max_size=6)


def serialise(items: list[dict], suffix: str) -> bytes:
    if suffix == ".jsonl":
        return b"".join(json.dumps(r, default=str).encode() + b"\n" for r in items)
    if suffix == ".json":
        return json.dumps(items, default=str).encode()
    if suffix == ".txt":
        return "\n".join(str(r.get("text", r)) for r in items).encode("utf-8", "surrogatepass")
    if suffix == ".csv":
        import csv
        import io

        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=COLUMNS)
        writer.writeheader()
        for r in items:
            writer.writerow(
                {k: json.dumps(v) if not isinstance(v, str) else v for k, v in r.items()}
            )
        return buffer.getvalue().encode("utf-8", "surrogatepass")
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({c: [json.dumps(r.get(c)) for r in items] for c in ("instruction", "output")})
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


@FUZZ
@given(
    items=rows,
    suffix=st.sampled_from([".jsonl", ".json", ".csv", ".txt", ".parquet"]),
    fmt=st.sampled_from(["alpaca", "sharegpt", "openai", "text"]),
    cut=st.one_of(st.none(), st.floats(0, 1)),
    junk=st.one_of(st.none(), st.binary(min_size=1, max_size=6)),
    skip=st.booleans(),
    bom=st.booleans(),
)
@example(items=[{"instruction": "ok", "output": "x"}], suffix=".json", fmt="alpaca", cut=0.5,
         junk=None, skip=False, bom=False)  # fmt: skip
@example(items=[{"text": "caf"}], suffix=".txt", fmt="text", cut=None, junk=b"\xe9", skip=True,
         bom=True)  # fmt: skip
def test_fuzz_datasets(
    workspace: Path,
    items: list,
    suffix: str,
    fmt: str,
    cut: float | None,
    junk: bytes | None,
    skip: bool,
    bom: bool,
) -> None:
    data = (b"\xef\xbb\xbf" if bom and suffix != ".parquet" else b"") + serialise(items, suffix)
    if cut is not None:
        data = data[: int(len(data) * cut)]
    if junk is not None:
        at = random.Random(len(data)).randrange(len(data) + 1)
        data = data[:at] + junk + data[at:]
    dataset = workspace / "project" / "data" / f"fuzz{suffix}"
    dataset.write_bytes(data)
    recipe = workspace / "project" / "fuzz.yaml"
    document = base_recipe(workspace)
    document["data"]["datasets"] = [{"path": str(dataset), "format": fmt}]
    document["data"]["on_error"] = "skip" if skip else "raise"
    if fmt == "text":
        document["method"]["stage"] = "pt"
    recipe.write_text(yaml.safe_dump(document))
    ftx("data", "stats", str(recipe), watch=workspace / "project")
    out = fresh(workspace / "out")
    ftx("data", "prepare", str(recipe), "--out", str(out), watch=workspace / "project", out=out)


@FUZZ
@given(entry=st.dictionaries(
    st.sampled_from(["file_name", "folder", "formatting", "columns", "tags", "ranking",
                     "num_samples", "hf_hub_url", "split"]),
    values | st.sampled_from(["train.jsonl", "../train.jsonl", "/etc/passwd", "data", ".",
                              "alpaca", "sharegpt", "foo"]),
    max_size=5,
))  # fmt: skip
@example(entry={"file_name": "../../outside.jsonl"})
@example(entry={"file_name": "/etc/passwd"})
@example(entry={"file_name": "train.jsonl", "columns": ["prompt"]})
@example(entry={"file_name": "train.jsonl", "formatting": "foo"})
def test_fuzz_dataset_info(workspace: Path, entry: dict) -> None:
    info = workspace / "project" / "data" / "dataset_info.json"
    info.write_text(json.dumps({"fuzzed": entry}, default=str))
    recipe = workspace / "project" / "fuzz.yaml"
    document = base_recipe(workspace)
    document["data"] = {
        "datasets": ["fuzzed"],
        "dataset_dir": str(workspace / "project" / "data"),
        "max_seq_len": 64,
    }
    recipe.write_text(yaml.safe_dump(document))
    ftx("data", "stats", str(recipe), watch=workspace / "project")


# --------------------------------------------------------------------------- checkpoints


@pytest.fixture(scope="module")
def checkpoints(workspace: Path) -> Path:
    """Sources the checkpoint cases mutate: safetensors, an adapter, a .ckpt."""
    import numpy as np
    from safetensors.numpy import save_file

    folder = workspace / "sources"
    model = workspace / "project" / "model"
    ckpt = folder / "ckpt"
    code = ftx("convert", str(model), str(ckpt), "--to", "mindspore", "--format", "ckpt",
               watch=workspace / "project", out=ckpt)  # fmt: skip
    assert code == 0
    adapter = folder / "adapter"
    adapter.mkdir()
    config = json.loads((model / "config.json").read_text())
    hidden = config["hidden_size"]
    (adapter / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q_proj"],
                    "base_model_name_or_path": str(model)})
    )  # fmt: skip
    prefix = "base_model.model.model.layers.0.self_attn.q_proj"
    save_file(
        {
            f"{prefix}.lora_A.weight": np.ones((2, hidden), np.float32),
            f"{prefix}.lora_B.weight": np.ones((hidden, 2), np.float32),
        },
        str(adapter / "adapter_model.safetensors"),
    )
    return folder


def copy_model(workspace: Path, name: str) -> Path:
    target = fresh(workspace / "mutants" / name)
    shutil.copytree(workspace / "project" / "model", target)
    return target


@FUZZ
@given(
    field=st.sampled_from(["dtype", "shape", "data_offsets", "__metadata__", "entry", "length"]),
    value=values,
    flips=st.lists(st.tuples(st.integers(0, 4000), st.integers(0, 255)), max_size=4),
)
@example(field="length", value=1 << 40, flips=[])
@example(field="data_offsets", value=[0, 1 << 62], flips=[])
@example(field="shape", value=[-1, 4], flips=[])
def test_fuzz_safetensors_headers(
    workspace: Path, checkpoints: Path, field: str, value, flips: list
) -> None:
    model = copy_model(workspace, "safetensors")
    weights = model / "model.safetensors"
    raw = weights.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + length])
    name = sorted(k for k in header if k != "__metadata__")[0]
    if field == "length":
        raw = (
            struct.pack("<Q", value if isinstance(value, int) and 0 <= value < 2**64 else 0)
            + raw[8:]
        )
    else:
        if field == "entry":
            header[name] = value
        elif field == "__metadata__":
            header["__metadata__"] = value
        else:
            header[name][field] = value
        text = json.dumps(header, default=str).encode()
        raw = struct.pack("<Q", len(text)) + text + raw[8 + length :]
    data = bytearray(raw)
    for at, byte in flips:
        data[at % len(data)] = byte
    weights.write_bytes(bytes(data))
    out = fresh(workspace / "out")
    ftx("convert", str(model), str(out), "--to", "paddle", watch=model.parent, out=out)


@FUZZ
@given(weight_map=st.one_of(values, st.dictionaries(
    st.text(max_size=30),
    st.sampled_from(["model.safetensors", "../model.safetensors", "/etc/passwd", "missing",
                     "model-00001-of-00002.safetensors"]) | st.text(max_size=10),
    max_size=4,
)))  # fmt: skip
@example(weight_map={"model.embed_tokens.weight": "../../x.safetensors"})
@example(weight_map={"model.embed_tokens.weight": "/tmp/x.safetensors"})
def test_fuzz_index_files(workspace: Path, checkpoints: Path, weight_map) -> None:
    model = copy_model(workspace, "indexed")
    (model / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": weight_map}, default=str)
    )
    out = fresh(workspace / "out")
    ftx("convert", str(model), str(out), "--to", "paddle", watch=model.parent, out=out)


@FUZZ
@given(
    key=st.sampled_from(["r", "lora_alpha", "target_modules", "peft_type", "use_rslora",
                         "base_model_name_or_path", "modules_to_save"]),
    value=values,
    shape=st.tuples(st.integers(0, 9), st.integers(0, 70)),
)  # fmt: skip
@example(key="r", value=2, shape=(2, 7))
def test_fuzz_adapters(workspace: Path, checkpoints: Path, key: str, value, shape) -> None:
    import numpy as np
    from safetensors.numpy import save_file

    adapter = fresh(workspace / "mutants" / "adapter")
    shutil.copytree(checkpoints / "adapter", adapter)
    config = json.loads((adapter / "adapter_config.json").read_text())
    config[key] = value
    (adapter / "adapter_config.json").write_text(json.dumps(config, default=str))
    prefix = "base_model.model.model.layers.0.self_attn.q_proj"
    save_file(
        {
            f"{prefix}.lora_A.weight": np.ones(shape, np.float32),
            f"{prefix}.lora_B.weight": np.ones(shape[::-1], np.float32),
        },
        str(adapter / "adapter_model.safetensors"),
    )
    out = fresh(workspace / "out")
    model = workspace / "project" / "model"
    ftx("convert", str(adapter), str(out), "--to", "paddle", "--model-type", "llama",
        watch=adapter.parent, out=out)  # fmt: skip
    out = fresh(workspace / "out")
    ftx("merge-lora", str(model), str(adapter), str(out), watch=workspace / "project", out=out)


@FUZZ
@given(
    flips=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), min_size=1, max_size=6),
    cut=st.one_of(st.none(), st.floats(0, 1)),
)
@example(flips=[(0.0, 0)], cut=0.5)
def test_fuzz_ckpt_files(workspace: Path, checkpoints: Path, flips: list, cut) -> None:
    source = fresh(workspace / "mutants" / "ckpt")
    shutil.copytree(checkpoints / "ckpt", source)
    (ckpt,) = source.glob("*.ckpt")
    data = bytearray(ckpt.read_bytes())
    for where, byte in flips:
        data[int(where * (len(data) - 1))] = byte
    if cut is not None:
        data = data[: int(len(data) * cut)]
    ckpt.write_bytes(bytes(data))
    out = fresh(workspace / "out")
    ftx("convert", str(source), str(out), "--to", "hf", watch=source.parent, out=out)


SCRIPT_KEYS = [
    "parallel.master_addr",
    "scheduler.slurm.partition",
    "scheduler.slurm.account",
    "scheduler.slurm.job_name",
    "scheduler.slurm.gres",
    "output.dir",
]
SCRIPT_TEXT = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=40
)


@FUZZ
@given(value=SCRIPT_TEXT)
@example(value="$(touch ran)`touch ran`\"'}\\\n${x")
def test_fuzz_script_values(tmp_path_factory: pytest.TempPathFactory, value: str) -> None:
    """Any text through the generated scripts' helper (issue 26, class 1): bash hands it
    to a program verbatim, as an export, a plan default or a word, and runs nothing."""
    import subprocess

    from ftx.core import scripts

    folder = tmp_path_factory.mktemp("script")
    text = (
        scripts.export("A", value)
        + scripts.default_export("B", value)
        + f'printf "%s\\0%s\\0%s" "$A" "$B" {scripts.word(value)}\n'
    )
    result = subprocess.run(["bash", "-c", text], capture_output=True, cwd=folder, env={})
    CASES["count"] += 1
    assert result.returncode == 0, (value, result.stderr)
    assert result.stdout.decode("utf-8", "surrogateescape").split("\0") == [value] * 3
    assert list(folder.iterdir()) == []  # nothing ran


@FUZZ
@given(key=st.sampled_from(SCRIPT_KEYS), value=SCRIPT_TEXT)
@example(key="scheduler.slurm.partition", value="gpu-a100")
@example(key="parallel.master_addr", value="10.0.0.7")
def test_fuzz_script_bound_recipe_values(workspace: Path, key: str, value: str) -> None:
    """Any text for a recipe key that reaches a script: exit 0 or 2, and what validates
    is what the scripts' checks accept; a plain name or address validates."""
    import re

    from ftx.core import scripts

    code = ftx("validate", str(workspace / "project/recipe.yaml"), f"{key}={value}",
               watch=workspace / "project")  # fmt: skip
    if re.fullmatch(r"[a-z][a-z0-9]{0,30}", value) or value in ("gpu-a100", "10.0.0.7"):
        assert code == 0, (key, value)
    if code == 0 and key == "parallel.master_addr":
        assert scripts.host_problem(value) is None, value
    if code == 0:
        assert scripts.single_line_problem(value) is None, (key, value)


# --------------------------------------------------------------------------- links (class 3)

LINK_TARGETS = ["outside", "relative_outside", "chain_outside", "folder_outside", "inside",
                "chain_inside", "dangling"]  # fmt: skip


def _link(link: Path, target: str, inside: Path, secret: Path) -> bool:
    """Make ``link`` point as ``target`` says; True when what it reaches is inside."""
    if target == "outside":
        link.symlink_to(secret)
    elif target == "relative_outside":
        link.symlink_to(os.path.relpath(secret, link.parent))
    elif target == "chain_outside":  # a link inside the folder, to a link out of it
        (link.parent / f"hop-{link.name}").symlink_to(secret)
        link.symlink_to(f"hop-{link.name}")
    elif target == "folder_outside":
        link.symlink_to(secret.parent)
    elif target == "inside":
        link.symlink_to(inside.name)
    elif target == "chain_inside":
        (link.parent / f"hop-{link.name}").symlink_to(inside.name)
        link.symlink_to(f"hop-{link.name}")
    else:  # dangling
        link.symlink_to("missing-" + link.name)
    return target in ("inside", "chain_inside")


@FUZZ
@given(where=st.sampled_from(["dataset_info", "folder", "index_shard"]),
       target=st.sampled_from(LINK_TARGETS))  # fmt: skip
def test_fuzz_links(workspace: Path, where: str, target: str) -> None:
    """An input that is a symbolic link (issue 26, class 3): a dataset_info.json entry, a
    file of a dataset folder or an index shard, pointing in, out (directly, relatively,
    through another link, at a folder) or nowhere. What reaches outside its folder is
    refused with exit 2 naming the link, and nothing of it is printed."""
    case = fresh(workspace / "links")
    case.mkdir()
    secret = workspace / "outside" / "secret.jsonl"
    secret.parent.mkdir(exist_ok=True)
    secret.write_text('{"instruction": "SECRET-ROW", "output": "x"}\n')
    recipe = case / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(base_recipe(workspace)))
    if where == "index_shard":
        model = case / "model"
        shutil.copytree(workspace / "project/model", model)
        weights = model / "weights.safetensors"
        (model / "model.safetensors").rename(weights)
        secret = workspace / "outside" / "weights.safetensors"
        if not secret.exists():
            shutil.copy(weights, secret)
        inward = _link(model / "shard.safetensors", target, weights, secret)
        from ftx.core.convert.safetensors_stream import SafetensorsReader

        names = SafetensorsReader(weights).names
        index = {"weight_map": {name: "shard.safetensors" for name in names}}
        (model / "model.safetensors.index.json").write_text(json.dumps(index))
        out = case / "out"
        code = ftx("convert", str(model), str(out), "--to", "paddle", watch=case, out=out)
    else:
        data = case / "data"
        data.mkdir()
        real = data / "real.jsonl"
        shutil.copy(workspace / "project/data/train.jsonl", real)
        folder = data / "rows"
        folder.mkdir()
        link = (data if where == "dataset_info" else folder) / "rows.jsonl"
        inward = _link(link, target, real, secret)
        if where == "dataset_info":
            (data / "dataset_info.json").write_text(json.dumps({"t": {"file_name": "rows.jsonl"}}))
            pick = ["data.dataset_dir=" + str(data), "data.datasets=t"]
        else:
            if inward:  # a folder's link points at a file of that folder
                shutil.copy(real, folder / real.name)
            pick = [f"data.datasets=[{{path: {folder}}}]"]
        runner = CliRunner()
        from ftx.core.cli import commands

        shown = runner.invoke(commands(), ["data", "show", str(recipe), *pick])
        assert "SECRET-ROW" not in shown.output, shown.output
        code = ftx("data", "show", str(recipe), *pick, watch=case)
    if target == "dangling":
        assert code == 2
    elif not inward:
        assert code == 2, (where, target)


# ---------------------------------------------------------------- racing writers (class 4)


@settings(FUZZ, max_examples=max(2, EXAMPLES // 8))
@given(command=st.sampled_from(["convert", "init-model", "data prepare"]),
       delay=st.sampled_from([0.0, 0.05, 0.3]),
       before=st.sampled_from(["nothing", "an empty folder", "a dead writer's claim"]))  # fmt: skip
def test_fuzz_racing_writers(workspace: Path, command: str, delay: float, before: str) -> None:
    """Two ftx processes started together into one new destination (issue 26, class 4):
    exactly one succeeds, the other exits 2 naming the writer or the folder it found
    full, the output is the winner's whole, and no hidden partial file stays behind."""
    import subprocess
    import time

    from conftest import FTX

    case = fresh(workspace / "race")
    case.mkdir()
    dst = case / "dst"
    if before == "an empty folder":
        dst.mkdir()
    elif before == "a dead writer's claim":
        gone = subprocess.Popen(["true"])
        gone.wait()
        (case / ".dst.claim").write_text(json.dumps({"pid": gone.pid, "host": os.uname()[1],
                                                     "command": "ftx convert"}))  # fmt: skip
        (case / ".dst.x1.partial").mkdir()
    project = workspace / "project"
    args = {
        "convert": ["convert", str(project / "model"), str(dst), "--to", "paddle"],
        "init-model": ["init-model", "--out", str(dst)],
        "data prepare": ["data", "prepare", str(project / "recipe.yaml"), "--out", str(dst)],
    }[command]
    env = {**os.environ, "FTX_HOME": str(case / "home")}
    racers = []
    for _ in range(2):
        racers.append(subprocess.Popen([str(FTX), *args], stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True, env=env))  # fmt: skip
        time.sleep(delay)
    codes = [p.wait(timeout=300) for p in racers]
    errors = [p.stderr.read() for p in racers]
    CASES["count"] += 2
    assert sorted(codes) == [0, 2], (codes, errors)
    loser = errors[codes.index(2)]
    assert "another ftx is writing there" in loser or "not empty" in loser, loser
    assert "Traceback" not in "".join(errors)
    whole = {"convert": "config.json", "init-model": "model.safetensors",
             "data prepare": "manifest.json"}[command]  # fmt: skip
    assert (dst / whole).is_file(), sorted(p.name for p in dst.iterdir())
    assert [p.name for p in case.iterdir() if p.name.startswith(".dst")] == []


# ------------------------------------------------------- files changing while read (class 2)

CHANGES = ["same size, time kept", "another size", "replaced by rename"]
CHANGED_ROWS = 20000
REFERENCES: dict[str, tuple[str, dict[str, str]]] = {}


def _contents(how: str) -> tuple[bytes, bytes]:
    """The dataset's two versions: A, and B that differs from it as ``how`` says (the same
    number of bytes when the change is to pass a size-and-time check)."""
    rows = [{"instruction": f"question {i} about the cache", "output": f"answer number {i}"}
            for i in range(CHANGED_ROWS)]  # fmt: skip
    lines = [json.dumps(row) + "\n" for row in rows]
    first = "".join(lines).encode()
    if how == "another size":
        return first, first + "".join(lines[: len(lines) // 3]).encode()
    return first, first.replace(b"answer", b"ANSWER")


def _write_version(path: Path, data: bytes, how: str, mtime_ns: int) -> None:
    if how == "replaced by rename":
        staged = path.with_name(".incoming")
        staged.write_bytes(data)
        os.replace(staged, path)
    elif how == "same size, time kept":  # the bytes change, the size, inode and time do not
        with path.open("r+b") as handle:
            handle.write(data)
        os.utime(path, ns=(mtime_ns, mtime_ns))
    else:
        path.write_bytes(data)


def _reference(recipe: Path, data: Path, version: bytes, home: Path) -> tuple[str, dict[str, str]]:
    """The cache key and entry that a still file with these bytes gives."""
    from ftx.core.data.prepare import cached_prepared
    from ftx.core.recipe.loader import load_recipe

    digest = hashlib.sha256(version).hexdigest()
    if digest not in REFERENCES:
        data.write_bytes(version)
        previous = os.environ["FTX_HOME"]
        os.environ["FTX_HOME"] = str(home)
        try:
            entry = cached_prepared(load_recipe(recipe).recipe)
        finally:
            os.environ["FTX_HOME"] = previous
        REFERENCES[digest] = (entry.name, tree(entry))
    return REFERENCES[digest]


@settings(FUZZ, max_examples=max(3, EXAMPLES // 8))
@given(how=st.sampled_from(CHANGES), delay=st.sampled_from([0.0, 0.2, 0.6, 1.5]),
       again=st.booleans())  # fmt: skip
@example(how="same size, time kept", delay=0.0, again=True)
def test_fuzz_files_changing_while_read(
    workspace: Path, how: str, delay: float, again: bool
) -> None:
    """A dataset another program rewrites while `ftx data prepare` runs (issue 26, class
    2): once after ``delay`` seconds, or back and forth until ftx is done. Whatever the
    timing, every prepared-data cache entry holds exactly the tokens that a still file
    with its key's bytes gives, and the command either succeeds with such an entry or
    exits 2 saying the file changed, leaving no output."""
    import subprocess
    import threading

    from conftest import FTX

    case = fresh(workspace / "changing")
    (case / "data").mkdir(parents=True)
    data = case / "data" / "rows.jsonl"
    recipe = case / "recipe.yaml"
    document = base_recipe(workspace)
    document["data"]["datasets"] = [str(data)]
    recipe.write_text(yaml.safe_dump(document))
    first, second = _contents(how)
    references = dict(
        _reference(recipe, data, version, case / f"reference-{i}")
        for i, version in enumerate((first, second))
    )
    data.write_bytes(first)
    mtime = data.stat().st_mtime_ns
    home, out = case / "home", case / "out"
    done = threading.Event()

    def rewrite() -> None:
        if done.wait(delay):
            return
        versions = [second, first]
        while True:
            _write_version(data, versions[0], how, mtime)
            versions.reverse()
            if not again or done.wait(0.01):
                return

    writer = threading.Thread(target=rewrite)
    writer.start()
    try:
        result = subprocess.run([str(FTX), "data", "prepare", str(recipe), "--out", str(out)],
                                capture_output=True, text=True, timeout=600,
                                env={**os.environ, "FTX_HOME": str(home)})  # fmt: skip
    finally:
        done.set()
        writer.join()
    CASES["count"] += 1
    assert result.returncode in (0, 2), result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    if result.returncode == 2:
        assert "changed while ftx read it" in result.stderr, result.stderr
        assert not out.exists()
    else:
        assert json.loads((out / "manifest.json").read_text())["key"] in references
    entries = [p for p in (home / "prepared").glob("*") if (p / "manifest.json").is_file()]
    for entry in entries:
        assert tree(entry) == references.get(entry.name), (how, delay, again, entry.name)


# ------------------------------------------------------------- literal messages (class 8)

NAME_PIECES = ["[", "]", "[/", "[bold]", "[/x]", ":fire:", ":", "\\", "%s", "{}", "$HOME", "x",
               " ", "é", "\N{FIRE}", "\u200b", "'", '"', "\t"]  # fmt: skip


@FUZZ
@given(pieces=st.lists(st.sampled_from(NAME_PIECES), min_size=1, max_size=8),
       key=st.sampled_from(["model.path", "data.datasets"]))  # fmt: skip
@example(pieces=["x", ":fire:", "[bold]", "y"], key="model.path")
def test_fuzz_paths_are_printed_as_typed(workspace: Path, pieces: list[str], key: str) -> None:
    """A path made of rich markup, emoji codes, escapes and odd spaces (issue 26, class
    8): the error names it exactly as it is, with no markup rendered and no emoji made
    (a control character, which a terminal would expand or act on, as its escape)."""
    name = "".join(pieces)
    missing = workspace / "named" / name
    document = base_recipe(workspace)
    if key == "model.path":
        document["model"]["path"] = str(missing)
    else:
        document["data"]["datasets"] = [str(missing) + ".jsonl"]
        missing = Path(str(missing) + ".jsonl")
    case = fresh(workspace / "named")
    case.mkdir()
    recipe = case / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(document))
    from ftx.core.cli import commands
    from ftx.core.errors import printable

    result = CliRunner().invoke(commands(), ["data", "show", str(recipe)])
    CASES["count"] += 1
    text = result.output + (result.stderr if result.stderr_bytes is not None else "")
    assert result.exit_code == 2, text
    assert printable(str(missing)) in text, (name, text)  # control characters as escapes
    if "\N{FIRE}" not in name:
        assert "\N{FIRE}" not in text, text


# ------------------------------------------------------------------- full disks (class 8)

DISK_COMMANDS = ["convert paddle", "convert mindspore", "convert ckpt", "init-model",
                 "data prepare"]  # fmt: skip


@settings(FUZZ, max_examples=max(4, EXAMPLES // 2))
@given(command=st.sampled_from(DISK_COMMANDS),
       size=st.sampled_from(["4k", "16k", "64k", "256k", "1m", "4m", "64m"]))  # fmt: skip
def test_fuzz_full_disks(workspace: Path, command: str, size: str) -> None:
    """A command whose destination fills up at any point (issue 26, class 8): exit 0, or
    exit 2 saying the disk is full and naming the destination, with nothing of it left
    (no half-written output, no staging beside it); the inputs are untouched."""
    from conftest import small_disk

    project = workspace / "project"
    mount = fresh(workspace / "disk")
    with small_disk(mount, size) as disk:
        out = disk / "dst"
        args = {
            "convert paddle": ["convert", str(project / "model"), str(out), "--to", "paddle"],
            "convert mindspore": ["convert", str(project / "model"), str(out), "--to",
                                  "mindspore"],
            "convert ckpt": ["convert", str(project / "model"), str(out), "--to", "mindspore",
                             "--format", "ckpt"],
            "init-model": ["init-model", "--out", str(out)],
            "data prepare": ["data", "prepare", str(project / "recipe.yaml"), "--out", str(out)],
        }[command]  # fmt: skip
        code = ftx(*args, watch=project, out=out)
        if code == 2:
            text = " ".join(CASES["output"].split())
            assert "No space left on device" in text and str(out) in text, text
            assert not out.exists()
        assert [p.name for p in disk.iterdir() if p.name.startswith(".dst")] == []


# ------------------------------------------------------- bounded time and memory (class 5)

BOUNDED = [("dataset", "fifo"), ("dataset", "folder"), ("dataset", "/dev/zero"),
           ("dataset", "huge row"), ("config.json", "fifo"), ("config.json", "layers"),
           ("config.json", "hidden"), ("config.json", "vocabulary"), ("tokenizer.json", "fifo"),
           ("tokenizer.json", "/dev/zero"), ("chat template", "nested loops"),
           ("recipe", "fifo"), ("recipe", "/dev/zero")]  # fmt: skip


@settings(FUZZ, max_examples=max(4, EXAMPLES // 4))
@given(case=st.sampled_from(BOUNDED), command=st.sampled_from(["data prepare", "validate"]))
def test_fuzz_inputs_that_would_never_end(workspace: Path, case: tuple, command: str) -> None:
    """Inputs built to hang or exhaust a reader (issue 26, class 5): a FIFO, a folder or
    /dev/zero where a file belongs, a row past the row limit, a config beyond any model,
    a chat template that loops for ever. The command ends within a minute with exit 0 or
    2 and no traceback, and its process never holds more than 3 GB."""
    import resource
    import subprocess

    from conftest import FTX

    where, kind = case
    folder = fresh(workspace / "bounded")
    model = folder / "model"
    shutil.copytree(workspace / "project/model", model)
    data = folder / "rows.jsonl"
    shutil.copy(workspace / "project/data/train.jsonl", data)
    recipe = folder / "recipe.yaml"
    document = base_recipe(workspace)
    document["model"]["path"], document["data"]["datasets"] = str(model), [str(data)]
    recipe.write_text(yaml.safe_dump(document))
    target = {"dataset": data, "config.json": model / "config.json", "recipe": recipe,
              "tokenizer.json": model / "tokenizer.json"}.get(where)  # fmt: skip
    if kind in ("fifo", "folder", "/dev/zero"):
        target.unlink()
        if kind == "fifo":
            os.mkfifo(target)
        elif kind == "folder":
            target.mkdir()
        else:
            target.symlink_to("/dev/zero")
    elif kind == "huge row":  # 3 MB of CJK text in one row, past the 2 MiB default
        data.write_text(json.dumps({"instruction": "\u4e2d" * 1_000_000, "output": "x"}) + "\n")
    elif where == "config.json":
        config = json.loads(target.read_text())
        key = {"layers": "num_hidden_layers", "hidden": "hidden_size",
               "vocabulary": "vocab_size"}[kind]  # fmt: skip
        target.write_text(json.dumps({**config, key: 10**12}))
    else:  # a chat template that would render for ever
        settings_file = model / "tokenizer_config.json"
        tokenizer_settings = json.loads(settings_file.read_text())
        tokenizer_settings["chat_template"] = (
            "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}"
        )
        settings_file.write_text(json.dumps(tokenizer_settings))
        (model / "chat_template.jinja").unlink(missing_ok=True)
    args = ["validate", str(recipe), "--backend", "torch"] if command == "validate" else [
        "data", "prepare", str(recipe), "--out", str(folder / "out")]  # fmt: skip
    result = subprocess.run([str(FTX), *args], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "FTX_HOME": str(folder / "home")})  # fmt: skip
    CASES["count"] += 1
    assert result.returncode in (0, 2), (case, result.stderr[-3000:])
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    reader = {"recipe": command, "tokenizer.json": "data prepare", "config.json": "validate"}
    if reader.get(where) == command and kind in ("fifo", "/dev/zero", "layers", "hidden",
                                                  "vocabulary"):  # fmt: skip
        assert result.returncode == 2, (case, command, result.stdout)
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    assert peak_kb < 3 * 2**20, (case, peak_kb)  # the largest child this process waited for


# ----------------------------------------------------- environment builds cut short (class 9)


@pytest.mark.heavy  # each case builds an environment (20-40 s): make fuzz and make test-full
@settings(FUZZ, max_examples=min(EXAMPLES, 6))
@given(sig=st.sampled_from(["SIGINT", "SIGTERM", "SIGKILL"]),
       moment=st.sampled_from([0.5, 2.0, 5.0, 10.0, 20.0]))  # fmt: skip
def test_fuzz_environment_builds_cut_short(
    tmp_path_factory: pytest.TempPathFactory, sig: str, moment: float
) -> None:
    """An environment build stopped at any moment by Ctrl-C, SIGTERM or SIGKILL (issue 26,
    class 9): what is left is either a complete environment that works or one that no
    later command takes as ready, and the next command builds it whole."""
    import signal
    import subprocess
    import sys
    import time

    from ftx.core import envs
    from oracles import TRL

    home = tmp_path_factory.mktemp("envhome")
    (home / "envs").mkdir()
    (home / "envs" / "torch").symlink_to(envs.env_dir("torch"))  # the layer beneath, built
    build = ("import sys; sys.path.insert(0, sys.argv[1]); from oracles import ORACLES;"
             "from ftx.core import envs; [envs.register(k, v) for k, v in ORACLES.items()];"
             "envs.ensure(sys.argv[2])")  # fmt: skip
    env = {**os.environ, "FTX_HOME": str(home)}
    command = [sys.executable, "-c", build, str(ROOT / "tests"), TRL]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(moment)
    proc.send_signal(getattr(signal, sig))
    proc.communicate(timeout=300)
    CASES["count"] += 1
    previous = os.environ.get("FTX_HOME")
    os.environ["FTX_HOME"] = str(home)
    try:
        if envs.state(TRL) == "ready":  # the build had finished: it must work
            python = envs.env_python(TRL)
            subprocess.run([str(python), "-c", "import trl, torch"], check=True)
        again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        assert again.returncode == 0, again.stderr[-3000:]
        assert envs.state(TRL) == "ready"
        subprocess.run([str(envs.env_python(TRL)), "-c", "import trl, torch"], check=True)
    finally:
        os.environ["FTX_HOME"] = previous or ""
        if previous is None:
            os.environ.pop("FTX_HOME")

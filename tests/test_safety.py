"""Safe by construction: each bad input a security review reproduced gets the one-paragraph
error with exit code 2, destroys nothing, escapes no folder and stays within memory."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import FTX, ROOT, run_ftx, small_disk

DATA = ROOT / "recipes" / "data"


def tree(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with its sha256 (what "nothing changed" compares)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def user_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    """Exit code 2, one paragraph, no traceback, mentioning each needle."""
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr
    assert len(re.findall(r"^error:", result.stderr, re.M)) == 1
    assert ("\n" + result.stderr).split("\nerror:")[-1].count("\n") <= 4  # one paragraph
    for needle in needles:
        assert needle in result.stderr, (needle, result.stderr)


@pytest.fixture()
def project(tmp_path: Path, tiny_llama: Path) -> Path:
    """A user's project folder: recipe, dataset and model side by side."""
    folder = tmp_path / "project"
    shutil.copytree(tiny_llama, folder / "model")
    (folder / "data").mkdir()
    shutil.copy(DATA / "alpaca_demo.jsonl", folder / "data" / "train.jsonl")
    (folder / "recipe.yaml").write_text(
        "model: {path: model}\n"
        "data: {datasets: [data/train.jsonl], max_seq_len: 64}\n"
        "train: {max_steps: 2}\n"
        "output: {dir: runs/r}\n"
    )
    return folder


# --------------------------------------------------------------------------- data loss


def test_data_prepare_never_deletes_what_it_was_not_asked_to(project: Path) -> None:
    before = tree(project)
    recipe = str(project / "recipe.yaml")
    for out in (project, project / "data", project / "model"):
        for force in ([], ["--force"]):
            user_error(run_ftx("data", "prepare", recipe, "--out", str(out), *force), "input")
    assert tree(project) == before
    keep = project.parent / "keep"
    keep.mkdir()
    (keep / "notes.txt").write_text("mine")
    user_error(run_ftx("data", "prepare", recipe, "--out", str(keep)), "not empty", "--force")
    assert (keep / "notes.txt").read_text() == "mine"
    done = run_ftx("data", "prepare", recipe, "--out", str(keep), "--force")
    assert done.returncode == 0, done.stderr
    assert not (keep / "notes.txt").exists() and (keep / "manifest.json").exists()
    assert tree(project) == before


def test_prepared_data_is_never_written_through_its_cache_links(project: Path) -> None:
    from ftx.core.home import ftx_home

    recipe = str(project / "recipe.yaml")
    out = project.parent / "prepared"
    assert run_ftx("data", "prepare", recipe, "--out", str(out)).returncode == 0
    manifest = json.loads((out / "manifest.json").read_text())
    cache = ftx_home() / "prepared" / manifest["key"]
    cached = tree(cache)
    assert (out / "manifest.json").stat().st_nlink == 1  # this run's own file
    assert all(p.stat().st_mode & 0o222 == 0 for p in cache.rglob("*.npy"))
    (project / "model" / "tokenizer_config.json").touch()  # same tokens, new run
    again = run_ftx("data", "prepare", recipe, "--out", str(out), "--force")
    assert again.returncode == 0, again.stderr
    assert tree(cache) == cached


def test_convert_and_merge_refuse_to_overwrite_their_inputs(project: Path) -> None:
    model = project / "model"
    before = tree(project)
    for dst in (model, project, project / "model" / "inside"):
        user_error(run_ftx("convert", str(model), str(dst), "--to", "paddle", "--force"), "input")
    user_error(run_ftx("merge-lora", str(model), str(model), str(model), "--force"), "an input")
    file_dst = project.parent / "a-file"
    file_dst.write_text("x")
    user_error(run_ftx("convert", str(model), str(file_dst), "--to", "paddle"), "is a file")
    assert tree(project) == before and file_dst.read_text() == "x"


def test_plan_does_not_replace_the_record_of_what_ran(project: Path) -> None:
    recipe = str(project / "recipe.yaml")
    out = project.parent / "run"
    assert run_ftx("plan", recipe, "--out", str(out)).returncode == 0
    launch = (out / "plan" / "launch.sh").read_text()
    user_error(run_ftx("plan", recipe, "--out", str(out), "train.learning_rate=0.5"), "--force")
    assert (out / "plan" / "launch.sh").read_text() == launch
    assert run_ftx("plan", recipe, "--out", str(out), "--force").returncode == 0


def test_run_refuses_an_output_folder_that_holds_its_inputs(project: Path) -> None:
    before = tree(project)
    recipe = str(project / "recipe.yaml")
    user_error(run_ftx("run", recipe, "--out", str(project), "--force"), "input")
    assert tree(project) == before


def test_run_force_keeps_the_old_run_until_the_new_one_completes(project: Path) -> None:
    recipe = str(project / "recipe.yaml")
    out = project.parent / "run"
    out.mkdir()
    (out / "old.txt").write_text("the previous run")
    broken = project.parent / "broken-model"
    shutil.copytree(project / "model", broken)
    config = json.loads((broken / "config.json").read_text())
    config["intermediate_size"] += 8  # the weights no longer fit: the worker fails to load
    (broken / "config.json").write_text(json.dumps(config))
    failed = run_ftx("run", recipe, "--out", str(out), "--force", f"model.path={broken}")
    assert failed.returncode == 1, failed.stderr[-2000:]
    previous = project.parent / ".run.replaced"
    assert (previous / "old.txt").read_text() == "the previous run"
    done = run_ftx("run", recipe, "--out", str(out), "--force")
    assert done.returncode == 0, done.stderr[-2000:]
    assert not previous.exists() and not (out / "old.txt").exists()
    assert json.loads((out / "run.json").read_text())["status"] == "completed"


def test_a_full_disk_is_an_explained_error_that_leaves_nothing_half_written(
    project: Path, tmp_path: Path
) -> None:
    recipe = str(project / "recipe.yaml")
    rows = "".join(
        json.dumps({"instruction": f"question {i} " * 5, "output": f"answer {i}"}) + "\n"
        for i in range(3000)
    )
    (project / "data" / "train.jsonl").write_text(rows)  # prepared, several times 48 KiB
    with small_disk(tmp_path / "full", "48k") as disk:
        env = dict(os.environ, FTX_HOME=str(disk / "home"))
        result = subprocess.run(
            [str(FTX), "data", "prepare", recipe, "--out", str(disk / "out")],
            capture_output=True,
            text=True,
            env=env,
        )
        user_error(result, "No space left on device", "free some disk space")
        assert not (disk / "out").exists()
        assert not list((disk / "home").rglob("manifest.json"))  # no half-made cache entry
        assert not [p for p in disk.rglob("*") if p.name.endswith((".partial", ".tmp"))]
        converted = run_ftx("convert", str(project / "model"), str(disk / "conv"), "--to", "paddle")
        user_error(converted, "No space left on device")
        assert not (disk / "conv").exists()
        assert not [p for p in disk.iterdir() if p.name.startswith(".conv")]


def test_outputs_respect_the_umask(tmp_path: Path, tiny_llama: Path, project: Path) -> None:
    code = (
        "import os, sys; os.umask(0o022); "
        "from ftx.core.cli import main; sys.argv = ['ftx'] + sys.argv[1:]; main()"
    )
    for args in (
        ["init-model", "--out", str(tmp_path / "m")],
        ["convert", str(tiny_llama), str(tmp_path / "c"), "--to", "paddle"],
        # a LoRA run's final adapter (peft writes its weights private) and checkpoint
        ["run", str(project / "recipe.yaml"), "--backend", "torch", "--out", str(tmp_path / "r"),
         "train.save_steps=1", "method.finetuning=lora"],
    ):  # fmt: skip
        result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True)
        assert result.returncode == 0, result.stderr
    checkpoint = sorted((tmp_path / "r").rglob("checkpoint-*"))[-1]
    for folder in (tmp_path / "m", tmp_path / "c", tmp_path / "r" / "final", checkpoint):
        assert folder.stat().st_mode & 0o777 == 0o755
        assert all(p.stat().st_mode & 0o777 == 0o644 for p in folder.iterdir() if p.is_file())


# --------------------------------------------------------------------------- values


def test_weights_that_do_not_match_their_config_or_name_a_tensor_twice_are_refused(
    project: Path, tmp_path: Path
) -> None:
    """config.json saying 1 layer over weights of 2, and a safetensors header naming a
    tensor twice (json would keep the last): exit 2, nothing written."""
    model = project / "model"
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 1}))
    result = run_ftx("convert", str(model), str(tmp_path / "a"), "--to", "paddle")
    user_error(result, "model.layers.1.", "not part of the model config.json describes")
    (model / "config.json").write_text(json.dumps(config))

    weights = model / "model.safetensors"
    data = weights.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    name = next(k for k in header if k != "__metadata__")
    entry = json.dumps({name: header[name]})[1:-1]
    text = "{" + entry + "," + json.dumps(header)[1:]
    raw = text.encode() + b" " * ((8 - len(text.encode()) % 8) % 8)
    weights.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + length :])
    result = run_ftx("convert", str(model), str(tmp_path / "b"), "--to", "paddle")
    user_error(result, f"'{name}' is named twice")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("train.epochs=true", "true is not a number"),
        ("train.weight_decay=.nan", "finite number"),
        ("train.max_grad_norm=.inf", "finite number"),
        ("method.lora.alpha=.nan", "finite number"),
        ("method.lora.rank=1024", "larger than the model's hidden size"),
        ("method.lora.targets=[q_proj,wq]", "'wq'"),
        ("data.max_seq_len=1000000", "beyond the model's"),
    ],
)
def test_values_that_cannot_be_meant_are_refused_where_they_enter(
    project: Path, override: str, needle: str
) -> None:
    result = run_ftx("validate", str(project / "recipe.yaml"), "--backend", "torch",
                     "method.finetuning=lora", override)  # fmt: skip
    user_error(result, needle)


def test_num_samples_0_reads_every_row_and_says_so_once(project: Path) -> None:
    data = project / "data"
    (data / "dataset_info.json").write_text(
        json.dumps({"demo": {"file_name": "train.jsonl", "num_samples": 0}})
    )
    result = run_ftx("data", "show", str(project / "recipe.yaml"), "data.dataset_dir=data",
                     "data.datasets=demo")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("num_samples 0 takes every row") == 1
    (data / "dataset_info.json").write_text(
        json.dumps({"demo": {"file_name": "train.jsonl", "num_samples": -3}})
    )
    refused = run_ftx("data", "show", str(project / "recipe.yaml"), "data.dataset_dir=data",
                      "data.datasets=demo")  # fmt: skip
    user_error(refused, "num_samples is -3")


# --------------------------------------------------------------------------- no traceback


def _cases(project: Path, tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    """Inputs a user can fix that ended in a traceback: the command and the words of its
    one-paragraph answer."""
    recipe = str(project / "recipe.yaml")

    def show(name: str, text: str, fmt: str = "alpaca", *more: str) -> list[str]:
        path = tmp_path / name
        path.write_text(text)
        return ["data", "show", recipe, f"data.datasets=[{{path: {path}, format: {fmt}}}]", *more]

    deep = tmp_path / "deep.yaml"
    deep.write_text("a: " + "[" * 3000 + "]" * 3000 + "\n")
    (tmp_path / "a-file").write_text("")
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text("{not json")
    broken = tmp_path / "broken-model"
    shutil.copytree(project / "model", broken)
    (broken / "config.json").write_text("[1, 2]")
    long_int = '{"instruction": "hi", "output": ' + "1" * 5000 + "}\n"
    surrogate = '{"instruction": "hi\\ud800", "output": "x"}\n'
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    tool = json.dumps({"messages": chat, "tools": [{"type": "function", "name": "x"}]}) + "\n"
    return {
        "deep": (["validate", str(deep)], "nested too deeply"),
        "plan into a file": (["plan", recipe, "--out", str(tmp_path / "a-file")], "is a file"),
        "long int": (show("i.jsonl", long_int), "a number too long"),
        "surrogate": (show("s.jsonl", surrogate), "lone surrogate"),
        "conversations": (
            show("c.jsonl", '{"conversations": 5}\n', "sharegpt", "method.stage=pt"),
            "not a list",
        ),
        "tool": (show("t.jsonl", tool, "openai", "model.template=glm4"), "needs its 'function'"),
        "seed": (["init-model", "--seed", "-1", "--out", str(tmp_path / "m")], "--seed"),
        "status": (["status", str(run)], "run record cannot be read"),
        "cancel": (["cancel", str(run)], "run record cannot be read"),
        "compare": (["compare", str(run)], "run record cannot be read"),
        "config": (
            ["convert", str(broken), str(tmp_path / "o"), "--to", "paddle"],
            "not a JSON object",
        ),
        "model config": (
            ["validate", recipe, "--backend", "torch", f"model.path={broken}"],
            "not a JSON object",
        ),
        "/proc": (
            ["convert", str(project / "model"), "/proc/ftx-out", "--to", "paddle"],
            "cannot create files in /proc",
        ),
    }


CASES = ["deep", "plan into a file", "long int", "surrogate", "conversations", "tool", "seed",
         "status", "cancel", "compare", "config", "model config", "/proc"]  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_what_ended_in_a_traceback_is_one_paragraph(
    case: str, project: Path, tmp_path: Path
) -> None:
    args, needle = _cases(project, tmp_path)[case]
    result = run_ftx(*args)
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert needle in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_ctrl_c_exits_130(project: Path, tmp_path: Path) -> None:
    """Ctrl-C (SIGINT) is the user's choice, not a bug: exit code 130, no traceback."""
    import signal
    import time

    rows = project / "data" / "train.jsonl"
    row = json.dumps({"instruction": "say a few words", "output": "ok"}) + "\n"
    rows.write_text(row * 200000)
    proc = subprocess.Popen([str(FTX), "data", "prepare", str(project / "recipe.yaml"),
                             "--out", str(tmp_path / "p")], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    time.sleep(4)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr and not (tmp_path / "p").exists()


# --------------------------------------------------------------------------- messages


def test_paths_are_printed_literally(project: Path, tmp_path: Path) -> None:
    """Rich markup and emoji codes in a user's path are shown as typed: no flame for
    :fire:, no crash on a closing tag that matches nothing."""
    odd = tmp_path / "a[bold]b:fire:c[/x]"
    made = run_ftx("init-model", "--out", str(odd))
    assert made.returncode == 0, made.stderr
    assert str(odd) in made.stdout and "\N{FIRE}" not in made.stdout
    converted = run_ftx("convert", str(odd), str(tmp_path / "o:fire:[red]"), "--to", "paddle")
    assert converted.returncode == 0, converted.stderr
    assert str(tmp_path / "o:fire:[red]") in converted.stdout
    missing = run_ftx("validate", str(tmp_path / "r[/y]:fire:.yaml"))
    user_error(missing, str(tmp_path / "r[/y]:fire:.yaml"))


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("rows.jsonl", '{"instruction": "hi", "output": "yo"}\n'),
        ("rows.json", '[{"instruction": "hi", "output": "yo"}]'),
        ("rows.csv", "instruction,output\nhi,yo\n"),
    ],
)
def test_a_utf8_byte_order_mark_is_accepted(
    project: Path, tmp_path: Path, name: str, content: str
) -> None:
    path = tmp_path / name
    path.write_bytes(b"\xef\xbb\xbf" + content.encode())
    result = run_ftx("data", "show", str(project / "recipe.yaml"),
                     f"data.datasets=[{{path: {path}}}]")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "yo" in result.stdout


def test_text_after_a_json_list_of_rows_is_refused(project: Path, tmp_path: Path) -> None:
    path = tmp_path / "rows.json"
    path.write_text('[{"instruction": "hi", "output": "yo"}]\n{"instruction": "lost"}')
    result = run_ftx("data", "show", str(project / "recipe.yaml"),
                     f"data.datasets=[{{path: {path}}}]")  # fmt: skip
    user_error(result, "text after the list of rows", str(path))


def test_a_fifo_where_a_file_belongs_is_named_not_waited_on(project: Path, tmp_path: Path) -> None:
    """A FIFO as the recipe, a dataset, the tokenizer or the weights: reading it would
    block forever; each is one paragraph naming what it is, within seconds."""
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    user_error(run_ftx("validate", str(fifo), timeout=60), "the recipe is a FIFO")
    rows = tmp_path / "rows.jsonl"
    os.mkfifo(rows)
    shown = run_ftx("data", "show", str(project / "recipe.yaml"),
                    f"data.datasets=[{{path: {rows}}}]", timeout=60)  # fmt: skip
    user_error(shown, "the dataset file is a FIFO")
    model = project / "model"
    (model / "tokenizer.json").unlink()
    os.mkfifo(model / "tokenizer.json")
    user_error(run_ftx("data", "show", str(project / "recipe.yaml"), timeout=60),
               "tokenizer.json is a FIFO")  # fmt: skip
    (model / "model.safetensors").unlink()
    os.mkfifo(model / "model.safetensors")
    converted = run_ftx("convert", str(model), str(tmp_path / "out"), "--to", "paddle",
                        timeout=60)  # fmt: skip
    user_error(converted, "the weight file is a FIFO")


# --------------------------------------------------------------------------- the cache


def test_a_dataset_written_while_it_is_read_publishes_no_cache_entry(
    project: Path, tmp_path: Path
) -> None:
    """A dataset another program appends to while `ftx data prepare` reads it: exit 2
    naming the file, no cache entry (its key would name other bytes than its tokens), no
    output; once the file is still, the same command prepares it."""
    import threading
    import time

    rows = project / "data" / "train.jsonl"
    row = json.dumps({"instruction": "say a few words", "output": "ok"}) + "\n"
    rows.write_text(row * 20000)
    home = tmp_path / "home"
    env = {**os.environ, "FTX_HOME": str(home)}
    stop = threading.Event()

    def append() -> None:
        with rows.open("a") as handle:
            while not stop.is_set():
                handle.write(row)
                handle.flush()
                time.sleep(0.01)

    writer = threading.Thread(target=append)
    writer.start()
    try:
        result = subprocess.run([str(FTX), "data", "prepare", str(project / "recipe.yaml"),
                                 "--out", str(tmp_path / "prepared")], capture_output=True,
                                text=True, env=env, timeout=600)  # fmt: skip
    finally:
        stop.set()
        writer.join()
    user_error(result, "changed while ftx read it", str(rows))
    assert not (tmp_path / "prepared").exists()
    assert not [p for p in (home / "prepared").glob("*") if (p / "manifest.json").exists()]
    again = subprocess.run([str(FTX), "data", "prepare", str(project / "recipe.yaml"),
                            "--out", str(tmp_path / "prepared")], capture_output=True,
                           text=True, env=env, timeout=600)  # fmt: skip
    assert again.returncode == 0, again.stderr


# --------------------------------------------------------------------------- one writer


def test_one_writer_per_destination_and_a_killed_writers_leftovers_cleared(
    project: Path, tmp_path: Path
) -> None:
    """A destination another ftx process is writing is refused naming that process; once
    it is gone (killed), the next writer clears its claim and hidden partial files; two
    commands started together into one new folder never both succeed."""
    import socket

    dst = tmp_path / "converted"
    holder = subprocess.Popen(["sleep", "60"])
    ticks = Path(f"/proc/{holder.pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    claim = tmp_path / ".converted.claim"
    claim.write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname(),
                                 "started_ticks": ticks, "since": "earlier",
                                 "command": "ftx convert a b"}))  # fmt: skip
    model = project / "model"
    busy = run_ftx("convert", str(model), str(dst), "--to", "paddle")
    user_error(busy, f"another ftx is writing there: pid {holder.pid}", "ftx convert a b")
    assert not dst.exists()
    holder.kill()
    holder.wait()
    (tmp_path / ".converted.x1.partial").mkdir()
    (tmp_path / ".converted.x1.partial" / "half.safetensors").write_bytes(b"\0" * 10)
    (tmp_path / ".converted.x2.tmp").write_bytes(b"half")
    # a writer killed between writing its claim aside and linking it into place
    (tmp_path / f".converted.claim-{holder.pid}").write_text(claim.read_text())
    done = run_ftx("convert", str(model), str(dst), "--to", "paddle")
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".converted")) == []

    racing = [
        subprocess.Popen([str(FTX), "init-model", "--size", "small", "--out", str(tmp_path / "m")],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]  # fmt: skip
    codes = sorted(p.wait(timeout=300) for p in racing)
    errors = "".join(p.stderr.read() for p in racing)
    assert codes == [0, 2], errors
    assert "another ftx is writing there" in errors or "not empty" in errors


# --------------------------------------------------------------------------- confinement


def test_dataset_info_entries_stay_in_their_folder(project: Path) -> None:
    outside = project.parent / "outside.jsonl"
    outside.write_text('{"instruction": "secret", "output": "x"}\n')
    for name in ("../outside.jsonl", str(outside)):
        (project / "data" / "dataset_info.json").write_text(
            json.dumps({"leak": {"file_name": name}})
        )
        result = run_ftx(
            "data", "show", str(project / "recipe.yaml"), "data.dataset_dir=data",
            "data.datasets=leak",
        )  # fmt: skip
        user_error(result, "points outside", "leak.file_name")
        assert "secret" not in result.stdout


def test_index_shards_stay_in_their_folder(project: Path) -> None:
    model = project / "model"
    shutil.move(model / "model.safetensors", project / "weights.safetensors")
    index = {"weight_map": {"model.embed_tokens.weight": "../weights.safetensors"}}
    (model / "model.safetensors.index.json").write_text(json.dumps(index))
    result = run_ftx("convert", str(model), str(project.parent / "out"), "--to", "paddle")
    user_error(result, "points outside", "weight_map")
    assert not (project.parent / "out").exists()


def test_links_out_of_an_input_folder_are_refused_and_the_hf_cache_layout_is_not(
    project: Path,
) -> None:
    """A dataset folder's file, a dataset_info.json entry or an index shard that is a
    symbolic link to a file outside its folder: the error names the link, where it
    points and the folder, and nothing of the file is read or written. A snapshot of
    the Hugging Face cache (files linked into the repository's blobs) is read."""
    secret = project.parent / "secret.jsonl"
    secret.write_text('{"instruction": "secret", "output": "x"}\n')
    data = project / "data"
    (data / "link.jsonl").symlink_to(secret)
    (data / "dataset_info.json").write_text(json.dumps({"leak": {"file_name": "link.jsonl"}}))
    shown = run_ftx("data", "show", str(project / "recipe.yaml"), "data.dataset_dir=data",
                    "data.datasets=leak")  # fmt: skip
    user_error(shown, "link.jsonl is a link to", str(secret), "outside")
    assert "secret" not in shown.stdout
    folder = project / "folder"
    folder.mkdir()
    (folder / "rows.jsonl").symlink_to(secret)
    listed = run_ftx("data", "show", str(project / "recipe.yaml"),
                     f"data.datasets=[{{path: {folder}}}]")  # fmt: skip
    user_error(listed, "rows.jsonl is a link to", str(secret))

    model = project / "model"
    shutil.move(model / "model.safetensors", project / "weights.safetensors")
    (model / "shard.safetensors").symlink_to(project / "weights.safetensors")
    index = {"weight_map": {"model.embed_tokens.weight": "shard.safetensors"}}
    (model / "model.safetensors.index.json").write_text(json.dumps(index))
    converted = run_ftx("convert", str(model), str(project.parent / "out"), "--to", "paddle")
    user_error(converted, "shard.safetensors is a link to", "outside")
    assert not (project.parent / "out").exists()

    # the Hugging Face cache: <repo>/snapshots/<rev>/file -> ../../blobs/<sha>
    repo = project.parent / "models--org--tiny"
    (repo / "blobs").mkdir(parents=True)
    snapshot = repo / "snapshots" / "abc123"
    shutil.copytree(model, snapshot, symlinks=False, ignore=shutil.ignore_patterns("*.json*"))
    for item in model.glob("*.json*"):
        shutil.copy(item, snapshot / item.name)
    (snapshot / "shard.safetensors").unlink()
    shutil.move(project / "weights.safetensors", repo / "blobs" / "0f1e")
    (snapshot / "shard.safetensors").symlink_to("../../blobs/0f1e")
    cached = run_ftx("convert", str(snapshot), str(project.parent / "out2"), "--to", "paddle")
    assert cached.returncode == 0, cached.stderr[-2000:]


# --------------------------------------------------------------------------- memory


def test_a_huge_row_is_a_row_error_in_bounded_memory(project: Path) -> None:
    data = project / "data" / "train.jsonl"
    with data.open("ab") as handle:
        handle.write(b'{"instruction": "' + b"x" * (200 << 20) + b'", "output": "y"}\n')
    recipe = str(project / "recipe.yaml")
    result = run_ftx("data", "stats", recipe)
    user_error(result, "train.jsonl:", "row of more than 2,097,152 bytes", "on_error: skip")
    skipped, peak_kib = peak_rss(str(FTX), "data", "stats", recipe, "data.on_error=skip")
    assert skipped.returncode == 0, skipped.stderr[-2000:]
    assert peak_kib < 1024 * 1024, f"peak RSS {peak_kib / 1024:.0f} MiB"
    assert "skipped (bad rows)" in skipped.stdout


def peak_rss(*command: str) -> tuple[subprocess.CompletedProcess, int]:
    """Run ``command``; its result and the peak resident memory (KiB) of its processes."""
    code = (
        "import resource, subprocess, sys;"
        "r = subprocess.run(sys.argv[1:], capture_output=True, text=True);"
        "sys.stdout.write(r.stdout); sys.stderr.write(r.stderr);"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)"
    )
    result = subprocess.run([sys.executable, "-c", code, *command], capture_output=True, text=True)
    return result, int(result.stdout.strip().splitlines()[-1])


def test_a_huge_csv_line_costs_bounded_memory_and_a_long_row_its_tokens(
    project: Path, tmp_path: Path
) -> None:
    """A 300 MB CSV line is read past in pieces (peak RSS well under its size); a CJK row
    over the default row limit (2 MiB: tokenising costs ~400 bytes per byte) is a bad row
    naming the limit and why."""
    rows = tmp_path / "rows.csv"
    with rows.open("w") as handle:
        handle.write("instruction,output\n" + "a," + "x" * (300 << 20) + "\nhi,yo\n")
    recipe = str(project / "recipe.yaml")
    data = f"data.datasets=[{{path: {rows}}}]"
    skipped, peak_kib = peak_rss(str(FTX), "data", "stats", recipe, data, "data.on_error=skip")
    assert skipped.returncode == 0, skipped.stderr[-2000:]
    assert peak_kib < 300 * 1024, f"peak RSS {peak_kib / 1024:.0f} MiB for a 300 MiB line"
    cjk = tmp_path / "cjk.jsonl"
    cjk.write_text(json.dumps({"instruction": "中文" * (1 << 20), "output": "ok"}) + "\n")
    result = run_ftx("data", "stats", recipe, f"data.datasets=[{{path: {cjk}}}]")
    user_error(result, "row of more than 2,097,152 bytes", "400 bytes of memory per byte")


def test_a_runaway_chat_template_and_an_absurd_config_end_in_seconds(project: Path) -> None:
    """A tokenizer chat template whose loops would run for hours stops after 10 s of one
    conversation; config.json with a billion layers is refused before any loop over them."""
    import time

    model = project / "model"
    settings = json.loads((model / "tokenizer_config.json").read_text())
    settings["chat_template"] = (
        "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}"
    )
    (model / "tokenizer_config.json").write_text(json.dumps(settings))
    (model / "chat_template.jinja").unlink(missing_ok=True)
    started = time.time()
    result = run_ftx("data", "stats", str(project / "recipe.yaml"), timeout=120)
    user_error(result, "did not finish rendering one conversation in 10 s")
    assert time.time() - started < 60
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 10**9}))
    for args in (["convert", str(model), str(project / "out"), "--to", "paddle"],
                 ["validate", str(project / "recipe.yaml"), "--backend", "torch"]):  # fmt: skip
        user_error(run_ftx(*args, timeout=60), "'num_hidden_layers' is 1,000,000,000")


def test_a_yaml_alias_bomb_is_refused_quickly(tmp_path: Path) -> None:
    lines = ['a: &a ["x","x","x","x","x","x","x","x","x","x"]']
    for i in range(1, 9):
        prev, name = chr(ord("a") + i - 1), chr(ord("a") + i)
        lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 10) + "]")
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\n")
    user_error(run_ftx("validate", str(bomb), timeout=20), "YAML nodes")


# --------------------------------------------------------------------------- no tracebacks


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".txt"])
def test_a_latin1_byte_is_a_row_error_that_skip_covers(project: Path, suffix: str) -> None:
    rows = {
        ".jsonl": b'{"instruction": "ok", "output": "fine"}\n'
        b'{"instruction": "caf\xe9", "output": "x"}\n',
        ".json": b'[{"instruction": "ok", "output": "fine"},'
        b' {"instruction": "caf\xe9", "output": "x"}]',
        ".csv": b"instruction,output\nok,fine\ncaf\xe9,x\n",
        ".txt": b"all fine here\ncaf\xe9 au lait\n",
    }[suffix]  # fmt: skip
    data = project / "data" / f"bad{suffix}"
    data.write_bytes(rows)
    stage = ["method.stage=pt"] if suffix == ".txt" else []
    fmt = "text" if suffix == ".txt" else "alpaca"
    recipe = str(project / "recipe.yaml")
    dataset = f"data.datasets=[{{path: {data}, format: {fmt}}}]"
    user_error(run_ftx("data", "stats", recipe, dataset, *stage), "not UTF-8")
    skipped = run_ftx("data", "stats", recipe, dataset, "data.on_error=skip", *stage)
    assert skipped.returncode == 0, skipped.stderr[-2000:]


def test_broken_files_get_explained(project: Path, tmp_path: Path) -> None:
    recipe = str(project / "recipe.yaml")
    parquet = project / "data" / "random.parquet"
    parquet.write_bytes(os.urandom(4096))
    user_error(
        run_ftx("data", "stats", recipe, f"data.datasets=[{parquet}]"), "not a readable parquet"
    )
    (tmp_path / "latin1.yaml").write_bytes(b"model: {path: x}\n# caf\xe9\n")
    user_error(run_ftx("validate", str(tmp_path / "latin1.yaml")), "not UTF-8", "latin1.yaml:2")
    model = project / "model"
    weights = (model / "model.safetensors").read_bytes()
    (model / "model.safetensors").write_bytes(struct.pack("<Q", 1 << 40) + weights[8:])
    user_error(run_ftx("convert", str(model), str(tmp_path / "c"), "--to", "paddle"), "truncated")
    (model / "model.safetensors").write_bytes(weights)
    bin_model = tmp_path / "legacy"
    bin_model.mkdir()
    shutil.copy(model / "config.json", bin_model / "config.json")
    (bin_model / "pytorch_model.bin").write_bytes(b"\x80\x02not a real pickle")
    result = run_ftx("convert", str(bin_model), str(tmp_path / "b"), "--to", "paddle")
    assert "Traceback" not in result.stderr and result.returncode == 2, result.stderr


def test_merge_lora_with_an_adapter_of_another_base(tmp_path: Path, tiny_llama: Path) -> None:
    import numpy as np
    from safetensors.numpy import save_file

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(
        json.dumps(
            {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q_proj"],
             "base_model_name_or_path": str(tiny_llama)}
        )
    )  # fmt: skip
    prefix = "base_model.model.model.layers.0.self_attn.q_proj"
    save_file(
        {
            f"{prefix}.lora_A.weight": np.zeros((2, 7), np.float32),
            f"{prefix}.lora_B.weight": np.zeros((5, 2), np.float32),
        },
        str(adapter / "adapter_model.safetensors"),
    )
    result = run_ftx("merge-lora", str(tiny_llama), str(adapter), str(tmp_path / "m"))
    user_error(result, "do not make the base weight", "the base model it was trained on")
    assert not (tmp_path / "m").exists()


def test_smaller_mistakes(project: Path, tmp_path: Path) -> None:
    recipe = str(project / "recipe.yaml")
    user_error(run_ftx("validate", recipe, "model.path=nowhere"), "model.path", "does not exist")
    user_error(run_ftx("plan", recipe, "model.path=nowhere", "--out", str(tmp_path / "p")))
    assert not (tmp_path / "p").exists()
    user_error(run_ftx("validate", recipe, "train.epochs=1e308", "train.max_steps=null"))
    user_error(run_ftx("validate", recipe, "train.micro_batch_size=100000000000000000000000"))
    for size in ("-5", "0"):
        user_error(run_ftx("init-model", "--vocab-size", size, "--out", str(tmp_path / "m")))
    (tmp_path / "file").write_text("x")
    user_error(run_ftx("init-model", "--out", str(tmp_path / "file")), "is a file")
    user_error(run_ftx("env", "doctor", "nosuch"), "nosuch")
    user_error(
        run_ftx("data", "stats", recipe, "evaluate={datasets: [missing.jsonl]}"),
        "evaluate.datasets[0]",
    )
    prepared = tmp_path / "prepared"
    assert run_ftx("data", "prepare", recipe, "--out", str(prepared)).returncode == 0
    (prepared / "manifest.json").unlink()
    (prepared / "manifest.json").write_text("{not json")
    user_error(run_ftx("data", "show", str(prepared)), "manifest")

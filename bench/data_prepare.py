"""Data preparation throughput: ftx vs LLaMA-Factory's preprocessing, same file and tokenizer.

    .venv/bin/python bench/data_prepare.py [--rows 20000] [--workdir /tmp/ftx-bench-data]

Both tools read the same alpaca-like JSONL file (bench/make_alpaca_like.py), use
the same fast tokenizer with a ChatML (qwen) template and a 1024-token cutoff,
and write nothing to a cache first (LLaMA-Factory's cache is disabled). The
table prints examples/s side by side, and the packing efficiency of each at 2048.

LLaMA-Factory is installed from PyPI into a throwaway virtual environment inside
the work folder; it is never a dependency of ftx. Its wheel is installed without
dependencies and then given the ones its data pipeline needs, because it also
requires torchvision/torchaudio, which have no CPU build here and would pull a
CUDA torch: torch comes from the local CPU wheel, and ``torchaudio``, imported
at start-up only by its multimodal plugin, is an empty stand-in module.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

LLAMAFACTORY_DEPS = [
    "accelerate<=1.11.0,>=1.3.0",
    "datasets<=4.0.0,>=2.16.0",
    "einops",
    "fire",
    "matplotlib>=3.7",
    "omegaconf",
    "pandas",
    "peft==0.18.1",
    "protobuf",
    "pydantic",
    "pyyaml",
    "scipy",
    "sentencepiece",
    "tiktoken",
    "transformers>=4.55,<=4.57.6,!=4.57.0",
    "trl<=0.24.0,>=0.18.0",
    "tyro<0.9.0",
]

LLAMAFACTORY_RUN = r"""
import json, sys, time
from llamafactory.hparams import get_train_args
from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
from llamafactory.model import load_tokenizer
work, model, rows, packing = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1"
args = dict(
    stage="sft", do_train=True, model_name_or_path=model, dataset="bench",
    dataset_dir=work, template="qwen", cutoff_len=1024, output_dir=work + "/lf-out",
    overwrite_cache=True, preprocessing_num_workers=2, report_to="none",
    finetuning_type="lora", packing=packing, per_device_train_batch_size=1,
)
model_args, data_args, training_args, finetuning_args, _ = get_train_args(args)
tokenizer_module = load_tokenizer(model_args)
template = get_template_and_fix_tokenizer(tokenizer_module["tokenizer"], data_args)
start = time.perf_counter()
dataset = get_dataset(template, model_args, data_args, training_args, "sft", **tokenizer_module)
seconds = time.perf_counter() - start
train = dataset["train_dataset"]
pad = tokenizer_module["tokenizer"].pad_token_id
tokens = sum(sum(1 for t in x if t != pad) for x in train["input_ids"])  # real tokens only
print(json.dumps({"seconds": seconds, "examples": rows, "rows": len(train), "tokens": tokens}))
"""


def sh(*command: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(command, check=True, text=True, capture_output=True, **kwargs)


def ftx_prepare(recipe: Path, packing: bool) -> dict:
    """Time ftx's preparation in a fresh process (as `ftx data prepare` runs it)."""
    code = (
        "import json, sys, time, tempfile, pathlib\n"
        "from ftx.core.recipe import load_recipe\n"
        "from ftx.core.data.prepare import prepare\n"
        "r = load_recipe(sys.argv[1], ['data.packing=' + sys.argv[2]]).recipe\n"
        "# LLaMA-Factory loads its tokenizer before its clock starts; loading one here first\n"
        "# pays transformers' lazy-import cost outside the clock too (prepare loads its own).\n"
        "from transformers import AutoTokenizer; AutoTokenizer.from_pretrained(r.model.path)\n"
        "out = pathlib.Path(tempfile.mkdtemp()) / 'p'\n"
        "t = time.perf_counter(); m = prepare(r, out); s = time.perf_counter() - t\n"
        "print(json.dumps({'seconds': s, 'manifest': m}))\n"
    )
    result = sh(sys.executable, "-c", code, str(recipe), "true" if packing else "false")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/ftx-bench-data"))
    parser.add_argument(
        "--repeats", type=int, default=3, help="runs per tool and mode; the median is shown"
    )
    args = parser.parse_args()
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)

    data = work / "bench.jsonl"
    sh(sys.executable, str(ROOT / "bench/make_alpaca_like.py"), str(data), "--rows", str(args.rows))
    (work / "dataset_info.json").write_text(json.dumps({"bench": {"file_name": "bench.jsonl"}}))
    model = work / "model"
    if not (model / "tokenizer.json").exists():
        sh(
            str(Path(sys.executable).with_name("ftx")),
            "init-model",
            "--arch",
            "qwen2",
            "--out",
            str(model),
            "--force",
        )
    recipe = work / "bench.yaml"
    recipe.write_text(
        f"model: {{path: {model}, template: qwen}}\n"
        f"data: {{datasets: [{data}], max_seq_len: 1024}}\n"
    )

    venv = work / "llamafactory-venv"
    if not (venv / "bin" / "llamafactory-cli").exists():
        print(
            "installing llamafactory into a throwaway environment (a few minutes) ...", flush=True
        )
        sh(sys.executable, "-m", "venv", str(venv))
        pip = str(venv / "bin/pip")
        sh(pip, "install", "-q", "torch==2.13.0")  # the local CPU wheel
        sh(pip, "install", "-q", "--no-deps", "llamafactory==0.9.5")
        sh(pip, "install", "-q", *LLAMAFACTORY_DEPS)
        site = sh(
            str(venv / "bin/python"),
            "-c",
            "import sysconfig; print(sysconfig.get_paths()['purelib'])",
        ).stdout.strip()
        (Path(site) / "torchaudio").mkdir(exist_ok=True)
        (Path(site) / "torchaudio" / "__init__.py").write_text("# stand-in: no CPU wheel here\n")
    version = sh(
        str(venv / "bin/python"), "-c", "import llamafactory; print(llamafactory.__version__)"
    )

    def llamafactory(packing: bool) -> dict:
        command = [str(venv / "bin/python"), "-c", LLAMAFACTORY_RUN, str(work), str(model)]
        out = sh(*command, str(args.rows), "1" if packing else "0").stdout
        return json.loads(out.strip().splitlines()[-1])

    def median_run(run, packing: bool) -> dict:
        # Alternating single runs on a 2-core machine vary by +-15%: take the median of several.
        results = sorted((run(packing) for _ in range(args.repeats)), key=lambda r: r["seconds"])
        return results[len(results) // 2]

    rows = []
    for packing in (False, True):
        ours = median_run(lambda p: ftx_prepare(recipe, p), packing)
        theirs = median_run(llamafactory, packing)
        split = ours["manifest"]["splits"]["train"]
        rows.append(
            (
                "packed 1024" if packing else "unpacked",
                args.rows / ours["seconds"],
                args.rows / theirs["seconds"],
                split.get("packing_efficiency"),
                theirs["tokens"] / (theirs["rows"] * 1024) if packing else None,
            )
        )
    print(f"\nData preparation, {args.rows} alpaca-like rows, qwen template, cutoff 1024,")
    print(
        f"2 CPU cores; LLaMA-Factory {version.stdout.strip()} with 2 preprocessing workers;"
        f" median of {args.repeats} runs each\n"
    )
    print("| mode | ftx examples/s | LLaMA-Factory examples/s | ratio | ftx packing | LF packing |")
    print("| --- | --- | --- | --- | --- | --- |")
    for mode, ours_rate, theirs_rate, ours_eff, theirs_eff in rows:
        eff = f"{ours_eff:.2%}" if ours_eff else "-"
        lf_eff = f"{theirs_eff:.2%}" if theirs_eff else "-"
        print(
            f"| {mode} | {ours_rate:,.0f} | {theirs_rate:,.0f} | {ours_rate / theirs_rate:.2f}x"
            f" | {eff} | {lf_eff} |"
        )


if __name__ == "__main__":
    main()

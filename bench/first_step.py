"""Time to the first optimizer step: `ftx run` vs `llamafactory-cli train`.

    .venv/bin/python bench/first_step.py [--repeats 3] [--workdir /tmp/ftx-bench-first-step]

The same tiny Qwen2 model (`ftx init-model --arch qwen2`), the same 200 alpaca rows and
the same settings (full fine-tuning, batch 4, cutoff 256, fp32 on CPU), each tool with its
environment already built (ftx's torch environment; LLaMA-Factory 0.9.5 in the throwaway
environment bench/data_prepare.py makes). The clock runs from the command's start to the
first line that reports a finished optimizer step (ftx: `step 1/`; LLaMA-Factory: its
first `'loss'` log at logging_steps 1), then the run is stopped; interleaved, --repeats
rounds, each tool's caches warm after its first round (bench/harness.py).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data_prepare import llamafactory_env
from harness import ROOT, Run, header, interleave, machine, spread

FTX = Path(sys.executable).with_name("ftx")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/ftx-bench-first-step"))
    args = parser.parse_args()
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    model = work / "model"
    if not (model / "config.json").exists():
        subprocess.run([str(FTX), "init-model", "--arch", "qwen2", "--out", str(model)], check=True)
    rows = [json.loads(x) for x in (ROOT / "recipes/data/quickstart_train.jsonl").open()][:200]
    (work / "rows.json").write_text(json.dumps(rows))
    (work / "dataset_info.json").write_text(json.dumps({"rows": {"file_name": "rows.json"}}))
    recipe = work / "ftx.yaml"
    recipe.write_text(
        f"model: {{path: {model}, template: qwen2_5}}\n"
        f"data: {{dataset_dir: {work}, datasets: [rows], max_seq_len: 256}}\n"
        "method: {finetuning: full}\n"
        "train: {max_steps: 3, micro_batch_size: 4, learning_rate: 1.0e-4, logging_steps: 1}\n"
    )
    lf_config = work / "llamafactory.yaml"
    lf_config.write_text(
        f"model_name_or_path: {model}\nstage: sft\ndo_train: true\nfinetuning_type: full\n"
        f"dataset: rows\ndataset_dir: {work}\ntemplate: qwen\ncutoff_len: 256\n"
        f"output_dir: {work / 'lf-out'}\noverwrite_output_dir: true\n"
        "per_device_train_batch_size: 4\n"
        "max_steps: 3\nlearning_rate: 1.0e-4\nlogging_steps: 1\nreport_to: none\n"
        "save_strategy: 'no'\nuse_cpu: true\n"
    )
    venv = llamafactory_env(work.parent / "ftx-bench-data")
    sys.path.insert(0, str(ROOT))
    from ftx.core import envs

    envs.ensure("torch")
    runs = [
        Run("ftx run --backend torch",
            [str(FTX), "run", str(recipe), "--out", str(work / "ftx-out"), "--force"],
            until=r"^step 1/"),
        Run("llamafactory-cli train", [str(venv / "bin/llamafactory-cli"), "train", str(lf_config)],
            env={"FORCE_TORCHRUN": "0"}, until=r"'loss'"),
    ]  # fmt: skip
    started = machine()
    interleave(runs, args.repeats)
    print(header(f"bench/first_step.py --repeats {args.repeats}", started))
    print(
        "tiny Qwen2 (init-model), 200 rows, batch 4, cutoff 256, full, fp32, CPU; seconds from"
        f" the command's start to its first finished optimizer step, median (min-max) of"
        f" {args.repeats} interleaved runs\n"
    )
    print("| command | seconds to the first step | vs ftx |")
    print("| --- | --- | --- |")
    for run in runs:
        print(f"| {run.label} | {spread(run)} | {run.median / runs[0].median:.2f}x |")


if __name__ == "__main__":
    main()

"""`ftx compare`: one recipe on several backends, step by step, and the verdict.

Two ways in: a recipe (run here on each backend from the same weights and prepared
batches: fp32, dropout off, every step logged, no checkpoints) or finished run folders.
Either way the runs' metrics.jsonl are lined up by step and judged against tolerances
that follow from what differs between frameworks when nothing else does: the order of
fp32 sums (see the README's parity section for the measured sizes).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ftx.core.contract import RunLayout, read_metrics
from ftx.core.errors import FtxError
from ftx.core.fsutil import atomic_write_json, read_json_object, staged_file

# Same weights, same batch, fp32: the first loss differs only by summation order.
FIRST_STEP = 1e-4
# Later losses inherit each earlier update's rounding; AdamW divides by sqrt(v), which
# amplifies the relative difference of small gradient components. Measured over 20 steps
# of the 3.4M-parameter Llama the drift stays below 1e-6 (README, bench/parity.py); 1e-3
# leaves room for larger models and longer runs while still catching any real difference
# (a wrong mask, lr, decay rule, normalisation or initialisation moves the loss by 1e-2 or
# more within a few steps).
LATER_STEPS = 1e-3
# The exports' logits on the same tokens after training (absolute, max over the vocabulary).
LOGITS = 1e-3
# Hugging Face's own loaders are the reference every backend's export is checked against:
# the exports are loaded in the first backend environment that has transformers and peft.
HF_LOADERS = ("transformers", "peft")


def hf_environment() -> str:
    """The name of a backend environment with transformers and peft (from the registry)."""
    from ftx.core.registry import specs

    for name, spec in specs().items():
        if all(package in spec.environment.frameworks for package in HF_LOADERS):
            return name
    raise FtxError(
        "no backend environment has transformers and peft to load the exports with",
        fix="register a backend whose environment lists them",
    )


COMPARE_OVERRIDES = (
    "train.precision=fp32",
    "train.logging_steps=1",
    "train.save_steps=null",
    "train.eval_steps=null",
    "method.lora.dropout=0.0",
    "evaluate=null",
)


# The preference stages' logged values, judged with the loss's tolerance for their step,
# relative to their size but never tighter than absolute (the rewards and the KL estimate
# start at exactly 0). rewards/accuracies is shown, not judged: a pair whose margin is
# within rounding of 0 may count on one side or the other.
JUDGED = ("rewards_chosen", "rewards_rejected", "rewards_margins", "kl", "logps_chosen",
          "logps_rejected")  # fmt: skip
SHOWN = ("rewards_accuracies",)


@dataclass(frozen=True)
class StepRow:
    step: int
    losses: dict[str, float]
    grad_norms: dict[str, float]
    # a preference metric (MetricsRow field) -> label -> value
    values: dict[str, dict[str, float]] = field(default_factory=dict)

    def spread(self, name: str) -> float:
        """How far apart the runs' values of metric ``name`` are (absolute)."""
        found = list(self.values.get(name, {}).values())
        return max(found) - min(found) if found else 0.0

    @property
    def max_relative(self) -> float:
        values = list(self.losses.values())
        top = max(abs(v) for v in values) or 1.0
        return (max(values) - min(values)) / top


@dataclass
class Comparison:
    """The runs lined up by step, and whether they agree."""

    runs: dict[str, str]  # label -> run folder
    rows: list[StepRow]
    logits_max_diff: float | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems

    def judge(self) -> None:
        """Fill ``problems`` with every step (and the exports) beyond its tolerance."""
        self.problems = []
        for row in self.rows:
            bound = FIRST_STEP if row is self.rows[0] else LATER_STEPS
            if len(row.losses) < len(self.runs):
                missing = sorted(set(self.runs) - set(row.losses))
                self.problems.append(f"step {row.step}: no loss from {', '.join(missing)}")
            elif row.max_relative > bound:
                self.problems.append(
                    f"step {row.step}: losses differ by {row.max_relative:.2e} relative"
                    f" (tolerance {bound:.0e}): {row.losses}"
                )
            for name in JUDGED:
                found = row.values.get(name)
                if not found:
                    continue
                scale = max(1.0, *(abs(v) for v in found.values()))
                if row.spread(name) > bound * scale:
                    self.problems.append(
                        f"step {row.step}: {name} differs by {row.spread(name):.2e}"
                        f" (tolerance {bound:.0e} x max(1, |value|)): {found}"
                    )
        if self.logits_max_diff is not None and self.logits_max_diff > LOGITS:
            self.problems.append(
                f"the exports' logits differ by {self.logits_max_diff:.2e} (tolerance {LOGITS:.0e})"
            )

    def to_dict(self) -> dict:
        return {
            "runs": self.runs,
            "tolerances": {
                "first_step": FIRST_STEP,
                "later_steps": LATER_STEPS,
                "logits": LOGITS,
                "preference_values": "the step's tolerance x max(1, |value|)",
            },
            "steps": [{**asdict(r), "max_relative": r.max_relative} for r in self.rows],
            "logits_max_diff": self.logits_max_diff,
            "passed": self.passed,
            "problems": self.problems,
        }


def line_up(runs: dict[str, Path]) -> Comparison:
    """The logged training steps of each run folder, by step."""
    by_step: dict[int, StepRow] = {}
    for label, folder in runs.items():
        rows = [r for r in read_metrics(RunLayout(folder)) if r.loss is not None]
        if not rows:
            raise FtxError(
                "no logged training steps",
                where=str(RunLayout(folder).metrics),
                fix="point ftx compare at run folders (OUT) that trained, or at a recipe",
            )
        for r in rows:
            row = by_step.setdefault(r.step, StepRow(r.step, {}, {}))
            row.losses[label] = float(r.loss)  # type: ignore[arg-type]
            if r.grad_norm is not None:
                row.grad_norms[label] = r.grad_norm
            for name in (*JUDGED, *SHOWN):
                value = getattr(r, name)
                if value is not None:
                    row.values.setdefault(name, {})[label] = float(value)
    return Comparison(
        {k: str(v) for k, v in runs.items()}, sorted(by_step.values(), key=lambda r: r.step)
    )


def label_runs(folders: list[Path]) -> dict[str, Path]:
    """Finished run folders by label: the backend that ran each (plus the folder's name
    when two share a backend)."""
    backends = []
    for folder in folders:
        record = folder / "run.json"
        fix = "restore run.json from the run's own output, or compare other runs"
        backend = (
            read_json_object(record, "run record", fix).get("backend") if record.exists() else None
        )
        backends.append(backend or folder.name)
    labels = {}
    for folder, backend in zip(folders, backends, strict=True):
        label = backend if backends.count(backend) == 1 else f"{backend}:{folder.name}"
        labels[label] = folder
    return labels


EXPORT_LOGITS = """
import itertools, json, sys
from pathlib import Path
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

def load(folder):
    # a causal LM, or a reward model (stage rm: one score per sequence, compared as logits)
    adapter = folder / "adapter_config.json"
    if adapter.exists():
        from peft import PeftModel
        settings = json.loads(adapter.read_text())
        base = settings["base_model_name_or_path"]
        if settings.get("task_type") == "SEQ_CLS":
            model = AutoModelForSequenceClassification.from_pretrained(
                base, dtype=torch.float32, num_labels=1)
        else:
            model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        return PeftModel.from_pretrained(model, str(folder)), base
    config = json.loads((folder / "config.json").read_text())
    scores = any(a.endswith("ForSequenceClassification") for a in config.get("architectures", []))
    kind = AutoModelForSequenceClassification if scores else AutoModelForCausalLM
    return kind.from_pretrained(str(folder), dtype=torch.float32), str(folder)

logits = {}
for folder in map(Path, sys.argv[1:]):
    model, config_from = load(folder)
    vocab = json.loads((Path(config_from) / "config.json").read_text())["vocab_size"]
    ids = torch.tensor([[(7 * i + 11) % (vocab - 6) + 6 for i in range(48)]])
    with torch.no_grad():
        logits[str(folder)] = model(input_ids=ids).logits[0]
worst = max((float((a - b).abs().max()) for a, b in itertools.combinations(logits.values(), 2)),
            default=0.0)
print(json.dumps({"max_diff": worst}))
"""


def export_logits_diff(runs: dict[str, Path]) -> float | None:
    """The largest difference between the HF exports' logits on the same tokens, computed
    by transformers (and peft) in :func:`hf_environment`; None when a run has no export."""
    import subprocess

    from ftx.core import envs

    finals = [RunLayout(folder).final for folder in runs.values()]
    if len(finals) < 2 or not all(f.is_dir() for f in finals):
        return None
    environment = hf_environment()
    python = envs.ensure(environment)
    result = subprocess.run(
        [str(python), "-c", EXPORT_LOGITS, *map(str, finals)],
        capture_output=True,
        text=True,
        env=envs.process_env(environment),
    )
    if result.returncode != 0:
        raise FtxError(
            f"loading the exports in transformers failed: {result.stderr.strip()[-500:]}",
            where=", ".join(map(str, finals)),
            fix="check that each run finished and wrote OUT/final",
            exit_code=1,
        )
    return float(json.loads(result.stdout.strip().splitlines()[-1])["max_diff"])


def plot_comparison(comparison: Comparison, png: Path) -> Path:
    """The runs' loss curves on one chart, with the relative difference beneath."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(8, 6), dpi=120, sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    styles = ["-", "--", ":", "-."]
    for i, label in enumerate(comparison.runs):
        points = [(r.step, r.losses[label]) for r in comparison.rows if label in r.losses]
        top.plot(*zip(*points, strict=True), styles[i % 4], label=label, linewidth=1.6)
    top.set_ylabel("loss")
    top.set_title("ftx compare: the same recipe, weights and batches on each backend")
    top.grid(alpha=0.3)
    top.legend()
    bottom.semilogy(
        [r.step for r in comparison.rows],
        [max(r.max_relative, 1e-9) for r in comparison.rows],
        "k.-",
    )
    bottom.axhline(LATER_STEPS, color="r", linewidth=0.8, label="tolerance")
    bottom.set_xlabel("step")
    bottom.set_ylabel("max rel. diff")
    bottom.grid(alpha=0.3)
    fig.tight_layout()
    with staged_file(png) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return png


def save(comparison: Comparison, out: Path) -> tuple[Path, Path]:
    """OUT/comparison.json and OUT/comparison.png."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "comparison.json", comparison.to_dict())
    return out / "comparison.json", plot_comparison(comparison, out / "comparison.png")

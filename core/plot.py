"""The loss plot behind `ftx report`: loss (and eval loss) against the step, and the
preference stages' rewards beneath, as a PNG."""

from __future__ import annotations

from pathlib import Path

from ftx.core.contract import RunLayout, read_metrics
from ftx.core.errors import FtxError
from ftx.core.fsutil import staged_file

PREFERENCE_CURVES = {  # MetricsRow field -> its name in TRL's logs
    "rewards_margins": "rewards/margins",
    "rewards_accuracies": "rewards/accuracies",
    "rewards_chosen": "rewards/chosen",
    "rewards_rejected": "rewards/rejected",
    "kl": "kl",
}


def plot_run(out_dir: Path, png: Path | None = None) -> Path:
    """Write the loss curve of a run to ``png`` (default OUT/loss.png); return its path.
    A preference run gets a second panel: its rewards (margin, accuracy, chosen, rejected;
    KTO's KL)."""
    layout = RunLayout(out_dir)
    rows = read_metrics(layout)
    train = [(r.step, r.loss) for r in rows if r.loss is not None]
    evals = [(r.step, r.eval_loss) for r in rows if r.eval_loss is not None]
    if not train:
        raise FtxError(
            "no logged steps to plot",
            where=str(layout.metrics),
            fix="point ftx report at a run folder (OUT) that has trained at least logging_steps",
        )
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise FtxError(
            "ftx report needs matplotlib",
            fix="pip install 'ftx[report]' (or matplotlib) into the environment that runs ftx",
        ) from None
    backend = rows[0].backend
    # the preference stages' logged values, under the loss
    rewards = {
        label: [(r.step, getattr(r, name)) for r in rows if getattr(r, name) is not None]
        for name, label in PREFERENCE_CURVES.items()
    }
    rewards = {label: points for label, points in rewards.items() if points}
    if rewards:
        fig, (ax, below) = plt.subplots(2, 1, figsize=(8, 7), dpi=120, sharex=True)
    else:
        fig, ax = plt.subplots(figsize=(8, 4.5), dpi=120)
    ax.plot(*zip(*train, strict=True), label="train loss", linewidth=1.5)
    if evals:
        ax.plot(*zip(*evals, strict=True), "o-", label="eval loss", linewidth=1.5)
    ax.set_ylabel("loss")
    ax.set_title(f"{out_dir.name} ({backend} backend)")
    ax.grid(alpha=0.3)
    ax.legend()
    if rewards:
        for label, points in rewards.items():
            below.plot(*zip(*points, strict=True), label=label, linewidth=1.5)
        below.set_ylabel("rewards")
        below.grid(alpha=0.3)
        below.legend()
        below.set_xlabel("step")
    else:
        ax.set_xlabel("step")
    fig.tight_layout()
    target = png or layout.root / "loss.png"
    with staged_file(target) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return target

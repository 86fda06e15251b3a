"""`lightman report RUN_DIR`: a run's learning curves, from its metrics.jsonl, as one PNG.

Panels: the outer (query) loss, query and validation accuracy, the auxiliary MMD term
(LightmanNet's L_aux; absent for learners without one) and throughput in episodes/s.
"""

from __future__ import annotations

from pathlib import Path

from lightman.platform.run_log import METRICS_FILE, read_metrics

# (panel title, y label, record keys drawn in it)
PANELS = (
    ("outer loss", "CE(query; θ_i)", ("outer_loss",)),
    ("accuracy", "share correct", ("query_acc", "val_acc")),
    ("MMD term", "L_aux", ("aux_loss",)),
    ("throughput", "episodes / s", ("episodes_per_s",)),
)


def draw_curves(run: str | Path, png: str | Path | None = None) -> str:
    """Write the curves of `run` to `png` (default RUN/curves.png); a one-line summary."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    records = read_metrics(run)
    if not records:
        raise FileNotFoundError(
            f"{Path(run) / METRICS_FILE}: no metrics to draw (not a training run folder?)"
        )
    png = Path(png) if png else Path(run) / "curves.png"
    fig, axes = plt.subplots(1, len(PANELS), figsize=(4.2 * len(PANELS), 3.4))
    for ax, (title, ylabel, keys) in zip(axes, PANELS):
        for key in keys:
            points = [(r["iteration"], r[key]) for r in records if r.get(key) is not None]
            if points:
                xs, ys = zip(*points)
                ax.plot(xs, ys, marker="o" if key == "val_acc" else None, markersize=3, label=key)
        if not ax.lines:
            ax.text(
                0.5,
                0.5,
                "not logged by this learner",
                ha="center",
                va="center",
                transform=ax.transAxes,
            )
        ax.set_title(title)
        ax.set_xlabel("outer step")
        ax.set_ylabel(ylabel)
        if len(ax.lines) > 1:
            ax.legend(fontsize=8)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return f"wrote {png} ({len(records)} steps)"

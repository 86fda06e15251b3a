"""`lightman report RUN`: a run's learning curves, from its metrics.jsonl, as one PNG (the
run and the PNG local or s3://).

Panels: the outer (query) loss, query and validation accuracy, the auxiliary MMD term
(LightmanNet's L_aux; absent for learners without one) and throughput in episodes/s.
"""

from __future__ import annotations

import io
from pathlib import Path

from lightman.platform.run_log import METRICS_FILE, read_metrics
from lightman.tasks import storage

# (panel title, y label, record keys drawn in it)
PANELS = (
    ("outer loss", "CE(query; θ_i)", ("outer_loss",)),
    ("accuracy", "share correct", ("query_acc", "val_acc")),
    ("MMD term", "L_aux", ("aux_loss",)),
    ("throughput", "episodes / s", ("episodes_per_s",)),
)


def draw_curves(run: str | Path, png: str | Path | None = None) -> str:
    """Write the curves of `run` to `png` (default RUN/curves.png); a one-line summary."""
    run = storage.resolve(run)
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    records = read_metrics(run.uri)
    if not records:
        raise FileNotFoundError(
            f"{run.join(METRICS_FILE).uri}: no metrics to draw (not a training run folder?)"
        )
    png = storage.resolve(png) if png else run.join("curves.png")
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
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    storage.write_bytes(png, buf.getvalue())
    return f"wrote {png.uri} ({len(records)} steps)"

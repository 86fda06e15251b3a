"""What a person sees of a training run: `metrics.jsonl`, TensorBoard events, a progress bar.

Only rank 0 logs (the records it writes are already all-reduced, global figures); every
other rank holds a disabled `RunLog`, so the loop calls `write` unconditionally. A
resumed run first drops the records after the step it resumes from, so no step is
logged twice, and TensorBoard purges its events from that step on.
"""

from __future__ import annotations

import json
from pathlib import Path

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
# The progress bar's figures: record key -> short label.
_BAR = {"episodes_per_s": "ep/s", "outer_loss": "loss", "query_acc": "acc", "val_acc": "val"}


def read_metrics(out: str | Path) -> list[dict]:
    """The records of `out/metrics.jsonl`, in order (empty if there is none)."""
    path = Path(out) / METRICS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class RunLog:
    """Context manager: `with RunLog(out, start, total, enabled) as log: log.write(record)`."""

    def __init__(self, out: Path, start_step: int, total_steps: int, enabled: bool) -> None:
        self.out, self.start, self.total, self.enabled = out, start_step, total_steps, enabled
        self._file = self._writer = self._bar = None
        self._last_val: float | None = None

    def __enter__(self) -> RunLog:
        if not self.enabled:
            return self
        from torch.utils.tensorboard import SummaryWriter
        from tqdm import tqdm

        kept = [r for r in read_metrics(self.out) if r["iteration"] <= self.start]
        path = self.out / METRICS_FILE
        path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        self._file = path.open("a")
        self._writer = SummaryWriter(str(self.out / TENSORBOARD_DIR), purge_step=self.start + 1)
        self._bar = tqdm(
            total=self.total,
            initial=self.start,
            desc="meta-train",
            unit="step",
            mininterval=1.0,
            dynamic_ncols=True,
        )
        return self

    def write(self, record: dict) -> None:
        """Append one step's record (a flat dict with "iteration") to every sink."""
        if not self.enabled:
            return
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        step = record["iteration"]
        for key, value in record.items():
            if (
                key not in ("iteration", "time")
                and isinstance(value, (int, float))
                and not isinstance(value, bool)
            ):
                self._writer.add_scalar(key, value, step)
        self._last_val = record.get("val_acc", self._last_val)
        shown = {**record, "val_acc": self._last_val}
        self._bar.set_postfix(
            {label: f"{shown[k]:.3g}" for k, label in _BAR.items() if shown.get(k) is not None},
            refresh=False,
        )
        self._bar.update(1)

    def __exit__(self, *exc) -> None:
        for sink in (self._bar, self._writer, self._file):
            if sink is not None:
                sink.close()

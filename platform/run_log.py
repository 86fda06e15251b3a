"""What a person sees of a training run: `metrics.jsonl`, TensorBoard events, a progress bar.

The records of a run (one flat dict per outer step, already all-reduced: global figures)
are part of its run state: every checkpoint carries them, so a worker restarted from a
checkpoint, or a run resumed with `--resume`, continues with exactly the records up to
the step it resumes from, and no step is ever logged twice. The files are derived from
the records and rewritten whole (`write_logs`): `metrics.jsonl`, and ONE TensorBoard
events file under `tensorboard/` (TensorBoard reads any file whose name holds
"tfevents"). They go through the storage layer, so `--out` may be a local folder or an
s3:// URI, and they land there wherever rank 0 runs.

Only rank 0 logs; every other rank holds a disabled `RunLog`, so the loop calls `write`
unconditionally.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from lightman.tasks import storage

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
EVENTS_FILE = "events.out.tfevents.lightman"  # one fixed name: a rewrite replaces it
# The progress bar's figures: record key -> short label.
_BAR = {"episodes_per_s": "ep/s", "outer_loss": "loss", "query_acc": "acc", "val_acc": "val"}


def read_metrics(out: str | Path) -> list[dict]:
    """The records of `out/metrics.jsonl` (local or s3://), in order (empty if there is none)."""
    loc = storage.resolve(out).join(METRICS_FILE)
    if not storage.exists(loc):
        return []
    text = storage.read_bytes(loc).decode()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _scalars(record: dict) -> dict[str, float]:
    """The numeric fields of a record that TensorBoard plots (not the step or wall time)."""
    return {
        k: v
        for k, v in record.items()
        if k not in ("iteration", "time")
        and isinstance(v, (int, float))
        and not isinstance(v, bool)
    }


def events_bytes(records: list[dict]) -> bytes:
    """A TensorBoard events file holding every scalar of `records`, each step once."""
    from torch.utils.tensorboard import SummaryWriter

    with tempfile.TemporaryDirectory() as tmp:
        writer = SummaryWriter(tmp)
        for record in records:
            for key, value in _scalars(record).items():
                writer.add_scalar(key, value, record["iteration"])
        writer.close()
        (events,) = Path(tmp).glob("events.out.tfevents.*")
        return events.read_bytes()


def write_logs(out: str, records: list[dict]) -> None:
    """`out/metrics.jsonl` and `out/tensorboard/<one events file>`, rewritten from `records`."""
    root = storage.resolve(out)
    storage.write_text(root.join(METRICS_FILE), "".join(json.dumps(r) + "\n" for r in records))
    storage.write_bytes(root.join(TENSORBOARD_DIR, EVENTS_FILE), events_bytes(records))


class RunLog:
    """Context manager: `with RunLog(records, total, enabled) as log: log.write(record)`.

    `records` are those of the run state resumed from (empty for a fresh run); `records`
    (the attribute) then grows by one per step and goes into every checkpoint."""

    def __init__(self, records: list[dict], total_steps: int, enabled: bool) -> None:
        self.records = list(records)
        self.total, self.enabled = total_steps, enabled
        self._bar = None
        vals = [r["val_acc"] for r in self.records if r.get("val_acc") is not None]
        self._last_val: float | None = vals[-1] if vals else None

    def __enter__(self) -> RunLog:
        if self.enabled:
            from tqdm import tqdm

            self._bar = tqdm(
                total=self.total,
                initial=len(self.records),
                desc="meta-train",
                unit="step",
                mininterval=1.0,
                dynamic_ncols=True,
            )
        return self

    def write(self, record: dict) -> None:
        """Keep one step's record (a flat dict with "iteration") and advance the bar."""
        if not self.enabled:
            return
        self.records.append(record)
        self._last_val = record.get("val_acc", self._last_val)
        shown = {**record, "val_acc": self._last_val}
        self._bar.set_postfix(
            {label: f"{shown[k]:.3g}" for k, label in _BAR.items() if shown.get(k) is not None},
            refresh=False,
        )
        self._bar.update(1)

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.close()

"""The benchmarks' smoke settings run end to end, so a benchmark script cannot rot between
the runs it is meant for. They assert only that a script runs and prints its result,
never a time: timings are the benchmarks' own business."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_meta_step_smoke_runs_and_prints_its_table():
    run = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "meta_step.py"), "--smoke"],
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "| setting | variant | wall s | CPU s |" in run.stdout
    for variant in ("lightman-fast", "lightman-low", "naive", "floor"):
        assert f"| {variant} |" in run.stdout, variant

"""The benchmarks' smoke settings run end to end, so a benchmark script cannot rot between
the runs it is meant for. They assert only that a script runs and prints its result,
never a time: timings are the benchmarks' own business.

Each script's `--smoke` runs its whole code path at toy size and prints its table in the
shape of a full run, under a line saying that the figures mean nothing. (The paper's tables
are studies of `lightman reproduce`, tested in tests/test_reproduce.py.)
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SMOKE_LINE = "smoke run: toy sizes, only that the benchmark runs; its figures mean nothing"


def run_script(name: str, *args: str, timeout: int = 900) -> str:
    """Run benchmarks/<name> with `args` in a subprocess: exit 0, and its stdout."""
    run = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / name), *args],
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return run.stdout


def smoke(name: str, *args: str) -> str:
    """`name --smoke args`: it runs and says its figures mean nothing; its stdout."""
    out = run_script(name, "--smoke", *args)
    assert SMOKE_LINE in out, out[-3000:]
    return out


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


@pytest.mark.slow
@pytest.mark.integration  # Ray tasks and Ray Data
def test_ingest_smoke_runs_and_prints_its_table():
    out = smoke("ingest.py")
    assert "| measurement | throughput | ratio to the row marked 1.00 above it |" in out
    for row in (
        "ingest, 1 worker",
        "ingest, 2 workers (process pool)",
        "preprocess only, 2 Ray tasks, Ray running",
        "read: JPEG decode + crop/resize each time",
        "read: index via Ray Data, streamed each epoch",
        "read: index via Ray Data, materialised once",
        "shard mode, W=2: JPEG decode + crop/resize each epoch",
        "shard mode, W=2: each rank's subjects streamed by Ray Data each epoch",
        "shard mode: what one worker needs at the meta-step's speed",
    ):
        assert f"| {row} |" in out, row


@pytest.mark.slow
@pytest.mark.integration  # Ray Train
def test_scaling_smoke_runs_and_prints_its_table():
    out = smoke("scaling.py")
    assert "| run | episodes/s | x Ray W=1 | all-reduce share |" in out
    for row in ("in process, W=1", "Ray Train, W=1", "Ray Train, W=2"):
        assert f"| {row} |" in out, row


@pytest.mark.slow
@pytest.mark.integration  # Ray Serve over HTTP and Ray Data
def test_serve_smoke_runs_and_prints_its_table():
    out = smoke("serve.py")
    assert "| measurement | clips/s | p50 ms | p99 ms | ratio |" in out
    for row in ("predict, 8 client(s), batching on", "predict, 8 client(s), batching off"):
        assert f"| {row} |" in out, row

"""The tiny training settings and generated index that the integration tests share.

A test composes its overrides from these parts and adds its own run length, e.g.
`[*tiny.TASK, *tiny.MODEL_32, *tiny.SPLIT, "meta_batch=4", "iterations=8"]`, so that a
change of what "tiny" means is made once.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path

import pytest

from lightman.platform import generated

# 3-way 1-shot episodes with 2 query clips and one macro clip per way
TASK = [
    "episode.ways=3",
    "episode.shots=1",
    "episode.query=2",
    "episode.aux_shots=1",
    "model.ways=3",
]
# the demo's model, narrower: 32-px crops of 8 frames, a 16-channel Conv4
MODEL_32 = ["model.image_size=32", "model.hidden=16", "model.aux_dim=16", "model.input_mode=delta"]
# smaller still: 16-px crops of 6 frames (the 3D conv's temporal kernel), 8 channels
MODEL_16 = [
    "model.image_size=16",
    "model.frames=6",
    "model.hidden=8",
    "model.aux_dim=8",
    "model.input_mode=delta",
]
SPLIT = ["data.val_fraction=0.2", "data.test_fraction=0.3"]
# a generated CASME II (10 subjects, 5-class scheme) and CK+ (4 subjects) release
SYNTH = [
    "datasets=[casme2,ckplus]",
    "seed=5",
    "casme2.subjects=10",
    "casme2.clips=90",
    "ckplus.subjects=4",
    "ckplus.clips=20",
]


def index(root: str | Path, size: int = 32) -> str:
    """The SYNTH release ingested at `size` px (16 px: 6 frames, as MODEL_16 reads)."""
    return generated.small_index(root, SYNTH, size=size, frames=6 if size == 16 else None)


def shared_index(factory: pytest.TempPathFactory, size: int = 32) -> str:
    """`index(..., size)` built once per test session and read by every file that asks for
    it (the test files only read their index): in the session's temp root, which the
    pytest-xdist workers share (each worker's own temp folder lies below it), under a file
    lock, so that a worker asking while the other builds waits for it instead of building
    a second copy. A build cut short is built again."""
    base = factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    folder, done = root / f"tiny-index-{size}", root / f"tiny-index-{size}.done"
    with (root / f"tiny-index-{size}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)
            done.write_text(index(folder, size=size))
        return done.read_text()

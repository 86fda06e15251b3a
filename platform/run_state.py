"""The state of a training run as one checkpoint folder, written whole or not at all.

A run-state checkpoint is a folder holding `state.pt`: a plain dict saved with
`torch.save` and read back with `weights_only=True` (no pickled code runs on load). It
carries everything a restarted worker needs to continue as if it had never stopped:
the model and Adam states, the step, the sampler's state, the best validation score and
the weights that reached it, plus the config and versions that made them.

In-process runs keep these folders under `<out>/checkpoints/step-NNNNNN`; Ray Train runs
hand the same folder to `ray.train.report`, which persists it to the run's storage before
recording it. Either way a folder appears under its final name only once complete: it
is written under a temporary name and renamed, so a crash mid-write leaves a stray
temporary folder that `latest_checkpoint` never picks.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

STATE_FILE = "state.pt"
_PREFIX = "step-"


def save_state(directory: Path, payload: dict) -> None:
    """Write `payload` as `directory/state.pt` (the folder is created)."""
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(payload, directory / STATE_FILE)


def load_state(directory: str | Path) -> dict:
    """The payload of a run-state folder, loaded on the CPU with `weights_only=True`."""
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{directory}: not a run-state checkpoint (no {STATE_FILE})")
    return torch.load(path, map_location="cpu", weights_only=True)


def write_checkpoint(root: Path, payload: dict, keep: int) -> Path:
    """`root/step-NNNNNN` for payload["step"], written atomically; only the newest `keep`
    complete folders stay."""
    final = root / f"{_PREFIX}{payload['step']:06d}"
    tmp = root / f".{final.name}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    save_state(tmp, payload)
    shutil.rmtree(final, ignore_errors=True)  # a step written again after a resume
    os.replace(tmp, final)
    for old in complete_checkpoints(root)[:-keep]:
        shutil.rmtree(old)
    return final


def complete_checkpoints(root: Path) -> list[Path]:
    """The complete step folders under `root`, oldest first (temporary ones never count)."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.name.startswith(_PREFIX) and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: p.name)


def latest_checkpoint(root: Path) -> Path | None:
    """The newest complete step folder under `root`, or None."""
    found = complete_checkpoints(root)
    return found[-1] if found else None

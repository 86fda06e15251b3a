"""The state of a training run as one checkpoint folder, written whole or not at all.

A run-state checkpoint is a folder holding `state.pt`: a plain dict saved with
`torch.save` and read back with `weights_only=True` (no pickled code runs on load). It
carries everything a restarted worker needs to continue as if it had never stopped:
the model and Adam states, the step, the sampler's state, the best validation score and
the weights that reached it, the run's metric records, plus the config and versions
that made them.

In-process runs keep these folders under `<out>/checkpoints/step-NNNNNN`, local or
s3:// (`write_checkpoint`); Ray Train runs hand the same folder to `ray.train.report`,
which persists it to the run's storage before recording it. A folder counts only once
its `state.pt` is complete: locally the file is written under a temporary name and
renamed, on S3 a PUT is atomic per object, so a crash mid-write leaves nothing that
`latest_checkpoint` picks.
"""

from __future__ import annotations

import io
from pathlib import Path

import pyarrow.fs as pafs
import torch

from lightman.tasks import storage
from lightman.tasks.storage import Location

STATE_FILE = "state.pt"
_PREFIX = "step-"


def state_bytes(payload: dict) -> bytes:
    buf = io.BytesIO()
    torch.save(payload, buf)
    return buf.getvalue()


def _load(raw: bytes | Path) -> dict:
    source = io.BytesIO(raw) if isinstance(raw, bytes) else raw
    return torch.load(source, map_location="cpu", weights_only=True)


def save_state(directory: Path, payload: dict) -> None:
    """Write `payload` as `directory/state.pt` in a local folder (created)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / STATE_FILE).write_bytes(state_bytes(payload))


def load_state(directory: str | Path | Location) -> dict:
    """The payload of a run-state folder (local, or a Location on any storage), on the CPU."""
    loc = directory if isinstance(directory, Location) else storage.resolve(directory)
    state = loc.join(STATE_FILE)
    if not storage.exists(state):
        raise FileNotFoundError(f"{loc.uri}: not a run-state checkpoint (no {STATE_FILE})")
    return _load(storage.read_bytes(state))


def write_checkpoint(root: Location, payload: dict, keep: int) -> Location:
    """`root/step-NNNNNN/state.pt` for payload["step"], written atomically; only the newest
    `keep` complete folders stay."""
    final = root.join(f"{_PREFIX}{payload['step']:06d}")
    storage.write_bytes(final.join(STATE_FILE), state_bytes(payload))
    for old in complete_checkpoints(root)[:-keep]:
        storage.delete_dir(old)
    return final


def complete_checkpoints(root: Location) -> list[Location]:
    """The complete step folders under `root`, oldest first (a folder without its state.pt,
    or a temporary file, never counts)."""
    steps = []
    for info in _children(root):
        if info.type == pafs.FileType.Directory and info.base_name.startswith(_PREFIX):
            folder = root.join(info.base_name)
            if storage.exists(folder.join(STATE_FILE)):
                steps.append(folder)
    return sorted(steps, key=lambda loc: loc.path)


def _children(root: Location) -> list[pafs.FileInfo]:
    if not storage.exists(root):
        return []
    return storage.list_dir(root)


def latest_checkpoint(root: Location) -> Location | None:
    """The newest complete step folder under `root`, or None."""
    found = complete_checkpoints(root)
    return found[-1] if found else None

"""A tiny index of toy expression clips whose motion and identity are known by construction,
written in milliseconds (the generator in tasks/synth.py takes tens of seconds to ingest).

Subject s has a face: a smooth random texture of its own (identity). An expression of
class c moves one region of the face (row band c % 2, column band c // 2) by a shift
that grows from 0 at the onset to the clip's amplitude (2-4 px, a nuisance) at the last
frame, in class c's direction. So the class lives in the motion only, the subject in the
appearance only.
"""

from __future__ import annotations

import numpy as np

from lightman.platform.index import write_index
from lightman.tasks.schema import ClipRecord, Preprocessed, row_from_record

DIRECTIONS = ((0, 1), (1, 0), (0, -1), (-1, 0))


def face(rng: np.random.Generator, size: int) -> np.ndarray:
    """(size, size, 3) float texture in [40, 215]: noise smoothed by a 3x3 box, twice."""
    f = rng.random((size + 4, size + 4, 3))
    for _ in range(2):
        f = sum(np.roll(np.roll(f, i, 0), j, 1) for i in (-1, 0, 1) for j in (-1, 0, 1)) / 9
    f = f[2:-2, 2:-2]
    return 40 + 175 * (f - f.min()) / (np.ptp(f) + 1e-9)


def clip(base: np.ndarray, c: int, amplitude: float, frames: int) -> np.ndarray:
    """(frames, H, W, 3) uint8: class c's region of `base` shifted progressively."""
    size = base.shape[0]
    half = size // 2
    rows = slice((c % 2) * half, (c % 2) * half + half)
    cols = slice(((c // 2) % 2) * half, ((c // 2) % 2) * half + half)
    dy, dx = DIRECTIONS[c % len(DIRECTIONS)]
    out = []
    for t in range(frames):
        k = int(round(amplitude * t / (frames - 1)))
        f = base.copy()
        f[rows, cols] = np.roll(base, (dy * k, dx * k), axis=(0, 1))[rows, cols]
        out.append(f)
    return np.clip(np.stack(out), 0, 255).astype(np.uint8)


def toy_rows(
    dataset: str,
    expression: str,
    subjects: int,
    per_class: int,
    classes: int,
    frames: int,
    size: int,
    seed: int,
) -> list[dict]:
    rng = np.random.default_rng(seed)
    faces = [face(rng, size) for _ in range(subjects)]
    rows = []
    for s in range(subjects):
        for c in range(classes):
            for i in range(per_class):
                frames_ = clip(faces[s], c, rng.uniform(2, 4), frames)
                name = f"{expression}_{c}_{i}"
                rec = ClipRecord(
                    dataset=dataset,
                    subject=f"{dataset}/s{s:02d}",
                    filename=name,
                    expression=expression,
                    emotion=f"emotion{c}",
                    onset=0,
                    apex=frames - 1,
                    offset=frames - 1,
                    fps=30.0,
                    source_uri=f"/toy/{dataset}/{s}/{name}",
                )
                pre = Preprocessed(
                    frames=frames_,
                    apex=frames - 1,
                    apex_source="annotated",
                    offset=frames - 1,
                    num_frames=frames,
                    sampled=tuple(range(frames)),
                    face_box=(0, 0, size, size),
                )
                rows.append(row_from_record(rec, pre, label=c, flow=None))
    return rows


def toy_index(
    uri: str,
    dataset: str,
    expression: str,
    subjects: int,
    per_class: int,
    classes: int = 4,
    frames: int = 6,
    size: int = 16,
    seed: int = 0,
) -> str:
    """Write (or add) one toy dataset to the index at `uri`; returns `uri`."""
    rows = toy_rows(dataset, expression, subjects, per_class, classes, frames, size, seed)
    entry = {
        "dataset": dataset,
        "label_scheme": {"name": "native", "class_names": [f"emotion{c}" for c in range(classes)]},
    }
    write_index(rows, uri, entry)
    return uri


def supervised_miacnet_run(index: str, out, *model: str) -> list[str]:
    """`lightman train` arguments of a 0-step supervised 3-way MIACNet run on a toy index (no
    auxiliary data): the checkpoint the MA2MI and MEGC tests start from. Index 2 is `out`."""
    return [
        "train",
        "--out",
        str(out),
        f"data.index={index}",
        "data.auxiliary=[]",
        "data.val_fraction=0.25",
        "data.test_fraction=0.25",
        "episode.ways=3",
        "episode.shots=1",
        "episode.query=1",
        "episode.aux_shots=0",
        "model.backbone=miacnet",
        "model.ways=3",
        *model,
        "learner.name=supervised",
        "iterations=0",
        "val_episodes=2",
        "test_episodes=2",
        "threads=1",
    ]

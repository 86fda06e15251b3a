"""Generated clips, a tiny index of them and an untrained checkpoint, for serving and scoring.

A clip is a textured face-sized frame in which a bright blob moves out along a direction
and back (a tent profile peaking at the apex). The direction is the class's angle plus
the subject's own offset: every subject expresses each class in its own way, as in the
generator of `lightman synth`, so a person's own support set says more about their
query clips than clips of other people do. Everything is seeded and takes well under a
second, where ingesting `lightman synth` data takes minutes on a loaded 2-core machine.
"""

from __future__ import annotations

import io
import math
import zipfile

import cv2
import numpy as np
import torch

from lightman.models.checkpoint import save_checkpoint
from lightman.models.net import build_model
from lightman.models.provenance import to_dict
from lightman.platform.config import load_config
from lightman.platform.index import write_index
from lightman.platform.train import TrainConfig
from lightman.tasks.preprocess import sample_indices
from lightman.tasks.schema import ClipRecord, Preprocessed, row_from_record

DATASET = "casme2"
CLASSES = ("disgust", "happiness", "surprise")
SIZE, M, LENGTH, APEX = 32, 8, 16, 9  # crop side, frames per clip, generated frames, apex
TRAIN_SUBJECTS = tuple(f"{DATASET}/s{i:02d}" for i in range(4))
TINY = [  # the tiny model of tests/test_train.py, as a ProtoNet without the auxiliary branch
    "episode.ways=3",
    "episode.shots=2",
    "episode.query=2",
    "episode.aux_shots=0",
    "model.ways=3",
    f"model.image_size={SIZE}",
    "model.hidden=16",
    "model.aux_dim=16",
    "model.input_mode=delta",
    "learner.name=protonet",
    "data.auxiliary=[]",
    "threads=1",
]


def clip_frames(
    label: int, phase: float, seed: int, size: int = SIZE, length: int = LENGTH, apex: int = APEX
) -> np.ndarray:
    """(length, size, size, 3) uint8: a blob moving along angle 2π·label/3 + phase."""
    rng = np.random.default_rng(seed)
    texture = cv2.GaussianBlur(rng.random((size, size)).astype(np.float32), (0, 0), 2.0)
    texture = 60 + 80 * (texture - texture.min()) / (np.ptp(texture) + 1e-6)
    angle = 2 * math.pi * label / len(CLASSES) + phase
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    frames = []
    for t in range(length):
        reach = 0.3 * size * max(0.0, 1 - abs(t - apex) / apex)
        cx = size / 2 + reach * math.cos(angle) + rng.normal(0, 0.3)
        cy = size / 2 + reach * math.sin(angle) + rng.normal(0, 0.3)
        blob = 120 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * (size / 10) ** 2))
        grey = np.clip(texture + blob + rng.normal(0, 2, texture.shape), 0, 255)
        frames.append(np.repeat(grey[..., None], 3, axis=2).astype(np.uint8))
    return np.stack(frames)


def subject_phase(subject: int) -> float:
    """The subject's own angle offset (training subjects near 0, others far from it)."""
    return 0.25 * (subject % 4) if subject < len(TRAIN_SUBJECTS) else 1.05 + 0.1 * subject


def npz_bytes(frames: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, frames=frames)
    return buf.getvalue()


def zip_bytes(frames: np.ndarray, fmt: str = ".png") -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for i, f in enumerate(frames):
            z.writestr(f"clip/img{i + 1}{fmt}", cv2.imencode(fmt, f[:, :, ::-1])[1].tobytes())
    return buf.getvalue()


def index_rows(subjects: range, clips_per_class: int, seed: int = 0) -> list[dict]:
    """Index rows of generated clips, preprocessed as an ingest with face_crop=none would."""
    rows = []
    for s in subjects:
        for label in range(len(CLASSES)):
            for k in range(clips_per_class):
                clip_seed = seed * 10007 + s * 101 + label * 11 + k
                frames = clip_frames(label, subject_phase(s), seed=clip_seed)
                sampled = sample_indices(0, LENGTH - 1, M)
                rec = ClipRecord(
                    dataset=DATASET,
                    subject=f"{DATASET}/s{s:02d}",
                    filename=f"c{label}_{k}",
                    expression="micro",
                    emotion=CLASSES[label],
                    onset=0,
                    apex=APEX,
                    offset=LENGTH - 1,
                    fps=30.0,
                )
                pre = Preprocessed(
                    frames=frames[sampled],
                    apex=APEX,
                    apex_source="annotated",
                    offset=LENGTH - 1,
                    num_frames=LENGTH,
                    sampled=tuple(sampled),
                    face_box=None,
                )
                rows.append(row_from_record(rec, pre, label=label, flow=None))
    return rows


def write_tiny_index(uri: str, subjects: range = range(6), clips_per_class: int = 3) -> str:
    entry = {
        "dataset": DATASET,
        "label_scheme": {"name": "five", "class_names": list(CLASSES)},
        "preprocess": {"frames": M, "size": SIZE, "face_crop": "none"},
    }
    write_index(index_rows(subjects, clips_per_class), uri, entry)
    return uri


def untrained_checkpoint(path: str, index: str, seed: int = 0, overrides: tuple = ()) -> str:
    """best.pt of an untrained tiny ProtoNet, with the metadata a training run records."""
    cfg = load_config(TrainConfig, None, [*TINY, f"data.index={index}", *overrides])
    torch.manual_seed(seed)
    model = build_model(cfg.model)
    extra = {
        "config": to_dict(cfg),
        "learner": to_dict(cfg.learner),
        "iteration": 0,
        "split": {"train": list(TRAIN_SUBJECTS), "val": [], "test": ["casme2/s04", "casme2/s05"]},
    }
    save_checkpoint(path, model, cfg.model, extra)
    return path

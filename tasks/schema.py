"""The clip index contract: one row per clip (docs/architecture.md, "Index").

Adapters produce `ClipRecord`s (annotation + where the frames are) and `Skipped`s
(clips that cannot be used, with the reason). Preprocessing turns a record into an
index row by adding the sampled, cropped frames. `INDEX_SCHEMA` is the Parquet schema
of the index; `row_from_record` is the only place that builds a row.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa

SCHEMA_VERSION = 1
EXPRESSIONS = ("micro", "macro")


@dataclass(frozen=True)
class ClipRecord:
    """One annotated clip as found in a dataset release, before preprocessing.

    Frame numbers are absolute (as annotated). `frame_uris` lists the clip's frame
    files in temporal order (numeric sort) for image-sequence datasets; `video_uri`
    is set instead for video files. `frame_numbers[i]` is the absolute number of
    `frame_uris[i]` (or of decoded frame i of the video).
    """

    dataset: str
    subject: str  # already prefixed by dataset, e.g. "casme2/sub01"
    filename: str  # the clip folder / video name as in the release, e.g. "EP02_01f"
    expression: str  # "micro" | "macro"
    emotion: str  # raw label as annotated
    onset: int
    apex: int | None  # None when missing or unusable (estimated later)
    offset: int
    fps: float
    action_units: str = ""
    source_uri: str = ""  # folder or video file the clip came from
    frame_uris: tuple[str, ...] = ()
    frame_numbers: tuple[int, ...] = ()
    video_uri: str = ""
    apex_source: str = "annotated"
    repairs: tuple[str, ...] = ()  # every repair made to the annotation, human-readable

    @property
    def clip_id(self) -> str:
        return f"{self.dataset}/{self.subject.split('/', 1)[-1]}/{self.filename}"

    def __post_init__(self) -> None:
        if self.expression not in EXPRESSIONS:
            raise ValueError(
                f"{self.clip_id}: expression must be one of {EXPRESSIONS}, got {self.expression!r}"
            )
        if not self.subject.startswith(self.dataset + "/"):
            raise ValueError(
                f"{self.clip_id}: subject {self.subject!r} must be prefixed by '{self.dataset}/'"
            )


@dataclass(frozen=True)
class Skipped:
    """A clip that could not be used, and why (reported in the manifest and summary)."""

    dataset: str
    clip: str  # clip id, or the sheet row / path when no id could be formed
    reason: str

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Preprocessed:
    """Output of preprocessing one clip: frames (M, H, W, C) uint8 plus what was decided."""

    frames: np.ndarray
    apex: int
    apex_source: str
    offset: int
    num_frames: int  # frames of the clip on disk between onset and offset (inclusive)
    sampled: tuple[int, ...]  # absolute frame numbers that were sampled
    face_box: tuple[int, int, int, int] | None  # x, y, w, h on the onset frame
    repairs: tuple[str, ...] = field(default=())


INDEX_SCHEMA = pa.schema(
    [
        ("clip_id", pa.string()),
        ("dataset", pa.string()),
        ("subject", pa.string()),
        ("filename", pa.string()),
        ("expression", pa.string()),
        ("emotion", pa.string()),
        ("label", pa.int32()),
        ("onset", pa.int32()),
        ("apex", pa.int32()),
        ("offset", pa.int32()),
        ("apex_source", pa.string()),
        ("fps", pa.float32()),
        ("action_units", pa.string()),
        ("source_uri", pa.string()),
        ("num_frames", pa.int32()),
        ("sampled_frames", pa.list_(pa.int32())),
        ("face_box", pa.list_(pa.int32())),
        ("repairs", pa.list_(pa.string())),
        ("frames", pa.binary()),  # uint8 bytes, C order, shape in frames_shape
        ("frames_shape", pa.list_(pa.int32())),  # (M, H, W, C)
        ("flow", pa.binary()),  # optional float16 (M-1 or 1, H, W, 3) onset→apex flow; empty if off
        ("flow_shape", pa.list_(pa.int32())),
    ]
)
INDEX_COLUMNS = tuple(INDEX_SCHEMA.names)
META_COLUMNS = tuple(n for n in INDEX_COLUMNS if n not in ("frames", "flow"))


def row_from_record(
    rec: ClipRecord, pre: Preprocessed, label: int, flow: np.ndarray | None
) -> dict:
    """Build one index row (a dict with exactly INDEX_COLUMNS) from a record and its frames."""
    frames = np.ascontiguousarray(pre.frames, dtype=np.uint8)
    if frames.ndim != 4:
        raise ValueError(f"{rec.clip_id}: frames must be (M, H, W, C), got shape {frames.shape}")
    flow_bytes, flow_shape = b"", []
    if flow is not None:
        f16 = np.ascontiguousarray(flow, dtype=np.float16)
        flow_bytes, flow_shape = f16.tobytes(), list(f16.shape)
    return {
        "clip_id": rec.clip_id,
        "dataset": rec.dataset,
        "subject": rec.subject,
        "filename": rec.filename,
        "expression": rec.expression,
        "emotion": rec.emotion,
        "label": int(label),
        "onset": int(rec.onset),
        "apex": int(pre.apex),
        "offset": int(pre.offset),
        "apex_source": pre.apex_source,
        "fps": float(rec.fps),
        "action_units": rec.action_units,
        "source_uri": rec.source_uri,
        "num_frames": int(pre.num_frames),
        "sampled_frames": [int(i) for i in pre.sampled],
        "face_box": [int(v) for v in pre.face_box] if pre.face_box else [],
        "repairs": list(rec.repairs) + list(pre.repairs),
        "frames": frames.tobytes(),
        "frames_shape": list(frames.shape),
        "flow": flow_bytes,
        "flow_shape": flow_shape,
    }


def frames_from_row(row: dict) -> np.ndarray:
    """Inverse of the `frames` encoding: (M, H, W, C) uint8."""
    return np.frombuffer(row["frames"], dtype=np.uint8).reshape(tuple(row["frames_shape"]))


def flow_from_row(row: dict) -> np.ndarray | None:
    if not row["flow"]:
        return None
    return np.frombuffer(row["flow"], dtype=np.float16).reshape(tuple(row["flow_shape"]))

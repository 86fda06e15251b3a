"""One ClipRecord → one Preprocessed: validated span, apex, face crop, M sampled frames.

The steps (docs/datasets.md, "Preprocessing conventions"):
1. validate onset/offset against the frames actually on disk (clamp a late offset,
   reject what cannot be repaired with `ClipError`);
2. find and align the face on the onset frame only (`lightman.tasks.face`); the same
   box crops every frame;
3. keep an annotated apex that lies in [onset, offset], else estimate it as the frame
   farthest from neutral, neutral being the onset→offset blend that cancels drift
   (`motion_scores`, `spot_apex`);
4. sample M frames uniformly from onset to offset, crop, resize;
5. optionally compute onset→apex optical flow (u, v, magnitude) on the aligned crops.

Every repair is recorded in `Preprocessed.repairs`. All functions are pure and
module-level, so `preprocess_clip` can be shipped to Ray tasks or a process pool.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from lightman.tasks.cv import cv2
from lightman.tasks.face import FaceBox, crop_face, grey, locate_face
from lightman.tasks.frames import ClipFrames, FrameReadError
from lightman.tasks.schema import ClipRecord, Preprocessed

APEX_METHODS = ("diff", "flow")
FACE_CROPS = ("haar", "none")
_HOW = {"diff": "frame differences", "flow": "optical flow"}


class ClipError(ValueError):
    """A clip that cannot be used (the ingest records it as skipped with this message)."""


@dataclass(frozen=True)
class PreprocessConfig:
    """How clips become index rows; stored in the index manifest."""

    frames: int = 8
    """M, frames sampled uniformly from onset to offset (inclusive)."""
    size: int = 64
    """Side of the square output crop, in pixels (64, 112, 128 are common)."""
    face_crop: Literal["haar", "none"] = "haar"
    """"haar": detect and align the face on the onset frame; "none": frames are already
    face crops (cropped releases) and are resized whole to size × size."""
    flow: bool = False
    """Also compute onset→apex optical flow (u, v, magnitude) at the output size."""
    apex_method: Literal["diff", "flow"] = "diff"
    """How a missing or unusable apex is estimated: peak mean absolute difference from the
    onset frame ("diff") or peak mean Farneback flow magnitude from it ("flow")."""
    greyscale: bool = False
    """Store one grey channel instead of RGB (C = 1)."""
    apex_candidates: int = 64
    """At most this many evenly spaced frames are read per apex-search pass; the search
    then narrows around the best one until it has looked at every frame there."""

    def __post_init__(self) -> None:
        if self.frames < 1:
            raise ValueError(f"frames (M) must be >= 1, got {self.frames}")
        if self.size < 8:
            raise ValueError(f"size must be >= 8 pixels, got {self.size}")
        if self.face_crop not in FACE_CROPS:
            raise ValueError(f"face_crop must be one of {FACE_CROPS}, got {self.face_crop!r}")
        if self.apex_method not in APEX_METHODS:
            raise ValueError(f"apex_method must be one of {APEX_METHODS}, got {self.apex_method!r}")
        if self.apex_candidates < 3:
            raise ValueError(f"apex_candidates must be >= 3, got {self.apex_candidates}")

    @property
    def channels(self) -> int:
        return 1 if self.greyscale else 3


def sample_indices(onset: int, offset: int, m: int) -> list[int]:
    """M frame numbers spread uniformly over [onset, offset], both ends included.

    Positions are onset + t·(offset − onset)/(M − 1), t = 0..M−1, rounded half up
    (so the result only shifts with onset). A clip shorter than M frames repeats frames
    (nearest-frame temporal interpolation): (0, 2, 5) → [0, 0, 1, 1, 1, 2].
    """
    if m < 1:
        raise ValueError(f"m must be >= 1, got {m}")
    if onset > offset:
        raise ValueError(f"onset {onset} is after offset {offset}")
    return [int(v) for v in np.floor(np.linspace(onset, offset, m) + 0.5)]


def validate_span(
    clip_id: str, onset: int, offset: int, on_disk: Sequence[int]
) -> tuple[int, list[int], tuple[str, ...]]:
    """Check onset/offset against the frame numbers on disk.

    Returns (offset, numbers of the frames on disk in [onset, offset], repairs). An
    offset past the last frame is clamped; onset after offset, or an onset that is not
    a frame on disk, raises `ClipError` (the face box and the motion reference come from
    the onset frame). Frames missing inside [onset, offset] keep the clip: sampling runs
    over the frames present, which shifts the sampled numbers, so the gap is a repair.
    """
    if not on_disk:
        raise ClipError(f"{clip_id}: no frames found")
    first, last = on_disk[0], on_disk[-1]
    if onset > offset:
        raise ClipError(f"{clip_id}: onset {onset} is after offset {offset}")
    if onset not in on_disk:
        raise ClipError(f"{clip_id}: onset {onset} is not a frame on disk (frames {first}..{last})")
    repairs: tuple[str, ...] = ()
    if offset > last:
        repairs = (f"offset {offset} past last frame {last}; clamped",)
        offset = last
    span = [n for n in on_disk if onset <= n <= offset]
    if len(span) < offset - onset + 1:
        missing = sorted(set(range(onset, offset + 1)) - set(span))
        shown = ", ".join(map(str, missing[:10]))
        if len(missing) > 10:
            shown += f", ... ({len(missing)} in all)"
        repairs += (
            f"frames missing on disk between onset {onset} and offset {offset}: {shown}; "
            f"sampled over the {len(span)} frames present",
        )
    return offset, span, repairs


def _blurred_grey(frames: np.ndarray) -> np.ndarray:
    """(n, H, W[, C]) uint8 → (n, H, W) float32, lightly blurred against sensor noise."""
    return np.stack([cv2.GaussianBlur(grey(f), (5, 5), 1.0).astype(np.float32) for f in frames])


def _farneback(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Dense flow (H, W, 2) from grey frame a to b: a(y, x) ≈ b(y + v, x + u)."""
    return cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 3, 15, 3, 5, 1.2, 0)


def motion_scores(
    reference: np.ndarray,
    frames: np.ndarray,
    method: str = "diff",
    end: np.ndarray | None = None,
    positions: np.ndarray | None = None,
) -> np.ndarray:
    """(n,) motion of each frame relative to neutral.

    Neutral is `reference` (the onset frame, (H, W[, C])); when `end` (the offset frame)
    and each frame's `positions` in [0, 1] along onset→offset are given, neutral at
    position w is the blend (1 − w)·onset + w·offset. Expression spans return to neutral
    by the offset, and the blend cancels slow drift (illumination, head pose) that would
    otherwise make the last frame look like the apex.
    "diff": mean |blur(grey(f)) − neutral|; "flow": mean |flow(onset→f) − w·flow(onset→offset)|.
    """
    w = np.zeros(len(frames)) if end is None else np.asarray(positions, dtype=np.float32)
    if method == "diff":
        ref = _blurred_grey(reference[None])[0]
        drift = 0.0 if end is None else _blurred_grey(end[None])[0] - ref
        neutral = ref[None] + w[:, None, None] * drift
        return np.abs(_blurred_grey(frames) - neutral).mean(axis=(1, 2))
    if method == "flow":
        ref = grey(reference)
        drift = 0.0 if end is None else _farneback(ref, grey(end))
        return np.array(
            [
                np.linalg.norm(_farneback(ref, grey(f)) - wi * drift, axis=-1).mean()
                for f, wi in zip(frames, w)
            ]
        )
    raise ValueError(f"apex method must be one of {APEX_METHODS}, got {method!r}")


def spot_apex(frames: np.ndarray, method: str = "diff") -> int:
    """Index of the apex in a clip (n, H, W[, C]) spanning onset (frame 0) to offset (last frame).

    The frame farthest from neutral (see `motion_scores`). A clip without motion returns
    0 (the first of equal scores).
    """
    if len(frames) == 0:
        raise ValueError("spot_apex needs at least one frame")
    positions = np.linspace(0.0, 1.0, len(frames)) if len(frames) > 1 else np.zeros(1)
    return int(np.argmax(motion_scores(frames[0], frames, method, frames[-1], positions)))


def _candidates(lo: int, hi: int, k: int) -> list[int]:
    """At most k positions evenly spread over [lo, hi], ends included (distinct: step >= 1)."""
    return sample_indices(lo, hi, min(k, hi - lo + 1))


def estimate_apex(
    numbers: Sequence[int],
    read_crops: Callable[[list[int]], np.ndarray],
    method: str,
    max_candidates: int = 64,
) -> int:
    """Absolute number of the peak-motion frame among `numbers` (onset numbers[0] … offset [-1]).

    Coarse to fine: score at most `max_candidates` evenly spaced frames, then search again
    between the best one's neighbours, until every frame of the range has been scored.
    A long clip is thus never read whole.
    """
    onset, offset = read_crops([numbers[0], numbers[-1]])
    span = max(numbers[-1] - numbers[0], 1)
    lo, hi = 0, len(numbers) - 1
    while True:
        pos = _candidates(lo, hi, max_candidates)
        where = np.array([(numbers[p] - numbers[0]) / span for p in pos])
        scores = motion_scores(onset, read_crops([numbers[p] for p in pos]), method, offset, where)
        best = int(np.argmax(scores))
        if len(pos) == hi - lo + 1:
            return numbers[pos[best]]
        lo, hi = pos[max(best - 1, 0)], pos[min(best + 1, len(pos) - 1)]


def onset_apex_flow(onset_img: np.ndarray, apex_img: np.ndarray) -> np.ndarray:
    """Onset→apex optical flow channels (u, v, magnitude) → (1, H, W, 3) float32.

    Farneback flow on the aligned crops; u > 0 means motion to the right, v > 0 down.
    """
    uv = _farneback(grey(onset_img), grey(apex_img))  # (H, W, 2)
    mag = np.linalg.norm(uv, axis=-1, keepdims=True)  # (H, W, 1)
    return np.concatenate([uv, mag], axis=-1)[None].astype(np.float32)


def _unusable_apex(apex: int | None, onset: int, offset: int, numbers: Sequence[int]) -> str | None:
    """Why an annotated apex cannot be used, or None if it can."""
    if apex is None:
        return "apex missing"
    if not onset <= apex <= offset:
        return f"apex {apex} outside onset..offset [{onset}, {offset}]"
    if apex not in numbers:
        return f"apex {apex} is not a frame on disk"
    return None


def _crop_all(frames: np.ndarray, box: FaceBox | None, size: int) -> np.ndarray:
    """(n, H, W, 3) → (n, size, size, 3) with one box for all frames (whole frame if None)."""
    if box is None:
        return np.stack([cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA) for f in frames])
    return np.stack([crop_face(f, box, size) for f in frames])


def preprocess_clip(
    rec: ClipRecord, cfg: PreprocessConfig
) -> tuple[Preprocessed, np.ndarray | None]:
    """Validate, crop, estimate the apex if needed, sample M frames.

    Returns the Preprocessed (frames (M, size, size, C) uint8) and the onset→apex flow
    (1, size, size, 3) float32, or None when `cfg.flow` is off. Raises `ClipError` for a
    clip that cannot be used, including unreadable frames. Sampling runs over the
    positions of the frames on disk in [onset, offset], so a missing file is never
    asked for; for a gapless clip it equals `sample_indices(onset, offset, M)`.
    """
    try:
        clip = ClipFrames(rec)
        offset, numbers, repairs = validate_span(rec.clip_id, rec.onset, rec.offset, clip.numbers)
        onset_img = clip.read([numbers[0]])[0]
        box, notes = (None, ()) if cfg.face_crop == "none" else locate_face(onset_img)

        # frame number → crop, read once: apex search, sampling and flow ask for the same frames
        crops: dict[int, np.ndarray] = {}

        def read_crops(nums: list[int]) -> np.ndarray:
            todo = sorted(set(nums) - crops.keys())
            if todo:
                crops.update(zip(todo, _crop_all(clip.read(todo), box, cfg.size)))
            return np.stack([crops[n] for n in nums])

        apex, apex_source = rec.apex, rec.apex_source
        why = _unusable_apex(rec.apex, rec.onset, offset, numbers)
        if why is not None:
            apex = estimate_apex(numbers, read_crops, cfg.apex_method, cfg.apex_candidates)
            apex_source = f"estimated_{cfg.apex_method}"
            repairs += (f"{why}; estimated from {_HOW[cfg.apex_method]}: {apex}",)
        sampled = [numbers[p] for p in sample_indices(0, len(numbers) - 1, cfg.frames)]
        frames = read_crops(sampled)  # (M, size, size, 3)
        flow = None
        if cfg.flow:
            onset_crop, apex_crop = read_crops([numbers[0], apex])
            flow = onset_apex_flow(onset_crop, apex_crop)  # (1, size, size, 3)
    except FrameReadError as e:
        raise ClipError(f"{rec.clip_id}: {e}") from e
    if cfg.greyscale:
        frames = np.stack([grey(f) for f in frames])[..., None]  # (M, size, size, 1)
    pre = Preprocessed(
        frames=np.ascontiguousarray(frames, dtype=np.uint8),
        apex=int(apex),
        apex_source=apex_source,
        offset=int(offset),
        num_frames=len(numbers),
        sampled=tuple(int(n) for n in sampled),
        face_box=None if box is None else box.as_tuple(),
        repairs=tuple(notes) + repairs,
    )
    return pre, flow

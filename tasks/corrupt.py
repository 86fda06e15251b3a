"""Corrupted clips for "MER with noises" (paper 5.3, Fig. 6).

The paper corrupts a proportion (10%, 30%, 50%) of the clips with one of three
processings: P1 a random mask, P2 regional Gaussian noise, P3 greyscale. Here:

- "mask" (P1): a random rectangle covering `area` of the face (10–30% by default) set
  to black, the same rectangle on every frame of the clip (an occluder does not jump);
- "noise" (P2): zero-mean Gaussian noise of standard deviation `noise_std` (grey levels)
  added inside a random rectangle (same rectangle on every frame, fresh noise per frame);
- "grey" (P3): ITU-R BT.601 luma Y = 0.299 R + 0.587 G + 0.114 B copied to all three
  channels (frames are RGB; a one-channel clip is already grey and stays as it is).

Every function is pure on uint8 (M, H, W, C) clips; randomness comes from the numpy
Generator passed in, so `corrupt_pool` is deterministic for its seed.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import numpy as np

from lightman.tasks.episodes import ClipPool

Kind = Literal["mask", "noise", "grey"]
KINDS: tuple[str, ...] = ("mask", "noise", "grey")  # P1, P2, P3
LUMA = np.array([0.299, 0.587, 0.114])  # BT.601 weights for R, G, B


def _check_clip(clip: np.ndarray) -> None:
    if clip.dtype != np.uint8 or clip.ndim != 4:
        raise ValueError(f"a clip must be uint8 (M, H, W, C), got {clip.dtype} {clip.shape}")


def random_box(
    height: int, width: int, rng: np.random.Generator, area: tuple[float, float]
) -> tuple[int, int, int, int]:
    """(top, left, box_h, box_w) of a rectangle covering a uniform fraction in `area` of the
    image, with a log-uniform aspect ratio in [1/2, 2], placed uniformly inside it."""
    lo, hi = area
    if not 0 < lo <= hi <= 1:
        raise ValueError(f"area must satisfy 0 < low <= high <= 1, got {area}")
    target = rng.uniform(lo, hi) * height * width
    # box_h / box_w; math's exp and log give the same bits on every CPU (tasks/portable.py)
    aspect = math.exp(rng.uniform(math.log(0.5), math.log(2.0)))
    box_h = int(np.clip(round(np.sqrt(target * aspect)), 1, height))
    box_w = int(np.clip(round(target / box_h), 1, width))
    top = int(rng.integers(0, height - box_h + 1))
    left = int(rng.integers(0, width - box_w + 1))
    return top, left, box_h, box_w


def random_mask(
    clip: np.ndarray, rng: np.random.Generator, area: tuple[float, float] = (0.1, 0.3)
) -> np.ndarray:
    """P1: the clip with one random rectangle set to 0 on every frame."""
    _check_clip(clip)
    top, left, bh, bw = random_box(clip.shape[1], clip.shape[2], rng, area)
    out = clip.copy()
    out[:, top : top + bh, left : left + bw, :] = 0
    return out


def regional_noise(
    clip: np.ndarray,
    rng: np.random.Generator,
    area: tuple[float, float] = (0.1, 0.3),
    noise_std: float = 25.0,
) -> np.ndarray:
    """P2: the clip plus N(0, noise_std²) noise inside one random rectangle, clipped to [0, 255]."""
    _check_clip(clip)
    if noise_std <= 0:
        raise ValueError(f"noise_std must be > 0, got {noise_std}")
    top, left, bh, bw = random_box(clip.shape[1], clip.shape[2], rng, area)
    out = clip.copy()
    region = out[:, top : top + bh, left : left + bw, :].astype(np.float64)  # (M, bh, bw, C)
    noisy = region + rng.normal(0.0, noise_std, size=region.shape)
    out[:, top : top + bh, left : left + bw, :] = np.clip(np.rint(noisy), 0, 255).astype(np.uint8)
    return out


def greyscale(clip: np.ndarray) -> np.ndarray:
    """P3: BT.601 luma of an RGB clip in all three channels; a one-channel clip is copied."""
    _check_clip(clip)
    if clip.shape[-1] == 1:
        return clip.copy()
    if clip.shape[-1] != 3:
        raise ValueError(f"greyscale needs 1 or 3 channels, got {clip.shape[-1]}")
    y = np.clip(np.rint(clip.astype(np.float64) @ LUMA), 0, 255).astype(np.uint8)  # (M, H, W)
    return np.repeat(y[..., None], 3, axis=-1)


def corrupt_clip(
    clip: np.ndarray,
    kind: Kind,
    rng: np.random.Generator,
    area: tuple[float, float] = (0.1, 0.3),
    noise_std: float = 25.0,
) -> np.ndarray:
    """One clip processed by P1 ("mask"), P2 ("noise") or P3 ("grey")."""
    if kind == "mask":
        return random_mask(clip, rng, area)
    if kind == "noise":
        return regional_noise(clip, rng, area, noise_std)
    if kind == "grey":
        return greyscale(clip)
    raise ValueError(f"unknown corruption {kind!r}; choose one of {KINDS} (P1, P2, P3)")


def corrupt_pool(
    pool: ClipPool,
    kind: Kind,
    fraction: float,
    seed: int,
    area: tuple[float, float] = (0.1, 0.3),
    noise_std: float = 25.0,
) -> tuple[ClipPool, tuple[str, ...]]:
    """The pool with exactly floor(fraction · n + 0.5) clips, drawn at random, corrupted.

    Returns the new pool (the input is unchanged) and the corrupted clip ids in pool order.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown corruption {kind!r}; choose one of {KINDS} (P1, P2, P3)")
    if not 0 <= fraction <= 1:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    rng = np.random.default_rng(seed)
    n_bad = int(np.floor(fraction * len(pool) + 0.5))
    chosen = np.sort(rng.choice(len(pool), size=n_bad, replace=False))
    frames = pool.frames.copy()  # (n, M, H, W, C)
    for i in chosen:
        frames[i] = corrupt_clip(frames[i], kind, rng, area, noise_std)
    return dataclasses.replace(pool, frames=frames), tuple(pool.clip_ids[chosen].tolist())

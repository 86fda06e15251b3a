"""Corruptions P1 (mask), P2 (regional noise), P3 (greyscale) and their application to a pool."""

from __future__ import annotations

import numpy as np
import pytest

from lightman.tasks.corrupt import corrupt_pool, greyscale, random_box, random_mask, regional_noise
from lightman.tasks.episodes import ClipPool


def make_pool(n=20, shape=(3, 16, 16, 3), seed=0):
    rng = np.random.default_rng(seed)
    return ClipPool(
        frames=rng.integers(
            1, 256, size=(n, *shape), dtype=np.uint8
        ),  # no zeros: a mask is visible
        labels=np.arange(n) % 2,
        subjects=[f"smic/s{i % 3}" for i in range(n)],
        clip_ids=[f"smic/s{i % 3}/c{i}" for i in range(n)],
        datasets=["smic"] * n,
        emotions=["negative"] * n,
        expressions=["micro"] * n,
        class_names=("negative", "positive"),
    )


def changed_box(before, after):
    """Bounding box (rows, cols) of the pixels that differ on any frame/channel."""
    diff = np.any(before != after, axis=(0, 3))  # (H, W)
    rows, cols = np.flatnonzero(diff.any(axis=1)), np.flatnonzero(diff.any(axis=0))
    return diff, rows, cols


def test_random_box_area_and_bounds():
    rng = np.random.default_rng(0)
    for _ in range(200):
        top, left, bh, bw = random_box(64, 48, rng, (0.1, 0.3))
        assert 0 <= top and top + bh <= 64 and 0 <= left and left + bw <= 48
        assert 0.08 <= bh * bw / (64 * 48) <= 0.32
    with pytest.raises(ValueError, match="area"):
        random_box(8, 8, rng, (0.4, 0.2))


def test_mask_is_one_rectangle_on_every_frame():
    clip = make_pool(1).frames[0]
    out = random_mask(clip, np.random.default_rng(3), area=(0.2, 0.2))
    diff, rows, cols = changed_box(clip, out)
    assert diff[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].all()  # a filled rectangle
    assert diff.sum() == rows.size * cols.size
    region = out[:, rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1, :]
    assert (region == 0).all()  # same rectangle, black, on every frame
    assert 0.1 <= diff.sum() / diff.size <= 0.3
    assert out.dtype == np.uint8 and out.shape == clip.shape
    assert not np.shares_memory(out, clip)


def test_regional_noise_only_inside_a_rectangle():
    clip = np.full((4, 32, 32, 3), 128, dtype=np.uint8)
    out = regional_noise(clip, np.random.default_rng(1), area=(0.25, 0.25), noise_std=20.0)
    diff, rows, cols = changed_box(clip, out)
    inside = out[:, rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1, :].astype(np.float64) - 128
    outside = np.ones(diff.shape, bool)
    outside[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1] = False
    assert (out[:, outside] == 128).all()
    assert abs(inside.mean()) < 1.5 and 17 < inside.std() < 23  # N(0, 20²), 4·~256·3 samples
    assert not np.array_equal(inside[0], inside[1])  # fresh noise per frame


def test_greyscale_bt601():
    clip = np.random.default_rng(2).integers(0, 256, size=(2, 4, 5, 3), dtype=np.uint8)
    out = greyscale(clip)
    r, g, b = (clip[..., i].astype(float) for i in range(3))
    expected = np.clip(np.rint(0.299 * r + 0.587 * g + 0.114 * b), 0, 255)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], expected)
    grey = np.repeat(clip[..., :1], 3, axis=-1)
    np.testing.assert_array_equal(greyscale(grey), grey)  # already grey: unchanged
    one = clip[..., :1]
    np.testing.assert_array_equal(greyscale(one), one)


@pytest.mark.parametrize("kind", ["mask", "noise", "grey"])
@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.3, 0.5, 1.0])
def test_corrupt_pool_fraction_exact_and_only_those_changed(kind, fraction):
    pool = make_pool(25)
    before = pool.frames.copy()
    out, ids = corrupt_pool(pool, kind, fraction, seed=4)
    assert len(ids) == int(np.floor(fraction * 25 + 0.5)) and len(set(ids)) == len(ids)
    changed = {
        cid for cid, a, b in zip(pool.clip_ids, pool.frames, out.frames) if not np.array_equal(a, b)
    }
    assert changed == set(ids)
    np.testing.assert_array_equal(pool.frames, before)  # the input pool is untouched
    assert (
        out.clip_ids.tolist() == pool.clip_ids.tolist()
        and out.labels.tolist() == pool.labels.tolist()
    )
    assert out.frames.dtype == np.uint8 and out.frames.shape == pool.frames.shape


def test_corrupt_pool_deterministic_and_checked():
    pool = make_pool(20)
    a, ids_a = corrupt_pool(pool, "noise", 0.3, seed=9)
    b, ids_b = corrupt_pool(pool, "noise", 0.3, seed=9)
    c, ids_c = corrupt_pool(pool, "noise", 0.3, seed=10)
    assert ids_a == ids_b and np.array_equal(a.frames, b.frames)
    assert ids_a != ids_c or not np.array_equal(a.frames, c.frames)
    with pytest.raises(ValueError, match="unknown corruption 'blur'"):
        corrupt_pool(pool, "blur", 0.1, seed=0)
    with pytest.raises(ValueError, match="fraction"):
        corrupt_pool(pool, "mask", 1.5, seed=0)

"""Subject splits, LOSO folds and their join by clip id, the composite 3-class pool."""

from __future__ import annotations

import random

import numpy as np
import pytest

from lightman.tasks.episodes import ClipPool
from lightman.tasks.splits import (
    Fold,
    SplitError,
    SubjectSplit,
    assert_disjoint,
    composite_pool,
    loso_folds,
    pool_predictions,
    split_pools,
    subject_split,
)

SUBJECTS = [f"casme2/sub{i:02d}" for i in range(1, 21)] + [f"samm/{i:03d}" for i in range(6, 16)]


def make_pool(rows, class_names=("x",)):
    """rows: (dataset, subject, emotion) per clip; labels 0; tiny frames."""
    n = len(rows)
    return ClipPool(
        frames=np.zeros((n, 1, 2, 2, 1), dtype=np.uint8),
        labels=np.zeros(n, dtype=np.int64),
        subjects=[f"{d}/{s}" for d, s, _ in rows],
        clip_ids=[f"{d}/{s}/c{i}" for i, (d, s, _) in enumerate(rows)],
        datasets=[d for d, _, _ in rows],
        emotions=[e for _, _, e in rows],
        expressions=["micro"] * n,
        class_names=class_names,
    )


# --- subject split ---------------------------------------------------------------------


@pytest.mark.parametrize("eval_fraction,val_fraction", [(0.2, 0.0), (0.25, 0.1), (0.5, 0.2)])
def test_subject_split_disjoint_and_covering(eval_fraction, val_fraction):
    per_clip = [s for s in SUBJECTS for _ in range(3)]  # subjects repeat, one per clip
    split = subject_split(per_clip, eval_fraction=eval_fraction, seed=7, val_fraction=val_fraction)
    train, val, test = set(split.train), set(split.val), set(split.test)
    assert not train & val and not train & test and not val & test
    assert train | val | test == set(SUBJECTS)
    assert len(test) == int(np.floor(eval_fraction * 30 + 0.5))
    assert len(val) == int(np.floor(val_fraction * 30 + 0.5))
    assert list(split.test) == sorted(split.test)
    assert_disjoint(split, SUBJECTS)


def test_subject_split_deterministic_and_order_free():
    a = subject_split(SUBJECTS, eval_fraction=0.3, seed=1, val_fraction=0.1)
    shuffled = SUBJECTS[:]
    random.Random(0).shuffle(shuffled)
    assert subject_split(shuffled, eval_fraction=0.3, seed=1, val_fraction=0.1) == a
    assert subject_split(SUBJECTS, eval_fraction=0.3, seed=2, val_fraction=0.1).test != a.test


def test_subject_split_named_eval_subjects_and_errors():
    split = subject_split(
        SUBJECTS, eval_subjects=["samm/006", "samm/007"], seed=0, val_fraction=0.1
    )
    assert split.test == ("samm/006", "samm/007") and len(split.val) == 3
    assert "samm/006" not in split.train + split.val
    with pytest.raises(SplitError, match="exactly one"):
        subject_split(SUBJECTS, eval_fraction=0.2, eval_subjects=["samm/006"])
    with pytest.raises(SplitError, match="eval_subjects not among.*samm/999"):
        subject_split(SUBJECTS, eval_subjects=["samm/999"])
    with pytest.raises(SplitError, match="no meta-train subjects"):
        subject_split(["a/1", "a/2"], eval_fraction=0.5, val_fraction=0.5)
    with pytest.raises(SplitError, match="eval_fraction must be in"):
        subject_split(SUBJECTS, eval_fraction=1.0)


def test_assert_disjoint_catches_leaks_and_gaps():
    with pytest.raises(SplitError, match="both train and test: a/2"):
        assert_disjoint(SubjectSplit(("a/1", "a/2"), (), ("a/2", "a/3")))
    with pytest.raises(SplitError, match="both val and test: a/3"):
        assert_disjoint(SubjectSplit(("a/1",), ("a/3",), ("a/3",)))
    with pytest.raises(SplitError, match="in no part of the split: a/4"):
        assert_disjoint(SubjectSplit(("a/1",), (), ("a/3",)), ["a/1", "a/3", "a/4"])
    with pytest.raises(SplitError, match="not in the pool: a/3"):
        assert_disjoint(SubjectSplit(("a/1",), (), ("a/3",)), ["a/1"])
    with pytest.raises(SplitError, match="twice: a/1"):
        assert_disjoint(SubjectSplit(("a/1", "a/1"), (), ("a/3",)))


def test_split_pools_keep_subjects_apart():
    pool = make_pool([("casme2", f"sub{i % 6:02d}", "x") for i in range(24)])
    split = subject_split(pool.subjects, eval_fraction=0.34, seed=0, val_fraction=0.17)
    train, val, test = split_pools(pool, split)
    assert (train.name, val.name, test.name) == ("train", "val", "test")
    assert len(train) + len(val) + len(test) == 24
    assert set(test.subjects.tolist()) == set(split.test) and set(val.subjects.tolist()) == set(
        split.val
    )
    assert not set(train.clip_ids.tolist()) & set(test.clip_ids.tolist())


# --- LOSO ------------------------------------------------------------------------------


def test_loso_folds():
    folds = list(loso_folds(["b/2", "a/1", "b/2", "c/3"]))
    assert folds == [
        Fold("a/1", ("b/2", "c/3")),
        Fold("b/2", ("a/1", "c/3")),
        Fold("c/3", ("a/1", "b/2")),
    ]
    with pytest.raises(SplitError, match="at least 2 subjects"):
        list(loso_folds(["a/1", "a/1"]))


def _fold_predictions(seed=0):
    """Per-fold {clip_id: (y_true, y_pred)} for 4 subjects × 3 clips, clips in random order."""
    rng = np.random.default_rng(seed)
    truth = {f"d/s{s}/c{c}": int(rng.integers(0, 3)) for s in range(4) for c in range(3)}
    folds = []
    for fold in loso_folds([cid.rsplit("/", 1)[0] for cid in truth]):
        ids = [c for c in truth if c.startswith(fold.test_subject + "/")]
        rng.shuffle(ids)
        folds.append({c: (truth[c], int(rng.integers(0, 3))) for c in ids})
    return truth, folds


def test_pool_predictions_joins_by_id_not_order():
    truth, folds = _fold_predictions()
    pooled = pool_predictions(folds, expected=truth)
    assert pooled.clip_ids == tuple(sorted(truth))
    assert pooled.y_true.tolist() == [truth[c] for c in pooled.clip_ids]
    flat = {c: p for f in folds for c, p in f.items()}
    assert pooled.y_pred.tolist() == [flat[c][1] for c in pooled.clip_ids]
    reordered = pool_predictions([folds[2], folds[0], folds[3], folds[1]], expected=truth)
    assert reordered.clip_ids == pooled.clip_ids
    np.testing.assert_array_equal(reordered.y_true, pooled.y_true)
    np.testing.assert_array_equal(reordered.y_pred, pooled.y_pred)


def test_pool_predictions_errors():
    truth, folds = _fold_predictions()
    dup_id = next(iter(folds[0]))
    with pytest.raises(
        SplitError, match=f"clip {dup_id} is predicted in fold 0 and again in fold 1"
    ):
        pool_predictions([folds[0], {**folds[1], dup_id: (0, 0)}] + folds[2:], expected=truth)
    missing_id = next(iter(folds[3]))
    short = dict(folds[3])
    del short[missing_id]
    with pytest.raises(
        SplitError, match=f"1 expected clip\\(s\\) have no prediction: {missing_id}"
    ):
        pool_predictions(folds[:3] + [short], expected=truth)
    with pytest.raises(SplitError, match="not expected: d/s9/c0"):
        pool_predictions(folds + [{"d/s9/c0": (0, 1)}], expected=truth)
    wrong = dict(folds[1])
    cid = next(iter(wrong))
    wrong[cid] = ((truth[cid] + 1) % 3, 0)
    with pytest.raises(
        SplitError, match=f"{cid} \\(y_true {(truth[cid] + 1) % 3}, expected {truth[cid]}\\)"
    ):
        pool_predictions([folds[0], wrong] + folds[2:], expected=truth)


# --- composite -------------------------------------------------------------------------


def test_composite_pool_counts():
    rows = (
        [
            ("casme2", "sub01", e)
            for e in [
                "happiness",
                "disgust",
                "repression",
                "surprise",
                "others",
                "others",
                "fear",
                "sadness",
                "disgust",
            ]
        ]
        + [
            ("samm", "006", e)
            for e in [
                "Anger",
                "Contempt",
                "Happiness",
                "Surprise",
                "Other",
                "others",
                "Fear",
                "Sadness",
                "Disgust",
            ]
        ]
        + [("smic", "s1", e) for e in ["negative", "positive", "surprise", "negative"]]
        + [("video", "v1", e) for e in ["happy", "sad"]]
    )
    pool = make_pool(rows)
    comp, dropped = composite_pool(pool, name="composite")
    assert comp.class_names == ("negative", "positive", "surprise") and comp.name == "composite"
    # CASME II: neg = disgust ×2 + repression, pos 1, sur 1; SAMM: neg 5, pos 1, sur 1; SMIC 2/1/1
    assert comp.class_counts().tolist() == [3 + 5 + 2, 1 + 1 + 1, 1 + 1 + 1]
    assert len(comp) == len(rows) - 4 - 2 - 2
    assert dropped == {
        "casme2": {"others": 2, "fear": 1, "sadness": 1},
        "samm": {"Other": 1, "others": 1},
        "video": {"happy": 1, "sad": 1},
    }
    got = dict(zip(comp.clip_ids.tolist(), comp.labels.tolist()))
    assert got["casme2/sub01/c2"] == 0 and got["samm/006/c11"] == 1 and got["smic/s1/c20"] == 2
    assert "casme2/sub01/c4" not in got


def test_composite_pool_unknown_emotion_names_clip():
    pool = make_pool([("casme2", "sub01", "happiness"), ("casme2", "sub02", "joyful")])
    with pytest.raises(
        SplitError, match="clip casme2/sub02/c1: unknown emotion 'joyful' for casme2"
    ):
        composite_pool(pool)

"""Metrics against hand computations and a direct per-class loop (scikit-learn is not installed)."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest

from lightman.tasks import metrics
from lightman.tasks.metrics import (
    accuracy,
    confusion_matrix,
    episode_summary,
    macro_f1,
    mean_ci,
    uar,
    uf1,
)


def reference(y_true, y_pred):
    """Per-class TP/FP/FN by plain loops; F1 over classes in true ∪ pred, recall over true."""
    classes_any = sorted(set(y_true) | set(y_pred))
    f1s, recalls, f1_true = [], [], []
    for c in classes_any:
        tp = sum(t == c and p == c for t, p in zip(y_true, y_pred))
        fp = sum(t != c and p == c for t, p in zip(y_true, y_pred))
        fn = sum(t == c and p != c for t, p in zip(y_true, y_pred))
        f1s.append(2 * tp / (2 * tp + fp + fn))
        if c in y_true:
            recalls.append(tp / (tp + fn))
            f1_true.append(2 * tp / (2 * tp + fp + fn))
    return sum(f1s) / len(f1s), sum(recalls) / len(recalls), sum(f1_true) / len(f1_true)


def test_hand_computed_example():
    t, p = [0, 0, 0, 1, 1, 2], [0, 0, 1, 1, 2, 2]
    np.testing.assert_array_equal(confusion_matrix(t, p, 3), [[2, 1, 0], [0, 1, 1], [0, 0, 1]])
    assert accuracy(t, p) == pytest.approx(4 / 6)
    # F1: class 0 = 4/5, class 1 = 2/4, class 2 = 2/3; recall: 2/3, 1/2, 1
    assert macro_f1(t, p) == pytest.approx((4 / 5 + 1 / 2 + 2 / 3) / 3)
    assert uf1(t, p) == pytest.approx((4 / 5 + 1 / 2 + 2 / 3) / 3)
    assert uar(t, p) == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)


def test_class_sets_predicted_but_absent_and_missing_classes():
    t, p = [0, 0, 1, 1], [0, 2, 1, 1]  # class 2 predicted, never true
    assert macro_f1(t, p) == pytest.approx((2 / 3 + 1 + 0) / 3)  # sklearn: classes in t ∪ p
    assert uf1(t, p) == pytest.approx((2 / 3 + 1) / 2)  # MEGC: classes in t
    assert uar(t, p) == pytest.approx((1 / 2 + 1) / 2)
    t, p = [0, 0, 2], [0, 2, 2]  # class 1 absent everywhere: excluded, not a zero
    assert macro_f1(t, p) == pytest.approx(2 / 3) and uar(t, p) == pytest.approx(3 / 4)
    np.testing.assert_array_equal(confusion_matrix(t, p, 4)[1], [0, 0, 0, 0])


def test_against_direct_loop_on_random_labels():
    rng = np.random.default_rng(0)
    for _ in range(50):
        n, c = int(rng.integers(1, 40)), int(rng.integers(2, 6))
        t, p = rng.integers(0, c, n).tolist(), rng.integers(0, c, n).tolist()
        f1_ref, uar_ref, uf1_ref = reference(t, p)
        assert macro_f1(t, p) == pytest.approx(f1_ref)
        assert uar(t, p) == pytest.approx(uar_ref)
        assert uf1(t, p) == pytest.approx(uf1_ref)
        assert accuracy(t, p) == pytest.approx(sum(a == b for a, b in zip(t, p)) / n)
        cm = confusion_matrix(t, p, c)
        assert cm.sum() == n and all(
            cm[a, b] == sum(x == a and y == b for x, y in zip(t, p))
            for a in range(c)
            for b in range(c)
        )


def test_uf1_pools_counts_over_folds():
    folds = [([0, 0, 1], [0, 1, 1]), ([1, 2, 2], [2, 2, 2]), ([0, 2, 1], [0, 2, 0])]
    t = [y for f in folds for y in f[0]]
    p = [y for f in folds for y in f[1]]
    pooled = uf1(t, p)
    assert pooled == pytest.approx(reference(t, p)[2])
    assert pooled == pytest.approx(macro_f1(t, p))  # every predicted class occurs in t
    assert pooled != pytest.approx(
        np.mean([uf1(a, b) for a, b in folds])
    )  # not a mean of per-fold scores


def test_label_errors():
    with pytest.raises(ValueError, match="y_true has 3 labels but y_pred has 2"):
        accuracy([0, 1, 1], [0, 1])
    with pytest.raises(ValueError, match="empty"):
        uar([], [])
    with pytest.raises(ValueError, match="label 3 is out of range for n_classes=3"):
        confusion_matrix([0, 3], [0, 1], 3)
    with pytest.raises(ValueError, match="integer"):
        macro_f1([0.0, 1.0], [0, 1])
    with pytest.raises(ValueError, match="negative label -1"):
        uf1([0, -1], [0, 1])


def test_mean_ci_t_and_normal():
    mean, hw = mean_ci([1, 2, 3, 4, 5])
    t_975_4 = 2.7764451051977987  # Student t, 4 degrees of freedom
    assert mean == 3 and hw == pytest.approx(t_975_4 * math.sqrt(2.5) / math.sqrt(5))
    values = np.arange(40, dtype=float)
    mean, hw = mean_ci(values)
    assert mean == pytest.approx(19.5)
    assert hw == pytest.approx(1.959963984540054 * math.sqrt(40 * 41 / 12) / math.sqrt(40))
    _, hw90 = mean_ci(values, confidence=0.90)
    assert hw90 == pytest.approx(1.6448536269514722 * math.sqrt(40 * 41 / 12) / math.sqrt(40))
    m1, h1 = mean_ci([0.7])
    assert m1 == 0.7 and math.isnan(h1)
    with pytest.raises(ValueError, match="non-empty"):
        mean_ci([])
    with pytest.raises(ValueError, match="non-finite values at positions \\[1\\]"):
        mean_ci([0.1, float("nan")])


def test_t_table_without_scipy(monkeypatch):
    from scipy.stats import t as student_t

    for df in range(1, 30):
        assert metrics._table_t_quantile(0.95, df) == pytest.approx(
            student_t.ppf(0.975, df), abs=5e-4
        )
    monkeypatch.setitem(sys.modules, "scipy", None)
    monkeypatch.setitem(sys.modules, "scipy.stats", None)
    assert metrics.t_quantile(0.95, 4) == 2.776  # the table, not scipy
    _, hw = mean_ci([1, 2, 3, 4, 5])
    assert hw == pytest.approx(2.776 * math.sqrt(2.5) / math.sqrt(5))
    with pytest.raises(ValueError, match="only confidence=0.95"):
        mean_ci([1, 2, 3], confidence=0.9)


def test_episode_summary():
    eps = [([0, 1, 2, 2], [0, 1, 1, 2]), ([0, 1, 2, 0], [0, 0, 2, 0]), ([1, 1, 2, 0], [1, 1, 2, 0])]
    out = episode_summary(eps)
    assert set(out) == {"acc", "macro_f1", "uar", "uf1", "uf1_pooled", "uar_pooled"}
    assert out["acc"] == pytest.approx(mean_ci([3 / 4, 3 / 4, 1.0]))
    f1_1 = (1 + 2 / 3 + 2 / 3) / 3  # episode 1: class 0 = 1, class 1 = 2/3, class 2 = 2/3
    f1_2 = (4 / 5 + 0 + 1) / 3  # episode 2: class 0 TP2 FP1 FN0, class 1 TP0 FN1, class 2 = 1
    assert out["macro_f1"] == pytest.approx(mean_ci([f1_1, f1_2, 1.0]))
    assert out["uf1"] == pytest.approx(mean_ci([f1_1, f1_2, 1.0]))
    assert out["uar"] == pytest.approx(mean_ci([(1 + 1 + 1 / 2) / 3, (1 + 0 + 1) / 3, 1.0]))
    t = [y for e in eps for y in e[0]]
    p = [y for e in eps for y in e[1]]
    assert out["uf1_pooled"][0] == pytest.approx(reference(t, p)[2]) and math.isnan(
        out["uf1_pooled"][1]
    )
    assert out["uar_pooled"][0] == pytest.approx(reference(t, p)[1])
    with pytest.raises(ValueError, match="at least one episode"):
        episode_summary([])

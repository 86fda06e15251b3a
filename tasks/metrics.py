"""Classification metrics for MER (paper 5.1 "Evaluation Metrics"; MEGC 2019 UF1/UAR).

All functions take integer class labels as 1-D arrays (`y_true`, `y_pred`, same length)
and return plain floats. Which classes a mean runs over matters on small episodes:

- `macro_f1`: mean per-class F1 over the classes present in `y_true` or `y_pred`
  (scikit-learn's `f1_score(average="macro")` with its default labels).
- `uar`: unweighted average recall, mean over the classes present in `y_true` of
  TP / (TP + FN). A class absent from `y_true` has no recall and is excluded.
- `uf1`: MEGC 2019 unweighted F1, mean over classes of 2TP / (2TP + FP + FN) with the
  counts pooled over all predictions (e.g. over LOSO folds), over the classes present
  in `y_true` (the MEGC evaluation script skips a class whose recall is undefined).
  It is therefore macro-F1 computed from the pooled counts, and equals `macro_f1` of
  the pooled predictions whenever every predicted class also occurs in `y_true` (always
  so in the composite LOSO pool, where all three classes occur). Averaging per-fold F1
  instead would give a different, fold-weighted number.

`mean_ci` gives the mean ± half-width of a confidence interval over episodes, and
`episode_summary` applies every metric per episode and pooled.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist

import numpy as np

# Two-sided 95% Student t quantiles t_{0.975, df} for df = 1..29, used only when scipy
# is not installed (values from scipy.stats.t.ppf(0.975, df), rounded to 3 decimals).
_T975 = (
    12.706,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
    2.120,
    2.110,
    2.101,
    2.093,
    2.086,
    2.080,
    2.074,
    2.069,
    2.064,
    2.060,
    2.056,
    2.052,
    2.048,
    2.045,
)
NORMAL_MIN_N = 30  # from this many values on, the normal quantile replaces Student t


def _labels(
    y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Validated (n,) int64 copies of both label arrays."""
    t, p = np.asarray(y_true), np.asarray(y_pred)
    if t.ndim != 1 or p.ndim != 1:
        raise ValueError(f"labels must be 1-D, got y_true {t.shape} and y_pred {p.shape}")
    if t.shape != p.shape:
        raise ValueError(f"y_true has {t.size} labels but y_pred has {p.size}")
    if t.size == 0:
        raise ValueError("no predictions: y_true and y_pred are empty")
    for name, a in (("y_true", t), ("y_pred", p)):
        if not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"{name} must hold integer class labels, got dtype {a.dtype}")
        if a.min() < 0:
            raise ValueError(f"{name} holds a negative label {int(a.min())}")
    return t.astype(np.int64), p.astype(np.int64)


def confusion_matrix(y_true, y_pred, n_classes: int) -> np.ndarray:
    """(n_classes, n_classes) int64 counts; row = true class, column = predicted class."""
    t, p = _labels(y_true, y_pred)
    top = int(max(t.max(), p.max()))
    if top >= n_classes:
        raise ValueError(f"label {top} is out of range for n_classes={n_classes}")
    return np.bincount(t * n_classes + p, minlength=n_classes * n_classes).reshape(
        n_classes, n_classes
    )


def _counts(t: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class TP, FP, FN, each (C,), C = largest label + 1."""
    cm = confusion_matrix(t, p, int(max(t.max(), p.max())) + 1)
    tp = np.diag(cm)
    return tp, cm.sum(axis=0) - tp, cm.sum(axis=1) - tp


def _mean_f1(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, classes: np.ndarray) -> float:
    """Mean of 2TP / (2TP + FP + FN) over the classes selected by the boolean mask."""
    return float(np.mean(2 * tp[classes] / (2 * tp[classes] + fp[classes] + fn[classes])))


def accuracy(y_true, y_pred) -> float:
    """Fraction of predictions equal to the true label."""
    t, p = _labels(y_true, y_pred)
    return float(np.mean(t == p))


def macro_f1(y_true, y_pred) -> float:
    """Mean over classes in y_true ∪ y_pred of F1 = 2TP / (2TP + FP + FN)."""
    t, p = _labels(y_true, y_pred)
    tp, fp, fn = _counts(t, p)
    return _mean_f1(tp, fp, fn, (tp + fp + fn) > 0)


def uar(y_true, y_pred) -> float:
    """Unweighted average recall: mean over classes present in y_true of TP / (TP + FN)."""
    t, p = _labels(y_true, y_pred)
    tp, _, fn = _counts(t, p)
    present = (tp + fn) > 0
    return float(np.mean(tp[present] / (tp[present] + fn[present])))


def uf1(y_true, y_pred) -> float:
    """MEGC unweighted F1: mean over classes present in y_true of 2TP / (2TP + FP + FN).

    Pass the predictions pooled over all folds: the counts are pooled, not the scores.
    """
    t, p = _labels(y_true, y_pred)
    tp, fp, fn = _counts(t, p)
    return _mean_f1(tp, fp, fn, (tp + fn) > 0)


def _table_t_quantile(confidence: float, df: int) -> float:
    """Two-sided Student t quantile from the built-in table (95% only)."""
    if not math.isclose(confidence, 0.95):
        raise ValueError(
            f"without scipy only confidence=0.95 is supported for n < {NORMAL_MIN_N}, "
            f"got {confidence}"
        )
    if not 1 <= df <= len(_T975):
        raise ValueError(f"the t table covers df 1..{len(_T975)}, got {df}")
    return _T975[df - 1]


def t_quantile(confidence: float, df: int) -> float:
    """Two-sided Student t quantile t_{(1+confidence)/2, df} (scipy if installed, else a table)."""
    try:
        from scipy.stats import t as student_t
    except ImportError:
        return _table_t_quantile(confidence, df)
    return float(student_t.ppf((1 + confidence) / 2, df))


def mean_ci(values: Sequence[float] | np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """Mean and half-width of its two-sided confidence interval: q · s / √n.

    s is the sample standard deviation (ddof=1); q is the normal quantile (1.96 at 95%)
    for n ≥ 30 and the Student t quantile with n − 1 degrees of freedom below. With a
    single value the half-width is undefined and returned as NaN.
    """
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or v.size == 0:
        raise ValueError(f"mean_ci needs a non-empty 1-D sequence of values, got shape {v.shape}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if not np.all(np.isfinite(v)):
        raise ValueError(
            f"mean_ci got non-finite values at positions {np.flatnonzero(~np.isfinite(v)).tolist()}"
        )
    n = v.size
    mean = float(v.mean())
    if n == 1:
        return mean, float("nan")
    if n >= NORMAL_MIN_N:
        q = NormalDist().inv_cdf((1 + confidence) / 2)
    else:
        q = t_quantile(confidence, n - 1)
    return mean, float(q * v.std(ddof=1) / math.sqrt(n))


# Metric name -> fn(y_true, y_pred): of one episode's predictions, or of predictions pooled
# over LOSO folds (platform/protocols.py).
SCORES = {"acc": accuracy, "macro_f1": macro_f1, "uar": uar, "uf1": uf1}


def episode_summary(
    episodes: Sequence[tuple[Sequence[int] | np.ndarray, Sequence[int] | np.ndarray]],
    confidence: float = 0.95,
) -> dict[str, tuple[float, float]]:
    """Metric name → (mean, CI half-width) over episodes, plus pooled UF1 / UAR.

    `episodes` holds one (y_true, y_pred) pair per episode. "acc", "macro_f1", "uar" and
    "uf1" are computed per episode and summarised with `mean_ci`; "uf1_pooled" and
    "uar_pooled" are computed once over all predictions concatenated, so their
    half-width is NaN. Pass global class labels (`np.asarray(ep.classes)[y]`) for the
    pooled numbers to be per emotion; per-episode numbers do not depend on the labelling.
    """
    if len(episodes) == 0:
        raise ValueError("episode_summary needs at least one episode")
    pairs = [_labels(t, p) for t, p in episodes]
    out = {name: mean_ci([fn(t, p) for t, p in pairs], confidence) for name, fn in SCORES.items()}
    t_all = np.concatenate([t for t, _ in pairs])
    p_all = np.concatenate([p for _, p in pairs])
    out["uf1_pooled"] = (uf1(t_all, p_all), float("nan"))
    out["uar_pooled"] = (uar(t_all, p_all), float("nan"))
    return out

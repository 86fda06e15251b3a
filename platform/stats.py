"""The statistics of a study's report, decided by code: pure functions, no I/O.

A study (platform/reproduce.py) trains each learner once per seed; the seed draws the
subject split, the episodes and the initialisation, so the cells of one seed are tested on
the same test subjects and the same test episodes. From the per-seed figures (the mean
over a cell's test episodes of one metric) this module computes:

- `t_interval`: mean ± half-width of the two-sided Student t confidence interval across
  seeds, q · s / √n with s the sample standard deviation (ddof = 1) and q =
  `scipy.stats.t.ppf((1 + confidence) / 2, n − 1)`; undefined (NaN) for n < 2.
- `paired`: a contrast A − B, per seed the difference of the two learners' figures (the
  same seed: the same split and episodes), then its t interval and the two-sided p-value
  of the paired t-test (`scipy.stats.ttest_1samp(differences, 0)`). Differences that are
  all equal have no spread: p = 0 when they are not 0, p = 1 when they are.
- `holm`: Holm's step-down adjustment of a family's p-values (the contrasts of one
  table): sorted ascending, p_(i) · (m − i + 1), made monotone by a running maximum,
  capped at 1; NaN p-values are left out of the family and stay NaN.
- `verdict`: whether a paper's claim is reproduced, by the rule below.

The claim rule. A claim names its contrast A − B (fixed in the study's YAML before any
cell runs), the metric, the paper's direction (`greater`: A > B, or `less`) and,
optionally, the paper's size: the difference the paper publishes, in the metric's
points. With α = 1 − confidence (0.05):

1. **not testable on this data** when the contrast has fewer than 2 paired seeds (no
   interval), when a learner of the contrast is missing, or when the run is not decisive
   (the `quick` budget: a smoke run of the machinery that decides nothing).
2. **reproduced** when all of:
   a. the contrast's (unadjusted) 95% t interval lies wholly on the paper's side of 0;
   b. the contrast is the table's primary one (named up front, so it is tested alone at
      α), or its Holm-adjusted p-value over the table's family is below α;
   c. where the paper gives a size, the interval does not lie wholly short of it (its
      far end reaches the paper's difference): the data cannot rule out the published
      effect. An effect in the right direction but significantly smaller than published
      does not reproduce the published number.
3. **not reproduced** otherwise, with the reason: the interval covers 0, lies on the
   other side, the contrast does not survive Holm, or the interval excludes the paper's
   size.

Interval and p-value agree by construction (a two-sided 95% t interval excludes 0 exactly
when the paired t-test's p < 0.05), so (a) is the unadjusted test and (b) adds the
family's correction for secondary contrasts only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
from scipy import stats as sps

REPRODUCED = "reproduced"
NOT_REPRODUCED = "not reproduced"
NOT_TESTABLE = "not testable on this data"
DIRECTIONS = ("greater", "less")


@dataclass(frozen=True)
class Interval:
    """Mean and two-sided confidence interval across n values."""

    mean: float
    half: float  # NaN for n < 2
    n: int

    @property
    def low(self) -> float:
        return self.mean - self.half

    @property
    def high(self) -> float:
        return self.mean + self.half


def t_interval(values: Sequence[float], confidence: float = 0.95) -> Interval:
    """Mean ± q · s / √n, q the Student t quantile with n − 1 dof (module docstring)."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or v.size == 0:
        raise ValueError(f"t_interval needs a non-empty 1-D sequence, got shape {v.shape}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    n = int(v.size)
    if n < 2:
        return Interval(float(v.mean()), math.nan, n)
    q = float(sps.t.ppf((1 + confidence) / 2, n - 1))
    return Interval(float(v.mean()), q * float(v.std(ddof=1)) / math.sqrt(n), n)


@dataclass(frozen=True)
class Contrast:
    """A − B on one metric, paired by seed."""

    name: str  # "A-B:metric"
    a: str
    b: str
    metric: str
    seeds: tuple[int, ...]
    differences: tuple[float, ...]  # per seed, A − B
    interval: Interval
    p: float  # two-sided paired t-test; NaN for n < 2
    p_holm: float = math.nan  # Holm-adjusted over the table's family


def contrast_name(a: str, b: str, metric: str) -> str:
    return f"{a}-{b}:{metric}"


def paired(
    a: str,
    b: str,
    metric: str,
    a_by_seed: Mapping[int, float],
    b_by_seed: Mapping[int, float],
    confidence: float = 0.95,
) -> Contrast:
    """The contrast A − B over the seeds both have (module docstring)."""
    seeds = tuple(sorted(set(a_by_seed) & set(b_by_seed)))
    diffs = tuple(float(a_by_seed[s]) - float(b_by_seed[s]) for s in seeds)
    if not diffs:
        raise ValueError(f"{a} and {b} share no seed on {metric}")
    return Contrast(
        contrast_name(a, b, metric),
        a,
        b,
        metric,
        seeds,
        diffs,
        t_interval(diffs, confidence),
        paired_p(diffs),
    )


def paired_p(differences: Sequence[float]) -> float:
    """Two-sided p-value of the paired t-test that the mean difference is 0."""
    d = np.asarray(differences, dtype=np.float64)
    if d.size < 2:
        return math.nan
    if np.all(d == d[0]):  # no spread: the t statistic is ±inf or undefined
        return 0.0 if d[0] != 0 else 1.0
    return float(sps.ttest_1samp(d, 0.0).pvalue)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input's order (module docstring)."""
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = ok.size
    if m == 0:
        return out.tolist()
    if np.any((p[ok] < 0) | (p[ok] > 1)):
        raise ValueError(f"p-values must lie in [0, 1], got {p[ok].tolist()}")
    order = ok[np.argsort(p[ok], kind="stable")]
    scaled = p[order] * (m - np.arange(m))
    out[order] = np.minimum(np.maximum.accumulate(scaled), 1.0)
    return out.tolist()


def with_holm(contrasts: Sequence[Contrast]) -> list[Contrast]:
    """The family's contrasts with their Holm-adjusted p-values filled in."""
    adjusted = holm([c.p for c in contrasts])
    return [replace(c, p_holm=q) for c, q in zip(contrasts, adjusted, strict=True)]


@dataclass(frozen=True)
class Verdict:
    verdict: str  # REPRODUCED | NOT_REPRODUCED | NOT_TESTABLE
    reason: str


def verdict(
    contrast: Contrast | None,
    direction: str,
    size: float | None = None,
    primary: bool = False,
    decisive: bool = True,
    alpha: float = 0.05,
) -> Verdict:
    """A claim's verdict from its pre-named contrast, by the rule of the module docstring.
    `size`: the paper's A − B in the contrast's units (None: the paper gives none)."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    if contrast is None:
        return Verdict(NOT_TESTABLE, "a learner of the contrast did not run on this data")
    iv = contrast.interval
    if iv.n < 2 or not math.isfinite(iv.half):
        return Verdict(NOT_TESTABLE, f"{iv.n} paired seed(s): no interval")
    if not decisive:
        return Verdict(NOT_TESTABLE, "the quick budget decides nothing (a smoke run)")
    sign = 1.0 if direction == "greater" else -1.0
    near, far = sorted((sign * iv.low, sign * iv.high))  # on the paper's side: > 0
    ci = f"CI [{iv.low:+.4g}, {iv.high:+.4g}]"
    if near <= 0 < far:
        return Verdict(NOT_REPRODUCED, f"{ci} covers 0")
    if far <= 0:
        return Verdict(NOT_REPRODUCED, f"{ci} lies on the other side of 0")
    if not primary and not (contrast.p_holm < alpha):
        return Verdict(
            NOT_REPRODUCED, f"{ci} excludes 0 but Holm-adjusted p = {contrast.p_holm:.3g}"
        )
    if size is not None and far < sign * size:
        return Verdict(
            NOT_REPRODUCED, f"direction holds but {ci} lies short of the paper's {size:+.4g}"
        )
    more = "" if size is None else f", reaches the paper's {size:+.4g}"
    how = "primary contrast" if primary else f"Holm p = {contrast.p_holm:.3g}"
    return Verdict(REPRODUCED, f"{ci} excludes 0 ({how}){more}")


def replace_holm(contrast: Contrast, p_holm: float) -> Contrast:
    """`contrast` with its Holm-adjusted p-value set (the family's, from `holm`)."""
    return replace(contrast, p_holm=p_holm)

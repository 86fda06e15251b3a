"""platform/stats.py: the t interval against scipy and a hand formula, Holm against
statsmodels, the paired test and each branch of the claim rule."""

import math

import numpy as np
import pytest
from scipy import stats as sps

from lightman.platform import stats


def test_t_interval_by_hand_on_a_small_example():
    # values 1, 2, 3, 4: mean 2.5, s = sqrt(5/3), t_{0.975, 3} = 3.182446305284263
    iv = stats.t_interval([1.0, 2.0, 3.0, 4.0])
    assert iv.mean == 2.5 and iv.n == 4
    assert iv.half == pytest.approx(3.182446305284263 * math.sqrt(5 / 3) / 2, rel=1e-12)
    assert (iv.low, iv.high) == pytest.approx((2.5 - iv.half, 2.5 + iv.half))


@pytest.mark.parametrize("n", [2, 3, 5, 10, 40])
def test_t_interval_equals_scipys(n):
    v = np.random.default_rng(n).normal(60, 5, n)
    iv = stats.t_interval(v, confidence=0.95)
    low, high = sps.t.interval(0.95, n - 1, loc=v.mean(), scale=sps.sem(v))
    assert (iv.low, iv.high) == pytest.approx((low, high), rel=1e-12)


def test_t_interval_of_one_value_is_undefined():
    iv = stats.t_interval([3.0])
    assert iv.mean == 3.0 and math.isnan(iv.half)


@pytest.mark.parametrize("seed", range(20))
def test_holm_equals_statsmodels_multipletests(seed):
    from statsmodels.stats.multitest import multipletests

    rng = np.random.default_rng(seed)
    p = rng.uniform(0, 1, rng.integers(1, 12)) ** rng.uniform(1, 4)  # many small ones too
    _, expected, _, _ = multipletests(p, alpha=0.05, method="holm")
    assert stats.holm(p) == pytest.approx(expected.tolist(), rel=1e-12, abs=0)


def test_holm_leaves_nan_out_of_the_family():
    out = stats.holm([0.01, math.nan, 0.04])
    assert out[0] == pytest.approx(0.02) and math.isnan(out[1]) and out[2] == pytest.approx(0.04)


def test_paired_contrast_is_the_one_sample_t_test_of_the_differences():
    a = {0: 60.0, 1: 62.0, 2: 58.0, 3: 65.0}
    b = {0: 55.0, 1: 57.5, 2: 56.0, 3: 59.0, 9: 1.0}  # seed 9 has no partner
    c = stats.paired("lightman", "maml", "acc", a, b)
    assert c.seeds == (0, 1, 2, 3) and c.differences == (5.0, 4.5, 2.0, 6.0)
    assert c.p == pytest.approx(sps.ttest_rel([60, 62, 58, 65], [55, 57.5, 56, 59]).pvalue)
    assert c.interval.mean == pytest.approx(4.375)
    assert c.name == "lightman-maml:acc"


def _contrast(diffs, p_holm=0.01):
    c = stats.paired("a", "b", "acc", dict(enumerate(diffs)), dict.fromkeys(range(len(diffs)), 0))
    return stats.with_holm([c])[0] if p_holm is None else stats.replace_holm(c, p_holm)


def test_the_claim_rule_each_branch():
    up = _contrast([5.0, 6.0, 7.0, 5.5, 6.5])  # CI about [5, 7]
    v = stats.verdict
    assert v(up, "greater").verdict == stats.REPRODUCED
    assert v(up, "less").verdict == stats.NOT_REPRODUCED
    assert "other side" in v(up, "less").reason
    assert v(up, "greater", size=6.0).verdict == stats.REPRODUCED  # covered
    assert v(up, "greater", size=3.0).verdict == stats.REPRODUCED  # larger than published
    short = v(up, "greater", size=30.0)  # LightmanNet vs MAML in the paper: +30.48 points
    assert short.verdict == stats.NOT_REPRODUCED and "short of the paper" in short.reason
    flat = _contrast([1.0, -1.0, 0.5, -0.5, 0.2])
    assert "covers 0" in v(flat, "greater").reason
    weak = _contrast([5.0, 6.0, 7.0, 5.5, 6.5], p_holm=0.2)
    assert v(weak, "greater").verdict == stats.NOT_REPRODUCED  # secondary: Holm decides
    assert v(weak, "greater", primary=True).verdict == stats.REPRODUCED  # primary: alone
    assert v(up, "greater", decisive=False).verdict == stats.NOT_TESTABLE
    assert v(_contrast([5.0]), "greater").verdict == stats.NOT_TESTABLE
    assert v(None, "greater").verdict == stats.NOT_TESTABLE

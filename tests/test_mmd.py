"""The MMD loss against independent computations (direct loops, closed forms, numerics)."""

from __future__ import annotations

import math

import pytest
import torch

from lightman.models.mmd import (
    class_conditional,
    gaussian_kernel,
    median_bandwidths,
    median_heuristic,
    mmd2,
    paper_eq3,
)

F64 = torch.float64


def sample(n: int, d: int, seed: int, shift: float = 0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=F64) + shift


def k_loop(a: list[float], b: list[float], sigmas) -> float:
    """Sum over bandwidths of exp(-||a - b||^2 / (2 sigma^2)), in plain Python."""
    d2 = sum((ai - bi) ** 2 for ai, bi in zip(a, b))
    return sum(math.exp(-d2 / (2 * s * s)) for s in sigmas)


def mmd2_loop(x: torch.Tensor, y: torch.Tensor, sigmas, unbiased: bool) -> float:
    """Squared MMD written as the double sums of its definition."""
    xs, ys = x.tolist(), y.tolist()
    n, m = len(xs), len(ys)
    if unbiased:
        kxx = sum(k_loop(xs[i], xs[j], sigmas) for i in range(n) for j in range(n) if i != j) / (
            n * (n - 1)
        )
        kyy = sum(k_loop(ys[i], ys[j], sigmas) for i in range(m) for j in range(m) if i != j) / (
            m * (m - 1)
        )
    else:
        kxx = sum(k_loop(xs[i], xs[j], sigmas) for i in range(n) for j in range(n)) / (n * n)
        kyy = sum(k_loop(ys[i], ys[j], sigmas) for i in range(m) for j in range(m)) / (m * m)
    kxy = sum(k_loop(xs[i], ys[j], sigmas) for i in range(n) for j in range(m)) / (n * m)
    return kxx + kyy - 2 * kxy


def test_gaussian_kernel_matches_the_formula():
    x, y = sample(4, 3, 0), sample(5, 3, 1)
    k = gaussian_kernel(x, y, 0.7)
    assert k.shape == (4, 5)
    for i in range(4):
        for j in range(5):
            assert k[i, j].item() == pytest.approx(
                k_loop(x[i].tolist(), y[j].tolist(), [0.7]), rel=1e-12
            )


@pytest.mark.parametrize("unbiased", [False, True])
@pytest.mark.parametrize("sigmas", [(1.0,), (0.5, 2.0), (0.3, 1.0, 4.0)])
def test_mmd2_matches_direct_double_loop(unbiased, sigmas):
    x, y = sample(6, 4, 2), sample(7, 4, 3, shift=0.4)
    got = mmd2(x, y, sigmas, unbiased=unbiased).item()
    assert got == pytest.approx(mmd2_loop(x, y, sigmas, unbiased), rel=1e-10, abs=1e-12)


def test_scalar_and_tensor_bandwidths_equal_the_tuple_form():
    x, y = sample(5, 3, 4), sample(6, 3, 5)
    ref = mmd2(x, y, (1.5,))
    assert torch.equal(mmd2(x, y, 1.5), ref)
    assert torch.allclose(mmd2(x, y, torch.tensor(1.5, dtype=F64)), ref, rtol=1e-14)
    both = mmd2(x, y, torch.tensor([0.5, 1.5], dtype=F64))
    assert torch.allclose(both, mmd2(x, y, (0.5, 1.5)), rtol=1e-14)


def test_identical_sets_biased_is_zero_unbiased_is_not():
    x = sample(8, 3, 6)
    assert mmd2(x, x, (1.0, 2.0)).item() == 0.0
    # Unbiased: 2 U - 2 mean(K) with U the off-diagonal mean; as mean(K) counts the
    # diagonal (k = 1 per bandwidth), this is 2 (S - n(n-1) q) / (n^2 (n-1)) < 0, where
    # S is the off-diagonal sum and q the number of bandwidths.
    n, sigmas = 8, (1.0, 2.0)
    s_off = sum(
        k_loop(x[i].tolist(), x[j].tolist(), sigmas) for i in range(n) for j in range(n) if i != j
    )
    expected = 2 * (s_off - n * (n - 1) * len(sigmas)) / (n * n * (n - 1))
    got = mmd2(x, x, sigmas, unbiased=True).item()
    assert got == pytest.approx(expected, rel=1e-10)
    assert got < 0


def test_biased_mmd_is_never_negative():
    # The V-statistic is a squared RKHS norm ||mean_x phi - mean_y phi||^2.
    for seed in range(5):
        x, y = sample(6, 2, 30 + seed), sample(4, 2, 40 + seed, shift=0.1 * seed)
        assert mmd2(x, y, (0.2, 1.0)).item() >= 0


@pytest.mark.parametrize("shift", [torch.tensor([1.0, 0.5, 0.0]), torch.tensor([0.0, 0.0, 0.0])])
def test_unbiased_estimate_matches_shifted_gaussian_closed_form(shift):
    # X ~ N(mu1, s^2 I_d), Y ~ N(mu2, s^2 I_d), bandwidth sigma:
    # MMD^2 = 2 (sigma^2 / c)^(d/2) [1 - exp(-||mu1 - mu2||^2 / (2 c))], c = sigma^2 + 2 s^2
    d, s, sigma, n = 3, 1.0, 2.0, 2000
    c = sigma**2 + 2 * s**2
    population = (
        2 * (sigma**2 / c) ** (d / 2) * (1 - math.exp(-shift.pow(2).sum().item() / (2 * c)))
    )
    x = sample(n, d, 10) * s
    y = sample(n, d, 11) * s + shift.to(F64)
    estimate = mmd2(x, y, sigma, unbiased=True).item()
    # The estimator's standard deviation at n = 2000 is about 0.006 (measured over seeds).
    assert estimate == pytest.approx(population, abs=0.025)


def test_paper_eq3_is_the_mean_cross_kernel():
    x, y = sample(4, 3, 12), sample(3, 3, 13, shift=1.0)
    expected = sum(k_loop(a, b, [1.3]) for a in x.tolist() for b in y.tolist()) / 12
    assert paper_eq3(x, y, 1.3).item() == pytest.approx(expected, rel=1e-12)
    # A similarity: 1 when every pair coincides, falling as the sets move apart.
    p = sample(1, 3, 14)
    assert paper_eq3(p.expand(3, 3), p.expand(2, 3), 1.0).item() == pytest.approx(1.0)
    assert paper_eq3(x, y + 3, 1.3) < paper_eq3(x, y, 1.3)


def test_median_heuristic_is_the_median_pairwise_distance():
    x, y = sample(5, 2, 15), sample(4, 2, 16)
    z = torch.cat((x, y)).tolist()
    dists = sorted(math.dist(z[i], z[j]) for i in range(9) for j in range(i + 1, 9))
    # 36 pairs: torch's median is the lower of the two middle values.
    assert median_heuristic(x, y).item() == pytest.approx(dists[17], rel=1e-12)
    assert not median_heuristic(x.requires_grad_(), y).requires_grad


@pytest.mark.parametrize("unbiased", [False, True])
def test_mmd2_first_and_second_order_gradients(unbiased):
    x = sample(4, 3, 17).requires_grad_()
    y = sample(5, 3, 18, shift=0.3).requires_grad_()

    def fn(a, b):
        return mmd2(a, b, (0.8, 2.0), unbiased=unbiased)

    assert torch.autograd.gradcheck(fn, (x, y))
    assert torch.autograd.gradgradcheck(fn, (x, y))


def test_paper_eq3_and_kernel_second_order_gradients():
    x = sample(3, 2, 19).requires_grad_()
    y = sample(4, 2, 20).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: paper_eq3(a, b, 1.1), (x, y))
    assert torch.autograd.gradgradcheck(lambda a, b: paper_eq3(a, b, 1.1), (x, y))
    assert torch.autograd.gradgradcheck(lambda a, b: gaussian_kernel(a, b, 0.9), (x, y))


def test_bad_inputs_give_specific_errors():
    x = sample(4, 3, 21)
    with pytest.raises(ValueError, match="feature widths differ"):
        mmd2(x, sample(4, 2, 22))
    with pytest.raises(ValueError, match=r"\(n, d\)"):
        mmd2(x[0], x)
    with pytest.raises(ValueError, match="> 0"):
        mmd2(x, x, (1.0, 0.0))
    with pytest.raises(ValueError, match=">= 2 samples"):
        mmd2(x[:1], x, unbiased=True)
    with pytest.raises(ValueError, match="collapsed"):
        median_heuristic(x[:1].expand(3, 3), x[:1].expand(2, 3))


def test_median_bandwidths_are_multiples_of_the_median_distance():
    x, y = sample(4, 3, 23), sample(3, 3, 24)
    z = torch.cat((x, y)).tolist()
    dists = sorted(math.dist(z[i], z[j]) for i in range(7) for j in range(i + 1, 7))
    got = median_bandwidths(x.requires_grad_(), y, (0.5, 1.0, 2.0))
    assert [s.item() for s in got] == pytest.approx([0.5 * dists[10], dists[10], 2 * dists[10]])
    assert not any(s.requires_grad for s in got)  # constants of the loss, not parameters
    want = mmd2_loop(x.detach(), y, [0.5 * dists[10], 2 * dists[10]], False)
    assert mmd2(x, y, median_bandwidths(x, y, (0.5, 2.0))).item() == pytest.approx(want, rel=1e-10)


def test_class_conditional_is_the_mean_over_shared_classes():
    x, y = sample(6, 2, 25), sample(5, 2, 26, shift=0.5)
    x_labels, y_labels = torch.tensor([0, 1, 2, 0, 1, 2]), torch.tensor([2, -1, 0, 2, 3])
    # shared: 0 and 2 (1 has no y sample, -1 and 3 no x sample)
    want = (
        mmd2_loop(x[[0, 3]], y[[2]], (1.0,), False) + mmd2_loop(x[[2, 5]], y[[0, 3]], (1.0,), False)
    ) / 2
    got = class_conditional(lambda a, b: mmd2(a, b, (1.0,)), x, x_labels, y, y_labels)
    assert got.item() == pytest.approx(want, rel=1e-10)
    with pytest.raises(ValueError, match="no class has samples on both sides"):
        class_conditional(mmd2, x, x_labels, y, torch.full((5,), -1))
    with pytest.raises(ValueError, match="one per sample"):
        class_conditional(mmd2, x, x_labels[:3], y, y_labels)

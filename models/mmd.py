"""The auxiliary alignment loss: Gaussian-kernel MMD between micro and macro features.

Paper Eq. 3 prints L_aux = 1/(N^s N^aux) sum_j sum_j' k(f(x_j^s), f(x_j'^aux)) with
k(x, y) = exp(-||x - y||^2 / (2 sigma^2)): the mean *cross* kernel only, a
similarity. Minimised as a loss it pushes micro and macro features apart, the
opposite of alignment. Lightman's default L_aux is the proper squared MMD,
mmd2 = E k(x, x') + E k(y, y') - 2 E k(x, y) (Gretton et al., JMLR 2012), which is 0
exactly when the two feature distributions match (for a characteristic kernel);
the printed form is kept as `paper_eq3` so the two can be compared (docs/architecture.md).

Bandwidths: fixed, or per task `median_bandwidths` (multiples of the detached median
pairwise distance, `median_heuristic`); alignment: over the whole sets, or
`class_conditional` (the mean over shared classes of the loss between that class's samples).

All functions are pure, differentiable (to second order: the learners backpropagate
through an inner step that contains L_aux) and take feature matrices x: (n, d),
y: (m, d).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

Sigmas = float | Tensor | Sequence[float | Tensor]


def _check_pair(x: Tensor, y: Tensor) -> None:
    if x.dim() != 2 or y.dim() != 2:
        raise ValueError(
            "MMD takes feature matrices (n, d) and (m, d), "
            f"got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"feature widths differ: x is {tuple(x.shape)}, y is {tuple(y.shape)}")
    if x.shape[0] == 0 or y.shape[0] == 0:
        raise ValueError(
            f"MMD needs at least one sample on each side, got {tuple(x.shape)} and {tuple(y.shape)}"
        )


def _as_sigmas(sigmas: Sigmas) -> list[float | Tensor]:
    if isinstance(sigmas, Tensor):
        out = list(sigmas.reshape(-1))
    elif isinstance(sigmas, (int, float)):
        out = [float(sigmas)]
    else:
        out = list(sigmas)
    if not out:
        raise ValueError("sigmas must name at least one bandwidth")
    for s in out:
        if not isinstance(s, Tensor) and not s > 0:
            raise ValueError(f"kernel bandwidths must be > 0, got sigmas={list(out)}")
    return out


def squared_distances(x: Tensor, y: Tensor) -> Tensor:
    """||x_i - y_j||^2: (n, d), (m, d) -> (n, m).

    Computed from the differences (not ||x||^2 + ||y||^2 - 2 x.y) so that it is exact,
    never negative, and exactly 0 on the diagonal of x against itself.
    """
    diff = x.unsqueeze(1) - y.unsqueeze(0)  # (n, m, d)
    return diff.pow(2).sum(-1)


def gaussian_kernel(x: Tensor, y: Tensor, sigma: float | Tensor) -> Tensor:
    """k(x_i, y_j) = exp(-||x_i - y_j||^2 / (2 sigma^2)) (paper Eq. 3): (n, d), (m, d) -> (n, m)."""
    _check_pair(x, y)
    _as_sigmas(sigma)
    return torch.exp(-squared_distances(x, y) / (2 * sigma**2))


def multi_kernel(x: Tensor, y: Tensor, sigmas: Sigmas) -> Tensor:
    """Sum of Gaussian kernels over the bandwidths: (n, m)."""
    d2 = squared_distances(x, y)  # (n, m), shared by every bandwidth
    return sum(torch.exp(-d2 / (2 * s**2)) for s in _as_sigmas(sigmas))


def mmd2(x: Tensor, y: Tensor, sigmas: Sigmas = (1.0,), unbiased: bool = False) -> Tensor:
    """Squared MMD between samples x: (n, d) and y: (m, d) with k = sum of Gaussian kernels.

    Biased (V-statistic, unbiased=False): mean(Kxx) + mean(Kyy) - 2 mean(Kxy); >= 0,
    and exactly 0 when x and y are the same set.
    Unbiased (U-statistic, unbiased=True): the within-sample means leave out the
    diagonal (i == i'), so n, m >= 2; it can be negative.
    Returns a 0-d tensor.
    """
    _check_pair(x, y)
    n, m = x.shape[0], y.shape[0]
    kxx, kyy, kxy = (
        multi_kernel(x, x, sigmas),
        multi_kernel(y, y, sigmas),
        multi_kernel(x, y, sigmas),
    )
    if not unbiased:
        return kxx.mean() + kyy.mean() - 2 * kxy.mean()
    if n < 2 or m < 2:
        raise ValueError(f"the unbiased MMD needs >= 2 samples on each side, got n={n}, m={m}")
    within_x = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
    within_y = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return within_x + within_y - 2 * kxy.mean()


def paper_eq3(x: Tensor, y: Tensor, sigma: float | Tensor) -> Tensor:
    """Paper Eq. 3 as printed: (1 / (N^s N^aux)) sum_j sum_j' k(x_j, y_j'), a 0-d tensor.

    This is a *similarity* in (0, 1] (1 when every pair coincides). Sign convention in
    Lightman (`aux_loss: paper_eq3`): the value is used as printed, i.e. added to the
    inner loss and minimised, exactly as Eq. 4 adds lambda_2 * L_aux. Minimising it
    pushes the micro (x) and macro (y) features apart, the opposite of alignment;
    that is the point of keeping it, to compare with the default `mmd2`.
    """
    return gaussian_kernel(x, y, sigma).mean()


def median_heuristic(x: Tensor, y: Tensor) -> Tensor:
    """Bandwidth sigma = median distance ||a - b|| over distinct pairs of the pooled
    samples (Gretton et al. 2012). A detached 0-d tensor: a bandwidth, not a parameter."""
    _check_pair(x, y)
    z = torch.cat((x, y)).detach()  # (n + m, d)
    if z.shape[0] < 2:
        raise ValueError("the median heuristic needs at least two samples in all")
    i, j = torch.triu_indices(z.shape[0], z.shape[0], offset=1, device=z.device)
    dist = squared_distances(z, z)[i, j].sqrt()  # (P,) distinct pairs
    sigma = dist.median()
    if not sigma > 0:
        raise ValueError(
            "median heuristic: over half of the pairwise distances are 0 (collapsed features)"
        )
    return sigma


def median_bandwidths(x: Tensor, y: Tensor, multipliers: Sequence[float]) -> list[Tensor]:
    """Data-driven bandwidths σ_k = c_k · median ||a − b|| over distinct pairs of the pooled
    x ∪ y (`median_heuristic`), one per multiplier c_k; detached (bandwidths, not
    parameters, so no gradient flows through them)."""
    base = median_heuristic(x, y)
    return [c * base for c in multipliers]


def class_conditional(
    loss: Callable[[Tensor, Tensor], Tensor],
    x: Tensor,
    x_labels: Tensor,
    y: Tensor,
    y_labels: Tensor,
) -> Tensor:
    """Class-conditional alignment: (1 / |J|) Σ_{j ∈ J} loss(x[x_labels == j], y[y_labels == j]),
    J = the labels present on both sides (a y label absent from x_labels, e.g. -1 for an
    unpaired macro clip, is left out). x: (n, d), x_labels: (n,); y: (m, d), y_labels: (m,).
    A 0-d tensor; an error when no label is shared."""
    if x_labels.shape != (x.shape[0],) or y_labels.shape != (y.shape[0],):
        raise ValueError(
            f"labels must be one per sample: x {tuple(x.shape)} with labels "
            f"{tuple(x_labels.shape)}, y {tuple(y.shape)} with labels {tuple(y_labels.shape)}"
        )
    shared = [j for j in torch.unique(x_labels).tolist() if bool((y_labels == j).any())]
    if not shared:
        raise ValueError(
            "class-conditional L_aux: no class has samples on both sides (macro labels "
            f"{sorted(set(y_labels.tolist()))}); pair the macro clips with the ways "
            "(episode.aux_pairing=class) or use aux_align=marginal"
        )
    terms = [loss(x[x_labels == j], y[y_labels == j]) for j in shared]
    return torch.stack(terms).mean()

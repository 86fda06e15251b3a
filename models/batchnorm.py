"""Training-mode batch normalisation with a closed-form double backward.

Second-order meta-learning differentiates every batch-norm backward once more. PyTorch
2.13 builds that double backward (`batchnorm_double_backward`) from ~40 broadcast
tensor ops per layer, each writing a full-size temporary: in a LightmanNet meta-step at
64 px it was 42% of the CPU time (benchmarks/meta_step.py, torch.profiler). Here the
forward and the backward run PyTorch's fused kernels, and the double backward is the
closed form below: five per-channel means and two passes over full-size tensors.

Per channel, over its M = N·H·W values, with x̂ = (x − μ)·r, r = (σ² + ε)^(−1/2),
⟨·⟩ the mean over the M values, and g the gradient arriving at y = γ x̂ + β:
    backward:  dx = γ r (g − ⟨g⟩ − x̂ c),  dγ = M c,  dβ = M ⟨g⟩,   c = ⟨g x̂⟩.
Its backward, for cotangents a (of dx), a_γ (of dγ), a_β (of dβ), with d = ⟨a x̂⟩
(derivation: ∂x̂_j/∂x_i = r (δ_ij − 1/M − x̂_i x̂_j / M), ∂r/∂x_i = −r² x̂_i / M):
    ∂/∂g = γ r (a − ⟨a⟩ − x̂ d) + a_γ x̂ + a_β
    ∂/∂γ = M r (⟨a g⟩ − ⟨a⟩⟨g⟩ − c d)
    ∂/∂x = u (g − ⟨g⟩) + w (a − ⟨a⟩) + k x̂,
           u = a_γ r − γ r² d,  w = −γ r² c,
           k = −γ r² (⟨a g⟩ − ⟨a⟩⟨g⟩ − 3 c d) − a_γ r c.
`batch_norm_max_pool` fuses a following 2x2 max-pool (Conv4's norm -> pool): its
second-order graph keeps the pooled gradient, a quarter of g's values, and rebuilds g
(zero off the argmax positions) when it is needed, and ∂/∂(pooled gradient) is ∂/∂g
gathered at those positions, computed on the quarter alone.
tests/test_models.py checks both against PyTorch's own formulas and finite differences.
The double backward is itself not differentiable (a third derivative raises,
last_derivative.py): meta-
learning needs the second.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lightman.models.last_derivative import last_derivative
from lightman.models.maxpool import add_at, gather_at, scatter_to

_CHANNEL_DIMS = (0, 2, 3)  # of an (N, C, H, W) tensor: what the statistics pool over


def batch_norm_train(
    x: Tensor,
    weight: Tensor,
    bias: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    momentum: float,
    eps: float,
) -> Tensor:
    """Batch norm of x (N, C, H, W) with its own batch statistics (what
    `F.batch_norm(..., training=True)` computes, running statistics updated in place the
    same way when given), differentiable twice at the cost of fused kernels."""
    return _BatchNorm.apply(x, weight, bias, running_mean, running_var, momentum, eps)


def batch_norm_max_pool(
    x: Tensor,
    weight: Tensor,
    bias: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    momentum: float,
    eps: float,
) -> Tensor:
    """`F.max_pool2d(batch_norm_train(x, ...), 2)`: (N, C, H, W) -> (N, C, H // 2, W // 2),
    in one autograd node whose double backward keeps a quarter of the gradient's values."""
    return _BatchNormPool.apply(x, weight, bias, running_mean, running_var, momentum, eps)


def _per_channel(t: Tensor) -> Tensor:
    """A (C,) tensor shaped to broadcast over (N, C, H, W)."""
    return t.view(1, -1, 1, 1)


def _channel_sums(a: Tensor, x: Tensor, mean: Tensor, invstd: Tensor) -> tuple[Tensor, Tensor]:
    """(Σ a·(x − mean)·invstd, Σ a) per channel over (N, H, W): the fused reduction of
    PyTorch's batch-norm backward, which writes no full-size temporary."""
    _, dot, total = torch.ops.aten.native_batch_norm_backward(
        a, x, None, None, None, mean, invstd, True, 0.0, [False, True, True]
    )
    return dot, total


def _channel_dot(a: Tensor, b: Tensor) -> Tensor:
    """Σ a·b per channel over (N, H, W), by the same reduction with mean 0 and invstd 1."""
    zero = torch.zeros(a.shape[1], dtype=a.dtype, device=a.device)
    return _channel_sums(a, b, zero, torch.ones_like(zero))[0]


class _Coefficients:
    """The per-channel coefficients of the closed-form double backward (module docstring):
        ∂/∂g = (x − μ)·g_xc + g_const + a·g_a
        ∂/∂x = (x − μ)·x_xc + x_const + g·x_g + a·x_a,    ∂/∂γ = weight_grad
    from the saved forward (x's statistics, γ, Σ g x̂ and Σ g) and the cotangents: a's
    sums Σ a x̂ and Σ a, a_γ, a_β, and Σ a g."""

    def __init__(
        self,
        count: int,
        weight: Tensor,
        invstd: Tensor,
        g_xhat: Tensor,
        g_sum: Tensor,
        a_xhat: Tensor,
        a_sum: Tensor,
        a_weight: Tensor,
        a_bias: Tensor,
        ag_sum: Tensor,
    ):
        c, g_mean = g_xhat / count, g_sum / count  # ⟨g x̂⟩, ⟨g⟩
        d, a_mean = a_xhat / count, a_sum / count  # ⟨a x̂⟩, ⟨a⟩
        cov = ag_sum / count - a_mean * g_mean  # ⟨a g⟩ − ⟨a⟩⟨g⟩
        gr = weight * invstd  # γ r
        u = (a_weight - gr * d) * invstd
        w = -gr * invstd * c
        k = -gr * invstd * (cov - 3 * c * d) - a_weight * invstd * c
        self.g_xc, self.g_const, self.g_a = (
            _per_channel((a_weight - gr * d) * invstd),
            _per_channel(a_bias - gr * a_mean),
            _per_channel(gr),
        )
        self.x_xc, self.x_const = _per_channel(k * invstd), _per_channel(-u * g_mean - w * a_mean)
        self.x_g, self.x_a = _per_channel(u), _per_channel(w)
        self.weight_grad = count * invstd * (cov - c * d)

    def grad_g(self, x_centred: Tensor, a: Tensor) -> Tensor:
        """∂/∂g from x − μ and a (at every position, or gathered at some), in place on x_centred."""
        return x_centred.mul_(self.g_xc).add_(self.g_const).addcmul_(a, self.g_a)

    def grad_x(self, x_centred: Tensor, a: Tensor, g: Tensor | None) -> Tensor:
        """∂/∂x, in place on x_centred; without its g·x_g term if g is None."""
        out = x_centred.mul_(self.x_xc).add_(self.x_const).addcmul_(a, self.x_a)
        return out if g is None else out.addcmul_(g, self.x_g)


def _centred(x: Tensor, mean: Tensor) -> Tensor:
    return x - _per_channel(mean)


class _BatchNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, momentum, eps):
        y, mean, invstd = torch.ops.aten.native_batch_norm(
            x, weight, bias, running_mean, running_var, True, momentum, eps
        )
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.eps = eps
        return y

    @staticmethod
    def backward(ctx, g):
        x, weight, mean, invstd = ctx.saved_tensors
        dx, dw, db = _BatchNormBackward.apply(g, x, weight, mean, invstd, ctx.eps)
        return dx, dw, db, None, None, None, None


class _BatchNormBackward(torch.autograd.Function):
    """(g, x, γ) -> (dx, dγ, dβ) of batch norm; its backward is the closed form above."""

    @staticmethod
    def forward(ctx, g, x, weight, mean, invstd, eps):
        dx, dw, db = torch.ops.aten.native_batch_norm_backward(
            g, x, weight, None, None, mean, invstd, True, eps, [True, True, True]
        )
        # dw, db detached: a saved-tensor hook that keeps the outputs themselves would close
        # a reference cycle through this node (graph_memory.SavedBytes does keep them).
        ctx.save_for_backward(g, x, weight, mean, invstd, dw.detach(), db.detach())
        return dx, dw, db

    @staticmethod
    @last_derivative
    def backward(ctx, a, a_weight, a_bias):
        g, x, weight, mean, invstd, g_xhat, g_sum = ctx.saved_tensors
        coef = _Coefficients(
            x.numel() // x.shape[1],
            weight,
            invstd,
            g_xhat,
            g_sum,
            *_channel_sums(a, x, mean, invstd),
            a_weight,
            a_bias,
            _channel_dot(a, g),
        )
        grad_g = coef.grad_g(_centred(x, mean), a) if ctx.needs_input_grad[0] else None
        grad_x = coef.grad_x(_centred(x, mean), a, g) if ctx.needs_input_grad[1] else None
        return (
            grad_g,
            grad_x,
            coef.weight_grad if ctx.needs_input_grad[2] else None,
            None,
            None,
            None,
        )


class _BatchNormPool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, momentum, eps):
        y, mean, invstd = torch.ops.aten.native_batch_norm(
            x, weight, bias, running_mean, running_var, True, momentum, eps
        )
        out, index = F.max_pool2d(y, 2, return_indices=True)  # index: into each H*W plane
        ctx.save_for_backward(x, weight, mean, invstd, index.to(torch.int32))
        ctx.eps = eps
        return out

    @staticmethod
    def backward(ctx, grad):
        x, weight, mean, invstd, index = ctx.saved_tensors
        dx, dw, db = _BatchNormPoolBackward.apply(grad, x, weight, mean, invstd, index, ctx.eps)
        return dx, dw, db, None, None, None, None


class _BatchNormPoolBackward(torch.autograd.Function):
    """(pooled gradient, x, γ) -> (dx, dγ, dβ) of max_pool(batch_norm(x)); g, the gradient
    at the norm's output, is the pooled gradient scattered to the argmax positions."""

    @staticmethod
    def forward(ctx, grad, x, weight, mean, invstd, index, eps):
        g = scatter_to(grad, index, x.shape)
        dx, dw, db = torch.ops.aten.native_batch_norm_backward(
            g, x, weight, None, None, mean, invstd, True, eps, [True, True, True]
        )
        ctx.save_for_backward(grad, x, weight, mean, invstd, index, dw.detach(), db.detach())
        return dx, dw, db

    @staticmethod
    @last_derivative
    def backward(ctx, a, a_weight, a_bias):
        grad, x, weight, mean, invstd, index, g_xhat, g_sum = ctx.saved_tensors
        a_picked = gather_at(a, index)  # a at the argmax positions, where g lives
        coef = _Coefficients(
            x.numel() // x.shape[1],
            weight,
            invstd,
            g_xhat,
            g_sum,
            *_channel_sums(a, x, mean, invstd),
            a_weight,
            a_bias,
            _channel_dot(a_picked, grad),
        )
        grad_pooled = (
            coef.grad_g(_centred(gather_at(x, index), mean), a_picked)
            if ctx.needs_input_grad[0]
            else None
        )
        grad_x = None
        if ctx.needs_input_grad[1]:
            grad_x = add_at(
                coef.grad_x(_centred(x, mean), a, None), index, grad * coef.x_g
            )  # g·x_g, where g lives
        return (
            grad_pooled,
            grad_x,
            coef.weight_grad if ctx.needs_input_grad[2] else None,
            None,
            None,
            None,
            None,
        )

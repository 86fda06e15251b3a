"""The convolution that reads the clips: its input never needs a gradient.

A convolution's double backward in PyTorch keeps the incoming gradient map (the size of
its output) for every case. When the input is data, the backward computes only the
weight's gradient, dW = corr(x, grad), which is linear in grad with the adjoint
    ∂⟨dW, A⟩ / ∂grad = conv(x, A)        (A shaped like the weight)
so its second-order graph needs x alone: for Conv4's first layer, one full-resolution
map (64 channels at the input's size) less per pass of a meta-step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lightman.models.last_derivative import last_derivative


def input_conv(x: Tensor, weight: Tensor, padding: int) -> Tensor:
    """`F.conv2d(x, weight, padding=padding)` (no bias, stride 1) for an x that needs no
    gradient, differentiable twice in `weight` keeping only x."""
    if x.requires_grad:
        raise ValueError("input_conv is for inputs that need no gradient (the clips); use F.conv2d")
    return _InputConv.apply(x, weight, padding)


class _InputConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, padding):
        ctx.save_for_backward(x, weight)
        ctx.padding = padding
        return F.conv2d(x, weight, padding=padding)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        return None, _WeightGrad.apply(grad, x, weight, ctx.padding), None


class _WeightGrad(torch.autograd.Function):
    """grad -> dW = corr(x, grad); its backward is conv(x, A)."""

    @staticmethod
    def forward(ctx, grad, x, weight, padding):
        ctx.save_for_backward(x)
        ctx.padding = padding
        (_, dw, _) = torch.ops.aten.convolution_backward(
            grad,
            x,
            weight,
            None,
            [1, 1],
            [padding, padding],
            [1, 1],
            False,
            [0, 0],
            1,
            [False, True, False],
        )
        return dw

    @staticmethod
    @last_derivative
    def backward(ctx, a):
        (x,) = ctx.saved_tensors
        return F.conv2d(x, a, padding=ctx.padding), None, None, None

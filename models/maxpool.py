"""2x2 max-pooling whose autograd graph keeps only 32-bit argmax indices.

`F.max_pool2d` saves its whole input (a full-resolution float map) and 64-bit indices of
the output size for its backward, and a second-order meta-step keeps both alive until
the outer gradient is known. The backward of a max-pool only scatters the incoming
gradient to the argmax positions, and the backward of that scatter only gathers from
them, so the indices are all either needs: stored as int32, they take a quarter of the
bytes of the saved input alone. Values and gradients are PyTorch's own (same kernel,
same argmax); tests/test_models.py checks both, to second order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lightman.models.last_derivative import last_derivative


def max_pool2x2(x: Tensor) -> Tensor:
    """2x2 max-pool with stride 2 of x (N, C, H, W) -> (N, C, H // 2, W // 2), as
    `F.max_pool2d(x, 2)`, differentiable twice with int32 indices as its only saved state."""
    return _MaxPool.apply(x)


def max_pool_frames(x: Tensor) -> Tensor:
    """`max_pool2x2` of every frame of a clip tensor: (B, T, C, H, W) -> (B, T, C, H/2, W/2)."""
    return max_pool2x2(x.flatten(0, 1)).unflatten(0, x.shape[:2])


def scatter_to(values: Tensor, index: Tensor, size: torch.Size) -> Tensor:
    """values (N, C, h, w) placed at `index` (each into its H*W plane) of an (N, C, H, W)
    zero map: the max-pool's backward."""
    return F.max_unpool2d(values, index.long(), 2, output_size=size[-2:])


def add_at(t: Tensor, index: Tensor, values: Tensor) -> Tensor:
    """t (N, C, H, W) += `scatter_to(values, index, t.shape)`, in place, touching only the
    indexed positions."""
    t.flatten(2).scatter_add_(2, index.long().flatten(2), values.flatten(2))
    return t


def gather_at(t: Tensor, index: Tensor) -> Tensor:
    """t (N, C, H, W) read at `index` (N, C, h, w): the backward of `scatter_to`."""
    return t.flatten(2).gather(2, index.long().flatten(2)).view(index.shape)


class _MaxPool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        out, index = F.max_pool2d(x, 2, return_indices=True)
        ctx.save_for_backward(index.to(torch.int32))
        ctx.input_size = x.shape
        return out

    @staticmethod
    def backward(ctx, grad):
        (index,) = ctx.saved_tensors
        return _Scatter.apply(grad, index, ctx.input_size)


class _Scatter(torch.autograd.Function):
    @staticmethod
    def forward(ctx, values, index, size):
        ctx.save_for_backward(index)
        return scatter_to(values, index, size)

    @staticmethod
    @last_derivative
    def backward(ctx, grad):
        (index,) = ctx.saved_tensors
        return gather_at(grad, index), None, None

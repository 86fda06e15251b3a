"""Batch normalisation that stays correct inside meta-learning inner loops.

Every tensor normalised here is a *clip tensor* (B, T, C, H, W): B clips, T frames
(or time steps after the 3D convolution, or 1 for clip-level maps), C channels.
Statistics are per channel; what they are pooled over is the mode
(`ModelConfig.bn_mode`):

- ``task`` (default, MAML's usual transductive choice): always the current batch,
  over (B, T, H, W). Inside the inner loop the batch is the task's support set; at
  query time it is the task's query set. No running statistics exist, so nothing
  leaks from one task to the next.
- ``clip``: each clip on its own, over (T, H, W). A query clip's output never
  depends on the other clips in its batch.
- ``running``: standard BN. In training mode it normalises with the batch (as
  ``task``); in eval mode with the running statistics. The running statistics are
  updated only when the module is in training mode *and* the caller passes
  ``update_stats=True`` (the learner does this on its outer/query pass), so a
  ``torch.func.functional_call`` never mutates buffers unless asked. Momentum 0.1
  and the unbiased variance for the running estimate, as ``torch.nn.BatchNorm``.
  The update is an in-place write to the buffers, so ask for it outside
  ``torch.func.vmap``/``grad`` transforms.

All modes keep a learnable affine weight and bias. Everything is built from
differentiable tensor ops, so second-order gradients flow through it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lightman.models.batchnorm import batch_norm_max_pool, batch_norm_train
from lightman.models.maxpool import max_pool_frames

BN_MODES = ("task", "clip", "running")

# Dimensions of a (B, T, C, H, W) tensor that the statistics are pooled over.
_REDUCE_DIMS = {"task": (0, 1, 3, 4), "clip": (1, 3, 4), "running": (0, 1, 3, 4)}


def moments(x: Tensor, dims: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    """Mean and biased variance of `x` over `dims`, kept as size-1 dims for broadcasting."""
    var, mean = torch.var_mean(x, dims, correction=0, keepdim=True)
    return mean, var


def normalize(
    x: Tensor, mean: Tensor, var: Tensor, weight: Tensor, bias: Tensor, eps: float
) -> Tensor:
    """y = (x - mean) / sqrt(var + eps) * weight + bias, per channel.

    x: (B, T, C, H, W); mean, var broadcastable to x; weight, bias: (C,).
    Folded into one scale and one shift first, so only two ops touch the big tensor.
    """
    scale = torch.rsqrt(var + eps) * weight.view(1, 1, -1, 1, 1)  # (.., C, 1, 1)
    shift = bias.view(1, 1, -1, 1, 1) - mean * scale
    return x * scale + shift


class ClipNorm(nn.Module):
    """Per-channel normalisation of clip tensors (B, T, C, H, W), in one of `BN_MODES`."""

    def __init__(self, channels: int, mode: str = "task", eps: float = 1e-5, momentum: float = 0.1):
        super().__init__()
        if mode not in BN_MODES:
            raise ValueError(f"bn_mode must be one of {list(BN_MODES)}, got {mode!r}")
        self.mode = mode
        self.eps = eps
        self.momentum = momentum
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        if mode == "running":
            self.register_buffer("running_mean", torch.zeros(channels))
            self.register_buffer("running_var", torch.ones(channels))

    def extra_repr(self) -> str:
        return f"{self.weight.numel()}, mode={self.mode}"

    def forward(self, x: Tensor, update_stats: bool = False, pool: bool = False) -> Tensor:
        """x (B, T, C, H, W) normalised; with `pool`, then 2x2 max-pooled per frame to
        (B, T, C, H/2, W/2), fused with the normalisation where it uses batch statistics."""
        if x.dim() != 5 or x.shape[2] != self.weight.numel():
            raise ValueError(
                f"ClipNorm expects (B, T, C={self.weight.numel()}, H, W), got {tuple(x.shape)}"
            )
        if self.mode == "running" and not self.training:
            mean = self.running_mean.view(1, 1, -1, 1, 1)
            var = self.running_var.view(1, 1, -1, 1, 1)
            return pooled(normalize(x, mean, var, self.weight, self.bias, self.eps), pool)
        dims = _REDUCE_DIMS[self.mode]
        count = 1
        for d in dims:
            count *= x.shape[d]
        if count < 2:
            raise ValueError(
                f"ClipNorm(mode={self.mode!r}) on {tuple(x.shape)}: one value per channel to "
                "normalise over, so the output would be a constant; use more frames, a larger "
                "image_size, or (task/running mode) more clips per batch"
            )
        if self.mode == "clip":
            mean, var = moments(x, dims)
            return pooled(normalize(x, mean, var, self.weight, self.bias, self.eps), pool)
        # task / running (training): batch statistics over (B, T, H, W) with PyTorch's
        # fused kernels and a closed-form double backward (batchnorm.py): the same numbers
        # as moments + normalize, and a second-order meta-step ~1.7x faster than with
        # F.batch_norm's double backward (benchmarks/meta_step.py).
        b, t = x.shape[:2]
        track = self.mode == "running" and update_stats
        y = (batch_norm_max_pool if pool else batch_norm_train)(
            x.flatten(0, 1),
            self.weight,
            self.bias,
            self.running_mean if track else None,
            self.running_var if track else None,
            self.momentum,
            self.eps,
        )
        return y.unflatten(0, (b, t))


def pooled(x: Tensor, pool: bool) -> Tensor:
    """x (B, T, C, H, W), 2x2 max-pooled per frame if `pool`."""
    return max_pool_frames(x) if pool else x

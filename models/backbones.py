"""The shared backbone g of LightmanNet: a 2D encoder per frame, then one 3D convolution.

Paper 4.1: "the same 2DCNN backbone network for feature extraction, which can be any
image classification network, e.g. Conv4, VGG, ResNet, DenseNet ... we use the simple
and lightweight Conv4 with the last fully convolutional layer removed ... a single 3D
convolutional layer with kernel size 6 along the time dimension". Paper 5.1: each
Conv4 block is conv3x3 -> batch norm -> ReLU -> 2x2 max-pool.

Interpretation, written down once:
- "last fully convolutional layer removed": Conv4 as in MAML [10] ends with a
  classifier on the flattened feature maps; g keeps the four conv blocks and drops
  that classifier, so g's output is the 4th block's feature maps of every frame.
- The 3D convolution runs over the M stacked frame maps (B, C, M, h, w) with kernel
  (6, 3, 3): 6 in time, unpadded (so M >= 6 and M - 5 time steps come out), 3x3 in
  space, padded by 1 so h, w are kept. The spatial 3x3 follows the spatio-temporal
  kernels of the 3DCNN the paper cites [68]. It maps the encoder's channels to
  `hidden` channels for every encoder, so the embedding width D = hidden and the
  heads are the same across the Table 3 ablation. Then norm, ReLU, and a global
  average over (time, h, w) give the clip embedding (B, D).

Every encoder has four stages, each halving the resolution, so the stage maps are at
1/2, 1/4, 1/8 and 1/16 of the input (64 px -> 4x4, 112 px -> 7x7; 16 px, for tests,
-> 1x1). The decoder head (heads.py) uses them as skip connections.

Tensors between layers are clip tensors (B, T, C, H, W); 2D layers run per frame
through `per_frame`. Every module takes `update_stats` and passes it to its norms
(see norm.py, mode ``running``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightman.models.input_conv import input_conv
from lightman.models.maxpool import max_pool_frames
from lightman.models.norm import ClipNorm

BACKBONES = ("conv4", "resnet", "vgg", "densenet")  # the per-frame encoders of ClipBackbone
TWO_BRANCH = ("miacnet", "miacnet_action")  # MIACNet and its one-branch ablation (miacnet.py)
TEMPORAL_KERNEL = 6  # paper 4.1: "kernel size 6 along the time dimension"


def per_frame(fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """Apply a 2D op to every frame: (B, T, C, H, W) -> (B, T, C', H', W')."""
    b, t = x.shape[:2]
    return fn(x.flatten(0, 1)).unflatten(0, (b, t))


def conv_frames(conv: nn.Conv2d, x: Tensor) -> Tensor:
    """A bias-free, stride-1 `conv` per frame; on the clips themselves (no gradient
    needed) with a second-order graph that keeps only them (input_conv.py)."""
    if x.requires_grad:
        return per_frame(conv, x)
    return per_frame(lambda f: input_conv(f, conv.weight, conv.padding[0]), x)


def conv3x3(cin: int, cout: int) -> nn.Conv2d:
    # No bias: every conv here is followed by a norm with its own shift.
    return nn.Conv2d(cin, cout, 3, padding=1, bias=False)


class ConvBlock(nn.Module):
    """conv3x3 -> norm -> ReLU [-> 2x2 max-pool] (paper 5.1).

    Computed as norm -> max-pool -> ReLU: ReLU is monotone, so it commutes with the
    max-pool (same values, same gradients) and then runs on a quarter of the values,
    and the norm and the pool run as one fused op (norm.py, batchnorm.py)."""

    def __init__(self, cin: int, cout: int, bn_mode: str, pool: bool = True):
        super().__init__()
        self.conv = conv3x3(cin, cout)
        self.norm = ClipNorm(cout, bn_mode)
        self.pool = pool

    def forward(self, x: Tensor, update_stats: bool = False) -> Tensor:
        return F.relu(self.norm(conv_frames(self.conv, x), update_stats, pool=self.pool))


class VGGStage(nn.Module):
    """Two conv3x3-norm-ReLU layers then a 2x2 max-pool (VGG's stage, narrow)."""

    def __init__(self, cin: int, cout: int, bn_mode: str):
        super().__init__()
        self.first = ConvBlock(cin, cout, bn_mode, pool=False)
        self.second = ConvBlock(cout, cout, bn_mode, pool=True)

    def forward(self, x: Tensor, update_stats: bool = False) -> Tensor:
        return self.second(self.first(x, update_stats), update_stats)


class ResidualStage(nn.Module):
    """ResNet-12's stage: three conv3x3-norm layers (ReLU between), a 1x1 conv-norm
    shortcut, ReLU after the sum, then a 2x2 max-pool."""

    def __init__(self, cin: int, cout: int, bn_mode: str):
        super().__init__()
        self.convs = nn.ModuleList([conv3x3(cin, cout), conv3x3(cout, cout), conv3x3(cout, cout)])
        self.norms = nn.ModuleList([ClipNorm(cout, bn_mode) for _ in range(3)])
        self.shortcut = nn.Conv2d(cin, cout, 1, bias=False)
        self.shortcut_norm = ClipNorm(cout, bn_mode)

    def forward(self, x: Tensor, update_stats: bool = False) -> Tensor:
        out = x
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            out = norm(per_frame(conv, out), update_stats)
            if i < 2:
                out = F.relu(out)
        skip = self.shortcut_norm(per_frame(self.shortcut, x), update_stats)
        return F.relu(max_pool_frames(out + skip))  # = max_pool(relu(.)): they commute


class DenseStage(nn.Module):
    """A dense block (pre-activation norm-ReLU-conv3x3 layers, each adding `growth`
    channels to the concatenation) followed by a transition (norm-ReLU-conv1x1 to
    half the channels, 2x2 average pool), as in DenseNet [18]."""

    def __init__(self, cin: int, growth: int, layers: int, bn_mode: str):
        super().__init__()
        widths = [cin + i * growth for i in range(layers + 1)]
        self.norms = nn.ModuleList([ClipNorm(w, bn_mode) for w in widths[:-1]])
        self.convs = nn.ModuleList([conv3x3(w, growth) for w in widths[:-1]])
        self.transition_norm = ClipNorm(widths[-1], bn_mode)
        self.out_channels = widths[-1] // 2
        self.transition = nn.Conv2d(widths[-1], self.out_channels, 1, bias=False)

    def forward(self, x: Tensor, update_stats: bool = False) -> Tensor:
        for norm, conv in zip(self.norms, self.convs):
            new = per_frame(conv, F.relu(norm(x, update_stats)))  # (B, T, growth, H, W)
            x = torch.cat((x, new), dim=2)
        x = per_frame(self.transition, F.relu(self.transition_norm(x, update_stats)))
        return per_frame(lambda f: F.avg_pool2d(f, 2), x)


class FrameEncoder(nn.Module):
    """A 2D encoder applied to every frame: four stages, each halving H and W.

    `channels[s]` is the width of stage s's output.
    """

    def __init__(self, stages: list[nn.Module], channels: tuple[int, ...]):
        super().__init__()
        if len(stages) != 4 or len(channels) != 4:
            raise ValueError("a FrameEncoder has exactly four stages")
        self.stages = nn.ModuleList(stages)
        self.channels = channels

    def forward(self, x: Tensor, update_stats: bool = False) -> tuple[Tensor, ...]:
        """x: (B, M, C, H, W) -> the four stage maps, (B, M, channels[s], H/2^(s+1), W/2^(s+1))."""
        maps = []
        for stage in self.stages:
            x = stage(x, update_stats)
            maps.append(x)
        return tuple(maps)


def conv4_encoder(cin: int, hidden: int, bn_mode: str) -> FrameEncoder:
    """Conv4 [10]: four conv3x3(hidden)-norm-ReLU-maxpool blocks, classifier removed."""
    widths = (hidden,) * 4
    ins = (cin,) + widths[:-1]
    return FrameEncoder([ConvBlock(i, o, bn_mode) for i, o in zip(ins, widths)], widths)


def vgg_encoder(cin: int, hidden: int, bn_mode: str) -> FrameEncoder:
    """VGG-like: four stages of two convs each, widths hidden x (1, 2, 4, 4)."""
    widths = (hidden, 2 * hidden, 4 * hidden, 4 * hidden)
    ins = (cin,) + widths[:-1]
    return FrameEncoder([VGGStage(i, o, bn_mode) for i, o in zip(ins, widths)], widths)


def resnet_encoder(cin: int, hidden: int, bn_mode: str) -> FrameEncoder:
    """ResNet-12-like: four residual stages, widths hidden x (1, 2, 4, 4)."""
    widths = (hidden, 2 * hidden, 4 * hidden, 4 * hidden)
    ins = (cin,) + widths[:-1]
    return FrameEncoder([ResidualStage(i, o, bn_mode) for i, o in zip(ins, widths)], widths)


def densenet_encoder(cin: int, hidden: int, bn_mode: str, layers: int = 4) -> FrameEncoder:
    """DenseNet-like: a conv3x3-norm-ReLU-maxpool stem (hidden wide), then three dense
    blocks of `layers` layers with growth hidden // 2, each closed by a transition."""
    growth = max(1, hidden // 2)
    stages: list[nn.Module] = [ConvBlock(cin, hidden, bn_mode)]
    widths = [hidden]
    for _ in range(3):
        stage = DenseStage(widths[-1], growth, layers, bn_mode)
        stages.append(stage)
        widths.append(stage.out_channels)
    return FrameEncoder(stages, tuple(widths))


_ENCODERS = {
    "conv4": conv4_encoder,
    "vgg": vgg_encoder,
    "resnet": resnet_encoder,
    "densenet": densenet_encoder,
}


def build_encoder(name: str, cin: int, hidden: int, bn_mode: str) -> FrameEncoder:
    if name not in _ENCODERS:
        raise ValueError(f"backbone must be one of {list(BACKBONES)}, got {name!r}")
    return _ENCODERS[name](cin, hidden, bn_mode)


class TemporalConv(nn.Module):
    """The single 3D convolution over the stacked frame maps (paper 4.1), norm, ReLU.

    (B, M, C, h, w) -> (B, M - 5, D, h, w); kernel (6, 3, 3), spatial padding 1.
    """

    def __init__(self, cin: int, cout: int, bn_mode: str):
        super().__init__()
        self.conv = nn.Conv3d(cin, cout, (TEMPORAL_KERNEL, 3, 3), padding=(0, 1, 1), bias=False)
        self.norm = ClipNorm(cout, bn_mode)

    def forward(self, x: Tensor, update_stats: bool = False) -> Tensor:
        if x.shape[1] < TEMPORAL_KERNEL:
            raise ValueError(
                f"the temporal 3D convolution has kernel {TEMPORAL_KERNEL} in time and needs "
                f"M >= {TEMPORAL_KERNEL} frames per clip, got M={x.shape[1]} "
                f"(shape {tuple(x.shape)})"
            )
        y = self.conv(x.transpose(1, 2)).transpose(1, 2)  # (B, M-5, D, h, w)
        return F.relu(self.norm(y, update_stats))


class ClipFeatures(NamedTuple):
    """What g computes for a batch of clips; heads pick what they need."""

    embedding: Tensor  # (B, D): temporal map averaged over (time, h, w)
    stages: tuple[Tensor, ...]  # four per-frame stage maps (B, M, C_s, H_s, W_s)
    temporal: Tensor  # (B, M - 5, D, h, w): the 3D convolution's output
    input_hw: tuple[int, int]  # (H, W) of the input frames


class ClipBackbone(nn.Module):
    """g: per-frame encoder, then the temporal 3D convolution, then global pooling."""

    def __init__(self, name: str, cin: int, hidden: int, bn_mode: str):
        super().__init__()
        self.encoder = build_encoder(name, cin, hidden, bn_mode)
        self.temporal = TemporalConv(self.encoder.channels[-1], hidden, bn_mode)
        self.embed_dim = hidden
        self.stage_channels = self.encoder.channels

    def forward(self, x: Tensor, update_stats: bool = False) -> ClipFeatures:
        """x: (B, M, C, H, W) -> ClipFeatures."""
        stages = self.encoder(x, update_stats)
        temporal = self.temporal(stages[-1], update_stats)  # (B, M-5, D, h, w)
        embedding = temporal.mean(dim=(1, 3, 4))  # (B, D)
        return ClipFeatures(embedding, stages, temporal, (x.shape[-2], x.shape[-1]))

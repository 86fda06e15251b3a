"""The two heads on the shared backbone: h_pri classifies, h_aux embeds for L_aux.

h_pri is a linear layer on the clip embedding (B, D) -> (B, ways); its logits feed
the cross-entropy of paper Eq. 2. h_aux produces the (B, aux_dim) features on which
the alignment loss (Eq. 3; mmd.py) compares micro- and macro-expression clips. Two
kinds (`ModelConfig.aux_head`):

- ``embed`` (default): a small MLP, Linear(D, D) -> ReLU -> Linear(D, aux_dim).
- ``decoder``: the paper's decoder, "following [31, 47] ... upsamples the features
  from low resolution to input resolution, a convolutional layer is added to output
  three different scales of the feature maps" (4.1). Our reading: a U-Net-like [47]
  decoder on the temporally fused backbone maps. The 3D convolution's output,
  averaged over time, is the 1/16 bottleneck; the encoder's 1/8, 1/4, 1/2 stage maps,
  averaged over the M frames, are the skip connections. Each step upsamples x2
  (nearest), concatenates the skip and applies conv3x3-norm-ReLU; a last step reaches
  the input resolution (no skip there). As in the multi-scale outputs of [31], an
  output conv3x3 (+ sigmoid) at each of the three finest levels (1/4, 1/2, 1/1) gives
  three feature maps of aux_dim channels. Since L_aux compares vectors, the aux
  output is the concatenation of the three maps' global averages, projected by a
  linear layer to aux_dim.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightman.models.backbones import ClipFeatures, ConvBlock, per_frame

AUX_HEADS = ("embed", "decoder")


class EmbedHead(nn.Module):
    """h_aux = MLP on the clip embedding: (B, D) -> (B, aux_dim)."""

    def __init__(self, dim: int, aux_dim: int):
        super().__init__()
        self.hidden = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, aux_dim)

    def forward(self, feats: ClipFeatures, update_stats: bool = False) -> Tensor:
        return self.out(F.relu(self.hidden(feats.embedding)))


def upsample(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Nearest-neighbour resize of clip tensors (B, T, C, H, W) to (H, W) = size."""
    return per_frame(lambda f: F.interpolate(f, size=tuple(size), mode="nearest"), x)


class DecoderHead(nn.Module):
    """h_aux = U-Net-like decoder with three output scales (see the module docstring)."""

    def __init__(self, stage_channels: tuple[int, ...], dim: int, aux_dim: int, bn_mode: str):
        super().__init__()
        c1, c2, c3, _ = stage_channels
        # In and out widths of the four upsampling steps: to 1/8, 1/4, 1/2, 1/1.
        self.steps = nn.ModuleList(
            [
                ConvBlock(dim + c3, c3, bn_mode, pool=False),
                ConvBlock(c3 + c2, c2, bn_mode, pool=False),
                ConvBlock(c2 + c1, c1, bn_mode, pool=False),
                ConvBlock(c1, c1, bn_mode, pool=False),
            ]
        )
        self.outputs = nn.ModuleList([nn.Conv2d(c, aux_dim, 3, padding=1) for c in (c2, c1, c1)])
        self.project = nn.Linear(3 * aux_dim, aux_dim)

    def forward(self, feats: ClipFeatures, update_stats: bool = False) -> Tensor:
        # Temporal fusion: average over frames, kept as a length-1 time axis.
        skips = [s.mean(dim=1, keepdim=True) for s in feats.stages[:3]]  # (B, 1, C_s, H_s, W_s)
        x = feats.temporal.mean(dim=1, keepdim=True)  # (B, 1, D, h, w) at 1/16
        targets = (skips[2], skips[1], skips[0], None)  # 1/8, 1/4, 1/2, input resolution
        pooled = []
        for i, (step, skip) in enumerate(zip(self.steps, targets)):
            size = feats.input_hw if skip is None else skip.shape[-2:]
            x = upsample(x, size)
            if skip is not None:
                x = torch.cat((x, skip), dim=2)
            x = step(x, update_stats)  # (B, 1, C, H_i, W_i)
            if i >= 1:
                # (B, 1, aux_dim, H_i, W_i): one of the three output scales
                scale = torch.sigmoid(per_frame(self.outputs[i - 1], x))
                pooled.append(scale.mean(dim=(1, 3, 4)))  # (B, aux_dim)
        return self.project(torch.cat(pooled, dim=1))  # (B, 3 * aux_dim) -> (B, aux_dim)


def build_aux_head(
    kind: str, stage_channels: tuple[int, ...], dim: int, aux_dim: int, bn_mode: str
) -> nn.Module:
    if kind == "embed":
        return EmbedHead(dim, aux_dim)
    if kind == "decoder":
        return DecoderHead(stage_channels, dim, aux_dim, bn_mode)
    raise ValueError(f"aux_head must be one of {list(AUX_HEADS)}, got {kind!r}")

"""MIACNet: the two-branch micro-action network of MA2MI, as a backbone g (docs/ma2mi.md).

MA2MI's text (Li, Niu, Zhao, arXiv 2405.16451; only its abstract is public) says MIACNet
"decouples facial position features and facial action features" with two branches. Where
it is silent we follow its first author's earlier two-branch network, MMNet (IJCAI 2022,
public code), and write every choice down here:

- Action branch, on the motion: the apex frame minus the onset frame (MMNet: `x5 - x1`).
  The clips hold M frames sampled onset -> offset, and the sampled frames need not contain
  the annotated apex, so the apex is the sampled frame farthest from neutral, neutral
  being the onset -> offset blend (the "diff" apex estimate of tasks/preprocess.py, on the
  sampled frames; `apex_motion`). A stem (conv3x3-norm-ReLU-2x2 max-pool, MMNet: a stride-2
  conv) then four CA blocks (MMNet's `CABlock`): conv3x3 (stride 1, then 2, 2, 2) -> norm
  -> ReLU -> conv1x1 -> norm, a residual shortcut, ReLU; then a spatial attention map
  a = sigmoid(conv1x1([mean over channels, max over channels])), multiplied by the previous
  block's map after a 3x3 stride-2 max-pool (the map is carried forward), and out = out * a.
  MMNet normalises the 1-channel map with batch norm; we give its 1x1 conv a bias instead,
  so the map of a clip never depends on the other clips of its batch. Widths are all
  `hidden` (MMNet: 128, 128, 256, 512), so D = hidden as for Conv4. Stage maps are at 1/2,
  1/4, 1/8, 1/16 of the input, as ClipBackbone's.
- Position branch, on the onset frame only (MMNet's position calibration module): the
  onset resized (area average) to the action branch's last map size h x w = H/16 x W/16
  (MMNet: 224 px -> 14 x 14), one token per cell projected to D (patch size 1), plus a
  learned position embedding, two pre-norm transformer blocks (MMNet: depth 2, MLP ratio
  4, GELU, LayerNorm), a final LayerNorm, back to a (D, h, w) map. Attention is written
  out with matmuls and softmax so it is twice differentiable (meta-gradients).
- Fusion: the position map added to the last action map (MMNet: `x = x + POS`). MMNet
  then flattens the fused map into its linear classifier, so where a motion happens
  matters; a global average would turn the position map into one bias per clip. We keep
  the flatten: embedding = Linear(D*h*w -> D)(flatten(norm(fused))), and h_pri, a linear
  layer on it, is MMNet's flatten-classifier factorised through width D. The norm (ours,
  `bn_mode` as everywhere) is there because the attention maps multiply (four sigmoids
  shrink the action map ~16x) and the position map varies little between faces, so without
  it the embeddings of different clips differed by ~3% of their size and one few-shot
  inner step could not tell them apart (measured: constant predictions); ClipBackbone ends
  with a norm too.

`miacnet_action` is the one-branch ablation: the same action branch, no position branch.

Output: `ClipFeatures` as ClipBackbone's, so every head and learner works: the stage maps
and the fused map carry a time axis of length 1 (one motion image per clip).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightman.models.backbones import ClipFeatures, ConvBlock, per_frame
from lightman.models.norm import ClipNorm

POSITION_DEPTH = 2  # MMNet: VisionTransformer_POS(depth=2)
MLP_RATIO = 4  # MMNet: mlp_ratio=4
REDUCTION = 16  # input -> last map: stem /2, then three stride-2 CA blocks


def attention_heads(dim: int) -> int:
    """MMNet uses 4 heads; fewer when D is not a multiple of 4."""
    return next(h for h in (4, 2, 1) if dim % h == 0)


def apex_motion(x: Tensor) -> Tensor:
    """x (B, M, C, H, W) -> apex - onset (B, 1, C, H, W). The apex is the frame 0 < t < M-1
    farthest from neutral, where neutral at t is the blend (1 - w)·onset + w·offset,
    w = t / (M - 1): the "diff" estimate of tasks/preprocess.py (motion_scores with its
    offset blend, without the blur). The blend cancels slow drift (illumination, head pose):
    without it the last sampled frame was the apex of 241 of the demo's 246 micro clips, and
    MIACNet's action branch saw offset - onset, with the expression gone. Ties: the
    earliest; with M = 2 the apex is frame 1. A function of x alone."""
    b, m = x.shape[:2]
    if m <= 2:
        return x[:, 1:2] - x[:, :1]
    w = torch.linspace(0.0, 1.0, m, dtype=x.dtype, device=x.device).view(1, m, 1, 1, 1)
    neutral = (1 - w) * x[:, :1] + w * x[:, -1:]  # (B, M, C, H, W)
    score = (x[:, 1:-1] - neutral[:, 1:-1]).abs().mean(dim=(2, 3, 4))  # (B, M-2)
    apex = score.argmax(dim=1) + 1  # (B,)
    return (x[torch.arange(b, device=x.device), apex] - x[:, 0]).unsqueeze(1)


class CABlock(nn.Module):
    """MMNet's CA block on clip tensors (B, T, C, H, W): residual conv3x3-conv1x1, then a
    spatial attention map multiplied by the carried-forward map of the previous block."""

    def __init__(self, cin: int, cout: int, stride: int, bn_mode: str):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.norm1 = ClipNorm(cout, bn_mode)
        self.conv2 = nn.Conv2d(cout, cout, 1, bias=False)
        self.norm2 = ClipNorm(cout, bn_mode)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Conv2d(cin, cout, 1, stride=stride, bias=False)
            self.shortcut_norm = ClipNorm(cout, bn_mode)
        self.attn = nn.Conv2d(2, 1, 1)  # [mean, max] over channels -> one map

    def forward(
        self, x: Tensor, prior: Tensor | None, update_stats: bool = False
    ) -> tuple[Tensor, Tensor]:
        """x (B, T, C, H, W), prior (B, T, 1, H', W') or None -> (out, its attention map)."""
        out = F.relu(self.norm1(per_frame(self.conv1, x), update_stats))
        out = self.norm2(per_frame(self.conv2, out), update_stats)
        skip = x
        if self.shortcut is not None:
            skip = self.shortcut_norm(per_frame(self.shortcut, x), update_stats)
        out = F.relu(out + skip)
        desc = torch.cat((out.mean(dim=2, keepdim=True), out.amax(dim=2, keepdim=True)), dim=2)
        a = torch.sigmoid(per_frame(self.attn, desc))  # (B, T, 1, H, W)
        if prior is not None:
            a = a * prior
        return out * a, a


def carry(a: Tensor) -> Tensor:
    """The attention map handed to the next (stride-2) block: 3x3 stride-2 max-pool (MMNet)."""
    return per_frame(lambda f: F.max_pool2d(f, 3, stride=2, padding=1), a)


class ActionBranch(nn.Module):
    """Stem then four CA blocks on the motion image; the four block outputs are the stages."""

    def __init__(self, cin: int, hidden: int, bn_mode: str):
        super().__init__()
        self.stem = ConvBlock(cin, hidden, bn_mode, pool=True)
        self.blocks = nn.ModuleList([CABlock(hidden, hidden, s, bn_mode) for s in (1, 2, 2, 2)])

    def forward(self, motion: Tensor, update_stats: bool = False) -> tuple[Tensor, ...]:
        """motion (B, 1, C, H, W) -> four maps (B, 1, hidden, H/2^(s+1), W/2^(s+1))."""
        x = self.stem(motion, update_stats)
        maps, prior = [], None
        for i, block in enumerate(self.blocks):
            x, a = block(x, prior, update_stats)
            maps.append(x)
            prior = carry(a) if i + 1 < len(self.blocks) else None
        return tuple(maps)


class TransformerBlock(nn.Module):
    """Pre-norm multi-head self-attention and MLP, each with a residual (ViT / MMNet)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.fc1 = nn.Linear(dim, MLP_RATIO * dim)
        self.fc2 = nn.Linear(MLP_RATIO * dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        """x (B, N, D) -> (B, N, D)."""
        b, n, d = x.shape
        qkv = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, d // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, heads, N, D/heads)
        weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(d // self.heads), dim=-1)
        x = x + self.proj((weights @ v).transpose(1, 2).reshape(b, n, d))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class PositionBranch(nn.Module):
    """The onset frame at h x w, one token per cell, learned position embeddings, two
    transformer blocks -> a (B, D, h, w) position map."""

    def __init__(self, cin: int, dim: int, hw: int):
        super().__init__()
        self.hw = hw
        self.embed = nn.Linear(cin, dim)  # patch size 1 (MMNet: a 1x1 projection)
        self.pos = nn.Parameter(torch.randn(1, hw * hw, dim) * 0.02)  # MMNet: trunc normal 0.02
        self.blocks = nn.ModuleList(
            [TransformerBlock(dim, attention_heads(dim)) for _ in range(POSITION_DEPTH)]
        )
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, onset: Tensor) -> Tensor:
        """onset (B, C, H, W) -> (B, D, h, w)."""
        small = F.adaptive_avg_pool2d(onset, (self.hw, self.hw))  # (B, C, h, w)
        tokens = self.embed(small.flatten(2).transpose(1, 2)) + self.pos  # (B, h*w, D)
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens).transpose(1, 2).unflatten(2, (self.hw, self.hw))


class MIACNet(nn.Module):
    """g for `backbone=miacnet` (two branches) or `miacnet_action` (action branch only)."""

    def __init__(self, cin: int, hidden: int, image_size: int, bn_mode: str, position: bool):
        super().__init__()
        hw = image_size // REDUCTION
        self.action = ActionBranch(cin, hidden, bn_mode)
        self.position = PositionBranch(cin, hidden, hw) if position else None
        self.norm = ClipNorm(hidden, bn_mode)
        self.project = nn.Linear(hidden * hw * hw, hidden)
        self.embed_dim = hidden
        self.stage_channels = (hidden,) * 4

    def forward(self, x: Tensor, update_stats: bool = False) -> ClipFeatures:
        """x: clips (B, M, C, H, W) -> features of (onset = frame 0, motion = apex - onset)."""
        return self.encode(x[:, 0], apex_motion(x), update_stats)

    def action_latent(self, motion: Tensor, update_stats: bool = False) -> Tensor:
        """The action branch's part of the embedding, project(flatten(last action map)):
        what MA2MI's target encoder computes of a future motion (models/ma2mi.py)."""
        last = self.action(motion, update_stats)[-1]
        return self.project(self.norm(last, update_stats).flatten(1))

    def encode(self, onset: Tensor, motion: Tensor, update_stats: bool = False) -> ClipFeatures:
        """onset (B, C, H, W) to the position branch only; motion (B, 1, C, H, W) to the
        action branch only; fused by adding the position map to the last action map."""
        stages = self.action(motion, update_stats)
        fused = stages[-1]  # (B, 1, D, h, w)
        if self.position is not None:
            fused = fused + self.position(onset).unsqueeze(1)
        embedding = self.project(self.norm(fused, update_stats).flatten(1))  # (B, D)
        return ClipFeatures(embedding, stages, fused, (motion.shape[-2], motion.shape[-1]))

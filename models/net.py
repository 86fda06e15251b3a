"""LightmanNet, f_theta = g o {h_pri, h_aux} (paper 4.1, Fig. 3), its config and presets.

The model is called functionally by the learners:
``torch.func.functional_call(model, (params, buffers), (x,), {"head": "both"})``.
Its forward is a pure function of (params, buffers, x): no in-place op on a
parameter, no Python state that changes between calls; buffers change only in
``bn_mode="running"`` when asked with ``update_stats=True`` (see norm.py).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from lightman.models.backbones import BACKBONES, TEMPORAL_KERNEL, TWO_BRANCH, ClipBackbone
from lightman.models.heads import AUX_HEADS, build_aux_head
from lightman.models.norm import BN_MODES

INPUT_MODES = ("frames", "delta", "frames+delta")
HEADS = ("pri", "aux", "both", "embed")
MIN_IMAGE_SIZE = 16  # four 2x2 poolings must leave at least 1x1
MIN_FRAMES_TWO_BRANCH = 2  # MIACNet reads the onset and one apex frame (no 3D convolution)


@dataclass(frozen=True)
class ModelConfig:
    """Everything that fixes LightmanNet's architecture (stored in checkpoints)."""

    backbone: str = "conv4"
    """Per-frame 2D encoder: conv4 (paper) | resnet | vgg | densenet (Table 3 ablation), or
    MA2MI's two-branch network: miacnet | miacnet_action (its action branch only;
    models/miacnet.py, docs/ma2mi.md)."""
    in_channels: int = 3
    """C, channels of each input frame (3 for RGB)."""
    frames: int = 8
    """M, frames per clip; >= 6 because the 3D convolution has kernel 6 in time."""
    image_size: int = 64
    """H = W of the input frames; 64..112 in the paper's range, >= 16 (16 only for tests)."""
    hidden: int = 64
    """Conv width of the encoder (Conv4: every block) and the embedding width D."""
    ways: int = 5
    """Outputs of h_pri: N of N-way episodes, or the class count for LOSO/composite."""
    aux_head: str = "embed"
    """h_aux: embed (MLP on the embedding) | decoder (the paper's multi-scale decoder)."""
    aux_dim: int = 64
    """Width of h_aux's output, the features L_aux (MMD) compares."""
    bn_mode: str = "task"
    """Normalisation statistics: task (batch) | clip (per clip) | running (see norm.py)."""
    input_mode: str = "frames"
    """Encoder input: frames | delta (frame_t - frame_0, the motion) | frames+delta.
    miacnet needs frames: it reads the onset itself and computes its motion (apex - onset)."""
    init: str = ""
    """A pre-trained encoder (`lightman pretrain` writes RUN/encoder.pt) that initialises the
    backbone g before training; "" = random. Its architecture must match this config's
    (models/ma2mi.py: init_backbone). A loaded checkpoint resets it to "" (its weights are
    already there; the training config records the path)."""

    def __post_init__(self) -> None:
        choices = {
            "backbone": BACKBONES + TWO_BRANCH,
            "aux_head": AUX_HEADS,
            "bn_mode": BN_MODES,
            "input_mode": INPUT_MODES,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"{name} must be one of {list(allowed)}, got {getattr(self, name)!r}"
                )
        two_branch = self.backbone in TWO_BRANCH
        if two_branch and self.input_mode != "frames":
            raise ValueError(
                f"backbone={self.backbone} reads the onset frame and computes its own motion "
                f"(apex - onset): use input_mode=frames, got {self.input_mode!r}"
            )
        if two_branch and self.image_size % 16:
            raise ValueError(
                f"backbone={self.backbone} halves the image four times and places one "
                f"position token per cell of the last map: image_size must be a multiple of "
                f"16, got {self.image_size}"
            )
        minima = {
            "in_channels": 1,
            "frames": MIN_FRAMES_TWO_BRANCH if two_branch else TEMPORAL_KERNEL,
            "image_size": MIN_IMAGE_SIZE,
            "hidden": 2,
            "ways": 2,
            "aux_dim": 1,
        }
        for name, low in minima.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                why = (
                    " (the temporal 3D convolution has kernel 6 in time)"
                    if name == "frames" and not two_branch
                    else ""
                )
                raise ValueError(f"{name} must be an integer >= {low}{why}, got {value!r}")

    @property
    def encoder_channels(self) -> int:
        """Channels the encoder sees: C, or 2C when frames and deltas are stacked."""
        return 2 * self.in_channels if self.input_mode == "frames+delta" else self.in_channels


def motion_input(x: Tensor, mode: str) -> Tensor:
    """The encoder's input under `input_mode`: (B, M, C, H, W) -> (B, M, C or 2C, H, W).

    delta_t = frame_t - frame_0: micro-expressions move 1-2 px, which the raw frames
    bury under identity; the deltas keep only the motion (delta_0 = 0).
    """
    if mode == "frames":
        return x
    delta = x - x[:, :1]  # (B, M, C, H, W)
    if mode == "delta":
        return delta
    if mode == "frames+delta":
        return torch.cat((x, delta), dim=2)
    raise ValueError(f"input_mode must be one of {list(INPUT_MODES)}, got {mode!r}")


class LightmanNet(nn.Module):
    """f_theta = g o {h_pri, h_aux}: a shared backbone and two heads (paper Fig. 3)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        if cfg.backbone in TWO_BRANCH:
            from lightman.models.miacnet import MIACNet

            self.backbone = MIACNet(
                cfg.encoder_channels,
                cfg.hidden,
                cfg.image_size,
                cfg.bn_mode,
                position=cfg.backbone == "miacnet",
            )
        else:
            self.backbone = ClipBackbone(
                cfg.backbone, cfg.encoder_channels, cfg.hidden, cfg.bn_mode
            )
        dim = self.backbone.embed_dim
        self.head_pri = nn.Linear(dim, cfg.ways)
        self.head_aux = build_aux_head(
            cfg.aux_head, self.backbone.stage_channels, dim, cfg.aux_dim, cfg.bn_mode
        )

    @property
    def bn_mode(self) -> str:
        """Which normalisation statistics this model uses (for reports)."""
        return self.cfg.bn_mode

    def forward(self, x: Tensor, head: str = "pri", update_stats: bool = False):
        """x: (B, M, C, H, W) float in [0, 1].

        head="pri": logits (B, ways) for Eq. 2; "aux": (B, aux_dim) for Eq. 3;
        "both": (logits, aux) from one backbone pass; "embed": the clip embedding (B, D).
        update_stats: in bn_mode "running" and training mode, also update the running
        statistics (the learner asks for it on its outer/query pass only).
        """
        if head not in HEADS:
            raise ValueError(f"head must be one of {list(HEADS)}, got {head!r}")
        self._check_input(x)
        feats = self.backbone(motion_input(x, self.cfg.input_mode), update_stats)
        if head == "embed":
            return feats.embedding
        if head == "pri":
            return self.head_pri(feats.embedding)
        aux = self.head_aux(feats, update_stats)
        if head == "aux":
            return aux
        return self.head_pri(feats.embedding), aux

    def _check_input(self, x: Tensor) -> None:
        c = self.cfg
        expected = f"(B, M={c.frames}, C={c.in_channels}, H={c.image_size}, W={c.image_size})"
        if x.dim() != 5:
            raise ValueError(
                f"LightmanNet expects clips {expected}, got a {x.dim()}-d tensor {tuple(x.shape)}"
            )
        if not x.is_floating_point():
            raise ValueError(f"LightmanNet expects float frames in [0, 1], got dtype {x.dtype}")
        _, m, ch, h, w = x.shape
        if m < TEMPORAL_KERNEL and c.backbone not in TWO_BRANCH:
            raise ValueError(
                f"clips need M >= {TEMPORAL_KERNEL} frames (3D conv kernel 6 in time), got M={m} "
                f"in shape {tuple(x.shape)}"
            )
        if (m, ch, h, w) != (c.frames, c.in_channels, c.image_size, c.image_size):
            raise ValueError(f"LightmanNet expects clips {expected}, got {tuple(x.shape)}")

    def head_param_names(self) -> tuple[str, ...]:
        """Names (as in named_parameters) of h_pri's parameters: what ANIL adapts."""
        return tuple(n for n, _ in self.named_parameters() if n.startswith("head_pri."))


_BASE = ModelConfig()
PRESETS: dict[str, ModelConfig] = {
    "conv4-64": _BASE,
    "conv4-112": replace(_BASE, image_size=112),
    "resnet-64": replace(_BASE, backbone="resnet"),
    "vgg-64": replace(_BASE, backbone="vgg"),
    "densenet-64": replace(_BASE, backbone="densenet"),
    "tiny": replace(_BASE, hidden=8, image_size=16, frames=6, aux_dim=8),  # tests
    "miacnet-64": replace(_BASE, backbone="miacnet"),
}


def build_model(cfg: ModelConfig | str) -> LightmanNet:
    """A LightmanNet from a config or a preset name (PRESETS)."""
    if isinstance(cfg, str):
        if cfg not in PRESETS:
            raise ValueError(f"unknown model preset {cfg!r}; presets: {sorted(PRESETS)}")
        cfg = PRESETS[cfg]
    if not isinstance(cfg, ModelConfig):
        raise TypeError(
            f"build_model takes a ModelConfig or a preset name, got {type(cfg).__name__}"
        )
    model = LightmanNet(cfg)
    if cfg.init:
        from lightman.models.ma2mi import init_backbone

        init_backbone(model, cfg.init)
    return model


def count_parameters(model: nn.Module) -> int:
    """Number of scalar parameters (the model size reported next to accuracy)."""
    return sum(p.numel() for p in model.parameters())

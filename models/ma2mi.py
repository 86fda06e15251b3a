"""MA2MI pre-training, the pure parts: targets, loss, EMA, and the encoder checkpoint.

MA2MI (arXiv 2405.16451) pre-trains on macro-expression videos so that the network
"learns the ability to represent subtle facial movement by reconstructing future
frames". Its loss is not public; ours (docs/ma2mi.md):

- input: the onset frame (the "frame", to the position branch) and the motion so far,
  frame_t - frame_0 (to the action branch), t drawn per clip from 1..M-1-k;
- target: the latent of the near-future frame t + k, z* = g_ema(onset, frame_{t+k} -
  frame_0).embedding, computed by an exponential-moving-average copy of the encoder under
  no gradient (BYOL / data2vec / JEPA style), not pixels: a pixel loss spends the network
  on reproducing the face (identity, texture, illumination), which a latent target of the
  same encoder does not ask for, and the EMA target with a predictor head avoids the
  collapse that a plain stop-gradient on the online encoder is prone to;
- loss: 2 - 2 cos(q, z*) with q = predictor(g(onset, frame_t - frame_0).embedding): the
  normalised squared error of BYOL, in [0, 4], scale-free (an embedding cannot shrink to
  lower it).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import BinaryIO

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightman.models.provenance import versions

ENCODER_FORMAT = 1
ENCODER_KIND = "lightman-encoder"
# ModelConfig fields that fix the backbone's parameters (a mismatch cannot be loaded)
ARCHITECTURE = ("backbone", "in_channels", "image_size", "hidden", "bn_mode", "input_mode")


def draw_steps(
    batch: int, frames: int, horizon: int, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """(t, t + k) per clip: t uniform in 1..M-1-k (the motion so far is never empty)."""
    if not 1 <= horizon <= frames - 2:
        raise ValueError(
            f"horizon k={horizon} needs 1 <= k <= M - 2 = {frames - 2} (M = {frames} frames)"
        )
    t = torch.randint(1, frames - horizon, (batch,), generator=generator)
    return t, t + horizon


def motion_at(x: Tensor, t: Tensor) -> Tensor:
    """x (B, M, C, H, W), t (B,) -> frame_t - frame_0 (B, 1, C, H, W)."""
    rows = torch.arange(x.shape[0], device=x.device)
    return (x[rows, t.to(x.device)] - x[:, 0]).unsqueeze(1)


def prediction_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Mean squared error between pred (B, D) and the target standardised over the batch,
    per feature (zero mean, unit variance; a constant). Predicting the batch mean scores 1,
    so the loss is the share of the future latent's variance left unexplained, and a
    collapsed (constant) encoder cannot lower it."""
    goal = target.detach()
    goal = (goal - goal.mean(0)) / goal.std(0, correction=0).clamp_min(1e-6)
    return (pred - goal).pow(2).mean()


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """target <- momentum * target + (1 - momentum) * online, parameters and buffers."""
    for t, o in zip(target.state_dict().values(), online.state_dict().values()):
        if t.is_floating_point():
            t.mul_(momentum).add_(o.detach(), alpha=1 - momentum)


class PredictorHead(nn.Module):
    """q: Linear(D, D) -> ReLU -> Linear(D, D), BYOL's predictor, on the online embedding."""

    def __init__(self, dim: int):
        super().__init__()
        self.hidden = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, z: Tensor) -> Tensor:
        return self.out(F.relu(self.hidden(z)))


# ---- the encoder checkpoint: what `lightman pretrain` hands to `model.init` ----------------


def save_encoder(path: str | Path | BinaryIO, model: nn.Module, extra: dict) -> None:
    """RUN/encoder.pt: the backbone g's state dict, the ModelConfig, versions and `extra`
    (plain data), to a file object or a local path (written atomically); loads with
    weights_only=True."""
    from lightman.models.checkpoint import check_plain

    check_plain(extra)
    payload = {
        "format": ENCODER_FORMAT,
        "kind": ENCODER_KIND,
        "state_dict": {k: v.detach().cpu() for k, v in model.backbone.state_dict().items()},
        "config": dataclasses.asdict(model.cfg),
        "versions": versions(),
        "extra": extra,
    }
    if not isinstance(path, (str, Path)):
        torch.save(payload, path)
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_encoder(source: str | Path | BinaryIO, name: str | None = None) -> dict:
    """The payload of an encoder checkpoint (a local path, or a file object whose origin is
    `name`); a file that is not one is one clear error."""
    path = name or str(source)
    try:
        payload = torch.load(source, map_location="cpu", weights_only=True)
    except OSError:
        raise
    except Exception as e:
        first = (str(e).strip().splitlines() or [""])[0]
        why = f"{type(e).__name__}: {first}"
        raise ValueError(f"model.init={path}: not a loadable encoder ({why})") from e
    if not isinstance(payload, dict) or payload.get("kind") != ENCODER_KIND:
        raise ValueError(
            f"model.init={path}: not an encoder checkpoint (`lightman pretrain` writes "
            "RUN/encoder.pt; a training run's best.pt is not one)"
        )
    if payload.get("format") != ENCODER_FORMAT:
        raise ValueError(f"model.init={path}: encoder format {payload.get('format')!r}")
    return payload


def architecture_mismatch(stored: dict, cfg) -> list[str]:
    """'field: pre-trained X, this model Y' for every ARCHITECTURE field that differs."""
    return [
        f"model.{k}: pre-trained {stored.get(k)!r}, this model {getattr(cfg, k)!r}"
        for k in ARCHITECTURE
        if stored.get(k) != getattr(cfg, k)
    ]


def init_backbone(model: nn.Module, source: str | Path | BinaryIO, name: str | None = None) -> None:
    """Load the encoder at `source` (a local path, or a file object read from `name`) into
    model.backbone (in place); a different architecture is a ValueError naming every field
    that differs."""
    path = name or str(source)
    payload = load_encoder(source, name)
    diff = architecture_mismatch(payload["config"], model.cfg)
    if diff:
        raise ValueError(
            f"model.init={path}: the encoder's architecture differs from this model's: "
            + "; ".join(diff)
        )
    try:
        model.backbone.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as e:
        first = (str(e).strip().splitlines() or [""])[0]
        raise ValueError(f"model.init={path}: the encoder's weights do not fit: {first}") from e


# ---- how well an embedding separates motion from identity (the pre-training check) -------


def standardize(z: Tensor) -> Tensor:
    """Each feature to zero mean and unit variance over the clips (a probe free of scale)."""
    return (z - z.mean(0)) / z.std(0, correction=0).clamp_min(1e-8)


def cross_group_centroid_accuracy(z: Tensor, labels: Tensor, groups: Tensor) -> float:
    """Nearest-centroid accuracy of `labels` where every group (subject) is predicted from the
    centroids of the OTHER groups' clips: how well z carries the label across identities.
    z (n, D) standardized here; labels, groups (n,) int. Labels absent from the other groups
    cannot be predicted and their clips count as wrong."""
    z = standardize(z)
    correct = 0
    for g in groups.unique():
        test, train = groups == g, groups != g
        classes = labels[train].unique()
        centroids = torch.stack([z[train & (labels == c)].mean(0) for c in classes])
        pred = classes[torch.cdist(z[test], centroids).argmin(1)]
        correct += int((pred == labels[test]).sum())
    return correct / len(labels)


def leave_one_out_centroid_accuracy(z: Tensor, labels: Tensor) -> float:
    """Nearest-centroid accuracy of `labels` with each clip left out of its own centroid
    (a label with one clip cannot be predicted for it): how much of the label z keeps."""
    z = standardize(z)
    correct = 0
    for i in range(len(z)):
        keep = torch.arange(len(z)) != i
        classes = labels[keep].unique()
        centroids = torch.stack([z[keep & (labels == c)].mean(0) for c in classes])
        correct += int(classes[torch.cdist(z[i : i + 1], centroids).argmin()] == labels[i])
    return correct / len(labels)

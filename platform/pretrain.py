"""`lightman pretrain` (method=ma2mi): self-supervised pre-training of the encoder on
macro-expression clips of the index (docs/ma2mi.md; the loss is models/ma2mi.py).

One loop, in process, no Ray, on `device` (cpu, cuda or cuda:N; checked before the index
is read or RUN is made, platform/devices.py): draw a batch of training clips (seeded by
(seed, step)), a time t and t + k per clip, predict the EMA encoder's latent of frame
t + k from the onset and the motion so far, Adam step on the online encoder and the
predictor, EMA step of the target. Subjects are split first: `holdout_fraction` of them
never train and are used only by the check at the end, which embeds their clips with the
initial (random) encoder and with the pre-trained one and reports how well each carries
the expression class across subjects (`class_acc`, nearest centroid of the other
subjects) and the subject (`subject_acc`, leave one clip out).

Writes RUN/encoder.pt (the backbone's weights + ModelConfig + versions + this config,
for `lightman train ... model.init=RUN/encoder.pt`), RUN/metrics.jsonl (one line per
logged step) and RUN/pretrain.json (config, versions, losses, the check).
"""

from __future__ import annotations

import copy
import io
import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from lightman.models import ma2mi
from lightman.models.backbones import TWO_BRANCH
from lightman.models.net import ModelConfig, build_model
from lightman.models.provenance import to_dict, versions
from lightman.platform.config import ConfigError
from lightman.platform.devices import check_device_name, resolve_device
from lightman.platform.selection import check_clip_shapes, load_pool
from lightman.tasks import storage
from lightman.tasks.episodes import ClipPool, to_tensor

METHODS = ("ma2mi",)


@dataclass(frozen=True)
class PretrainConfig:
    """A pre-training run; every field is settable from YAML or key=value."""

    seed: int = 0  # seeds the split, the initialisation, the batches and t
    method: Literal["ma2mi"] = "ma2mi"
    index: str = "data/index"  # index URI (local path or s3://)
    datasets: tuple[str, ...] = ("ckplus", "casme_sq")  # CK+ and CAS(ME)^2 (their macro clips)
    # macro: only macro-expression clips; any: every clip of `datasets` (own videos through the
    # `video` adapter are marked micro unless their sheet has an expression column)
    expression: Literal["macro", "any"] = "macro"
    model: ModelConfig = field(
        default_factory=lambda: ModelConfig(backbone="miacnet", image_size=32, hidden=32)
    )
    horizon: int = 2  # k: the target is k sampled frames after the motion's frame t
    steps: int = 300  # Adam steps
    batch_size: int = 16  # clips per step
    lr: float = 1e-3
    weight_decay: float = 1e-4
    ema: float = 0.99  # target <- ema * target + (1 - ema) * online, after every step
    holdout_fraction: float = 0.25  # share of subjects kept out of training, for the check
    log_every: int = 10
    threads: int = 0  # torch CPU threads (0: torch's default)
    device: str = "cpu"  # cpu, cuda or cuda:N: where the encoder trains and the check embeds

    def __post_init__(self) -> None:
        check_device_name(self.device, "device")
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {list(METHODS)}, got {self.method!r}")
        if self.model.backbone not in TWO_BRANCH:
            raise ValueError(
                f"ma2mi pre-trains MIACNet's branches (onset + motion): model.backbone must be "
                f"one of {list(TWO_BRANCH)}, got {self.model.backbone!r}"
            )
        if self.expression not in ("macro", "any"):
            raise ValueError(f"expression must be macro or any, got {self.expression!r}")
        for name, low in (("steps", 0), ("batch_size", 2), ("horizon", 1), ("log_every", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if not 0 <= self.ema < 1 or not 0 < self.holdout_fraction < 1 or self.lr <= 0:
            raise ValueError("ema in [0, 1), holdout_fraction in (0, 1) and lr > 0 are required")


@dataclass(frozen=True)
class PretrainResult:
    out: str
    summary: dict

    def table(self) -> str:
        s = self.summary
        rows = [
            "| encoder | class_acc (other subjects) | subject_acc (leave one out) | separation |",
            "|---|---|---|---|",
        ]
        for name in ("random", "pretrained"):
            c = s["check"][name]
            cells = [f"{100 * c[k]:.1f}" for k in ("class_acc", "subject_acc", "separation")]
            rows.append(f"| {name} | " + " | ".join(cells) + " |")
        loss = s["loss"]
        return "\n".join(
            [
                *rows,
                "",
                f"loss: first {loss['first']:.4f} -> last {loss['last']:.4f} "
                f"(mean of {loss['window']} steps), {s['train_seconds']} s, "
                f"{s['train_clips']} clips of {s['train_subjects']} subjects; "
                f"check on {s['holdout_clips']} clips of {s['holdout_subjects']} held-out subjects",
            ]
        )


def macro_pool(cfg: PretrainConfig) -> ClipPool:
    """The pre-training clips; a pool the model cannot read fails here, naming the field."""
    expression = "macro" if cfg.expression == "macro" else None
    pool = load_pool(cfg.index, datasets=cfg.datasets, expression=expression)
    check_clip_shapes(cfg.model, {"pre-training": pool})
    return pool


def split_subjects(pool: ClipPool, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, held-out rows): a seeded `fraction` of the subjects (at least 2, so the
    cross-subject check has another subject to learn from) is held out."""
    subjects = np.unique(pool.subjects)
    n = max(2, round(fraction * len(subjects)))
    if n >= len(subjects):
        raise ConfigError(
            f"holdout_fraction={fraction}: {len(subjects)} subjects cannot leave 2 held out and "
            "others to train on"
        )
    held = np.random.default_rng((seed, 7)).choice(subjects, size=n, replace=False)
    out = np.isin(pool.subjects, held)
    return np.flatnonzero(~out), np.flatnonzero(out)


def step_seed(seed: int, step: int) -> int:
    """The seed of a step's batch and times: a function of (seed, step) alone."""
    return int(np.random.SeedSequence([seed, step]).generate_state(1)[0])


@torch.no_grad()
def embed(backbone: torch.nn.Module, pool: ClipPool, rows: np.ndarray, batch: int = 64):
    """(len(rows), D) embeddings of the clips (onset + apex - onset), in eval mode, on the
    CPU; the clips go through the backbone on the device of its parameters."""
    was = backbone.training
    backbone.eval()
    device = next(backbone.parameters()).device
    out = [
        backbone(to_tensor(pool.frames[rows[i : i + batch]]).to(device)).embedding.cpu()
        for i in range(0, rows.size, batch)
    ]
    backbone.train(was)
    return torch.cat(out)


def probe_rows(pool: ClipPool, rows: np.ndarray) -> np.ndarray:
    """The rows whose class occurs in at least two of these rows' subjects: a class of one
    subject (or of one dataset's label set seen in one subject) cannot be told across
    subjects, so it would only add noise to class_acc."""
    labels, subjects = pool.labels[rows], pool.subjects[rows]
    shared = [c for c in np.unique(labels) if np.unique(subjects[labels == c]).size >= 2]
    return rows[np.isin(labels, shared)]


def check(backbone: torch.nn.Module, pool: ClipPool, rows: np.ndarray) -> dict:
    """How the embeddings of held-out clips (rows) separate motion from identity:
    class_acc, the expression class by nearest centroid of the OTHER subjects' clips;
    subject_acc, the subject by nearest centroid, each clip left out of its own;
    separation = class_acc - subject_acc (higher: more expression, less identity)."""
    rows = probe_rows(pool, rows)
    if rows.size == 0:
        raise ConfigError("no class of the held-out clips occurs in two held-out subjects")
    z = embed(backbone, pool, rows)
    labels = torch.from_numpy(pool.labels[rows])
    _, groups = np.unique(pool.subjects[rows], return_inverse=True)
    groups = torch.from_numpy(groups)
    class_acc = ma2mi.cross_group_centroid_accuracy(z, labels, groups)
    subject_acc = ma2mi.leave_one_out_centroid_accuracy(z, groups)
    return {
        "class_acc": class_acc,
        "subject_acc": subject_acc,
        "separation": class_acc - subject_acc,
        "clips": int(rows.size),
    }


def run_pretraining(cfg: PretrainConfig, out: str | Path) -> PretrainResult:
    """Pre-train (module docstring); writes encoder.pt, metrics.jsonl and pretrain.json under
    `out`, a local folder or s3://."""
    device = resolve_device(cfg.device, "device")  # before RUN is made or a clip is read
    root = storage.resolve(out)
    storage.make_dirs(root)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    pool = macro_pool(cfg)
    train_rows, held_rows = split_subjects(pool, cfg.holdout_fraction, cfg.seed)
    torch.manual_seed(cfg.seed)
    model = build_model(replace(cfg.model, init=""))  # heads are not pre-trained
    online = model.backbone.to(device).train()
    predictor = ma2mi.PredictorHead(online.embed_dim).to(device)
    target = copy.deepcopy(online).requires_grad_(False)
    before = check(online, pool, held_rows)
    params = [*online.parameters(), *predictor.parameters()]
    opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    losses: list[float] = []
    t0 = time.perf_counter()
    records: list[dict] = []
    for step in range(1, cfg.steps + 1):
        gen = torch.Generator().manual_seed(step_seed(cfg.seed, step))
        pick = torch.randint(len(train_rows), (cfg.batch_size,), generator=gen).numpy()
        x = to_tensor(pool.frames[train_rows[pick]]).to(device)  # (B, M, C, H, W) in [0, 1]
        t, future = ma2mi.draw_steps(len(x), x.shape[1], cfg.horizon, gen)
        onset = x[:, 0]
        z = online.encode(onset, ma2mi.motion_at(x, t), update_stats=True).embedding
        with torch.no_grad():
            goal = target.action_latent(ma2mi.motion_at(x, future))
        loss = ma2mi.prediction_loss(predictor(z), goal)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ma2mi.ema_update(target, online, cfg.ema)
        losses.append(float(loss.detach()))
        if step % cfg.log_every == 0 or step == cfg.steps:
            record = {
                "step": step,
                "loss": round(float(np.mean(losses[-cfg.log_every :])), 6),
                "seconds": round(time.perf_counter() - t0, 3),
            }
            records.append(record)
            metrics = "".join(json.dumps(r) + "\n" for r in records)
            storage.write_text(root.join("metrics.jsonl"), metrics)  # whole, so far
    seconds = round(time.perf_counter() - t0, 1)
    after = check(online, pool, held_rows)
    window = max(1, min(20, len(losses) // 4))
    summary = {
        "method": cfg.method,
        "config": to_dict(cfg),
        "versions": versions(),
        "train_seconds": seconds,
        "train_clips": int(train_rows.size),
        "train_subjects": int(np.unique(pool.subjects[train_rows]).size),
        "holdout_clips": int(held_rows.size),
        "holdout_subjects": sorted(set(pool.subjects[held_rows].tolist())),
        "datasets": sorted(set(pool.datasets.tolist())),
        "loss": {
            "window": window,
            "first": float(np.mean(losses[:window])) if losses else float("nan"),
            "last": float(np.mean(losses[-window:])) if losses else float("nan"),
        },
        "check": {"random": before, "pretrained": after},
    }
    summary["holdout_subjects"] = len(summary["holdout_subjects"])
    extra = {
        "pretrain": to_dict(cfg),
        "loss": summary["loss"],
        "check": summary["check"],
        "holdout_subjects": sorted(set(pool.subjects[held_rows].tolist())),
    }
    buf = io.BytesIO()
    ma2mi.save_encoder(buf, model, extra)
    storage.write_bytes(root.join("encoder.pt"), buf.getvalue())
    storage.write_text(root.join("pretrain.json"), json.dumps(summary, indent=2))
    return PretrainResult(root.uri, summary)

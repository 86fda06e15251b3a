"""The outer optimiser: the second level of paper Eq. 4, θ ← θ − β · (step on the
meta-gradient), as a torch optimiser over θ."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from lightman.models.learners.config import LearnerConfig


def outer_optimizer(params: Iterable[Tensor], cfg: LearnerConfig) -> torch.optim.Optimizer:
    """The trainer's optimiser of θ at lr = outer_lr (β) and weight decay weight_decay:
    Adam (coupled decay) or AdamW (decoupled), `cfg.outer_optimizer_name` (learner.optimizer,
    auto resolved: AdamW in first-order mode, where h_aux has no outer gradient for
    coupled decay to be normalised against, Adam otherwise)."""
    kind = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[cfg.outer_optimizer_name]
    return kind(params, lr=cfg.outer_lr, weight_decay=cfg.weight_decay)

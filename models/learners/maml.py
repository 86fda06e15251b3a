"""MAML (Finn et al. 2017; paper Eq. 1): LightmanNet's bi-level loop without the auxiliary branch.

Inner, per task: θ_i = θ − α ∇θ CE(h_pri(g(support_i)), y) (inner_steps times); outer:
∇θ Σ_i CE(h_pri(g(query_i)); θ_i), second order unless `first_order`. Lightman with
lambda_pri = 1 is exactly this learner.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from lightman.models.learners.base import BilevelLearner
from lightman.models.learners.config import MAMLConfig
from lightman.models.learners.functional import Objective, forward, sgd_adapt
from lightman.models.learners.params import Params


def cross_entropy_objective(model: nn.Module, buffers: Params, x: Tensor, y: Tensor) -> Objective:
    """θ -> CE(h_pri(g(x; θ)); θ), y) (paper Eq. 2) on a support set x: (S, M, C, H, W), y: (S,)."""

    def objective(params: Params):
        logits = forward(model, params, buffers, x, "pri")  # (S, ways)
        loss = F.cross_entropy(logits, y)
        return loss, {"support_loss_before": loss}

    return objective


def fine_tune(
    model: nn.Module, params: Params, buffers: Params, x: Tensor, y: Tensor, lr: float, steps: int
) -> Params:
    """θ after `steps` SGD steps at lr on CE(h_pri(g(x)), y) over every parameter, detached:
    MAML's test-time adaptation, which reptile and supervised use as theirs."""
    objective = cross_entropy_objective(model, buffers, x, y)  # binds no θ: the same for every θ
    return sgd_adapt(lambda theta: objective, params, tuple(params), lr, steps)


class MAML(BilevelLearner):
    """Inner loss: the primary CE only; every parameter adapts."""

    cfg: MAMLConfig

    def make_objective(self, model, params, buffers, x, y, aux_x, where, aux_y=None):
        return cross_entropy_objective(model, buffers, x, y)

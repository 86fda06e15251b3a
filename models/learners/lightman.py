"""LightmanNet's dual-branch meta-auxiliary learning (paper 4.2, Algorithm 1, Eq. 2-4).

Inner, per task i (first level), inner_steps times:
    θ_i = θ − α ∇θ [λ1 · CE(h_pri(g(support_i)), y_i) + λ2 · L_aux(h_aux(g(support_i)), h_aux(g(aux_i)))]
Outer (second level): ∇θ Σ_i CE(h_pri(g(query_i)); θ_i), second order by default.
The auxiliary loss acts in the inner level only; its head h_aux gets an outer gradient
only through the inner step's effect on the query loss (so none with first_order).
Every L_aux here depends on the features through ||x − y|| alone, so the bias of
h_aux's output layer, which shifts micro and macro features alike, never gets one.
λ2 = 1 − λ1; λ1 = 1 is exactly MAML (the auxiliary pass is skipped).
"""

from __future__ import annotations

from typing import NamedTuple

import torch.nn.functional as F
from torch import Tensor, nn

from lightman.models.learners.base import AuxLossFn, BilevelLearner, Params, aux_loss_fn, forward, require_aux
from lightman.models.learners.maml import cross_entropy_objective
from lightman.models.learners.passes import PassObjective


class DualBranchLoss(NamedTuple):
    total: Tensor  # λ1 · ce + λ2 · aux, 0-d
    ce: Tensor  # Eq. 2 on the micro clips, 0-d
    aux: Tensor  # Eq. 3 (or squared MMD) between micro and macro features, 0-d
    logits: Tensor  # (B, ways)


def dual_branch_terms(logits: Tensor, micro: Tensor, macro: Tensor, y: Tensor, lambda_pri: float,
                      aux_fn: AuxLossFn) -> DualBranchLoss:
    """λ1 CE(logits, y) + λ2 L_aux(micro, macro), λ2 = 1 − λ1, from the heads' outputs:
    logits (B, ways) and micro (B, aux_dim) of the micro clips, macro (A, aux_dim)."""
    ce = F.cross_entropy(logits, y)
    aux = aux_fn(micro, macro)
    return DualBranchLoss(lambda_pri * ce + (1.0 - lambda_pri) * aux, ce, aux, logits)


def dual_branch_loss(model: nn.Module, params: Params, buffers: Params, x: Tensor, y: Tensor, aux_x: Tensor,
                     lambda_pri: float, aux_fn: AuxLossFn, update_stats: bool = False) -> DualBranchLoss:
    """λ1 CE(h_pri(g(x)), y) + λ2 L_aux(h_aux(g(x)), h_aux(g(aux_x))) with λ2 = 1 − λ1.

    x: (B, M, C, H, W) micro clips with labels y: (B,); aux_x: (A, M, C, H, W) macro
    clips. g runs once on x (head="both") and once on aux_x; each batch is normalised
    with its own statistics.
    """
    logits, micro = forward(model, params, buffers, x, "both", update_stats)  # (B, ways), (B, aux_dim)
    macro = forward(model, params, buffers, aux_x, "aux")  # (A, aux_dim)
    return dual_branch_terms(logits, micro, macro, y, lambda_pri, aux_fn)


def dual_branch_objective(model: nn.Module, buffers: Params, x: Tensor, y: Tensor, aux_x: Tensor,
                          lambda_pri: float, aux_fn: AuxLossFn) -> PassObjective:
    """θ -> the dual-branch inner loss on a support set (Eq. 4, first level), as its two
    passes (support clips, head "both"; macro clips, head "aux") and their combination,
    so that memory="low" can differentiate it one pass at a time."""

    def combine(outs):
        (logits, micro), macro = outs
        out = dual_branch_terms(logits, micro, macro, y, lambda_pri, aux_fn)
        return out.total, {"support_loss_before": out.ce.detach(), "aux_loss": out.aux.detach()}

    return PassObjective(model, buffers, ((x, "both"), (aux_x, "aux")), combine)


class Lightman(BilevelLearner):
    """Inner loss λ1 CE + λ2 L_aux; every parameter adapts (h_aux included)."""

    def make_objective(self, model, params, buffers, x, y, aux_x, where):
        if self.cfg.lambda_pri == 1.0:  # λ2 = 0: MAML's objective, no macro clips needed
            return cross_entropy_objective(model, buffers, x, y)
        aux_x = require_aux(aux_x, "lightman", where)
        return dual_branch_objective(model, buffers, x, y, aux_x, self.cfg.lambda_pri, aux_loss_fn(self.cfg))

"""LightmanNet's dual-branch meta-auxiliary learning (paper 4.2, Algorithm 1, Eq. 2-4).

Inner, per task i (first level), inner_steps times:
    θ_i = θ − α ∇θ [λ1 · CE(h_pri(g(support_i)), y_i)
                    + λ2 · L_aux(h_aux(g(support_i)), h_aux(g(aux_i)))]
Outer (second level): ∇θ Σ_i CE(h_pri(g(query_i)); θ_i), second order by default.
The auxiliary loss acts in the inner level only; its head h_aux gets an outer gradient
only through the inner step's effect on the query loss (so none with first_order).
Every L_aux here depends on the features through ||x − y|| alone, so the bias of
h_aux's output layer, which shifts micro and macro features alike, never gets one.
λ2 = 1 − λ1; λ1 = 1 is exactly MAML (the auxiliary pass is skipped).

Options of the auxiliary branch (LearnerConfig, defaults first): aux_norm
separate|joint|aux_joint (two backbone passes; one over support + macro clips split after
it; or the support clips alone for the CE and support + macro clips together for L_aux),
bandwidth fixed|median and aux_align marginal|class (base.aux_loss_fn, mmd.py);
log_grad_ratio reports ‖∇θ λ2·L_aux‖ / ‖∇θ λ1·CE‖ at θ.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightman.models.learners.base import (
    AuxLossFn,
    AuxNorm,
    BilevelLearner,
    Params,
    aux_loss_fn,
    forward,
    require_aux,
)
from lightman.models.learners.maml import cross_entropy_objective
from lightman.models.learners.params import trainable
from lightman.models.learners.passes import Output, PassObjective


class DualBranchLoss(NamedTuple):
    total: Tensor  # λ1 · ce + λ2 · aux, 0-d
    ce: Tensor  # Eq. 2 on the micro clips, 0-d
    aux: Tensor  # Eq. 3 (or squared MMD) between micro and macro features, 0-d
    logits: Tensor  # (B, ways)


def dual_branch_terms(
    logits: Tensor, micro: Tensor, macro: Tensor, y: Tensor, lambda_pri: float, aux_fn: AuxLossFn
) -> DualBranchLoss:
    """λ1 CE(logits, y) + λ2 L_aux(micro, macro), λ2 = 1 − λ1, from the heads' outputs:
    logits (B, ways) and micro (B, aux_dim) of the micro clips, macro (A, aux_dim)."""
    ce = F.cross_entropy(logits, y)
    aux = aux_fn(micro, macro)
    return DualBranchLoss(lambda_pri * ce + (1.0 - lambda_pri) * aux, ce, aux, logits)


def dual_branch_passes(
    x: Tensor, aux_x: Tensor, aux_norm: AuxNorm
) -> tuple[tuple[Tensor, str], ...]:
    """The backbone passes of the dual-branch loss, (clips, head) each. separate: the micro
    clips x (B, ...) with head "both" and the macro clips aux_x (A, ...) with head "aux",
    each batch normalised with its own statistics; joint: one pass over cat(x, aux_x)
    (B + A, ...) with head "both", one normalisation for both sets; aux_joint: the micro
    clips alone with head "pri" (the CE's normalisation is the one the query set gets at
    test time) and one pass over cat(x, aux_x) with head "aux" for L_aux."""
    if aux_norm == "joint":
        return ((torch.cat((x, aux_x)), "both"),)
    if aux_norm == "aux_joint":
        return ((x, "pri"), (torch.cat((x, aux_x)), "aux"))
    return ((x, "both"), (aux_x, "aux"))


def branch_outputs(outs: list[Output], n_micro: int, aux_norm: AuxNorm) -> tuple[Tensor, ...]:
    """(logits (B, ways), micro (B, aux_dim), macro (A, aux_dim)) of the passes of
    `dual_branch_passes`: the two separate passes as they are, or a joint pass split after
    its B micro rows (joint: its logits of the macro clips are dropped)."""
    if aux_norm == "joint":
        logits, feats = outs[0]
        return logits[:n_micro], feats[:n_micro], feats[n_micro:]
    if aux_norm == "aux_joint":
        logits, feats = outs
        return logits, feats[:n_micro], feats[n_micro:]
    (logits, micro), macro = outs
    return logits, micro, macro


def dual_branch_loss(
    model: nn.Module,
    params: Params,
    buffers: Params,
    x: Tensor,
    y: Tensor,
    aux_x: Tensor,
    lambda_pri: float,
    aux_fn: AuxLossFn,
    update_stats: bool = False,
    aux_norm: AuxNorm = "separate",
) -> DualBranchLoss:
    """λ1 CE(h_pri(g(x)), y) + λ2 L_aux(h_aux(g(x)), h_aux(g(aux_x))) with λ2 = 1 − λ1.

    x: (B, M, C, H, W) micro clips with labels y: (B,); aux_x: (A, M, C, H, W) macro
    clips, through the backbone as `dual_branch_passes` says; `update_stats` goes to the
    first pass (the micro clips', or the joint one).
    """
    passes = dual_branch_passes(x, aux_x, aux_norm)
    outs = [
        forward(model, params, buffers, clips, head, update_stats and p == 0)
        for p, (clips, head) in enumerate(passes)
    ]
    return dual_branch_terms(*branch_outputs(outs, x.shape[0], aux_norm), y, lambda_pri, aux_fn)


def dual_branch_objective(
    model: nn.Module,
    buffers: Params,
    x: Tensor,
    y: Tensor,
    aux_x: Tensor,
    lambda_pri: float,
    aux_fn: AuxLossFn,
    aux_norm: AuxNorm = "separate",
) -> PassObjective:
    """θ -> the dual-branch inner loss on a support set (Eq. 4, first level), as its
    passes (`dual_branch_passes`) and their combination, so that memory="low" can
    differentiate it one pass at a time."""

    def combine(outs):
        out = dual_branch_terms(*branch_outputs(outs, x.shape[0], aux_norm), y, lambda_pri, aux_fn)
        return out.total, {"support_loss_before": out.ce.detach(), "aux_loss": out.aux.detach()}

    return PassObjective(model, buffers, dual_branch_passes(x, aux_x, aux_norm), combine)


def grad_ratio(
    objective: PassObjective,
    y: Tensor,
    lambda_pri: float,
    aux_fn: AuxLossFn,
    aux_norm: AuxNorm,
    params: Params,
    names: tuple[str, ...],
) -> Tensor:
    """‖∇_names λ2·L_aux‖ / ‖∇_names λ1·CE‖ at θ = params, L2 norms over every adapted
    parameter together: the share of the first inner step that the auxiliary term
    drives. A detached 0-d tensor."""
    theta = trainable(params, names)
    outs = [objective.run(theta, p) for p in range(len(objective.passes))]
    out = dual_branch_terms(*branch_outputs(outs, y.shape[0], aux_norm), y, lambda_pri, aux_fn)
    leaves = [theta[n] for n in names]
    ce = torch.autograd.grad(
        lambda_pri * out.ce, leaves, retain_graph=True, allow_unused=True, materialize_grads=True
    )
    aux = torch.autograd.grad(
        (1.0 - lambda_pri) * out.aux, leaves, allow_unused=True, materialize_grads=True
    )
    return (l2(aux) / l2(ce)).detach()


def l2(grads: tuple[Tensor, ...]) -> Tensor:
    """The L2 norm of a list of tensors taken together, 0-d."""
    return torch.sqrt(sum(g.pow(2).sum() for g in grads))


class Lightman(BilevelLearner):
    """Inner loss λ1 CE + λ2 L_aux; every parameter adapts (h_aux included)."""

    def make_objective(self, model, params, buffers, x, y, aux_x, where, aux_y=None):
        cfg = self.cfg
        if cfg.lambda_pri == 1.0:  # λ2 = 0: MAML's objective, no macro clips needed
            return cross_entropy_objective(model, buffers, x, y)
        aux_x = require_aux(aux_x, "lightman", where)
        return dual_branch_objective(
            model, buffers, x, y, aux_x, cfg.lambda_pri, aux_loss_fn(cfg, y, aux_y), cfg.aux_norm
        )

    def task_grads(self, model, params, buffers, task, where):
        grads, metrics = super().task_grads(model, params, buffers, task, where)
        cfg = self.cfg
        if not cfg.log_grad_ratio or cfg.lambda_pri == 1.0:
            return grads, metrics
        with torch.enable_grad():
            objective = self.make_objective(
                model,
                params,
                buffers,
                task.support_x,
                task.support_y,
                task.aux_x,
                where,
                task.aux_y,
            )
            ratio = grad_ratio(
                objective,
                task.support_y,
                cfg.lambda_pri,
                aux_loss_fn(cfg, task.support_y, task.aux_y),
                cfg.aux_norm,
                params,
                self.adapted_names(model, params),
            )
        return grads, {**metrics, "aux_ce_grad_ratio": ratio}

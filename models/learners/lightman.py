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

The dual-branch loss is written once, `DualBranchObjective.__call__`; the supervised
learner trains on it too (`dual_branch_loss`). Options of the auxiliary branch
(AuxBranchConfig, defaults first): aux_norm separate|joint|aux_joint (two backbone passes;
one over support + macro clips split after it; or the support clips alone for the CE and
support + macro clips together for L_aux), bandwidth fixed|median and aux_align
marginal|class (`aux_loss_fn`, mmd.py); log_grad_ratio reports ‖∇θ λ2·L_aux‖ / ‖∇θ λ1·CE‖
at θ.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightman.models.learners.base import BilevelLearner
from lightman.models.learners.config import AuxBranchConfig, AuxNorm, LightmanConfig
from lightman.models.learners.functional import forward
from lightman.models.learners.params import Params, trainable
from lightman.models.learners.passes import Output
from lightman.models.mmd import class_conditional, median_bandwidths, mmd2, paper_eq3

AuxLossFn = Callable[[Tensor, Tensor], Tensor]  # (micro (n, d), macro (m, d)) -> 0-d


def aux_loss_fn(
    cfg: AuxBranchConfig, y: Tensor | None = None, aux_y: Tensor | None = None
) -> AuxLossFn:
    """L_aux(micro features (n, d), macro features (m, d)) -> 0-d tensor, as configured:
    the kernel loss (aux_loss) at σ = sigma (bandwidth=fixed) or at σ_k = sigma[k] ·
    median pairwise distance of the pooled features (bandwidth=median, detached), over
    the whole sets (aux_align=marginal) or as the mean over paired ways j of
    L_aux(micro[y == j], macro[aux_y == j]) (aux_align=class: y (n,) are the micro clips'
    ways, aux_y (m,) the macro clips', -1 unpaired; the median is that of the whole task)."""
    if cfg.aux_align == "class" and (y is None or aux_y is None):
        raise ValueError(
            "aux_align=class needs the ways of the micro and macro clips (y, aux_y): "
            "give the episodes aux_y (tasks/episodes.py) or set aux_align=marginal"
        )

    def kernel(sigmas: Sequence[float | Tensor]) -> AuxLossFn:
        """The configured kernel loss at bandwidths σ: mmd.py's function itself, bound."""
        if cfg.aux_loss == "paper_eq3":
            return partial(paper_eq3, sigma=sigmas[0])
        return partial(mmd2, sigmas=sigmas, unbiased=cfg.aux_loss == "mmd_unbiased")

    if cfg.bandwidth == "fixed" and cfg.aux_align == "marginal":
        return kernel(cfg.sigma)  # the default: the inner loss calls mmd2 directly

    def loss(micro: Tensor, macro: Tensor) -> Tensor:
        fixed = cfg.bandwidth == "fixed"
        sigmas = cfg.sigma if fixed else median_bandwidths(micro, macro, cfg.sigma)
        if cfg.aux_align == "marginal":
            return kernel(sigmas)(micro, macro)
        return class_conditional(kernel(sigmas), micro, y, macro, aux_y)

    return loss


def dual_branch_passes(
    x: Tensor, aux_x: Tensor | None, aux_norm: AuxNorm
) -> tuple[tuple[Tensor, str], ...]:
    """The backbone passes of the dual-branch loss, (clips, head) each. No macro clips
    (λ2 = 0): the micro clips x (B, ...) with head "pri". separate: x with head "both" and
    the macro clips aux_x (A, ...) with head "aux", each batch normalised with its own
    statistics; joint: one pass over cat(x, aux_x) (B + A, ...) with head "both", one
    normalisation for both sets; aux_joint: x alone with head "pri" (the CE's normalisation
    is the one the query set gets at test time) and one pass over cat(x, aux_x) with head
    "aux" for L_aux."""
    if aux_x is None:
        return ((x, "pri"),)
    if aux_norm == "joint":
        return ((torch.cat((x, aux_x)), "both"),)
    if aux_norm == "aux_joint":
        return ((x, "pri"), (torch.cat((x, aux_x)), "aux"))
    return ((x, "both"), (aux_x, "aux"))


@dataclass(frozen=True)
class DualBranchObjective:
    """θ -> λ1 CE(h_pri(g(x)), y) + λ2 L_aux(h_aux(g(x)), h_aux(g(aux_x))), λ2 = 1 − λ1
    (Eq. 4, first level, on a support set; the supervised learner's joint loss on a batch).
    A `passes.PassObjective`, so memory="low" can differentiate it one pass at a time.
    Made by `dual_branch_objective`."""

    model: nn.Module
    buffers: Params
    passes: tuple[tuple[Tensor, str], ...]  # `dual_branch_passes`
    y: Tensor  # (B,) labels of the micro clips x
    lambda_pri: float
    aux_fn: AuxLossFn | None  # L_aux; None when λ2 = 0 (no macro pass)
    aux_norm: AuxNorm
    update_stats: bool = False  # the first pass may update running norm statistics

    def run(self, params: Params, p: int) -> Output:
        x, head = self.passes[p]
        return forward(self.model, params, self.buffers, x, head, self.update_stats and p == 0)

    def outputs(self, params: Params) -> list[Output]:
        return [self.run(params, p) for p in range(len(self.passes))]

    def branches(self, outs: list[Output]) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """(logits (B, ways), micro (B, aux_dim), macro (A, aux_dim)) from the passes'
        outputs: the two separate passes as they are, or a joint pass split after its B
        micro rows (joint: its logits of the macro clips are dropped); micro and macro
        None without a macro pass."""
        n = self.y.shape[0]
        if self.aux_fn is None:
            return outs[0], None, None
        if self.aux_norm == "joint":
            logits, feats = outs[0]
            return logits[:n], feats[:n], feats[n:]
        if self.aux_norm == "aux_joint":
            logits, feats = outs
            return logits, feats[:n], feats[n:]
        (logits, micro), macro = outs
        return logits, micro, macro

    def __call__(
        self, params: Params, outs: list[Output] | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """(λ1 CE + λ2 L_aux at θ = params, its terms: support_loss_before = CE (Eq. 2) and
        aux_loss = L_aux (Eq. 3 or squared MMD)); from `outs`, the passes' outputs at θ,
        where the caller has them (passes.py, `dual_branch_loss`)."""
        logits, micro, macro = self.branches(self.outputs(params) if outs is None else outs)
        ce = F.cross_entropy(logits, self.y)
        if self.aux_fn is None:  # λ2 = 0: MAML's inner loss
            return ce, {"support_loss_before": ce}
        aux = self.aux_fn(micro, macro)
        total = self.lambda_pri * ce + (1.0 - self.lambda_pri) * aux
        return total, {"support_loss_before": ce, "aux_loss": aux}


def dual_branch_objective(
    model: nn.Module,
    buffers: Params,
    x: Tensor,
    y: Tensor,
    aux_x: Tensor | None,
    lambda_pri: float,
    aux_fn: AuxLossFn,
    aux_norm: AuxNorm = "separate",
    update_stats: bool = False,
    where: str = "the support set",
) -> DualBranchObjective:
    """The dual-branch loss of micro clips x: (B, M, C, H, W) with labels y: (B,) and macro
    clips aux_x: (A, M, C, H, W), through the backbone as `dual_branch_passes` says.
    λ1 = 1 (λ2 = 0) leaves L_aux and the macro clips out; otherwise they are required, and
    their absence is an error naming `where`."""
    if lambda_pri == 1.0:
        aux_x, aux_fn = None, None
    elif aux_x is None or aux_x.shape[0] == 0:
        raise ValueError(
            f"{where} has no auxiliary macro clips (aux_x), but lambda_pri < 1 needs them "
            "for L_aux; give the episodes an auxiliary pool (data.auxiliary, "
            "episode.aux_shots > 0) or set learner.lambda_pri=1"
        )
    passes = dual_branch_passes(x, aux_x, aux_norm)
    return DualBranchObjective(
        model, buffers, passes, y, lambda_pri, aux_fn, aux_norm, update_stats
    )


class DualBranchLoss(NamedTuple):
    total: Tensor  # λ1 · ce + λ2 · aux, 0-d
    ce: Tensor  # Eq. 2 on the micro clips, 0-d
    aux: Tensor | None  # L_aux between micro and macro features, 0-d; None when λ2 = 0
    logits: Tensor  # (B, ways) of the micro clips


def dual_branch_loss(
    model: nn.Module,
    params: Params,
    buffers: Params,
    x: Tensor,
    y: Tensor,
    aux_x: Tensor | None,
    lambda_pri: float,
    aux_fn: AuxLossFn,
    update_stats: bool = False,
    aux_norm: AuxNorm = "separate",
    where: str = "the batch",
) -> DualBranchLoss:
    """`DualBranchObjective` at θ = params with its terms and the micro clips' logits
    (the supervised learner scores them); `update_stats` goes to the first pass."""
    objective = dual_branch_objective(
        model, buffers, x, y, aux_x, lambda_pri, aux_fn, aux_norm, update_stats, where
    )
    outs = objective.outputs(params)
    total, terms = objective(params, outs)
    return DualBranchLoss(
        total, terms["support_loss_before"], terms.get("aux_loss"), objective.branches(outs)[0]
    )


def grad_ratio(objective: DualBranchObjective, params: Params, names: Sequence[str]) -> Tensor:
    """‖∇_names λ2·L_aux‖ / ‖∇_names λ1·CE‖ at θ = params, L2 norms over every adapted
    parameter together: the share of the first inner step that the auxiliary term
    drives (0 when λ2 = 0). A detached 0-d tensor."""
    theta = trainable(params, names)
    _, terms = objective(theta)
    if "aux_loss" not in terms:
        return torch.zeros_like(terms["support_loss_before"]).detach()
    leaves = [theta[n] for n in names]
    lambda_pri = objective.lambda_pri
    ce = torch.autograd.grad(
        lambda_pri * terms["support_loss_before"],
        leaves,
        retain_graph=True,
        allow_unused=True,
        materialize_grads=True,
    )
    aux = torch.autograd.grad(
        (1.0 - lambda_pri) * terms["aux_loss"], leaves, allow_unused=True, materialize_grads=True
    )
    return (l2(aux) / l2(ce)).detach()


def l2(grads: tuple[Tensor, ...]) -> Tensor:
    """The L2 norm of a list of tensors taken together, 0-d."""
    return torch.sqrt(sum(g.pow(2).sum() for g in grads))


class Lightman(BilevelLearner):
    """Inner loss λ1 CE + λ2 L_aux; every parameter adapts (h_aux included)."""

    cfg: LightmanConfig

    def make_objective(self, model, params, buffers, x, y, aux_x, where, aux_y=None):
        cfg = self.cfg
        return dual_branch_objective(
            model,
            buffers,
            x,
            y,
            aux_x,
            cfg.lambda_pri,
            aux_loss_fn(cfg, y, aux_y),
            cfg.aux_norm,
            where=f"lightman: {where}",
        )

    def inner_diagnostics(self, bind, params, names):
        if not self.cfg.log_grad_ratio:
            return {}
        return {"aux_ce_grad_ratio": grad_ratio(bind(params), params, names)}

"""The paper's "no bi-level optimisation" ablation (Table 3): plain supervised learning.

Training, per task (a batch of labelled clips): the gradient at θ of the joint loss
    λ1 CE(h_pri(g(x)), c) + λ2 L_aux(h_aux(g(x)), h_aux(g(aux)))
on all the task's labelled clips x = support + query, with c their GLOBAL classes
(`TaskLike.classes[y]`: the same class is the same output of h_pri in every episode,
where the episode labels 0..N-1 name different classes each time), so one optimiser step
per meta-batch ("update the network only once per iteration"). No inner loop. h_pri
therefore has one output per class of the primary pool (model.ways = the class count,
>= episode.ways). L_aux is lightman's (aux_norm, bandwidth, aux_align; the class form
pairs by the episode's ways, as aux_y does).
Test time: a fresh N-way head (h_pri's weight and bias re-initialised to 0, N = the
support set's ways) on the trained backbone, then test_inner_steps SGD steps at inner_lr
on the support CE over every parameter (`fine_tune`), then prediction. From a zero head
the first step moves the head alone (the backbone's gradient goes through the head's
weight), to W = α/S Σ_s (onehot(y_s) − 1/N) g(x_s)ᵀ: the support's class means of the
embedding, centred, a prototype classifier; with test_inner_steps = 0 every logit is 0.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lightman.models.learners.base import Learner, TaskLike
from lightman.models.learners.config import SupervisedConfig
from lightman.models.learners.functional import hit_rate
from lightman.models.learners.lightman import aux_loss_fn, dual_branch_loss
from lightman.models.learners.maml import fine_tune
from lightman.models.learners.params import Params


def global_labels(task: TaskLike, y: Tensor, outputs: int, where: str) -> Tensor:
    """classes[y]: the episode labels y (n,) as the pool's global classes, checked against
    h_pri's number of outputs."""
    classes = torch.as_tensor(task.classes, dtype=torch.int64, device=y.device)
    out = classes[y]
    if int(out.max()) >= outputs:
        raise ValueError(
            f"supervised: {where} has global class {int(out.max())}, but h_pri has {outputs} "
            "outputs; supervised trains on the pool's classes: set model.ways to the primary "
            "pool's class count"
        )
    return out


def pri_weight(model: nn.Module) -> str:
    """The name of h_pri's weight (outputs, D)."""
    return next(n for n in model.head_param_names() if n.endswith("weight"))


def joint_task_loss(
    model: nn.Module,
    params: Params,
    buffers: Params,
    task: TaskLike,
    cfg: SupervisedConfig,
    where: str,
) -> tuple[Tensor, dict[str, Tensor]]:
    """(The joint loss at θ = params, metrics) on the task's support + query clips with
    their global classes: lightman's dual-branch loss (`dual_branch_loss`), no inner loop."""
    x = torch.cat((task.support_x, task.query_x))  # (N*K + N*Q, M, C, H, W)
    ways = torch.cat((task.support_y, task.query_y))  # episode labels, for the class pairing
    y = global_labels(task, ways, params[pri_weight(model)].shape[0], where)
    out = dual_branch_loss(
        model,
        params,
        buffers,
        x,
        y,
        task.aux_x,
        cfg.lambda_pri,
        aux_loss_fn(cfg, ways, task.aux_y),
        update_stats=True,
        aux_norm=cfg.aux_norm,
        where=f"supervised: {where}",
    )
    n_support = task.support_x.shape[0]
    metrics = {
        "outer_loss": out.total,
        "query_acc": hit_rate(out.logits[n_support:], y[n_support:]),
    }
    if out.aux is not None:
        metrics["aux_loss"] = out.aux
    return out.total, metrics


def fresh_head(model: nn.Module, params: Params, ways: int) -> Params:
    """θ with h_pri replaced by an N-way head of zeros: weight (ways, D), bias (ways,)."""
    head = {n: params[n].new_zeros((ways, *params[n].shape[1:])) for n in model.head_param_names()}
    return {**params, **head}


class Supervised(Learner):
    """Per task the joint loss at θ on global classes; at test time a fresh N-way head is
    fine-tuned with the model like MAML adapts (CE, every parameter)."""

    cfg: SupervisedConfig

    def task_loss(self, model, params, buffers, task, where):
        return joint_task_loss(model, params, buffers, task, self.cfg, where)

    def adapt(
        self, model, params, buffers, support_x, support_y, aux_x=None, steps=None, aux_y=None
    ):
        ways = int(support_y.max()) + 1  # the support set's ways 0..N-1
        return fine_tune(
            model,
            fresh_head(model, params, ways),
            buffers,
            support_x,
            support_y,
            self.cfg.inner_lr,
            self.adapt_steps(steps),
        )

"""The paper's "no bi-level optimisation" ablation (Table 3): plain supervised learning.

Per task (a batch of labelled clips): the gradient at θ of the joint loss
λ1 CE(h_pri(g(x)), y) + λ2 L_aux(h_aux(g(x)), h_aux(g(aux))) on all the task's labelled
clips x = support + query, so one optimiser step per meta-batch ("update the network
only once per iteration"). No inner loop in training. At test time: fine-tuning,
test_inner_steps SGD steps at inner_lr on the support CE, then prediction.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightman.models.learners.base import (
    Learner, LearnerConfig, Params, TaskLike, accuracy, aux_loss_fn, forward, full_grads,
    require_aux,
)
from lightman.models.learners.lightman import dual_branch_loss
from lightman.models.learners.maml import fine_tune


def joint_task_grads(model: nn.Module, params: Params, buffers: Params, task: TaskLike,
                     cfg: LearnerConfig, where: str) -> tuple[Params, dict[str, Tensor]]:
    """(∇θ joint loss at θ = params (leaves), metrics) on the task's support + query clips."""
    x = torch.cat((task.support_x, task.query_x))  # (N*K + N*Q, M, C, H, W)
    y = torch.cat((task.support_y, task.query_y))
    if cfg.lambda_pri == 1.0:  # λ2 = 0: the CE alone, no macro clips needed
        logits = forward(model, params, buffers, x, "pri", update_stats=True)  # (N*K + N*Q, ways)
        loss = F.cross_entropy(logits, y)
        row = {}
    else:
        aux_x = require_aux(task.aux_x, "supervised", where)
        out = dual_branch_loss(model, params, buffers, x, y, aux_x, cfg.lambda_pri,
                               aux_loss_fn(cfg), update_stats=True)
        loss, logits = out.total, out.logits
        row = {"aux_loss": out.aux.detach()}
    n_support = task.support_x.shape[0]
    return full_grads(loss, params), {**row, "outer_loss": loss.detach(),
                                      "query_acc": accuracy(logits[n_support:], task.query_y)}


class Supervised(Learner):
    """Σ_i ∇θ joint loss at θ; fine-tunes like MAML adapts (CE, every parameter)."""

    def task_grads(self, model, params, buffers, task, where):
        return joint_task_grads(model, params, buffers, task, self.cfg, where)

    def adapt(self, model, params, buffers, support_x, support_y, aux_x=None, steps=None):
        return fine_tune(model, params, buffers, support_x, support_y, self.cfg.inner_lr,
                         self.adapt_steps(steps))

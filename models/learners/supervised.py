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

from lightman.models.learners.base import (
    BilevelLearner, accumulate, accuracy, aux_loss_fn, forward, full_grads, require_aux, sum_metrics, trainable,
)
from lightman.models.learners.lightman import dual_branch_loss
from lightman.models.learners.maml import cross_entropy_objective


class Supervised(BilevelLearner):
    """Σ_i ∇θ joint loss at θ; fine-tunes like MAML adapts (CE, every parameter)."""

    def make_objective(self, model, params, buffers, x, y, aux_x, where):
        return cross_entropy_objective(model, buffers, x, y)

    def meta_grads(self, model, params, buffers, tasks):
        if not tasks:
            raise ValueError("supervised.meta_grads: the meta-batch has no tasks")
        cfg = self.cfg
        theta = trainable(params)
        total, rows = None, []
        with torch.enable_grad():
            for i, task in enumerate(tasks):
                x = torch.cat((task.support_x, task.query_x))  # (N*K + N*Q, M, C, H, W)
                y = torch.cat((task.support_y, task.query_y))
                if cfg.lambda_pri == 1.0:  # λ2 = 0: the CE alone, no macro clips needed
                    logits = forward(model, theta, buffers, x, "pri", update_stats=True)
                    loss = F.cross_entropy(logits, y)
                    row = {}
                else:
                    aux_x = require_aux(task.aux_x, "supervised", f"task {i} of the meta-batch")
                    out = dual_branch_loss(model, theta, buffers, x, y, aux_x, cfg.lambda_pri, aux_loss_fn(cfg),
                                           update_stats=True)
                    loss, logits = out.total, out.logits
                    row = {"aux_loss": out.aux.detach()}
                total = accumulate(total, full_grads(loss, theta))
                n_support = task.support_x.shape[0]
                rows.append({**row, "outer_loss": loss.detach(),
                             "query_acc": accuracy(logits[n_support:], task.query_y)})
        return total, sum_metrics(rows)

"""Reptile (Nichol & Schulman 2018), first order by construction.

Per task i: θ_i = k = reptile_steps steps of plain SGD at α = inner_lr on all the task's
labelled clips (support and query together, full batch), from θ: the shared inner loop
with the CE as its objective and no graph through the steps. The task's meta-gradient
θ − θ_i is the gradient of ½‖θ − θ_i‖² with θ_i held fixed, which `task_loss` returns:
the trainer divides the sum over tasks by the task count and hands it to its optimiser
as a gradient, so a plain SGD step with learning rate ε is Reptile's
θ ← θ + ε · mean_i (θ_i − θ); Adam (the trainer's default) moves along the same direction
with its own per-weight step sizes. Every SGD pass may update running norm statistics,
as plain SGD on a model with batch norm does.
At test time: test_inner_steps SGD steps on the support set, as MAML.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightman.models.learners.base import Learner
from lightman.models.learners.config import ReptileConfig
from lightman.models.learners.functional import Objective, forward, hit_rate, inner_loop
from lightman.models.learners.maml import fine_tune
from lightman.models.learners.params import Params, trainable


def labelled_objective(
    model: nn.Module, buffers: Params, x: Tensor, y: Tensor, n_support: int
) -> Objective:
    """θ -> CE(h_pri(g(x; θ)), y) on a task's support + query clips x: (S + Q, M, C, H, W),
    y: (S + Q,), with its terms at θ as Reptile reports them: outer_loss (that CE) and
    query_acc (of the Q query rows)."""

    def objective(params: Params):
        logits = forward(model, params, buffers, x, "pri", update_stats=True)  # (S + Q, ways)
        loss = F.cross_entropy(logits, y)
        return loss, {"outer_loss": loss, "query_acc": hit_rate(logits[n_support:], y[n_support:])}

    return objective


class Reptile(Learner):
    """Meta-gradient Σ_i (θ − θ_i); adapts at test time like MAML (CE, every parameter)."""

    cfg: ReptileConfig

    def task_loss(self, model, params, buffers, task, where):
        x = torch.cat((task.support_x, task.query_x))  # (N*K + N*Q, M, C, H, W)
        y = torch.cat((task.support_y, task.query_y))
        objective = labelled_objective(model, buffers, x, y, task.support_x.shape[0])
        start = trainable(params)  # fresh leaves: the SGD steps never reach `params`
        adapted, metrics = inner_loop(
            objective, start, tuple(start), self.cfg.inner_lr, self.cfg.reptile_steps, False
        )
        # ½‖θ − θ_i‖², θ_i fixed: its gradient is θ − θ_i (exactly: 0.5 · 2 · (θ − θ_i))
        loss = sum(0.5 * (params[n] - adapted[n].detach()).pow(2).sum() for n in params)
        return loss, metrics

    def adapt(
        self, model, params, buffers, support_x, support_y, aux_x=None, steps=None, aux_y=None
    ):
        return fine_tune(
            model, params, buffers, support_x, support_y, self.cfg.inner_lr, self.adapt_steps(steps)
        )

"""Reptile (Nichol & Schulman 2018), first order by construction.

Per task i: k = reptile_steps steps of plain SGD at α = inner_lr on all the task's
labelled clips (support and query together, full batch), from θ to θ_i.
`meta_grads` returns Σ_i (θ − θ_i): the trainer divides it by the task count and
hands it to its optimiser as a gradient, so a plain SGD step with learning rate ε
is Reptile's θ ← θ + ε · mean_i (θ_i − θ); Adam (the trainer's default) moves along
the same direction with its own per-weight step sizes.
At test time: test_inner_steps SGD steps on the support set, as MAML.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lightman.models.learners.base import (
    Learner,
    Params,
    TaskLike,
    accuracy,
    forward,
    grads_of,
    sgd_step,
)
from lightman.models.learners.maml import fine_tune
from lightman.models.learners.params import trainable


def reptile_task_delta(
    model: nn.Module, params: Params, buffers: Params, task: TaskLike, lr: float, steps: int
) -> tuple[Params, dict[str, torch.Tensor]]:
    """(θ − θ_i, metrics): θ_i after `steps` SGD steps on the task's support + query clips."""
    x = torch.cat((task.support_x, task.query_x))  # (N*K + N*Q, M, C, H, W)
    y = torch.cat((task.support_y, task.query_y))
    n_support = task.support_x.shape[0]
    theta = trainable(params)
    metrics: dict[str, torch.Tensor] = {}
    for step in range(steps):
        # The last step's pass is the task's final one: it may update running norm statistics.
        logits = forward(
            model, theta, buffers, x, "pri", update_stats=step == steps - 1
        )  # (B, ways)
        loss = F.cross_entropy(logits, y)
        if step == 0:
            metrics = {
                "outer_loss": loss.detach(),
                "query_acc": accuracy(logits[n_support:], task.query_y),
            }
        theta = trainable(
            sgd_step(theta, grads_of(loss, theta, list(theta), create_graph=False), lr)
        )
    return {n: params[n].detach() - theta[n].detach() for n in params}, metrics


class Reptile(Learner):
    """Meta-gradient Σ_i (θ − θ_i); adapts at test time like MAML (CE, every parameter)."""

    def task_grads(self, model, params, buffers, task, where):
        cfg = self.cfg
        return reptile_task_delta(model, params, buffers, task, cfg.inner_lr, cfg.reptile_steps)

    def adapt(
        self, model, params, buffers, support_x, support_y, aux_x=None, steps=None, aux_y=None
    ):
        return fine_tune(
            model, params, buffers, support_x, support_y, self.cfg.inner_lr, self.adapt_steps(steps)
        )

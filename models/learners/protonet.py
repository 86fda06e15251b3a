"""Prototypical networks (Snell et al. 2017) on the clip embedding g(x) (head="embed").

Per task: prototype c_j = mean of the support embeddings of way j; query logits are
−||g(x_q) − c_j||²; the loss is their cross-entropy. No inner loop: `adapt` returns θ
and `logits` classifies by the nearest prototype. Support and query clips go through
g in one batch, as in the paper's reference implementation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightman.models.learners.base import Learner, TaskLike
from lightman.models.learners.config import ProtoNetConfig
from lightman.models.learners.functional import forward, hit_rate
from lightman.models.learners.params import Params


def prototypes(z: Tensor, y: Tensor, ways: int) -> Tensor:
    """Per-way mean of embeddings z: (S, D) with labels y: (S,) in 0..ways-1 -> (ways, D)."""
    onehot = F.one_hot(y, ways).to(z.dtype).T  # (ways, S)
    return (onehot @ z) / onehot.sum(dim=1, keepdim=True)


def proto_logits(z: Tensor, protos: Tensor) -> Tensor:
    """−||z_q − c_j||²: (Q, D), (ways, D) -> (Q, ways)."""
    return -(z.unsqueeze(1) - protos.unsqueeze(0)).pow(2).sum(-1)


def episode_ways(support_y: Tensor, where: str) -> int:
    """N, checking that every way 0..N-1 has at least one support clip."""
    ways = int(support_y.max()) + 1
    counts = torch.bincount(support_y, minlength=ways)
    if int(support_y.min()) < 0 or bool((counts == 0).any()):
        raise ValueError(
            f"protonet: {where}: support labels must cover 0..N-1, got counts {counts.tolist()}"
        )
    return ways


def support_logits(
    model: nn.Module,
    params: Params,
    buffers: Params,
    support_x: Tensor,
    support_y: Tensor,
    x: Tensor,
    update_stats: bool,
    where: str,
) -> Tensor:
    """Logits (n, N) of clips x: (n, M, C, H, W) from the prototypes of the support set
    (support_x, support_y), both embedded in one batch."""
    ways = episode_ways(support_y, where)
    n_support = support_x.shape[0]
    batch = torch.cat((support_x, x))  # (S + n, M, C, H, W)
    z = forward(model, params, buffers, batch, "embed", update_stats)  # (S + n, D)
    return proto_logits(z[n_support:], prototypes(z[:n_support], support_y, ways))


def proto_task_loss(
    model: nn.Module, params: Params, buffers: Params, task: TaskLike, where: str
) -> tuple[Tensor, dict[str, Tensor]]:
    """(CE(−||g(query) − c||², y_query) at θ = params, metrics) of one task."""
    logits = support_logits(
        model, params, buffers, task.support_x, task.support_y, task.query_x, True, where
    )  # (N*Q, N)
    loss = F.cross_entropy(logits, task.query_y)
    return loss, {"outer_loss": loss.detach(), "query_acc": hit_rate(logits, task.query_y)}


class ProtoNet(Learner):
    """Outer loss CE(−||g(query) − c||², y_query) per task; no inner loop."""

    cfg: ProtoNetConfig

    def task_loss(self, model, params, buffers, task, where):
        return proto_task_loss(model, params, buffers, task, where)

    def adapt(
        self, model, params, buffers, support_x, support_y, aux_x=None, steps=None, aux_y=None
    ):
        return {n: p.detach() for n, p in params.items()}

    def logits(self, model, adapted, buffers, support_x, support_y, x):
        with torch.no_grad():
            return support_logits(
                model, adapted, buffers, support_x, support_y, x, False, "the support set"
            )

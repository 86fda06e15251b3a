"""The pure pieces every learner is made of: the one model call, SGD steps, the inner loop
and the query loss. Free functions over a dict of parameters θ (name -> tensor) that never
change a tensor in place.

The inner loop is paper Eq. 4's first level (Eq. 1 for MAML):
    θ^{k+1} = θ^k − α ∇_{θ^k[names]} L_inner(θ^k),  θ^0 = θ,  k < steps,
and the query loss its second level's per-task term, CE(h_pri(g(query)); θ^K).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from lightman.models.learners.params import Params, trainable

# θ -> (0-d loss, named 0-d terms for the metrics). The terms may carry the graph: the
# inner loop keeps a detached copy of the first step's.
Objective = Callable[[Params], tuple[Tensor, dict[str, Tensor]]]


def forward(
    model: nn.Module,
    params: Params,
    buffers: Params,
    x: Tensor,
    head: str,
    update_stats: bool = False,
):
    """f_θ(x) with θ = params, the one way a learner calls the model: logits (head="pri"),
    aux features ("aux"), both ("both") or the embedding ("embed") of clips x: (B, M, C, H, W).
    `update_stats`: the pass may update running norm statistics (models/norm.py)."""
    return functional_call(
        model, (params, buffers), (x,), {"head": head, "update_stats": update_stats}
    )


def hit_rate(logits: Tensor, y: Tensor) -> Tensor:
    """Share of rows whose argmax is the label: logits (n, ways), y (n,) -> a detached 0-d
    tensor (the metric query_acc; tasks/metrics.py's `accuracy` scores label lists)."""
    return (logits.detach().argmax(dim=1) == y).float().mean()


def sgd_step(params: Params, grads: Params, lr: float) -> Params:
    """θ' = θ − α g for the names in `grads`; every other entry is the same tensor."""
    return {name: p - lr * grads[name] if name in grads else p for name, p in params.items()}


def grads_of(loss: Tensor, params: Params, names: Sequence[str], create_graph: bool) -> Params:
    """∇ loss w.r.t. params[names]; names the loss does not reach are left out."""
    grads = torch.autograd.grad(
        loss, [params[n] for n in names], create_graph=create_graph, allow_unused=True
    )
    return {n: g for n, g in zip(names, grads) if g is not None}


def full_grads(loss: Tensor, params: Params) -> Params:
    """∇θ loss for every name of params (zeros where the loss does not reach); frees the graph."""
    grads = torch.autograd.grad(
        loss, list(params.values()), allow_unused=True, materialize_grads=True
    )
    return dict(zip(params, grads))


def detached(terms: dict[str, Tensor]) -> dict[str, Tensor]:
    """The same named values without their graph."""
    return {k: v.detach() for k, v in terms.items()}


def inner_loop(
    objective: Objective,
    params: Params,
    names: Sequence[str],
    lr: float,
    steps: int,
    create_graph: bool,
) -> tuple[Params, dict[str, Tensor]]:
    """θ^{k+1} = θ^k − α ∇_{θ^k[names]} L_inner(θ^k) for k < steps (Eq. 4, first level).

    create_graph=True keeps each inner gradient differentiable, so a loss at the
    returned θ^K differentiates to second order w.r.t. θ^0; False makes the inner
    gradients constants (first order). Returns θ^K and the objective's terms at θ^0,
    detached.
    """
    first: dict[str, Tensor] = {}
    for step in range(steps):
        loss, terms = objective(params)
        if step == 0:
            first = detached(terms)
        params = sgd_step(params, grads_of(loss, params, names, create_graph), lr)
    return params, first


def sgd_adapt(
    make_objective: Callable[[Params], Objective],
    params: Params,
    names: Sequence[str],
    lr: float,
    steps: int,
) -> Params:
    """θ after `steps` first-order SGD steps at lr on L_inner = make_objective(θ) over
    θ[names] (test-time adaptation: no meta-gradient through it); detached, `params`
    untouched, θ itself for steps = 0. `make_objective(θ)` binds L_inner to the leaves θ."""
    if steps == 0:
        return {n: p.detach() for n, p in params.items()}
    theta = trainable(params, names)
    with torch.enable_grad():  # an evaluator's no_grad must not stop the adaptation
        adapted, _ = inner_loop(make_objective(theta), theta, names, lr, steps, create_graph=False)
    return {n: p.detach() for n, p in adapted.items()}


def query_loss(
    model: nn.Module, adapted: Params, buffers: Params, task, support_after: bool = False
) -> tuple[Tensor, dict[str, Tensor]]:
    """CE(h_pri(g(query)); θ_i), the outer loss of one task at its adapted θ_i, and its
    metrics (detached 0-d tensors): outer_loss, query_acc and, if `support_after`,
    support_loss_after, the support CE at θ_i (one more forward pass)."""
    # The query pass is the one that may update running norm statistics (norm.py).
    logits = forward(model, adapted, buffers, task.query_x, "pri", update_stats=True)  # (N*Q, ways)
    loss = F.cross_entropy(logits, task.query_y)
    metrics = {"outer_loss": loss.detach(), "query_acc": hit_rate(logits, task.query_y)}
    if support_after:
        with torch.no_grad():
            support_logits = forward(model, adapted, buffers, task.support_x, "pri")
            metrics["support_loss_after"] = F.cross_entropy(support_logits, task.support_y)
    return loss, metrics

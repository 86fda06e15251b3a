"""The memory-saving second-order outer gradient, opt-in: learner.memory="low" (BilevelConfig).

The default (memory="fast") differentiates one autograd graph through the unrolled inner
loop: every step's create_graph backward stays alive until the query loss is
differentiated. Here the same gradient, up to float rounding, is taken by reverse mode
through the inner loop with per-step recomputation: only θ^k is stored, and each step's
graph is rebuilt during the backward pass, so memory holds one step's graph, not
inner_steps of them (measured in benchmarks/meta_step.py). An inner loss made of several
forward passes (`passes.PassObjective`, lightman's support and macro clips) is
differentiated one pass at a time, so it holds one pass's graph.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import Tensor, nn

from lightman.models.learners.functional import (
    Objective,
    detached,
    full_grads,
    grads_of,
    query_loss,
    sgd_step,
)
from lightman.models.learners.params import Params, trainable
from lightman.models.learners.passes import PassObjective, split_grads, split_hvp


def checkpointed_task_loss(
    model: nn.Module,
    params: Params,
    buffers: Params,
    task,
    make_objective: Callable[[Params], Objective],
    names: Sequence[str],
    lr: float,
    steps: int,
    support_after: bool = False,
) -> tuple[Tensor, dict[str, Tensor]]:
    """(A 0-d tensor whose gradient w.r.t. `params` is the task's second-order outer
    gradient, metrics): what `BilevelLearner.task_loss` returns with memory="fast", by
    reverse mode through the inner loop with per-step recomputation.

    With Φ(θ) = θ − α ∇_{θ[names]} L_inner(θ) and θ^{k+1} = Φ(θ^k) (Eq. 4, first level),
    the chain rule takes v^K = ∇ CE(query; θ^K) back to the outer gradient v^0 by
        v^k = J_Φ(θ^k)ᵀ v^{k+1} = v^{k+1} − α ∇θ ⟨∇_{θ[names]} L_inner(θ^k), v^{k+1}[names]⟩
    (the Hessian is symmetric): one Hessian-vector product per step. Forward: first-order
    steps whose graphs are freed at once; θ^0..θ^{K-1} are kept (parameter copies only).
    Backward: step k's graph is rebuilt at θ^k, differentiated twice and freed. So the
    peak holds one step's second-order graph or the plain query pass, never both, at the
    price of one more forward+backward of L_inner per step. `make_objective(θ)` binds
    L_inner to the leaves θ (ANIL computes its support embedding from them).

    The returned loss is Σ_n ⟨θ_n, v^0_n⟩ with v^0 detached: its gradient is v^0 exactly
    (d⟨θ, v⟩/dθ = v), so the meta-batch loop differentiates every learner's task loss
    the same way. Its value is no loss to report: the metrics carry outer_loss.
    """
    theta = trainable(params, names)
    objective = make_objective(theta)
    split = isinstance(objective, PassObjective) and len(objective.passes) > 1
    points: list[tuple[Params, list | None]] = []  # θ^k and, if split, the pass outputs at θ^k
    metrics: dict[str, Tensor] = {}
    for step in range(steps):
        if split:
            grads, terms, outs = split_grads(objective, theta, names)
        else:
            loss, terms = objective(theta)
            grads, outs = grads_of(loss, theta, names, create_graph=False), None
        points.append((theta, outs))
        metrics = detached(terms) if step == 0 else metrics
        theta = trainable(sgd_step(theta, grads, lr), names)
    adapted = trainable(theta)
    loss, outer = query_loss(model, adapted, buffers, task, support_after)
    v = full_grads(loss, adapted)  # v^K; the query graph is gone from here on
    for point, outs in reversed(points):
        hvp = (
            split_hvp(objective, point, outs, v, names)
            if split
            else step_hvp(make_objective, point, v, names)
        )
        v = {n: v[n] - lr * hvp[n] for n in v}
    return sum((params[n] * v[n]).sum() for n in params), {**metrics, **outer}


def step_hvp(
    make_objective: Callable[[Params], Objective], point: Params, v: Params, names: Sequence[str]
) -> Params:
    """∇θ ⟨∇_{θ[names]} L_inner(θ), v[names]⟩ at θ = point, for every name: the step's graph
    rebuilt at θ and differentiated twice."""
    leaves = trainable(point)
    loss, _ = make_objective(leaves)(leaves)
    inner = grads_of(loss, leaves, names, create_graph=True)  # ∇ L_inner(θ), differentiable
    return full_grads(sum((g * v[n]).sum() for n, g in inner.items()), leaves)

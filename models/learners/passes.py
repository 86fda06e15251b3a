"""An inner loss split into forward passes, and its gradient and Hessian-vector product
taken with one pass's graph alive at a time (used by learner.memory="low").

LightmanNet's inner loss (paper Eq. 4, first level) depends on θ only through separate
forward passes of the model, each over its own batch and normalised with its own
statistics: the support clips (head "both") and the macro clips (head "aux"):
    L(θ) = ℓ(e_1, ..., e_P),  e_p = f_θ(x_p),  ℓ cheap (CE + MMD on (B, d) outputs).
With ḡ_p = ∂ℓ/∂e_p and J_p = ∂e_p/∂θ:
    ∇L = Σ_p J_pᵀ ḡ_p                                                        (1)
and, for a direction v on the adapted names (the Hessian and ∇²ℓ are symmetric),
    ∇θ ⟨∇_names L, v⟩ = Σ_p ∇θ ⟨J_p[names]ᵀ c, v⟩|_{c = ḡ_p} + Σ_p J_pᵀ w_p,   (2)
    w = ∇²ℓ · u,  u_p = J_p[names] v.
The first sum of (2) is one second-order graph per pass, whose backward also yields u_p
(the gradient with respect to c); the second needs every u first, so the biggest pass's
forward graph is kept for it and the others run once more. Peak memory: one pass's
second-order graph instead of all of them at once, for one more forward pass of every
batch (the outputs e at θ) and one more forward+backward of the smaller ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from lightman.models.learners.params import Params, trainable

Output = Tensor | tuple[Tensor, ...]  # what the model returns for one head


@runtime_checkable
class PassObjective(Protocol):
    """L(θ) = ℓ(f_θ(x_1, head_1), ..., f_θ(x_P, head_P)): θ enters only through the passes.
    Callable as a learner Objective, params -> (loss, terms); `lightman.DualBranchObjective`
    is one."""

    passes: tuple[tuple[Tensor, str], ...]  # (clips (B, M, C, H, W), head) per pass

    def run(self, params: Params, p: int) -> Output:
        """e_p = f_θ(x_p) for head_p."""

    def __call__(
        self, params: Params, outs: list[Output] | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """(ℓ, terms) at θ = params; from `outs`, the passes' outputs, where given (then
        differentiable in them: this module's leaves e)."""


def parts(out: Output) -> tuple[Tensor, ...]:
    return out if isinstance(out, tuple) else (out,)


def like(out: Output, tensors: Sequence[Tensor]) -> Output:
    """`tensors` in the structure of `out` (a tuple, or one tensor)."""
    return tuple(tensors) if isinstance(out, tuple) else tensors[0]


def outputs_at(obj: PassObjective, point: Params) -> list[Output]:
    """Every pass's output at θ = point, without a graph."""
    with torch.no_grad():
        return [obj.run(point, p) for p in range(len(obj.passes))]


def combined(obj: PassObjective, point: Params, outs: list[Output], create_graph: bool):
    """(loss, terms, e, ḡ): ℓ at the pass outputs at θ = point, which become leaves e
    (flat, per output tensor), and its gradient ḡ = ∂ℓ/∂e (differentiable in e if
    create_graph)."""
    e = [tuple(t.detach().requires_grad_() for t in parts(o)) for o in outs]
    loss, terms = obj(point, [like(o, ts) for o, ts in zip(outs, e)])
    flat = [t for ts in e for t in ts]
    cotangent = torch.autograd.grad(
        loss, flat, create_graph=create_graph, allow_unused=True, materialize_grads=True
    )
    return loss, terms, flat, list(cotangent)


def spans(outs: list[Output]) -> list[range]:
    """Indices of each pass's output tensors in the flat lists."""
    out, start = [], 0
    for o in outs:
        out.append(range(start, start + len(parts(o))))
        start += len(parts(o))
    return out


def split_grads(
    obj: PassObjective, point: Params, names: Sequence[str]
) -> tuple[Params, dict[str, Tensor], list[Output]]:
    """(∇_names L at θ = point by (1), one pass's first-order graph at a time; ℓ's
    terms; the pass outputs at θ, detached). Names no pass reaches are left out."""
    outs = outputs_at(obj, point)
    _, terms, _, cotangent = combined(obj, point, outs, create_graph=False)
    grads: Params = {}
    for p, span in enumerate(spans(outs)):
        theta = trainable(point, names)
        got = torch.autograd.grad(
            parts(obj.run(theta, p)),
            [theta[n] for n in names],
            [cotangent[i] for i in span],
            allow_unused=True,
        )
        for n, g in zip(names, got):
            if g is not None:
                grads[n] = grads[n] + g if n in grads else g
    return grads, terms, outs


def pass_curvature(
    obj: PassObjective,
    p: int,
    point: Params,
    cotangent: list[Tensor],
    v: Params,
    names: Sequence[str],
    keep: bool,
):
    """Pass p's term of the first sum of (2), u_p, and (if keep) its forward graph (θ, e_p)."""
    theta = trainable(point)
    out = parts(obj.run(theta, p))
    c = [t.detach().requires_grad_() for t in cotangent]
    vjp = torch.autograd.grad(
        out, [theta[n] for n in names], c, create_graph=True, allow_unused=True
    )
    dot = sum((g * v[n]).sum() for n, g in zip(names, vjp) if g is not None)  # ⟨J_p[names]ᵀ c, v⟩
    got = torch.autograd.grad(
        dot, [*theta.values(), *c], retain_graph=keep, allow_unused=True, materialize_grads=True
    )
    return (
        dict(zip(theta, got[: len(theta)])),
        list(got[len(theta) :]),
        (theta, out) if keep else None,
    )


def split_hvp(
    obj: PassObjective, point: Params, outs: list[Output], v: Params, names: Sequence[str]
) -> Params:
    """∇θ ⟨∇_names L(θ), v[names]⟩ at θ = point by (2), for every name of point; `outs` are
    the pass outputs at θ (from `split_grads`). One pass's second-order graph at a time."""
    _, _, flat, cotangent = combined(obj, point, outs, create_graph=True)
    index = spans(outs)
    order = sorted(range(len(outs)), key=lambda p: obj.passes[p][0].shape[0])  # the biggest last
    total = {n: torch.zeros_like(t) for n, t in point.items()}
    u: list[Tensor] = [torch.zeros_like(t) for t in flat]
    kept = None
    for p in order:
        part, u_p, graph = pass_curvature(
            obj, p, point, [cotangent[i].detach() for i in index[p]], v, names, keep=p == order[-1]
        )
        total = {n: total[n] + part[n] for n in total}
        for i, t in zip(index[p], u_p):
            u[i] = t
        kept = graph or kept
    live = [i for i, c in enumerate(cotangent) if c.requires_grad]  # ℓ's curvature: w = ∇²ℓ u
    w = (
        torch.autograd.grad(
            [cotangent[i] for i in live],
            flat,
            [u[i] for i in live],
            allow_unused=True,
            materialize_grads=True,
        )
        if live
        else [torch.zeros_like(t) for t in flat]
    )
    for p in reversed(order):  # Σ_p J_pᵀ w_p: the kept graph first, then free it
        theta, out = kept if p == order[-1] else (trainable(point), None)
        out = out if out is not None else parts(obj.run(theta, p))
        kept = None
        got = torch.autograd.grad(
            out,
            list(theta.values()),
            [w[i] for i in index[p]],
            allow_unused=True,
            materialize_grads=True,
        )
        total = {n: total[n] + g for n, g in zip(theta, got)}
    return total

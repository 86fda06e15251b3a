"""ANIL (Raghu et al. 2019): MAML whose inner loop adapts only the classifier head h_pri.

Inner, per task: w_i = w − α ∇w CE(h_pri(z; w), y) with z = g(support; θ_g) fixed
during the inner loop, so g runs once per task, not once per inner step. Outer:
∇θ Σ_i CE(h_pri(g(query; θ_g); w_i)) w.r.t. every parameter: the backbone gets its
gradient through the query pass and, to second order, through z in the inner steps.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from lightman.models.learners.base import BilevelLearner
from lightman.models.learners.config import ANILConfig
from lightman.models.learners.functional import Objective, forward
from lightman.models.learners.params import Params


def head_module(model: nn.Module) -> tuple[str, nn.Module]:
    """(dotted name, module) of h_pri: the module that owns every `model.head_param_names()`."""
    names = [n.split(".") for n in model.head_param_names()]
    if not names:
        raise ValueError(
            f"{type(model).__name__}.head_param_names() is empty: ANIL has no head to adapt"
        )
    prefix: list[str] = []
    for parts in zip(*(n[:-1] for n in names)):
        if len(set(parts)) > 1:
            break
        prefix.append(parts[0])
    if not prefix:
        raise ValueError(f"h_pri's parameters {model.head_param_names()} share no module")
    name = ".".join(prefix)
    return name, model.get_submodule(name)


def head_objective(
    model: nn.Module, params: Params, buffers: Params, x: Tensor, y: Tensor
) -> Objective:
    """w -> CE(h_pri(z; w), y), with z = g(x; θ) computed here once: (S, D).

    Relies on the model contract forward(x, "pri") == h_pri(forward(x, "embed")).
    """
    name, head = head_module(model)
    z = forward(model, params, buffers, x, "embed")  # (S, D), differentiable w.r.t. θ_g
    local = {n: n[len(name) + 1 :] for n in model.head_param_names()}

    def objective(adapted: Params):
        logits = functional_call(
            head, {short: adapted[full] for full, short in local.items()}, (z,)
        )
        loss = F.cross_entropy(logits, y)
        return loss, {"support_loss_before": loss}

    return objective


class ANIL(BilevelLearner):
    """Inner loss: the primary CE; only h_pri's parameters adapt."""

    cfg: ANILConfig

    def make_objective(self, model, params, buffers, x, y, aux_x, where, aux_y=None):
        return head_objective(model, params, buffers, x, y)

    def adapted_names(self, model, params):
        names = tuple(model.head_param_names())
        missing = [n for n in names if n not in params]
        if missing:
            raise ValueError(f"anil: head parameters {missing} are not in params")
        return names

"""The learner interface and the meta-batch loop, written once.

A learner is, per task, one function in the shape of torchopt's `loss_for_task`:
`task_loss(model, θ, buffers, task)` -> (outer loss, metrics), support -> adapted θ_i ->
query loss, whose gradient w.r.t. θ is the task's outer gradient; plus the test-time
adaptation to an unseen task's support set (`adapt`). `Learner.meta_grads` is the loop
over a meta-batch: it differentiates each task's loss and returns the SUM of the
gradients; the trainer all-reduces the sums across workers and divides by the global
task count, so 2 workers x T/2 tasks == 1 worker x T tasks. `logits` classifies clips
with adapted parameters, and `predict` = adapt + logits of the query set.

The MAML family (`BilevelLearner`: lightman, maml, anil) shares one task_loss, paper
Eq. 1 and Eq. 4 (written out in docs/architecture.md):
  inner, task i:  θ_i^{k+1} = θ_i^k − α ∇ L_inner(θ_i^k),  θ_i^0 = θ,  k < inner_steps
  outer:          ∇θ Σ_i CE(h_pri(g(query_i)); θ_i)   (second order: through the inner steps)
Each task's outer gradient is computed and its graph freed before the next task
starts, so memory holds one task's graph, not the meta-batch's.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from functools import partial
from typing import Protocol

import torch
from torch import Tensor, nn

from lightman.models.learners.config import AdaptConfig, BilevelConfig, LearnerConfig
from lightman.models.learners.functional import (
    Objective,
    detached,
    forward,
    full_grads,
    inner_loop,
    query_loss,
    sgd_adapt,
)
from lightman.models.learners.low_memory import checkpointed_task_loss
from lightman.models.learners.params import Params, trainable


class TaskLike(Protocol):
    """One episode τ_i; `lightman.tasks.episodes.Episode` satisfies it."""

    support_x: Tensor  # (N*K, M, C, H, W)
    support_y: Tensor  # (N*K,) int64, episode-relative 0..N-1
    query_x: Tensor  # (N*Q, M, C, H, W)
    query_y: Tensor  # (N*Q,) int64
    aux_x: Tensor | None  # (A, M, C, H, W) macro clips for the auxiliary branch
    aux_y: Tensor | None  # (A,) int64: the way a macro clip is paired with, -1 unpaired
    classes: tuple[int, ...]  # classes[j] = the pool's global class of way j


class Learner(ABC):
    """A per-task outer loss (`task_loss`) and a test-time `adapt`; subclasses only wire
    pure functions."""

    def __init__(self, cfg: LearnerConfig):
        self.cfg = cfg

    @abstractmethod
    def task_loss(
        self, model: nn.Module, params: Params, buffers: Params, task: TaskLike, where: str
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """(0-d tensor whose gradient w.r.t. `params`, leaves that require grad, is the
        task's outer gradient; its metrics, 0-d tensors). `where` names the task in
        errors."""

    def meta_grads(
        self, model: nn.Module, params: Params, buffers: Params, tasks: Sequence[TaskLike]
    ) -> tuple[Params, dict[str, float]]:
        """(Σ_i ∇θ task_loss(task i), one tensor per name of `params`; metrics summed over
        the tasks, with "tasks": their number); `params` are never changed.

        Each task's graph is freed (by differentiating its loss) before the next task
        starts, so memory holds one task's graph and the running sum. The returned values
        are deterministic given the inputs, but with ``model.cfg.bn_mode == "running"``
        and the model in training mode each task's outer pass (Reptile: each of its SGD
        passes) also updates the running norm statistics among `buffers` IN PLACE
        (models/norm.py: the learner asks for it with ``update_stats=True``): a side
        effect on the model's buffers, not on the gradients, which use batch statistics
        in training mode. In eval mode, or with bn_mode task / clip, nothing is written.
        """
        if not tasks:
            raise ValueError(f"{self.cfg.name}.meta_grads: the meta-batch has no tasks")
        theta = trainable(params)
        total: Params = {}
        rows: list[dict[str, Tensor]] = []
        with torch.enable_grad():  # an evaluator's no_grad must not silence the meta-gradient
            for i, task in enumerate(tasks):
                loss, metrics = self.task_loss(
                    model, theta, buffers, task, f"task {i} of the meta-batch"
                )
                grads = full_grads(loss, theta)  # frees the task's graph
                total = {n: total[n] + g for n, g in grads.items()} if total else grads
                rows.append(detached(metrics))
        return total, sum_metrics(rows)

    @abstractmethod
    def adapt(
        self,
        model: nn.Module,
        params: Params,
        buffers: Params,
        support_x: Tensor,
        support_y: Tensor,
        aux_x: Tensor | None = None,
        steps: int | None = None,
        aux_y: Tensor | None = None,
    ) -> Params:
        """Parameters fitted to an unseen task's support set (`steps` defaults to
        `cfg.test_inner_steps`; aux_y, the macro clips' ways, is needed by
        aux_align=class only); detached, `params` untouched."""

    def logits(
        self,
        model: nn.Module,
        adapted: Params,
        buffers: Params,
        support_x: Tensor,
        support_y: Tensor,
        x: Tensor,
    ) -> Tensor:
        """Logits (n, ways) of clips x: (n, M, C, H, W) by the classifier `adapt` fitted to
        the support set (support_x, support_y), with `adapted` its output; no graph. Here
        h_pri at the adapted θ, which needs no support clip; ProtoNet's classifier is made
        of the support set (its prototypes), hence the support arguments."""
        with torch.no_grad():
            return forward(model, adapted, buffers, x, "pri")

    def predict(self, model: nn.Module, params: Params, buffers: Params, task: TaskLike) -> Tensor:
        """Query logits (N*Q, ways) after adapting on the task's support set."""
        adapted = self.adapt(
            model, params, buffers, task.support_x, task.support_y, task.aux_x, aux_y=task.aux_y
        )
        return self.logits(model, adapted, buffers, task.support_x, task.support_y, task.query_x)

    def adapt_steps(self, steps: int | None) -> int:
        """`steps` of test-time adaptation, `cfg.test_inner_steps` if None (a learner that
        adapts by SGD: its config is an AdaptConfig)."""
        if steps is not None:
            return steps
        if not isinstance(self.cfg, AdaptConfig):
            raise TypeError(f"{self.cfg.name} does not adapt by SGD steps (no test_inner_steps)")
        return self.cfg.test_inner_steps


def sum_metrics(rows: Sequence[dict[str, Tensor]]) -> dict[str, float]:
    """Per-task metrics summed over the tasks, as floats, plus "tasks": the count."""
    out: dict[str, float] = {}
    for row in rows:
        for key, value in row.items():
            out[key] = out.get(key, 0.0) + float(value)
    out["tasks"] = float(len(rows))
    return out


class BilevelLearner(Learner):
    """The MAML family (lightman, maml, anil): one task's outer loss is the query CE after
    an SGD inner loop on an inner objective, and test-time adaptation runs the same loop.
    Subclasses say which objective the inner loop minimises (`make_objective`) and which
    parameters it updates (`adapted_names`). Its config is a BilevelConfig."""

    cfg: BilevelConfig

    @abstractmethod
    def make_objective(
        self,
        model: nn.Module,
        params: Params,
        buffers: Params,
        x: Tensor,
        y: Tensor,
        aux_x: Tensor | None,
        where: str,
        aux_y: Tensor | None = None,
    ) -> Objective:
        """L_inner of one task's support set (x, y) and macro clips aux_x (their ways aux_y);
        `params` is θ (for work done once per task); `where` names the task in errors."""

    def adapted_names(self, model: nn.Module, params: Params) -> tuple[str, ...]:
        """Names the inner loop updates (all parameters unless overridden)."""
        return tuple(params)

    def inner_diagnostics(
        self, bind: Callable[[Params], Objective], params: Params, names: Sequence[str]
    ) -> dict[str, Tensor]:
        """Extra metrics of the inner objective `bind(θ)` at θ = params, none unless
        overridden."""
        return {}

    def binder(
        self, model: nn.Module, buffers: Params, x: Tensor, y: Tensor, aux_x, aux_y, where: str
    ) -> Callable[[Params], Objective]:
        """θ -> L_inner of this support set, bound to θ (`make_objective`)."""
        return partial(
            self.make_objective,
            model,
            buffers=buffers,
            x=x,
            y=y,
            aux_x=aux_x,
            where=where,
            aux_y=aux_y,
        )

    def task_loss(self, model, params, buffers, task, where):
        """θ_i = inner_loop(θ) on the support set (Eq. 4, first level, second order unless
        first_order), then CE(h_pri(g(query)); θ_i). memory="low": the same gradient by
        low_memory.py's checkpointed reverse mode."""
        cfg = self.cfg
        names = self.adapted_names(model, params)
        bind = self.binder(
            model, buffers, task.support_x, task.support_y, task.aux_x, task.aux_y, where
        )
        if cfg.memory == "low" and not cfg.first_order:
            loss, metrics = checkpointed_task_loss(
                model,
                params,
                buffers,
                task,
                bind,
                names,
                cfg.inner_lr,
                cfg.inner_steps,
                cfg.log_support_after,
            )
        else:
            adapted, inner = inner_loop(
                bind(params), params, names, cfg.inner_lr, cfg.inner_steps, not cfg.first_order
            )
            loss, outer = query_loss(model, adapted, buffers, task, cfg.log_support_after)
            metrics = {**inner, **outer}
        return loss, {**metrics, **self.inner_diagnostics(bind, params, names)}

    def adapt(
        self, model, params, buffers, support_x, support_y, aux_x=None, steps=None, aux_y=None
    ):
        bind = self.binder(model, buffers, support_x, support_y, aux_x, aux_y, "the support set")
        return sgd_adapt(
            bind,
            params,
            self.adapted_names(model, params),
            self.cfg.inner_lr,
            self.adapt_steps(steps),
        )

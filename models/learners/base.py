"""What every meta-learner shares: its config, its interface, and the pure inner loop.

A learner is two functions: one task's outer gradient (`Learner.task_grads`, task ->
(grads, metrics)) and the test-time adaptation to an unseen task's support set
(`adapt`). `meta_batch_grads` turns the first into the SUM over a meta-batch's tasks
(`Learner.meta_grads`); the trainer all-reduces the sums across workers and divides by
the global task count, so 2 workers x T/2 tasks == 1 worker x T tasks. `logits`
classifies clips with adapted parameters, and `predict` = adapt + logits of the query set.

The algorithms are free functions over a dict of parameters θ (name -> tensor) that
never change a tensor in place; the model is called functionally,
``torch.func.functional_call(model, (params, buffers), (x,), {"head": ...})``.

The bi-level core (paper Eq. 1 and Eq. 4, written out in docs/architecture.md):
  inner, task i:  θ_i^{k+1} = θ_i^k − α ∇ L_inner(θ_i^k),  θ_i^0 = θ,  k < inner_steps
  outer:          ∇θ Σ_i CE(h_pri(g(query_i)); θ_i)   (second order: through the inner steps)
Each task's outer gradient is computed and its graph freed before the next task
starts, so memory holds one task's graph, not the meta-batch's.

Two ways to take the second-order outer gradient, the same numbers up to float
rounding (`LearnerConfig.memory`; measured in benchmarks/meta_step.py):
  fast: one autograd graph through the unrolled inner loop (every step's
        create_graph backward stays alive until the query loss is differentiated);
  low:  `checkpointed_outer_grads`, reverse mode through the inner loop with per-step
        recomputation: only θ_i^k is stored, and each step's graph is rebuilt during
        the backward pass, so memory holds one step's graph, not inner_steps of them;
        an inner loss made of several forward passes (`passes.PassObjective`) is
        differentiated one pass at a time, so it holds one pass's graph.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Literal, Protocol, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from lightman.models.learners.params import Params, trainable
from lightman.models.learners.passes import PassObjective, split_grads, split_hvp
from lightman.models.mmd import class_conditional, median_bandwidths, mmd2, paper_eq3

# params -> (scalar loss, named detached values for the metrics)
Objective = Callable[[Params], tuple[Tensor, dict[str, Tensor]]]
# One task's outer gradient (every name of θ) and metrics (detached 0-d tensors), the shape
# of torchopt's `loss_for_task`; the second argument names the task in errors.
TaskGrads = Callable[["TaskLike", str], tuple[Params, dict[str, Tensor]]]
AuxLossFn = Callable[[Tensor, Tensor], Tensor]

LearnerName = Literal["lightman", "maml", "anil", "reptile", "protonet", "supervised"]
AuxLossName = Literal["mmd", "mmd_unbiased", "paper_eq3"]
MemoryMode = Literal["fast", "low"]
AuxNorm = Literal["separate", "joint", "aux_joint"]
Bandwidth = Literal["fixed", "median"]
AuxAlign = Literal["marginal", "class"]
OptimizerName = Literal["auto", "adam", "adamw"]


@dataclass(frozen=True)
class LearnerConfig:
    """How a learner learns; the same names in code, YAML, CLI and reports."""

    name: LearnerName = "lightman"
    """Algorithm: lightman | maml | anil | reptile | protonet | supervised (global classes:
    model.ways = the primary pool's class count; see supervised.py)."""
    inner_lr: float = 0.1
    """α, the inner (task-level) SGD step; also the test-time step of every learner that
    adapts. Paper 5.1: 0.2. Measured on Conv4 (32 px) at initialisation: one step at any
    α in 0.05-0.4 lowers the support CE of 1- and 5-shot episodes, most at 0.05-0.1
    (1-shot) and 0.2 (5-shot); 0.1 sits between and keeps the second-order term small.
    lightman's inner step moves the CE by α·λ1, not α: the step-size controls are config
    alone, MAML at α·λ1 (name=maml inner_lr=0.055 for α = 0.1, λ1 = 0.55) and LightmanNet
    at α/λ1 (name=lightman inner_lr=0.1818..., whose CE step is then α); see
    benchmarks/aux_branch.py."""
    outer_lr: float = 1e-3
    """β, the learning rate of the trainer's Adam/AdamW. Paper 5.1: 0.1, which is far too large
    for Adam (it normalises the step to ~β per weight); 1e-3 is Adam's usual value."""
    weight_decay: float = 1e-4
    """Weight decay of the outer optimiser (paper 5.1), coupled or decoupled: `optimizer`."""
    optimizer: OptimizerName = "auto"
    """The outer optimiser (`outer_optimizer`). adam: torch's Adam, whose weight decay is
    coupled (added to the gradient, then normalised), so a weight whose gradient is 0 still
    moves by about outer_lr·sign(w) per step: with first_order=True h_aux has an outer
    gradient of exactly 0 and decays to a few per cent of its size within ~100 steps.
    adamw: decoupled weight decay (AdamW, w ← w − outer_lr·wd·w), which leaves such a
    weight all but unchanged. auto (default): adamw when first_order, else adam (every
    second-order result in the README was measured with Adam)."""
    inner_steps: int = 1
    """Inner SGD steps per task during meta-training (MAML family: lightman, maml, anil)."""
    test_inner_steps: int = 1
    """Adaptation steps on an unseen task's support set (paper 4.2: "usually only 1");
    0 predicts with θ itself."""
    lambda_pri: float = 0.55
    """λ1, weight of the primary CE in the inner loss; λ2 = 1 − λ1 weighs L_aux
    (paper 5.4: best 0.55 / 0.45). λ1 = 1 turns the auxiliary branch off (= maml)."""
    sigma: tuple[float, ...] = (1.0,)
    """Gaussian-kernel bandwidth(s) σ of L_aux (Eq. 3); several σ sum their kernels (mmd only).
    Under bandwidth=median these are multipliers of the task's median distance."""
    bandwidth: Bandwidth = "fixed"
    """How σ is set. fixed (default): σ = sigma. median: per task (and inner step),
    σ_k = sigma[k] · the detached median pairwise distance of the pooled micro and macro
    features (mmd.median_bandwidths): the kernel follows the features' scale (h_aux's
    outputs are unnormalised; their median distance is ~0.3 at initialisation on the
    demo's episodes, where σ = 1 is in the kernel's quadratic regime)."""
    aux_loss: AuxLossName = "mmd"
    """L_aux: mmd (squared MMD, biased) | mmd_unbiased | paper_eq3 (Eq. 3 as printed; mmd.py)."""
    aux_norm: AuxNorm = "separate"
    """How the macro clips are normalised beside the support clips (lightman, supervised).
    separate (default): two backbone passes, each normalised with its own batch
    statistics under bn_mode task/running: domain-specific normalisation, which equalises
    every channel's mean and variance of the two sets at every layer before L_aux sees
    them. joint: one pass over support + macro clips whose outputs are split, so both
    sets share one normalisation (and the support logits of the CE are normalised with
    the joint statistics too, unlike the query set's at test time). aux_joint: the CE on
    the support clips' own pass (as the query set is normalised), L_aux on a second pass
    over support + macro clips together (one normalisation for what L_aux compares); one
    pass more than the others. No difference under bn_mode=clip."""
    aux_align: AuxAlign = "marginal"
    """What L_aux aligns. marginal (default): the whole micro set against the whole macro
    set. class: the mean over the paired ways j (macro clips with aux_y = j) of
    L_aux(micro clips of way j, macro clips of way j), unpaired macro clips left out
    (mmd.class_conditional); needs the episodes' aux_y, and episode.aux_pairing=class."""
    first_order: bool = False
    """Drop the second-order term: treat each inner gradient as a constant (FOMAML)."""
    reptile_steps: int = 5
    """k, Reptile's SGD steps per task on its support + query clips (Nichol & Schulman: 5-10)."""
    memory: MemoryMode = "fast"
    """Second-order outer gradient of the MAML family (lightman, maml, anil):
    fast: backprop through the retained graph of the unrolled inner loop; low: the
    checkpointed exact backward (`checkpointed_outer_grads`): peak memory of one inner
    step instead of inner_steps of them and never the query pass on top, for one more
    support forward+backward per inner step. Same gradients; no effect with first_order."""
    log_support_after: bool = False
    """MAML family: also report support_loss_after, the support CE at the adapted θ_i.
    It costs one more forward pass over the support set per task (~9% of a meta-step
    with 5-way 5-shot episodes), so it is off in the hot path."""
    log_grad_ratio: bool = False
    """lightman: also report aux_ce_grad_ratio = ‖∇θ λ2·L_aux‖ / ‖∇θ λ1·CE‖ (L2 norms over
    every adapted parameter) at θ, the first inner step of each task: how much the
    auxiliary term moves the inner step. Costs one more forward pass over the support and
    macro clips and two first-order backward passes per task, so it is off by default."""

    def __post_init__(self) -> None:
        if self.name not in get_args(LearnerName):
            raise ValueError(
                f"name must be one of {list(get_args(LearnerName))}, got {self.name!r}"
            )
        if self.memory not in get_args(MemoryMode):
            raise ValueError(
                f"memory must be one of {list(get_args(MemoryMode))}, got {self.memory!r}"
            )
        for field, options in (
            ("aux_loss", AuxLossName),
            ("aux_norm", AuxNorm),
            ("bandwidth", Bandwidth),
            ("aux_align", AuxAlign),
            ("optimizer", OptimizerName),
        ):
            if getattr(self, field) not in get_args(options):
                raise ValueError(
                    f"{field} must be one of {list(get_args(options))}, "
                    f"got {getattr(self, field)!r}"
                )
        for field in ("inner_lr", "outer_lr"):
            if not getattr(self, field) > 0:
                raise ValueError(f"{field} must be > 0, got {getattr(self, field)!r}")
        if not self.weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        for field, low in (("inner_steps", 1), ("test_inner_steps", 0), ("reptile_steps", 1)):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{field} must be an integer >= {low}, got {value!r}")
        if not 0 <= self.lambda_pri <= 1:
            raise ValueError(
                f"lambda_pri (λ1) must lie in [0, 1] (λ2 = 1 − λ1), got {self.lambda_pri!r}"
            )
        if not self.sigma or not all(s > 0 for s in self.sigma):
            raise ValueError(f"sigma must be one or more bandwidths > 0, got {self.sigma!r}")
        if self.aux_loss == "paper_eq3" and len(self.sigma) != 1:
            raise ValueError(
                "aux_loss=paper_eq3 takes exactly one sigma (Eq. 3 has one kernel), "
                f"got {self.sigma!r}"
            )

    @property
    def lambda_aux(self) -> float:
        """λ2 = 1 − λ1."""
        return 1.0 - self.lambda_pri


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
    """A per-task outer gradient (`task_grads`) and a test-time `adapt`; subclasses only
    wire pure functions."""

    def __init__(self, cfg: LearnerConfig):
        self.cfg = cfg

    @abstractmethod
    def task_grads(
        self, model: nn.Module, params: Params, buffers: Params, task: TaskLike, where: str
    ) -> tuple[Params, dict[str, Tensor]]:
        """One task's outer gradient, one tensor per name of `params` (leaves that require
        grad, see `trainable`), and its metrics (detached 0-d tensors); the task's graph is
        freed before it returns. `where` names the task in errors."""

    def meta_grads(
        self, model: nn.Module, params: Params, buffers: Params, tasks: Sequence[TaskLike]
    ) -> tuple[Params, dict[str, float]]:
        """(Σ_i outer gradient of task i, one tensor per name of `params`; metrics summed
        over the tasks, with "tasks": their number); `params` are never changed.

        The returned values are deterministic given the inputs, but with
        ``model.cfg.bn_mode == "running"`` and the model in training mode each task's
        outer pass also updates the running norm statistics among `buffers` IN PLACE
        (models/norm.py: the learner asks for it with ``update_stats=True``): a side
        effect on the model's buffers, not on the gradients, which use batch statistics
        in training mode. In eval mode, or with bn_mode task / clip, nothing is written.
        """
        theta = trainable(params)
        # (task, where) -> (grads, metrics), θ and the model bound
        per_task = partial(self.task_grads, model, theta, buffers)
        return meta_batch_grads(per_task, tasks, self.cfg.name)

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
        """`steps` of test-time adaptation, `cfg.test_inner_steps` if None."""
        return self.cfg.test_inner_steps if steps is None else steps


# ---- pure helpers ---------------------------------------------------------------------


def forward(
    model: nn.Module,
    params: Params,
    buffers: Params,
    x: Tensor,
    head: str,
    update_stats: bool = False,
):
    """f_θ(x) with θ = params: logits (head="pri"), aux features, both, or the embedding."""
    return functional_call(
        model, (params, buffers), (x,), {"head": head, "update_stats": update_stats}
    )


def aux_loss_fn(
    cfg: LearnerConfig, y: Tensor | None = None, aux_y: Tensor | None = None
) -> AuxLossFn:
    """L_aux(micro features (n, d), macro features (m, d)) -> 0-d tensor, as configured:
    the kernel loss (aux_loss) at σ = sigma (bandwidth=fixed) or at σ_k = sigma[k] ·
    median pairwise distance of the pooled features (bandwidth=median, detached), over
    the whole sets (aux_align=marginal) or as the mean over paired ways j of
    L_aux(micro[y == j], macro[aux_y == j]) (aux_align=class: y (n,) are the micro clips'
    ways, aux_y (m,) the macro clips', -1 unpaired; the median is that of the whole task)."""
    if cfg.aux_align == "class" and (y is None or aux_y is None):
        raise ValueError(
            "aux_align=class needs the ways of the micro and macro clips (y, aux_y): "
            "give the episodes aux_y (tasks/episodes.py) or set aux_align=marginal"
        )

    def kernel_loss(micro: Tensor, macro: Tensor, sigmas: Sequence[float | Tensor]) -> Tensor:
        if cfg.aux_loss == "paper_eq3":
            return paper_eq3(micro, macro, sigmas[0])
        return mmd2(micro, macro, sigmas, unbiased=cfg.aux_loss == "mmd_unbiased")

    def loss(micro: Tensor, macro: Tensor) -> Tensor:
        fixed = cfg.bandwidth == "fixed"
        sigmas = cfg.sigma if fixed else median_bandwidths(micro, macro, cfg.sigma)
        if cfg.aux_align == "marginal":
            return kernel_loss(micro, macro, sigmas)
        return class_conditional(partial(kernel_loss, sigmas=sigmas), micro, y, macro, aux_y)

    return loss


def outer_optimizer(params: Iterable[Tensor], cfg: LearnerConfig) -> torch.optim.Optimizer:
    """The trainer's optimiser of θ (paper Eq. 4, second level): Adam (coupled weight
    decay) or AdamW (decoupled), `cfg.optimizer`; auto is AdamW in first-order mode, where
    h_aux has no outer gradient for coupled decay to be normalised against."""
    decoupled = cfg.optimizer == "adamw" or (cfg.optimizer == "auto" and cfg.first_order)
    kind = torch.optim.AdamW if decoupled else torch.optim.Adam
    return kind(params, lr=cfg.outer_lr, weight_decay=cfg.weight_decay)


def accuracy(logits: Tensor, y: Tensor) -> Tensor:
    """Share of argmax hits, a detached 0-d tensor."""
    return (logits.detach().argmax(dim=1) == y).float().mean()


def require_aux(aux_x: Tensor | None, learner: str, where: str) -> Tensor:
    """aux_x, or a clear error: the auxiliary branch needs macro-expression clips."""
    if aux_x is None or aux_x.shape[0] == 0:
        raise ValueError(
            f"{learner}: {where} has no auxiliary macro clips (aux_x), but lambda_pri < 1 needs "
            "them for L_aux; give the episodes an auxiliary pool (data.auxiliary, "
            "episode.aux_shots > 0) or set learner.lambda_pri=1"
        )
    return aux_x


def sgd_step(params: Params, grads: Params, lr: float) -> Params:
    """θ' = θ − α g for the names in `grads`; every other entry is the same tensor."""
    return {name: p - lr * grads[name] if name in grads else p for name, p in params.items()}


def grads_of(loss: Tensor, params: Params, names: Sequence[str], create_graph: bool) -> Params:
    """∇ loss w.r.t. params[names]; names the loss does not reach are left out."""
    grads = torch.autograd.grad(
        loss, [params[n] for n in names], create_graph=create_graph, allow_unused=True
    )
    return {n: g for n, g in zip(names, grads) if g is not None}


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
    gradients constants (first order). Returns θ^K and the objective's metrics at θ^0.
    """
    first: dict[str, Tensor] = {}
    for step in range(steps):
        loss, metrics = objective(params)
        if step == 0:
            first = metrics
        params = sgd_step(params, grads_of(loss, params, names, create_graph), lr)
    return params, first


def full_grads(loss: Tensor, params: Params) -> Params:
    """∇θ loss for every name of params (zeros where the loss does not reach); frees the graph."""
    grads = torch.autograd.grad(
        loss, list(params.values()), allow_unused=True, materialize_grads=True
    )
    return dict(zip(params, grads))


def accumulate(total: Params | None, grads: Params) -> Params:
    """total + grads, name by name (None: the first task's grads)."""
    if total is None:
        return grads
    return {name: total[name] + g for name, g in grads.items()}


def sum_metrics(rows: Sequence[dict[str, Tensor]]) -> dict[str, float]:
    """Per-task metrics summed over the tasks, as floats, plus "tasks": the count."""
    out: dict[str, float] = {}
    for row in rows:
        for key, value in row.items():
            out[key] = out.get(key, 0.0) + float(value)
    out["tasks"] = float(len(rows))
    return out


def meta_batch_grads(
    task_grads: TaskGrads, tasks: Sequence[TaskLike], learner: str
) -> tuple[Params, dict[str, float]]:
    """(Σ_i task_grads(task i), metrics summed over the tasks with "tasks": their number),
    the loop over a meta-batch every learner shares. Each task's graph is freed inside
    `task_grads`, before the next task starts, so memory holds one task's graph and the
    running sum, not the meta-batch's graphs."""
    if not tasks:
        raise ValueError(f"{learner}.meta_grads: the meta-batch has no tasks")
    total, rows = None, []
    with torch.enable_grad():  # an evaluator's no_grad must not silence the meta-gradient
        for i, task in enumerate(tasks):
            grads, metrics = task_grads(task, f"task {i} of the meta-batch")
            total = accumulate(total, grads)
            rows.append(metrics)
    return total, sum_metrics(rows)


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
    with torch.enable_grad():
        adapted, _ = inner_loop(make_objective(theta), theta, names, lr, steps, create_graph=False)
    return {n: p.detach() for n, p in adapted.items()}


def outer_pass(
    model: nn.Module, adapted: Params, buffers: Params, task: TaskLike, support_after: bool = False
) -> tuple[Tensor, dict[str, Tensor]]:
    """CE(h_pri(g(query)); θ_i), the outer loss at the adapted θ_i, and its metrics
    (detached 0-d tensors): outer_loss, query_acc and, if `support_after`,
    support_loss_after, the support CE at θ_i (one more forward pass)."""
    # The outer/query pass is the one that may update running norm statistics (norm.py).
    logits = forward(model, adapted, buffers, task.query_x, "pri", update_stats=True)  # (N*Q, ways)
    loss = F.cross_entropy(logits, task.query_y)
    metrics = {"outer_loss": loss.detach(), "query_acc": accuracy(logits, task.query_y)}
    if support_after:
        with torch.no_grad():
            support_logits = forward(model, adapted, buffers, task.support_x, "pri")
            metrics["support_loss_after"] = F.cross_entropy(support_logits, task.support_y)
    return loss, metrics


def task_outer_grads(
    model: nn.Module,
    params: Params,
    buffers: Params,
    task: TaskLike,
    objective: Objective,
    names: Sequence[str],
    lr: float,
    steps: int,
    first_order: bool,
    support_after: bool = False,
) -> tuple[Params, dict[str, Tensor]]:
    """One task's outer gradient ∇θ CE(h_pri(g(query)); θ_i), θ_i = inner_loop(θ) (Eq. 4).

    `params` must be leaves that require grad (see `trainable`). The task's whole graph
    (inner steps and query pass) is alive at once and freed before returning. Metrics:
    the objective's own at θ and `outer_pass`'s.
    """
    adapted, metrics = inner_loop(objective, params, names, lr, steps, create_graph=not first_order)
    loss, outer = outer_pass(model, adapted, buffers, task, support_after)
    return full_grads(loss, params), {**metrics, **outer}


def checkpointed_outer_grads(
    model: nn.Module,
    params: Params,
    buffers: Params,
    task: TaskLike,
    make_objective: Callable[[Params], Objective],
    names: Sequence[str],
    lr: float,
    steps: int,
    support_after: bool = False,
) -> tuple[Params, dict[str, Tensor]]:
    """`task_outer_grads`' second-order gradient and metrics, by reverse mode through the
    inner loop with per-step recomputation (LearnerConfig.memory="low").

    With Φ(θ) = θ − α ∇_{θ[names]} L_inner(θ) and θ^{k+1} = Φ(θ^k) (Eq. 4, first level),
    the chain rule takes v^K = ∇ CE(query; θ^K) back to the outer gradient v^0 by
        v^k = J_Φ(θ^k)ᵀ v^{k+1} = v^{k+1} − α ∇θ ⟨∇_{θ[names]} L_inner(θ^k), v^{k+1}[names]⟩
    (the Hessian is symmetric): one Hessian-vector product per step. Forward: first-order
    steps whose graphs are freed at once; θ^0..θ^{K-1} are kept (parameter copies only).
    Backward: step k's graph is rebuilt at θ^k, differentiated twice and freed. So the
    peak holds one step's second-order graph or the plain query pass, never both, at the
    price of one more forward+backward of L_inner per step. Where L_inner is a
    `PassObjective` of several passes (lightman: support and macro clips), each step's
    gradient and Hessian-vector product are taken one pass at a time (passes.py), so the
    peak holds one pass's second-order graph. `make_objective(θ)` binds L_inner to the
    leaves θ (ANIL computes its support embedding from them).
    """
    theta = trainable(params, names)
    objective = make_objective(theta)
    split = isinstance(objective, PassObjective) and len(objective.passes) > 1
    points: list[
        tuple[Params, list | None]
    ] = []  # θ^k and, if split, the pass outputs at θ^k; k < K
    metrics: dict[str, Tensor] = {}
    for step in range(steps):
        if split:
            grads, first, outs = split_grads(objective, theta, names)
        else:
            loss, first = objective(theta)
            grads, outs = grads_of(loss, theta, names, create_graph=False), None
        points.append((theta, outs))
        metrics = first if step == 0 else metrics
        theta = trainable(sgd_step(theta, grads, lr), names)
    adapted = trainable(theta)
    loss, outer = outer_pass(model, adapted, buffers, task, support_after)
    v = full_grads(loss, adapted)  # v^K; the query graph is gone from here on
    for point, outs in reversed(points):
        hvp = (
            split_hvp(objective, point, outs, v, names)
            if split
            else step_hvp(make_objective, point, v, names)
        )
        v = {n: v[n] - lr * hvp[n] for n in v}
    return v, {**metrics, **outer}


def step_hvp(
    make_objective: Callable[[Params], Objective], point: Params, v: Params, names: Sequence[str]
) -> Params:
    """∇θ ⟨∇_{θ[names]} L_inner(θ), v[names]⟩ at θ = point, for every name: the step's graph
    rebuilt at θ and differentiated twice."""
    leaves = trainable(point)
    loss, _ = make_objective(leaves)(leaves)
    inner = grads_of(loss, leaves, names, create_graph=True)  # ∇ L_inner(θ), differentiable
    return full_grads(sum((g * v[n]).sum() for n, g in inner.items()), leaves)


class BilevelLearner(Learner):
    """The MAML family (lightman, maml, anil): one task's outer gradient goes through an
    SGD inner loop on an inner objective, and test-time adaptation runs the same loop.
    Subclasses say which objective the inner loop minimises and which parameters it
    updates."""

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

    def task_grads(self, model, params, buffers, task, where):
        cfg = self.cfg
        names = self.adapted_names(model, params)
        bind = partial(
            self.make_objective,
            model,
            buffers=buffers,
            x=task.support_x,
            y=task.support_y,
            aux_x=task.aux_x,
            where=where,
            aux_y=task.aux_y,
        )
        if cfg.memory == "low" and not cfg.first_order:
            return checkpointed_outer_grads(
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
        return task_outer_grads(
            model,
            params,
            buffers,
            task,
            bind(params),
            names,
            cfg.inner_lr,
            cfg.inner_steps,
            cfg.first_order,
            cfg.log_support_after,
        )

    def adapt(
        self, model, params, buffers, support_x, support_y, aux_x=None, steps=None, aux_y=None
    ):
        bind = partial(
            self.make_objective,
            model,
            buffers=buffers,
            x=support_x,
            y=support_y,
            aux_x=aux_x,
            where="the support set",
            aux_y=aux_y,
        )
        return sgd_adapt(
            bind,
            params,
            self.adapted_names(model, params),
            self.cfg.inner_lr,
            self.adapt_steps(steps),
        )

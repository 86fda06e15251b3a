"""`LearnerConfig`: how a learner learns, the `learner.*` keys of every config.

One frozen dataclass for every algorithm (the fields an algorithm does not read are
ignored by it; splitting the config per algorithm would rename the dotted keys that
configs and tune spaces use). Every value is checked on construction, and an error
names the field and what it accepts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

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
    weight all but unchanged. auto (default) depends on first_order: adamw when
    first_order, else adam (every second-order result in docs/results.md was measured with
    Adam). `outer_optimizer_name` is the resolved choice; the trainer prints it and
    records it in the run's results."""
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
    checkpointed exact backward (low_memory.py, opt-in): peak memory of one inner
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

    @property
    def outer_optimizer_name(self) -> Literal["adam", "adamw"]:
        """The optimiser `optimizer` stands for: adam or adamw, auto resolved by first_order."""
        if self.optimizer == "auto":
            return "adamw" if self.first_order else "adam"
        return self.optimizer

"""The `learner.*` keys: one frozen config class per algorithm, built from a common part.

Users write flat dotted keys (`learner.name=maml learner.inner_lr=0.1`); `learner.name`
picks the algorithm and with it the class, whose fields are exactly the keys that
algorithm reads:

    LearnerConfig          name, outer_lr, weight_decay, optimizer     every learner
    AdaptConfig            + inner_lr, test_inner_steps                SGD adaptation at test time
    BilevelConfig          + inner_steps, first_order, memory,         the MAML family
                             log_support_after
    AuxBranchConfig        lambda_pri, sigma, bandwidth, aux_loss,     the dual-branch loss
                           aux_norm, aux_align

    lightman    LightmanConfig    = BilevelConfig + AuxBranchConfig + log_grad_ratio
    maml, anil  MAMLConfig, ANILConfig = BilevelConfig
    reptile     ReptileConfig     = AdaptConfig + reptile_steps
    protonet    ProtoNetConfig    = LearnerConfig
    supervised  SupervisedConfig  = AdaptConfig + AuxBranchConfig + classes

`learner_config(name, **keys)` builds one (`for_learner(cfg, name)`: another learner with
the keys `cfg` sets); a key the named algorithm does not read is an
error naming the key, the algorithm and the algorithms that read it (a value of None, or
`null` in YAML, leaves a key unset: how a shared base config is narrowed for one
learner). The config loader (platform/config.py) calls `LearnerConfig.config_variant` for
every `learner:` mapping. Every value is checked on construction, and an error names the
field and what it accepts. The figures behind the defaults are in docs/method.md
("Learner settings: measurements").
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal, get_args

LearnerName = Literal["lightman", "maml", "anil", "reptile", "protonet", "supervised"]
AuxLossName = Literal["mmd", "mmd_unbiased", "paper_eq3"]
MemoryMode = Literal["fast", "low"]
AuxNorm = Literal["separate", "joint", "aux_joint"]
Bandwidth = Literal["fixed", "median"]
AuxAlign = Literal["marginal", "class"]
OptimizerName = Literal["auto", "adam", "adamw"]


def _one_of(cfg: Any, field: str, options: Any) -> None:
    if getattr(cfg, field) not in get_args(options):
        raise ValueError(
            f"{field} must be one of {list(get_args(options))}, got {getattr(cfg, field)!r}"
        )


def _count(cfg: Any, field: str, low: int) -> None:
    value = getattr(cfg, field)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{field} must be an integer >= {low}, got {value!r}")


@dataclass(frozen=True)
class LearnerConfig:
    """The keys every learner reads: which algorithm, and the outer optimiser of θ."""

    name: LearnerName = "lightman"
    """Algorithm: lightman | maml | anil | reptile | protonet | supervised; it decides which
    other learner keys exist (models/learners/config.py)."""
    outer_lr: float = 1e-3
    """β, the learning rate of the trainer's Adam/AdamW. Paper 5.1: 0.1, which is far too large
    for Adam (it normalises the step to ~β per weight); 1e-3 is Adam's usual value."""
    weight_decay: float = 1e-4
    """Weight decay of the outer optimiser (paper 5.1), coupled or decoupled: `optimizer`."""
    optimizer: OptimizerName = "auto"
    """The outer optimiser (`outer_optimizer`). adam: torch's Adam, whose weight decay is
    coupled (added to the gradient, then normalised), so a weight whose gradient is 0 still
    moves by about outer_lr·sign(w) per step and decays. adamw: decoupled weight decay
    (AdamW, w ← w − outer_lr·wd·w), which leaves such a weight all but unchanged. auto
    (default): adamw for a MAML-family learner with first_order=true (h_aux's outer
    gradient is then exactly 0), adam otherwise (every second-order result in
    docs/results.md was measured with Adam). `outer_optimizer_name` is the resolved
    choice; the trainer prints it and records it in the run's results."""

    def __post_init__(self) -> None:
        expected = LEARNER_CONFIGS.get(self.name)
        if expected is None:
            raise ValueError(
                f"name must be one of {list(get_args(LearnerName))}, got {self.name!r}"
            )
        if type(self) is not expected:
            raise ValueError(
                f"name={self.name!r} is configured by {expected.__name__}, not "
                f"{type(self).__name__}: build it with learner_config({self.name!r}, ...)"
            )
        _one_of(self, "optimizer", OptimizerName)
        if not self.outer_lr > 0:
            raise ValueError(f"outer_lr must be > 0, got {self.outer_lr!r}")
        if not self.weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")

    @property
    def outer_optimizer_name(self) -> Literal["adam", "adamw"]:
        """The optimiser `optimizer` stands for: adam or adamw (auto: adam here; the MAML
        family resolves it by first_order)."""
        return "adam" if self.optimizer == "auto" else self.optimizer

    @classmethod
    def config_variant(cls, data: dict, prefix: str = "") -> tuple[type, dict]:
        """(The config class of `data["name"]`, `data` without its unset keys), or a
        ValueError naming every key that algorithm does not read and who reads it. The
        config loader's hook for a `learner:` mapping (platform/config.py)."""
        name = data.get("name") or cls.__dataclass_fields__["name"].default
        if name not in LEARNER_CONFIGS:
            raise ValueError(f"{prefix}name must be one of {list(LEARNER_CONFIGS)}, got {name!r}")
        kept = {k: v for k, v in data.items() if v is not None}
        target = LEARNER_CONFIGS[name]
        own = {f.name for f in dataclasses.fields(target)}
        problems = []
        for key in sorted(set(kept) - own):
            readers = [n for n, c in LEARNER_CONFIGS.items() if key in _names(c)]
            if not readers:
                problems.append(f"{prefix}{key} is no learner's key")
            else:
                problems.append(
                    f"{prefix}{key}={kept[key]!r} is set, but {name} does not read it "
                    f"(read by {', '.join(readers)})"
                )
        if problems:
            raise ValueError(
                "; ".join(problems)
                + f". The valid keys of {name}: {[prefix + k for k in _names(target)]}. Remove the "
                f"key, unset it ({prefix}KEY=null, e.g. over a shared base config), or "
                f"choose a learner that reads it ({prefix}name=...)"
            )
        return target, kept

    @classmethod
    def config_variants(cls) -> tuple[type, ...]:
        """Every concrete learner config: the keys a `learner:` mapping may hold are theirs."""
        return tuple(LEARNER_CONFIGS.values())


@dataclass(frozen=True)
class AdaptConfig(LearnerConfig):
    """The keys of a learner that adapts to a task by SGD steps on its support set."""

    inner_lr: float = 0.1
    """α, the SGD step on a task's support set: the inner step of the MAML family,
    Reptile's step, and the test-time step of every learner that adapts. Paper 5.1: 0.2;
    0.1 lies between the best one-step values for 1-shot and 5-shot episodes and keeps
    the second-order term small (docs/method.md, "Learner settings: measurements").
    lightman's inner step moves the CE by α·λ1, not α: see docs/method.md for the
    step-size controls by config alone."""
    test_inner_steps: int = 1
    """Adaptation steps on an unseen task's support set (paper 4.2: "usually only 1");
    0 predicts with θ itself."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.inner_lr > 0:
            raise ValueError(f"inner_lr must be > 0, got {self.inner_lr!r}")
        _count(self, "test_inner_steps", 0)


@dataclass(frozen=True)
class BilevelConfig(AdaptConfig):
    """The keys of the MAML family (lightman, maml, anil): an inner loop per task whose
    result the outer gradient differentiates."""

    inner_steps: int = 1
    """Inner SGD steps per task during meta-training."""
    first_order: bool = False
    """Drop the second-order term: treat each inner gradient as a constant (FOMAML)."""
    memory: MemoryMode = "fast"
    """Second-order outer gradient: fast: backprop through the retained graph of the
    unrolled inner loop; low: the checkpointed exact backward (low_memory.py, opt-in):
    peak memory of one inner step instead of inner_steps of them and never the query pass
    on top, for one more support forward+backward per inner step. Same gradients; no
    effect with first_order."""
    log_support_after: bool = False
    """Also report support_loss_after, the support CE at the adapted θ_i. It costs one more
    forward pass over the support set per task, so it is off in the hot path."""

    def __post_init__(self) -> None:
        super().__post_init__()
        _one_of(self, "memory", MemoryMode)
        _count(self, "inner_steps", 1)

    @property
    def outer_optimizer_name(self) -> Literal["adam", "adamw"]:
        """auto: adamw when first_order (h_aux's outer gradient is 0, and coupled decay
        would shrink it), else adam."""
        if self.optimizer == "auto":
            return "adamw" if self.first_order else "adam"
        return self.optimizer


@dataclass(frozen=True)
class AuxBranchConfig:
    """The keys of the dual-branch loss λ1 CE + λ2 L_aux (lightman's inner loss, the
    supervised learner's joint loss)."""

    lambda_pri: float = 0.55
    """λ1, weight of the primary CE; λ2 = 1 − λ1 weighs L_aux (paper 5.4: best 0.55 /
    0.45). λ1 = 1 turns the auxiliary branch off (lightman: = maml)."""
    sigma: tuple[float, ...] = (1.0,)
    """Gaussian-kernel bandwidth(s) σ of L_aux (Eq. 3); several σ sum their kernels (mmd only).
    Under bandwidth=median these are multipliers of the task's median distance."""
    bandwidth: Bandwidth = "fixed"
    """How σ is set. fixed (default): σ = sigma. median: per task (and inner step),
    σ_k = sigma[k] · the detached median pairwise distance of the pooled micro and macro
    features (mmd.median_bandwidths), so the kernel follows the features' scale (h_aux's
    outputs are unnormalised)."""
    aux_loss: AuxLossName = "mmd"
    """L_aux: mmd (squared MMD, biased) | mmd_unbiased | paper_eq3 (Eq. 3 as printed; mmd.py)."""
    aux_norm: AuxNorm = "separate"
    """How the macro clips are normalised beside the micro clips. separate (default): two
    backbone passes, each normalised with its own batch statistics under bn_mode
    task/running: domain-specific normalisation, which equalises every channel's mean and
    variance of the two sets at every layer before L_aux sees them. joint: one pass over
    micro + macro clips whose outputs are split, so both sets share one normalisation (and
    the CE's logits are normalised with the joint statistics too, unlike the query set's at
    test time). aux_joint: the CE on the micro clips' own pass (as the query set is
    normalised), L_aux on a second pass over micro + macro clips together (one
    normalisation for what L_aux compares); one pass more than the others. No difference
    under bn_mode=clip."""
    aux_align: AuxAlign = "marginal"
    """What L_aux aligns. marginal (default): the whole micro set against the whole macro
    set. class: the mean over the paired ways j (macro clips with aux_y = j) of
    L_aux(micro clips of way j, macro clips of way j), unpaired macro clips left out
    (mmd.class_conditional); needs the episodes' aux_y, and episode.aux_pairing=class."""

    def __post_init__(self) -> None:
        super().__post_init__()  # type: ignore[misc]  # the learner part it is mixed into
        for field, options in (
            ("aux_loss", AuxLossName),
            ("aux_norm", AuxNorm),
            ("bandwidth", Bandwidth),
            ("aux_align", AuxAlign),
        ):
            _one_of(self, field, options)
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


@dataclass(frozen=True)
class LightmanConfig(AuxBranchConfig, BilevelConfig):
    """LightmanNet (lightman.py): the MAML family's inner loop on λ1 CE + λ2 L_aux."""

    name: LearnerName = "lightman"
    log_grad_ratio: bool = False
    """Also report aux_ce_grad_ratio = ‖∇θ λ2·L_aux‖ / ‖∇θ λ1·CE‖ (L2 norms over every
    adapted parameter) at θ, the first inner step of each task: how much the auxiliary
    term moves the inner step. Costs one more forward pass over the support and macro
    clips and two first-order backward passes per task, so it is off by default."""


@dataclass(frozen=True)
class MAMLConfig(BilevelConfig):
    """MAML (maml.py): the inner loop on the primary CE, every parameter adapts."""

    name: LearnerName = "maml"


@dataclass(frozen=True)
class ANILConfig(BilevelConfig):
    """ANIL (anil.py): the inner loop on the primary CE, only h_pri adapts."""

    name: LearnerName = "anil"


@dataclass(frozen=True)
class ReptileConfig(AdaptConfig):
    """Reptile (reptile.py): reptile_steps SGD steps at inner_lr per task; first order by
    construction."""

    name: LearnerName = "reptile"
    reptile_steps: int = 5
    """k, Reptile's SGD steps per task on its support + query clips (Nichol & Schulman: 5-10)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        _count(self, "reptile_steps", 1)


@dataclass(frozen=True)
class ProtoNetConfig(LearnerConfig):
    """ProtoNet (protonet.py): nearest prototype of the support embeddings; no inner loop
    and no adaptation, so no inner_lr or steps."""

    name: LearnerName = "protonet"


@dataclass(frozen=True)
class SupervisedConfig(AuxBranchConfig, AdaptConfig):
    """The supervised baseline (supervised.py): the dual-branch loss on the pool's global
    classes, no inner loop; at test time a fresh N-way head fine-tuned at inner_lr."""

    name: LearnerName = "supervised"
    classes: int = 0
    """The primary pool's class count: h_pri's outputs during training, one per global
    class. A training config requires model.ways (h_pri's size) to equal it; 0 (default):
    it takes model.ways, and --cfg prints the resolved count."""

    def __post_init__(self) -> None:
        super().__post_init__()
        _count(self, "classes", 0)


LEARNER_CONFIGS: dict[str, type[LearnerConfig]] = {
    "lightman": LightmanConfig,
    "maml": MAMLConfig,
    "anil": ANILConfig,
    "reptile": ReptileConfig,
    "protonet": ProtoNetConfig,
    "supervised": SupervisedConfig,
}


def _names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def learner_config(name: str = "lightman", **keys: Any) -> LearnerConfig:
    """The config of learner `name` with `keys` (None leaves a key unset); a key `name`
    does not read is a ValueError naming it and the learners that read it."""
    cls, kept = LearnerConfig.config_variant({"name": name, **keys})
    return cls(**kept)


def record_keys(record: dict[str, Any]) -> dict[str, Any]:
    """The keys of a checkpoint's learner record that its learner reads. Records written
    before the configs were split per algorithm hold every algorithm's keys, of which the
    learner read only its own: the others are dropped here, and only here (a config a user
    writes is checked by `config_variant`)."""
    name = record.get("name") or LearnerConfig.__dataclass_fields__["name"].default
    if name not in LEARNER_CONFIGS:
        raise ValueError(f"name must be one of {list(LEARNER_CONFIGS)}, got {name!r}")
    own = _names(LEARNER_CONFIGS[name])
    return {k: v for k, v in record.items() if k in own}


def set_keys(cfg: LearnerConfig) -> dict[str, Any]:
    """`name` and every key of `cfg` whose value differs from its class's default (a key at
    its default sets nothing): what another learner built from `cfg` must read."""
    default = type(cfg)()
    return {
        f.name: getattr(cfg, f.name)
        for f in dataclasses.fields(cfg)
        if f.name == "name" or getattr(cfg, f.name) != getattr(default, f.name)
    }


def for_learner(cfg: LearnerConfig, name: str) -> LearnerConfig:
    """`cfg`'s settings as learner `name`'s config: every key `cfg` sets (`set_keys`), each
    of which `name` must read (a ValueError as `learner_config`'s otherwise). How one
    training config runs several learners (`lightman demo`'s learners)."""
    return learner_config(**{**set_keys(cfg), "name": name})


__all__ = [
    "ANILConfig",
    "AdaptConfig",
    "AuxBranchConfig",
    "BilevelConfig",
    "LEARNER_CONFIGS",
    "LearnerConfig",
    "LightmanConfig",
    "MAMLConfig",
    "ProtoNetConfig",
    "ReptileConfig",
    "SupervisedConfig",
    "for_learner",
    "learner_config",
    "record_keys",
    "set_keys",
]

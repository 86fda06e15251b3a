"""Meta-learners, one a file, all with the interface of `base.Learner`.

`build_learner(cfg)` picks one by `LearnerConfig.name`; `outer_optimizer(params, cfg)` is
the trainer's optimiser of θ.

Every algorithm is one function per task in the shape of torchopt's `loss_for_task`,
`task_loss(model, θ, buffers, task)` -> (outer loss, metrics): support -> adapted θ_i ->
query loss. The meta-batch loop that differentiates it is written once,
`Learner.meta_grads`. From the training loop (platform/loop.py) to the MMD, LightmanNet's
default configuration makes 5 calls:
    Learner.meta_grads                   the meta-batch: Σ_i ∇θ task_loss(task i)
    -> BilevelLearner.task_loss          one task: inner loop, then the query CE at θ_i
    -> functional.inner_loop             θ^{k+1} = θ^k − α ∇ L_inner(θ^k)
    -> lightman.DualBranchObjective      L_inner = λ1 CE + λ2 L_aux on the support set
    -> mmd.mmd2                          L_aux, bound to its σ by `lightman.aux_loss_fn`
(bandwidth=median and aux_align=class put one call each between the objective and mmd2;
memory="low" replaces the inner loop with low_memory.py's checkpointed reverse mode).

Modules: config.py (the `learner.*` keys: LearnerConfig, the common part, and one config
class per algorithm, `learner_config(name, **keys)`), base.py (the interface, the
meta-batch loop and the MAML family's task loss), functional.py (the model call, SGD
steps, the inner loop, the query loss), lightman.py (the dual-branch loss and L_aux),
maml.py, anil.py, reptile.py, protonet.py, supervised.py (the algorithms), optimizer.py
(the outer optimiser), low_memory.py and passes.py (the opt-in memory-saving second-order
gradient), params.py.
"""

from __future__ import annotations

from lightman.models.learners.anil import ANIL
from lightman.models.learners.base import Learner, TaskLike
from lightman.models.learners.config import LEARNER_CONFIGS, LearnerConfig, learner_config
from lightman.models.learners.lightman import Lightman
from lightman.models.learners.maml import MAML
from lightman.models.learners.optimizer import outer_optimizer
from lightman.models.learners.protonet import ProtoNet
from lightman.models.learners.reptile import Reptile
from lightman.models.learners.supervised import Supervised

LEARNERS: dict[str, type[Learner]] = {
    "lightman": Lightman,
    "maml": MAML,
    "anil": ANIL,
    "reptile": Reptile,
    "protonet": ProtoNet,
    "supervised": Supervised,
}


def build_learner(cfg: LearnerConfig | str) -> Learner:
    """The learner `cfg.name` with config `cfg` (a bare name takes every default)."""
    if isinstance(cfg, str):
        cfg = learner_config(cfg)
    if not isinstance(cfg, LearnerConfig):
        raise TypeError(
            f"build_learner takes a LearnerConfig or a learner name, got {type(cfg).__name__}"
        )
    return LEARNERS[cfg.name](cfg)


__all__ = [
    "LEARNERS",
    "LEARNER_CONFIGS",
    "Learner",
    "LearnerConfig",
    "TaskLike",
    "build_learner",
    "learner_config",
    "outer_optimizer",
]

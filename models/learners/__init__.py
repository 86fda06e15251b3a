"""Meta-learners, one a file, all with the interface of `base.Learner`.

`build_learner(cfg)` picks one by `LearnerConfig.name`.
"""

from __future__ import annotations

from lightman.models.learners.anil import ANIL
from lightman.models.learners.base import Learner, LearnerConfig, TaskLike
from lightman.models.learners.lightman import Lightman
from lightman.models.learners.maml import MAML
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
        cfg = LearnerConfig(name=cfg)
    if not isinstance(cfg, LearnerConfig):
        raise TypeError(
            f"build_learner takes a LearnerConfig or a learner name, got {type(cfg).__name__}"
        )
    return LEARNERS[cfg.name](cfg)


__all__ = ["LEARNERS", "Learner", "LearnerConfig", "TaskLike", "build_learner"]

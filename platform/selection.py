"""Which clips a run uses: the primary (micro) pool under its labels, and the auxiliary
(macro) pool. Shared by training and evaluation so both select exactly the same clips."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from lightman.platform.data import load_pool
from lightman.tasks.episodes import ClipPool
from lightman.tasks.splits import composite_pool


@dataclass(frozen=True)
class DataSelection:
    """Which clips of the index train and evaluate the model."""

    index: str = "data/index"  # index URI (local path or s3://)
    primary: tuple[str, ...] = ("casme2",)  # micro-expression datasets (primary MER tasks)
    auxiliary: tuple[str, ...] = ("ckplus",)  # macro-expression datasets (auxiliary alignment tasks)
    labels: Literal["index", "composite3"] = "index"  # the index's label scheme, or MEGC 2019 negative/positive/surprise
    val_fraction: float = 0.2  # share of primary subjects held out for model selection
    test_fraction: float = 0.3  # share of primary subjects held out for the final few-shot test

    def __post_init__(self) -> None:
        if not self.primary:
            raise ValueError("data.primary needs at least one dataset")
        if not (0 <= self.val_fraction < 1 and 0 < self.test_fraction < 1 and self.val_fraction + self.test_fraction < 1):
            raise ValueError("data.val_fraction and data.test_fraction must be in [0, 1) and sum below 1")


def primary_pool(data: DataSelection) -> ClipPool:
    """The micro-expression pool of the primary datasets, under the selected labels."""
    pool = load_pool(data.index, datasets=data.primary, expression="micro")
    if data.labels == "composite3":
        pool, _ = composite_pool(pool, name="composite3")
    return pool


def auxiliary_pool(data: DataSelection) -> ClipPool | None:
    """The macro-expression pool for the auxiliary branch (None when no dataset is named)."""
    return load_pool(data.index, datasets=data.auxiliary, expression="macro") if data.auxiliary else None

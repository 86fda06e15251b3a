"""Which clips a run uses: the primary (micro) pool under its labels, and the auxiliary
(macro) pool. Shared by training and evaluation so both select exactly the same clips.

Pools are read from the committed index with pyarrow alone: single-process training and
evaluation never import Ray (only the Ray Data reader in `data.py` does).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pyarrow as pa

from lightman.models.net import ModelConfig
from lightman.platform.config import ConfigError
from lightman.platform.index import BadIndexError, read_manifest, read_table
from lightman.tasks.episodes import ClipPool
from lightman.tasks.schema import INDEX_COLUMNS
from lightman.tasks.splits import composite_pool


@dataclass(frozen=True)
class DataSelection:
    """Which clips of the index train and evaluate the model."""

    index: str = "data/index"  # index URI (local path or s3://)
    primary: tuple[str, ...] = ("casme2",)  # micro-expression datasets (primary MER tasks)
    # macro-expression datasets (auxiliary alignment tasks)
    auxiliary: tuple[str, ...] = ("ckplus",)
    # the index's label scheme, or MEGC 2019 negative/positive/surprise
    labels: Literal["index", "composite3"] = "index"
    val_fraction: float = 0.2  # share of primary subjects held out for model selection
    test_fraction: float = 0.3  # share of primary subjects held out for the final few-shot test
    # seeds the subject split alone (None: the run's seed): training seeds that share one
    # split, e.g. the seeds that test a config selected on that split's validation subjects
    split_seed: int | None = None

    def __post_init__(self) -> None:
        if not self.primary:
            raise ValueError("data.primary needs at least one dataset")
        val, test = self.val_fraction, self.test_fraction
        if not (0 <= val < 1 and 0 < test < 1 and val + test < 1):
            raise ValueError(
                "data.val_fraction and data.test_fraction must be in [0, 1) and sum below 1"
            )


def primary_pool(
    data: DataSelection, *, subjects: Iterable[str] | None = None, frames: bool = True
) -> ClipPool:
    """The micro-expression pool of the primary datasets, under the selected labels (of
    these subjects only, if given; without frames, if `frames=False`: see `ClipPool`)."""
    pool = load_pool(
        data.index, datasets=data.primary, expression="micro", subjects=subjects, frames=frames
    )
    if data.labels == "composite3":
        pool, _ = composite_pool(pool, name="composite3")
    return pool


def auxiliary_pool(data: DataSelection) -> ClipPool | None:
    """The macro-expression pool for the auxiliary branch (None when no dataset is named)."""
    if not data.auxiliary:
        return None
    return load_pool(data.index, datasets=data.auxiliary, expression="macro")


def check_clip_shapes(model: ModelConfig, pools: dict[str, ClipPool | None]) -> None:
    """Clips the model cannot read fail here, naming the fields (before any worker starts).
    `pools`: what each pool is (primary, auxiliary, ...) -> the pool, or None (no pool)."""
    want = (model.frames, model.in_channels, model.image_size)
    for what, pool in pools.items():
        if pool is None:
            continue
        m, h, w, c = pool.clip_shape
        if (m, c, h) != want or h != w:
            raise ConfigError(
                f"the {what} clips of the index are (M={m}, C={c}, H={h}, W={w}), the model "
                f"reads model.frames={want[0]}, model.in_channels={want[1]}, "
                f"model.image_size={want[2]}"
            )


def unified_labels(table: pa.Table, manifest: dict) -> tuple[pa.Table, tuple[str, ...]]:
    """Relabel rows of several datasets onto one class list, by class name.

    Each dataset's `label` indexes its own manifest entry's class names. When the
    datasets in `table` share one class list it is kept; otherwise the classes are the
    union in sorted-dataset order (as `labels.build_scheme` orders a combined scheme)
    and every label is mapped through its class name.
    """
    names = sorted(set(table.column("dataset").to_pylist()))
    per_dataset = {d: tuple(manifest["datasets"][d]["label_scheme"]["class_names"]) for d in names}
    lists = set(per_dataset.values())
    if len(lists) <= 1:
        return table, (lists.pop() if lists else ())
    union: list[str] = []
    for d in names:
        union += [c for c in per_dataset[d] if c not in union]
    dataset_col = np.asarray(table.column("dataset").to_pylist(), dtype=object)
    old = table.column("label").to_numpy()
    new = np.empty_like(old)
    for d in names:
        lookup = np.array([union.index(c) for c in per_dataset[d]], dtype=old.dtype)
        rows = dataset_col == d
        new[rows] = lookup[old[rows]]
    i = table.schema.get_field_index("label")
    return table.set_column(i, table.schema.field(i), pa.array(new, type=pa.int32())), tuple(union)


def load_pool(
    uri: str,
    *,
    datasets: Iterable[str] | None = None,
    expression: str | None = None,
    subjects: Iterable[str] | None = None,
    frames: bool = True,
) -> ClipPool:
    """The filtered index as an in-memory `ClipPool` (frames (n, M, H, W, C) uint8); with
    `frames=False` the frame bytes are not read (labels, subjects and shape only)."""
    manifest = read_manifest(uri)
    columns = None if frames else [c for c in INDEX_COLUMNS if c not in ("frames", "flow")]
    table = read_table(
        uri, datasets=datasets, expression=expression, subjects=subjects, columns=columns
    )
    if table.num_rows == 0:
        raise BadIndexError(
            f"no clips in index at {uri} match datasets={datasets}, "
            f"expression={expression}, subjects={subjects}"
        )
    table, class_names = unified_labels(table, manifest)
    return ClipPool.from_table(table, class_names, frames=frames)

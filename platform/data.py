"""Ray Data over the committed index: read it and shard it per worker.

`read_dataset` reads exactly the files the manifest lists (never a folder listing, so
an uncommitted write is invisible). `worker_shards` / `ExactlyOnceDataConfig` give W
workers disjoint shards that together hold every row once per epoch: Ray Train's
default `streaming_split(equal=True)` makes the shards equal by dropping the remainder
rows, which would silently lose clips from datasets of a few hundred.
This is the only module of the read path that imports Ray; the in-memory episode pool
of single-process runs is loaded with pyarrow alone (`selection.load_pool`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import ray
from ray.train import DataConfig

from lightman.platform.index import INDEX_SCHEMA, select_read

if TYPE_CHECKING:
    from ray.data import DataIterator, Dataset


def read_dataset(
    uri: str,
    *,
    datasets: Iterable[str] | None = None,
    expression: str | None = None,
    subjects: Iterable[str] | None = None,
    columns: Iterable[str] | None = None,
) -> Dataset:
    """A Ray Dataset of the index at `uri` (local or s3://), filtered.

    Dataset and expression choose the files from the manifest; the subject filter and
    the column projection are Ray Data expressions, which its optimiser pushes into the
    Parquet read.
    """
    root, rel, cols, subjects = select_read(uri, datasets, expression, subjects, columns)
    if not rel:
        return ray.data.from_arrow(INDEX_SCHEMA.empty_table().select(cols))
    paths = [root.join(p).path for p in rel]
    ds = ray.data.read_parquet(paths, filesystem=root.fs, partitioning=None)
    if subjects is not None:
        from ray.data.expressions import col

        ds = ds.filter(expr=col("subject").is_in(subjects))
    if columns is not None:
        ds = ds.select_columns(cols)
    return ds


def worker_shards(ds: Dataset, world_size: int) -> list[DataIterator]:
    """`world_size` iterators over disjoint parts of `ds` that cover every row once per epoch.

    Blocks are handed out dynamically (`equal=False`), so shard sizes can differ. The
    iterators must be consumed concurrently (one per worker/thread), as Ray Train does.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    return ds.streaming_split(world_size, equal=False)


class ExactlyOnceDataConfig(DataConfig):
    """Ray Train `DataConfig` whose split datasets reach every row exactly once per epoch.

    Same as Ray's `DataConfig` except `streaming_split(..., equal=False)`: Ray's default
    (`equal=True`) trims the shards to equal length and drops the remainder. Datasets
    not in `datasets_to_split` still go whole to every worker.
    """

    def configure(self, datasets, world_size, worker_handles, worker_node_ids, **kwargs):
        split = set(datasets) if self._datasets_to_split == "all" else set(self._datasets_to_split)
        hints = worker_node_ids if self._enable_shard_locality else None
        output: list[dict] = [{} for _ in range(world_size)]
        for name, ds in datasets.items():
            if ds.name is None:
                ds.set_name(name)
            ds = ds.copy(ds)
            ds.context.execution_options = self._resolve_execution_options(name)
            if name in split:
                its = ds.streaming_split(world_size, equal=False, locality_hints=hints)
            else:
                its = [ds.iterator() for _ in range(world_size)]
            for rank, it in enumerate(its):
                output[rank][name] = it
        return output

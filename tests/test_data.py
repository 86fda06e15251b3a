"""Ray Data over the index: exact per-worker coverage, filters, label unification, pools."""

from __future__ import annotations

import threading
from collections import Counter

import numpy as np
import pytest

from lightman.platform import data, index, selection
from lightman.tasks.schema import frames_from_row


@pytest.fixture
def small_index(tmp_path, index_rows, dataset_entry):
    """An index of 13 casme2 micro clips (row groups of 2, files of 4) and 4 ckplus macro clips."""
    root = str(tmp_path / "idx")
    index.write_index(
        index_rows("casme2", 13, subjects=3),
        root,
        dataset_entry("casme2"),
        row_group_size=2,
        rows_per_file=4,
    )
    ck = index_rows("ckplus", 4, expression="macro", classes=2)
    index.write_index(ck, root, dataset_entry("ckplus", classes=2), row_group_size=2)
    return root


def _consume_concurrently(iterators, epochs: int) -> list[list[list[str]]]:
    """clip ids each iterator yields per epoch, consuming all of them at once (as workers do)."""
    seen = [[[] for _ in iterators] for _ in range(epochs)]

    def work(rank, it):
        for epoch in range(epochs):
            for batch in it.iter_batches(batch_size=3, batch_format="pyarrow"):
                seen[epoch][rank] += batch.column("clip_id").to_pylist()

    threads = [threading.Thread(target=work, args=(r, it)) for r, it in enumerate(iterators)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a shard iterator hung"
    return seen


@pytest.mark.integration
@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_worker_shards_cover_every_row_once_per_epoch(ray_local, small_index, world_size):
    ds = data.read_dataset(small_index, datasets=["casme2"], columns=["clip_id"])
    expected = sorted(
        index.read_table(small_index, datasets=["casme2"], columns=["clip_id"])
        .column(0)
        .to_pylist()
    )
    assert len(expected) == 13  # not a multiple of 2 or 3
    for epoch in _consume_concurrently(data.worker_shards(ds, world_size), epochs=2):
        assert len(epoch) == world_size
        everything = [cid for shard in epoch for cid in shard]
        assert sorted(everything) == expected  # each row once: no drop, no duplicate


@pytest.mark.integration
def test_exactly_once_data_config_vs_ray_default(ray_local, small_index):
    """Our DataConfig covers all 13 rows with 2 workers; Ray's default drops the remainder."""
    from ray.train import DataConfig

    ds = data.read_dataset(small_index, datasets=["casme2"], columns=["clip_id"])
    ours = data.ExactlyOnceDataConfig(enable_shard_locality=False).configure(
        {"train": ds}, 2, None, None
    )
    default = DataConfig(enable_shard_locality=False).configure({"train": ds}, 2, None, None)
    (ours_epoch,) = _consume_concurrently([o["train"] for o in ours], epochs=1)
    (default_epoch,) = _consume_concurrently([o["train"] for o in default], epochs=1)
    assert sorted(c for s in ours_epoch for c in s) == sorted(
        index.read_table(small_index, datasets=["casme2"]).column("clip_id").to_pylist()
    )
    assert sum(map(len, default_epoch)) == 12  # 13 rows, equal=True: 6 + 6
    assert (
        data.ExactlyOnceDataConfig(datasets_to_split=[]).configure({"pool": ds}, 2, None, None)[1][
            "pool"
        ]
        is not None
    )


@pytest.mark.integration
def test_read_dataset_filters_match_read_table(ray_local, small_index):
    ds = data.read_dataset(
        small_index,
        subjects=["casme2/s00", "ckplus/s01"],
        columns=["clip_id", "subject", "frames", "frames_shape"],
    )
    rows = ds.take_all()
    expected = index.read_table(small_index, subjects=["casme2/s00", "ckplus/s01"]).to_pylist()
    assert sorted(r["clip_id"] for r in rows) == sorted(r["clip_id"] for r in expected)
    assert set(rows[0]) == {"clip_id", "subject", "frames", "frames_shape"}
    by_id = {r["clip_id"]: r for r in expected}
    for r in rows:
        np.testing.assert_array_equal(frames_from_row(r), frames_from_row(by_id[r["clip_id"]]))
    assert data.read_dataset(small_index, expression="macro").count() == 4
    assert data.read_dataset(small_index, datasets=["ckplus"], expression="micro").count() == 0


def test_unified_labels_map_by_class_name(small_index):
    manifest = index.read_manifest(small_index)
    table = index.read_table(small_index)
    same, names = selection.unified_labels(
        index.read_table(small_index, datasets=["casme2"]), manifest
    )
    assert names == ("emotion0", "emotion1", "emotion2")

    # give ckplus different class names: the union is casme2's then ckplus's new ones
    manifest["datasets"]["ckplus"]["label_scheme"]["class_names"] = ["emotion1", "neutral"]
    relabelled, names = selection.unified_labels(table, manifest)
    assert names == ("emotion0", "emotion1", "emotion2", "neutral")
    for before, after, ds in zip(
        table.column("label").to_pylist(),
        relabelled.column("label").to_pylist(),
        table.column("dataset").to_pylist(),
    ):
        own = manifest["datasets"][ds]["label_scheme"]["class_names"]
        assert names[after] == own[before]
    assert Counter(names[a] for a in relabelled.column("label").to_pylist()) == {
        "emotion0": 5,
        "emotion1": 4 + 2,
        "emotion2": 4,
        "neutral": 2,
    }


def test_load_pool(small_index):
    pytest.importorskip("lightman.tasks.episodes")
    pool = selection.load_pool(
        small_index, datasets=["casme2"], subjects=["casme2/s01", "casme2/s02"]
    )
    table = index.read_table(
        small_index, datasets=["casme2"], subjects=["casme2/s01", "casme2/s02"]
    )
    assert pool.frames.shape == (8, 3, 8, 8, 3) and pool.frames.dtype == np.uint8
    assert list(pool.clip_ids) == table.column("clip_id").to_pylist()
    assert list(pool.labels) == table.column("label").to_pylist()
    assert tuple(pool.class_names) == ("emotion0", "emotion1", "emotion2")
    np.testing.assert_array_equal(pool.frames[0], frames_from_row(table.slice(0, 1).to_pylist()[0]))
    with pytest.raises(index.BadIndexError, match="no clips in index"):
        selection.load_pool(small_index, subjects=["casme2/s99"])

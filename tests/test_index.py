"""The Parquet index: round trip, manifest, content hash, atomic commits, dataset replacement."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from lightman.platform import index
from lightman.tasks.schema import INDEX_COLUMNS, Skipped, frames_from_row


def _strip_times(obj):
    """The manifest without its timestamps (what must be identical across re-runs)."""
    if isinstance(obj, dict):
        return {k: _strip_times(v) for k, v in obj.items() if k != "written_at"}
    if isinstance(obj, list):
        return [_strip_times(v) for v in obj]
    return obj


def _by_clip(rows):
    return {r["clip_id"]: r for r in rows}


def _parquet_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*.parquet"))


def test_round_trip_rows_frames_and_partitions(tmp_path, index_rows, dataset_entry):
    rows = index_rows("casme2", 11, repairs_every=4) + index_rows(
        "casme2", 5, expression="macro", seed=1
    )
    m = index.write_index(
        rows, str(tmp_path), dataset_entry("casme2"), row_group_size=4, rows_per_file=8
    )

    got = _by_clip(index.read_table(str(tmp_path)).to_pylist())
    assert got.keys() == _by_clip(rows).keys()
    for cid, row in _by_clip(rows).items():
        assert set(got[cid]) == set(INDEX_COLUMNS)
        for col in INDEX_COLUMNS:
            assert got[cid][col] == row[col], (cid, col)
        np.testing.assert_array_equal(frames_from_row(got[cid]), frames_from_row(row))
        assert frames_from_row(got[cid]).shape == (3, 8, 8, 3)

    v = m.entry("casme2")["version"]
    assert (tmp_path / "_v" / v / "dataset=casme2" / "expression=micro").is_dir()
    assert (tmp_path / "_v" / v / "dataset=casme2" / "expression=macro").is_dir()
    # 11 micro rows, 8 a file, 4 a row group: files of 8 (2 groups) and 3 (1 group)
    micro = sorted(f for f in m.files if "expression=micro" in f)
    assert [pq.ParquetFile(tmp_path / f).metadata.num_rows for f in micro] == [8, 3]
    assert [pq.ParquetFile(tmp_path / f).metadata.num_row_groups for f in micro] == [2, 1]
    assert _parquet_files(tmp_path) == sorted(m.files)


def test_manifest_contents(tmp_path, index_rows, dataset_entry):
    rows = index_rows("casme2", 9, subjects=3, repairs_every=2)
    skipped = [{"dataset": "casme2", "clip": "casme2/s09/x", "reason": "unknown emotion 'meh'"}]
    entry = dataset_entry(
        "casme2",
        source_uri="/data/casme2",
        adapter="casme2",
        skipped=skipped,
        preprocess={"frames": 3, "size": 8},
    )
    late = Skipped(
        "casme2", "casme2/s01/late", "onset 5 is not a frame on disk"
    )  # met while rows are made
    index.write_index(rows[:4] + [late] + rows[4:], str(tmp_path), entry)
    man = index.read_manifest(str(tmp_path))
    assert man["schema_version"] == 1 and man["format"] == "lightman-index"
    e = man["datasets"]["casme2"]
    names = e["label_scheme"]["class_names"]
    assert e["counts"]["clips"] == man["num_rows"] == 9
    assert e["counts"]["per_class"] == {
        names[k]: v for k, v in sorted(Counter(r["label"] for r in rows).items())
    }
    assert e["counts"]["per_subject"] == dict(Counter(r["subject"] for r in rows))
    assert e["counts"]["per_expression"] == {"micro": 9}
    assert e["repairs"] == {r["clip_id"]: r["repairs"] for r in rows if r["repairs"]}
    assert len(e["repairs"]) == 5
    assert (
        e["skipped"] == skipped + [late.to_dict()]
        and e["source_uri"] == "/data/casme2"
        and e["preprocess"]["size"] == 8
    )
    assert {"python", "lightman", "numpy", "pyarrow", "decord"} <= set(e["versions"])
    assert man["files"] == sorted(f["path"] for f in e["files"]) == _parquet_files(tmp_path)
    assert sum(f["rows"] for f in e["files"]) == 9
    assert man["content_hash"] == index.index_hash({"casme2": e["content_hash"]})


def test_content_hash_order_independent_sensitive_and_recomputable(
    tmp_path, index_rows, dataset_entry
):
    rows = index_rows("casme2", 10)
    shuffled = rows[:]
    random.Random(3).shuffle(shuffled)
    a = index.write_index(rows, str(tmp_path / "a"), dataset_entry("casme2"))
    b = index.write_index(shuffled, str(tmp_path / "b"), dataset_entry("casme2"), row_group_size=3)
    assert a.content_hash == b.content_hash

    changed = [dict(r) for r in rows]
    frames = bytearray(changed[4]["frames"])
    frames[0] ^= 1
    changed[4]["frames"] = bytes(frames)
    c = index.write_index(changed, str(tmp_path / "c"), dataset_entry("casme2"))
    assert c.content_hash != a.content_hash

    # where the source lay is not content: the same rows from another folder hash the same
    moved = [{**r, "source_uri": "s3://bucket/elsewhere/" + r["source_uri"]} for r in rows]
    d = index.write_index(moved, str(tmp_path / "d"), dataset_entry("casme2"))
    assert d.content_hash == a.content_hash

    # the hash is over the stored values, so it can be recomputed from the files
    table = index.read_table(str(tmp_path / "b"))
    assert index.combine_digests(index.table_digests(table)) == b.entry("casme2")["content_hash"]


def test_rerun_is_idempotent(tmp_path, index_rows, dataset_entry):
    rows = index_rows("casme2", 7)
    first = index.write_index(rows, str(tmp_path), dataset_entry("casme2"))
    files_before = _parquet_files(tmp_path)
    second = index.write_index(list(reversed(rows)), str(tmp_path), dataset_entry("casme2"))
    assert _strip_times(second.data) == _strip_times(first.data)
    assert _parquet_files(tmp_path) == files_before  # the same files, nothing new left behind


def _failing(rows, after):
    for i, r in enumerate(rows):
        if i == after:
            raise RuntimeError("preprocessing crashed")
        yield r


def test_failed_write_leaves_previous_index_intact(tmp_path, index_rows, dataset_entry):
    root = str(tmp_path)
    index.write_index(index_rows("casme2", 6), root, dataset_entry("casme2"), row_group_size=2)
    manifest_bytes = (tmp_path / "manifest.json").read_bytes()
    before = index.read_table(root)
    files_before = _parquet_files(tmp_path)

    new_rows = index_rows("casme2", 9, seed=7)
    with pytest.raises(RuntimeError, match="preprocessing crashed"):
        # 5 rows with row groups of 2: two groups are already on disk when it fails
        index.write_index(_failing(new_rows, 5), root, dataset_entry("casme2"), row_group_size=2)
    bad = dict(new_rows[3], frames_shape=[3, 8, 8, 4])
    with pytest.raises(ValueError, match=r"casme2/s01/micro_003.*frames_shape"):
        index.write_index(new_rows[:3] + [bad], root, dataset_entry("casme2"), row_group_size=2)

    assert (tmp_path / "manifest.json").read_bytes() == manifest_bytes
    assert index.read_table(root).equals(before)
    assert _parquet_files(tmp_path) == files_before
    assert sorted(p.name for p in (tmp_path / "_v").iterdir()) == [
        index.read_manifest(root)["datasets"]["casme2"]["version"]
    ]


def test_readers_ignore_uncommitted_files_and_commit_collects_them(
    tmp_path, index_rows, dataset_entry
):
    root = str(tmp_path)
    index.write_index(index_rows("casme2", 4), root, dataset_entry("casme2"))
    # what a killed writer leaves: a version folder the manifest never listed
    stray = tmp_path / "_v" / "deadbeef" / "dataset=casme2" / "expression=micro"
    stray.mkdir(parents=True)
    pq.write_table(index.read_table(root), stray / "part-00000.parquet")
    assert index.read_table(root).num_rows == 4
    assert all("deadbeef" not in f for f in index.index_files(root))
    index.write_index(index_rows("ckplus", 3, expression="macro"), root, dataset_entry("ckplus"))
    assert not (tmp_path / "_v" / "deadbeef").exists()


def test_ingesting_a_dataset_replaces_it_and_keeps_the_others(tmp_path, index_rows, dataset_entry):
    root = str(tmp_path)
    index.write_index(index_rows("casme2", 5), root, dataset_entry("casme2"))
    ck_rows = index_rows("ckplus", 4, expression="macro", classes=2)
    m2 = index.write_index(ck_rows, root, dataset_entry("ckplus", classes=2))
    assert m2.datasets == ("casme2", "ckplus") and m2.num_rows == 9
    ck_entry = m2.entry("ckplus")
    old_casme_version = m2.entry("casme2")["version"]

    m3 = index.write_index(index_rows("casme2", 3, seed=5), root, dataset_entry("casme2"))
    assert m3.datasets == ("casme2", "ckplus") and m3.num_rows == 7
    assert _strip_times(m3.entry("ckplus")) == _strip_times(ck_entry)
    assert not (tmp_path / "_v" / old_casme_version).exists()
    table = index.read_table(root)
    assert Counter(table.column("dataset").to_pylist()) == {"casme2": 3, "ckplus": 4}
    assert m3.content_hash == index.index_hash(
        {"casme2": m3.entry("casme2")["content_hash"], "ckplus": ck_entry["content_hash"]}
    )


def test_filters_and_columns(tmp_path, index_rows, dataset_entry):
    root = str(tmp_path)
    index.write_index(
        index_rows("casme2", 8, subjects=4) + index_rows("casme2", 3, expression="macro", seed=2),
        root,
        dataset_entry("casme2"),
        row_group_size=2,
    )
    index.write_index(index_rows("ckplus", 4, expression="macro"), root, dataset_entry("ckplus"))

    assert index.read_table(root).num_rows == 15
    assert set(index.read_table(root, datasets=["ckplus"]).column("dataset").to_pylist()) == {
        "ckplus"
    }
    macro = index.read_table(root, expression="macro")
    assert macro.num_rows == 7 and set(macro.column("expression").to_pylist()) == {"macro"}
    subs = index.read_table(
        root, subjects=["casme2/s01", "casme2/s03"], columns=["clip_id", "subject"]
    )
    assert subs.column_names == ["clip_id", "subject"]
    assert sorted(subs.column("clip_id").to_pylist()) == [
        "casme2/s01/macro_001",
        "casme2/s01/micro_001",
        "casme2/s01/micro_005",
        "casme2/s03/micro_003",
        "casme2/s03/micro_007",
    ]
    assert index.read_table(root, datasets="ckplus", expression="micro").num_rows == 0
    assert len(index.index_files(root, datasets=["casme2"], expression="micro")) == 1


def test_clear_errors(tmp_path, index_rows, dataset_entry):
    with pytest.raises(
        index.BadIndexError, match=r"no index at .*nowhere: manifest.json not found"
    ):
        index.read_table(str(tmp_path / "nowhere"))
    root = str(tmp_path / "idx")
    m = index.write_index(index_rows("casme2", 4), root, dataset_entry("casme2"))
    with pytest.raises(
        index.BadIndexError, match=r"datasets \['samm'\] not in index .* it has \['casme2'\]"
    ):
        index.read_table(root, datasets=["samm"])
    with pytest.raises(ValueError, match=r"prefixed by their dataset, e.g. 'casme2/s01'"):
        index.read_table(root, subjects=["s01"])
    with pytest.raises(ValueError, match=r"unknown index columns \['pixels'\]"):
        index.read_table(root, columns=["pixels"])
    with pytest.raises(ValueError, match="expression must be one of"):
        index.read_table(root, expression="nano")

    rows = index_rows("casme2", 4)
    with pytest.raises(
        ValueError, match=r"row 1 \(casme2/s01/micro_001\): missing columns \['flow'\]"
    ):
        index.write_index(
            [rows[0], {k: v for k, v in rows[1].items() if k != "flow"}],
            root,
            dataset_entry("casme2"),
        )
    with pytest.raises(
        ValueError, match=r"dataset 'casme2' differs from the entry's dataset 'samm'"
    ):
        index.write_index(rows, root, dataset_entry("samm"))
    with pytest.raises(ValueError, match=r"duplicate clip_id 'casme2/s00/micro_000' \(row 2\)"):
        index.write_index(rows[:2] + rows[:1], root, dataset_entry("casme2"))
    with pytest.raises(
        ValueError,
        match=r"row 2 \(casme2/s00/micro_002\): label 2 is outside the scheme's 2 classes",
    ):
        index.write_index(rows, root, dataset_entry("casme2", classes=2))
    with pytest.raises(ValueError, match=r"casme2/s00/micro_000: column 'onset'"):
        index.write_index([dict(rows[0], onset="ten")], root, dataset_entry("casme2"))
    with pytest.raises(ValueError, match=r"dataset entry lacks \['label_scheme'\]"):
        index.write_index(rows, root, {"dataset": "casme2"})
    assert index.read_manifest(root) == m.data  # none of the failures touched the index

    (Path(root) / m.files[0]).unlink()
    with pytest.raises(index.BadIndexError, match="is corrupt: manifest lists missing files"):
        index.read_table(root)
    (Path(root) / "manifest.json").write_text("{not json")
    with pytest.raises(index.BadIndexError, match="manifest.json is not valid JSON"):
        index.read_manifest(root)
    (Path(root) / "manifest.json").write_text(json.dumps(dict(m.data, schema_version=99)))
    with pytest.raises(index.BadIndexError, match="schema version 99"):
        index.read_manifest(root)


def test_empty_dataset_is_committed_with_its_skips(tmp_path, dataset_entry):
    skipped = [{"dataset": "samm", "clip": "samm/006/006_1_2", "reason": "folder missing"}]
    m = index.write_index([], str(tmp_path), dataset_entry("samm", skipped=skipped))
    assert m.entry("samm")["counts"]["clips"] == 0 and m.files == ()
    assert m.entry("samm")["skipped"] == skipped
    assert index.read_table(str(tmp_path)).num_rows == 0


def test_inspect_report_and_contact_sheet(tmp_path, index_rows, dataset_entry):
    import cv2

    from lightman.platform.inspect import (
        inspect_index,
        key_frames,
        magnified_difference,
        sample_clips,
    )

    root = str(tmp_path / "idx")
    skipped = [
        {"dataset": "casme2", "clip": "casme2/s05/EP01", "reason": "onset 9 is after offset 3"}
    ]
    rows = index_rows("casme2", 8, repairs_every=3)
    index.write_index(
        rows, root, dataset_entry("casme2", skipped=skipped, source_uri="/data/CASME2")
    )
    index.write_index(
        index_rows("ckplus", 3, expression="macro", classes=2),
        root,
        dataset_entry("ckplus", classes=2),
    )

    png = tmp_path / "sheet.png"
    report = inspect_index(root, str(png), clips=4)
    assert "11 clips in 2 dataset(s)" in report
    assert "casme2: 8 clips from /data/CASME2" in report and "ckplus: 3 clips" in report
    assert "per class: emotion0 3, emotion1 3, emotion2 2" in report
    assert "per subject (2): casme2/s00 4, casme2/s01 4" in report
    assert "casme2/s05/EP01: onset 9 is after offset 3" in report
    assert (
        "repaired clips: 3 (apex 3)" in report and "casme2/s00/micro_006: apex: missing" in report
    )
    assert "contact sheet (4 clips)" in report
    img = cv2.imread(str(png))
    assert img is not None and img.shape[0] > img.shape[1]  # 4 rows of 4 panels: taller than wide

    # the sample covers every (dataset, class) group before repeating one
    ids = [f"c{i}" for i in range(9)]
    groups = ["a"] * 5 + ["b"] * 3 + ["c"]
    pick = sample_clips(ids, groups, 3, seed=1)
    assert sorted(groups[ids.index(p)] for p in pick) == ["a", "b", "c"]
    assert (
        sample_clips(ids, groups, 20) == sample_clips(ids, groups, 20)
        and len(sample_clips(ids, groups, 20)) == 9
    )

    # key frames: first/last sampled and the one nearest the apex; difference ×10, clipped
    onset, apex, offset, apex_n = key_frames(rows[1])
    frames = frames_from_row(rows[1])
    nearest = int(np.argmin([abs(s - rows[1]["apex"]) for s in rows[1]["sampled_frames"]]))
    assert apex_n == rows[1]["sampled_frames"][nearest]
    np.testing.assert_array_equal(onset, frames[0])
    np.testing.assert_array_equal(apex, frames[nearest])
    np.testing.assert_array_equal(offset, frames[-1])
    a = np.zeros((2, 2, 3), np.uint8)
    b = np.array([[[3, 3, 3], [0, 0, 30]], [[255, 255, 255], [1, 2, 3]]], np.uint8)
    np.testing.assert_allclose(
        magnified_difference(a, b), [[30 / 255, 100 / 255], [1.0, 20 / 255]], rtol=1e-6
    )

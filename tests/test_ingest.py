"""Ingest end to end on the seeded generator's CASME II layout (local and s3://), and its steps."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import boto3
import numpy as np
import pytest

from lightman.platform import index
from lightman.platform.config import ConfigError, load_config
from lightman.platform.ingest import (
    IngestConfig,
    IngestError,
    format_summary,
    ingest,
    label_records,
    pool_map,
    process_clip,
    ray_map,
)
from lightman.tasks.datasets import LayoutError, scan
from lightman.tasks.labels import build_scheme
from lightman.tasks.preprocess import PreprocessConfig
from lightman.tasks.schema import ClipRecord, Skipped, frames_from_row
from lightman.tasks.synth import SetSize, SynthConfig, synthesize

TINY = PreprocessConfig(frames=4, size=32)


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory) -> Path:
    """A seeded CASME II release: 12 clips of 3 subjects (sheet quirks included), ground truth."""
    out = tmp_path_factory.mktemp("synth")
    synthesize(out, SynthConfig(seed=0, datasets=("casme2",), casme2=SetSize(3, 12, 200.0)))
    return out


@pytest.fixture
def casme2_src(synth_root, tmp_path) -> Path:
    """A private copy of the CASME II folder (tests may damage it)."""
    return Path(shutil.copytree(synth_root / "CASME2", tmp_path / "CASME2"))


def _truth(synth_root: Path) -> dict[str, dict]:
    clips = json.loads((synth_root / "synth_manifest.json").read_text())["clips"]
    return {f"casme2/{c['subject']}/{c['clip']}": c for c in clips}


def _strip(obj, keys=("written_at",)):
    if isinstance(obj, dict):
        return {k: _strip(v, keys) for k, v in obj.items() if k not in keys}
    if isinstance(obj, list):
        return [_strip(v, keys) for v in obj]
    return obj


def test_ingest_synthetic_casme2(synth_root, casme2_src, tmp_path):
    out = str(tmp_path / "idx")
    summary = ingest("casme2", str(casme2_src), out, IngestConfig(preprocess=TINY))
    truth = _truth(synth_root)
    man = index.read_manifest(out)
    entry = man["datasets"]["casme2"]
    table = index.read_table(out)
    scheme = build_scheme("native", ["casme2"])

    assert summary.ingested == table.num_rows == len(truth) == 12 and not summary.skipped
    assert sorted(table.column("clip_id").to_pylist()) == sorted(truth)
    for row in table.to_pylist():
        t = truth[row["clip_id"]]
        assert row["emotion"] == t["emotion"] and row["onset"] == t["onset"]
        assert scheme.class_names[row["label"]] == t["emotion"]
        assert frames_from_row(row).shape == (4, 32, 32, 3)
        assert (
            row["sampled_frames"][0] == row["onset"] and row["sampled_frames"][-1] == row["offset"]
        )
    # the generator's sheet quirks come back as recorded repairs
    quirky = {cid for cid, t in truth.items() if t["quirks"]}
    assert quirky and quirky <= set(entry["repairs"])
    assert (
        summary.repairs == entry["counts"]["repairs_by_kind"]
        and summary.repairs.get("apex", 0) >= 1
    )
    assert entry["label_scheme"] == {"name": "native", "class_names": list(scheme.class_names)}
    assert entry["preprocess"]["frames"] == 4 and entry["ingest"]["workers"] == 1
    assert entry["source_uri"] == str(casme2_src) and entry["adapter"] == "casme2"
    assert (
        summary.class_counts == entry["counts"]["per_class"]
        and sum(summary.class_counts.values()) == 12
    )
    assert summary.frames == 12 * 4 and summary.clips_per_s > 0

    text = format_summary(summary)
    assert f"ingested 12 casme2 clips from {casme2_src} into {out}" in text
    assert "skipped: 0" in text and summary.content_hash in text and "subjects: 3" in text

    # re-running is idempotent: same manifest apart from timestamps, same files
    files = sorted(p for p in Path(out).rglob("*.parquet"))
    ingest("casme2", str(casme2_src), out, IngestConfig(preprocess=TINY))
    assert _strip(index.read_manifest(out)) == _strip(man)
    assert sorted(p for p in Path(out).rglob("*.parquet")) == files


def test_skipped_clips_and_reasons_reach_the_manifest(synth_root, casme2_src, tmp_path):
    truth = _truth(synth_root)
    ids = sorted(truth)
    # 1. the adapter: a clip folder that is gone
    gone = truth[ids[0]]
    shutil.rmtree(casme2_src.parent / gone["path"])
    # 2. preprocessing: the onset frame of another clip is missing on disk
    broken = next(
        truth[c] for c in ids[1:] if truth[c]["emotion"] in ("happiness", "surprise", "disgust")
    )
    (casme2_src.parent / broken["path"] / f"img{broken['onset']}.jpg").unlink()
    # 3. the label scheme: composite3 drops 'others' (and fear/sadness) in CASME II
    out = str(tmp_path / "idx")
    summary = ingest(
        "casme2", str(casme2_src), out, IngestConfig(preprocess=TINY, label_scheme="composite3")
    )

    skipped = {
        s["clip"]: s["reason"] for s in index.read_manifest(out)["datasets"]["casme2"]["skipped"]
    }
    assert {s.clip: s.reason for s in summary.skipped} == skipped
    assert ids[0] in skipped and "casme2" in skipped[ids[0]].lower()
    broken_id = f"casme2/{broken['subject']}/{broken['clip']}"
    assert f"onset {broken['onset']} is not a frame on disk" in skipped[broken_id]
    outside = {cid for cid, t in truth.items() if t["emotion"] in ("others", "fear", "sadness")} - {
        ids[0]
    }
    assert outside and all("outside the composite3 scheme" in skipped[c] for c in outside)
    kept = set(truth) - set(skipped)
    assert set(
        index.read_table(out).column("clip_id").to_pylist()
    ) == kept and summary.ingested == len(kept)
    assert f"skipped: {len(skipped)}" in format_summary(summary)


def _rows_equal(a: list, b: list) -> None:
    assert [type(x) for x in a] == [type(x) for x in b]
    assert [x if isinstance(x, Skipped) else index.row_digest(x) for x in a] == [
        x if isinstance(x, Skipped) else index.row_digest(x) for x in b
    ]


def _jobs(src):
    jobs, _ = label_records(scan("casme2", str(src)).records, build_scheme("native", ["casme2"]))
    return jobs + [
        (
            ClipRecord(
                dataset="casme2",
                subject="casme2/sub09",
                filename="EP00",
                expression="micro",
                emotion="others",
                onset=1,
                apex=2,
                offset=3,
                fps=200.0,
            ),
            4,
        )
    ]


def test_process_pool_gives_the_rows_in_order(casme2_src):
    jobs = _jobs(casme2_src)
    _rows_equal(list(pool_map(jobs, TINY, 2)), [process_clip(j, TINY) for j in jobs])


@pytest.mark.integration
def test_ray_tasks_give_the_rows_in_order(ray_local, casme2_src):
    jobs = _jobs(casme2_src)
    _rows_equal(list(ray_map(jobs, TINY, 2)), [process_clip(j, TINY) for j in jobs])


def test_one_and_two_workers_write_the_same_index(casme2_src, tmp_path):
    one = ingest(
        "casme2", str(casme2_src), str(tmp_path / "w1"), IngestConfig(preprocess=TINY, workers=1)
    )
    two = ingest(
        "casme2", str(casme2_src), str(tmp_path / "w2"), IngestConfig(preprocess=TINY, workers=2)
    )
    assert one.content_hash == two.content_hash and one.ingested == two.ingested == 12
    m1, m2 = index.read_manifest(str(tmp_path / "w1")), index.read_manifest(str(tmp_path / "w2"))
    assert m1["content_hash"] == m2["content_hash"]
    e1, e2 = m1["datasets"]["casme2"], m2["datasets"]["casme2"]
    same = ("counts", "repairs", "skipped", "label_scheme", "preprocess", "content_hash")
    assert {k: e1[k] for k in same} == {k: e2[k] for k in same}


@pytest.mark.integration
def test_ingest_from_and_to_s3(s3_endpoint, casme2_src, tmp_path):
    endpoint, bucket = s3_endpoint
    s3 = boto3.client("s3", endpoint_url=endpoint)
    for path in casme2_src.rglob("*"):
        if path.is_file():
            s3.upload_file(str(path), bucket, f"releases/CASME2/{path.relative_to(casme2_src)}")
    src, out = f"s3://{bucket}/releases/CASME2", f"s3://{bucket}/indexes/casme2"

    remote = ingest("casme2", src, out, IngestConfig(preprocess=TINY, workers=2))
    local = ingest("casme2", str(casme2_src), str(tmp_path / "idx"), IngestConfig(preprocess=TINY))
    assert remote.ingested == local.ingested == 12 and remote.src == src
    a = index.read_table(out).sort_by("clip_id")
    b = index.read_table(str(tmp_path / "idx")).sort_by("clip_id")
    # the same clips, frames and labels; only where they came from differs
    assert a.drop_columns(["source_uri"]).equals(b.drop_columns(["source_uri"]))
    assert remote.content_hash == local.content_hash  # the hash names content, not location
    assert all(
        u.startswith(f"s3://{bucket}/releases/CASME2/") for u in a.column("source_uri").to_pylist()
    )
    assert index.read_manifest(out)["datasets"]["casme2"]["source_uri"] == src


def test_label_records_and_process_clip(synth_root):
    recs = scan("casme2", str(synth_root / "CASME2")).records
    odd = ClipRecord(
        dataset="casme2",
        subject="casme2/sub09",
        filename="EP00",
        expression="micro",
        emotion="boredom",
        onset=1,
        apex=2,
        offset=3,
        fps=200.0,
    )
    jobs, skipped = label_records(list(recs) + [odd], build_scheme("five", ["casme2"]))
    assert [r.clip_id for r, _ in jobs] == [
        r.clip_id for r in recs if r.emotion not in ("fear", "sadness")
    ]
    assert (
        skipped[-1].clip == "casme2/sub09/EP00"
        and "unknown emotion 'boredom'" in skipped[-1].reason
    )
    assert all("outside the five scheme" in s.reason for s in skipped[:-1])

    row = process_clip(jobs[0], TINY)
    assert row["clip_id"] == jobs[0][0].clip_id and row["label"] == jobs[0][1]
    assert frames_from_row(row).dtype == np.uint8
    missing = process_clip((odd, 0), TINY)
    assert isinstance(missing, Skipped) and missing.clip == "casme2/sub09/EP00"
    assert not missing.reason.startswith("casme2/sub09/EP00:")  # the clip id is not repeated
    crash = process_clip(jobs[0], None)  # a bug in preprocessing must not stop the other clips
    assert isinstance(crash, Skipped) and crash.reason.startswith(
        "unexpected AttributeError in preprocessing"
    )


def test_config_and_errors(tmp_path):
    cfg = load_config(
        IngestConfig,
        None,
        [
            "preprocess.frames=4",
            "workers=2",
            "label_scheme=five",
            "subjects=sub01,sub02",
            "expression=micro",
        ],
    )
    assert cfg.preprocess.frames == 4 and cfg.preprocess.size == 64 and cfg.workers == 2
    assert cfg.subjects == ("sub01", "sub02") and cfg.expression == "micro"
    with pytest.raises(ConfigError, match="workers must be >= 1"):
        load_config(IngestConfig, None, ["workers=0"])
    with pytest.raises(ConfigError, match=r"label_scheme: 'seven' is not one of"):
        load_config(IngestConfig, None, ["label_scheme=seven"])
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) \['frames'\]"):
        load_config(IngestConfig, None, ["frames=4"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(LayoutError, match="CASME2-coding"):
        ingest(
            "casme2", str(tmp_path / "empty"), str(tmp_path / "idx"), IngestConfig(preprocess=TINY)
        )
    with pytest.raises(ValueError, match="5-class scheme exists for"):
        ingest(
            "ckplus",
            str(tmp_path / "empty"),
            str(tmp_path / "idx"),
            IngestConfig(label_scheme="five"),
        )
    assert not (tmp_path / "idx").exists()  # nothing was written


def test_ingest_generic_video_classes_come_from_its_csv(tmp_path):
    synthesize(
        tmp_path / "synth",
        SynthConfig(seed=1, datasets=("casme2", "video"), casme2=SetSize(2, 5, 200.0)),
    )
    out = str(tmp_path / "idx")
    summary = ingest("video", str(tmp_path / "synth" / "video"), out, IngestConfig(preprocess=TINY))
    entry = index.read_manifest(out)["datasets"]["video"]
    table = index.read_table(out)
    emotions = table.column("emotion").to_pylist()
    assert summary.ingested == table.num_rows == 5
    assert entry["label_scheme"]["class_names"] == sorted(set(emotions))
    assert [
        entry["label_scheme"]["class_names"][lab] for lab in table.column("label").to_pylist()
    ] == emotions


def test_nothing_usable_leaves_the_index_unchanged(casme2_src, tmp_path):
    out = str(tmp_path / "idx")
    ingest("casme2", str(casme2_src), out, IngestConfig(preprocess=TINY))
    before = (Path(out) / "manifest.json").read_bytes()
    for jpg in casme2_src.rglob("*.jpg"):  # every clip now fails in preprocessing
        jpg.write_bytes(b"not a jpeg")
    with pytest.raises(
        IngestError, match=r"all 12 clips failed preprocessing; the index was not changed"
    ):
        ingest("casme2", str(casme2_src), out, IngestConfig(preprocess=TINY))
    with pytest.raises(
        IngestError, match=r"no usable casme2 clips .* \(0 skipped\).* the scan found no clips"
    ):
        ingest("casme2", str(casme2_src), out, IngestConfig(preprocess=TINY, expression="macro"))
    assert (Path(out) / "manifest.json").read_bytes() == before

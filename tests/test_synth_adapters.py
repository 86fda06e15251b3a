"""Every adapter against the generator's layouts, checked against the generator's ground truth.

The generator plants the real sheets' quirks (missing apexes, an offset past the last
frame, preamble rows, 'Others' spellings, headerless CAS(ME)^2, unlabelled CK+); the
adapters must find every clip, keep the annotation where it is usable, and record a
repair or a skip reason where it is not. Preprocessing then estimates the missing
apexes, which must land near the true apex of the rendered expression.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lightman.platform.config import load_config
from lightman.tasks.datasets import scan
from lightman.tasks.labels import normalise
from lightman.tasks.preprocess import ClipError, PreprocessConfig, preprocess_clip
from lightman.tasks.synth import SynthConfig, synthesize

DATASETS = ("casme2", "samm", "smic", "casme", "casme_sq", "ckplus", "video")


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    cfg = load_config(
        SynthConfig,
        None,
        [
            "seed=11",
            "casme2.subjects=4",
            "casme2.clips=24",
            "samm.subjects=3",
            "samm.clips=12",
            "smic.subjects=3",
            "smic.clips=9",
            "casme.subjects=3",
            "casme.clips=9",
            "casme_sq.subjects=2",
            "casme_sq.clips=4",
            "casme_sq.macro_clips=4",
            "ckplus.subjects=4",
            "ckplus.clips=10",
        ],
    )
    report = synthesize(tmp_path_factory.mktemp("synth") / "out", cfg)
    truth = json.loads(Path(report.manifest).read_text())["clips"]
    return dict(report.roots), truth


def _record_for(records, clip):
    """The adapter record of a ground-truth clip, matched by where its frames are."""
    hits = [
        r
        for r in records
        if (r.video_uri or r.source_uri).endswith(clip["path"])
        and (r.dataset != "casme_sq" or r.filename == clip["clip"])
    ]
    assert len(hits) <= 1, f"{clip['path']}: {len(hits)} records"
    return hits[0] if hits else None


@pytest.mark.parametrize("dataset", DATASETS)
def test_adapter_finds_every_generated_clip(generated, dataset):
    roots, truth = generated
    result = scan(dataset, roots[dataset])
    clips = [c for c in truth if c["dataset"] == dataset]
    assert clips
    skipped = {s.clip: s.reason for s in result.skipped}
    for clip in clips:
        rec = _record_for(result.records, clip)
        quirks = " ".join(clip["quirks"])
        if dataset == "ckplus" and not clip["sheet_row"]:  # unlabelled sequence, as in real CK+
            assert rec is None and any("no emotion label" in r for r in skipped.values())
            continue
        assert rec is not None, f"{dataset} {clip['path']} not found; skipped: {skipped}"
        assert rec.emotion == normalise(dataset, clip["emotion"])
        assert rec.expression == clip["expression"]
        onset, apex = rec.onset, rec.apex
        if dataset == "video":  # 0-based frame indices into the video file
            onset, apex = (
                onset + clip["first_frame"],
                (None if apex is None else apex + clip["first_frame"]),
            )
        if "Onset" not in quirks:  # a planted onset error keeps the sheet's (wrong) value
            assert onset == clip["onset"]
        if "missing" in quirks and "pex" in quirks:
            assert apex is None and any("apex" in r for r in rec.repairs), rec.repairs
        elif dataset != "smic":  # SMIC has no apex annotation at all
            assert apex == clip["apex"], (clip["path"], apex, clip["apex"])
        if "offset written as 0" in quirks:
            assert any("offset" in r for r in rec.repairs)


def test_preprocess_estimates_missing_apexes_near_the_truth(generated):
    roots, truth = generated
    cfg = PreprocessConfig(frames=8, size=32)
    checked = 0
    for dataset in ("casme2", "samm", "smic"):
        records = scan(dataset, roots[dataset]).records
        for clip in (c for c in truth if c["dataset"] == dataset):
            rec = _record_for(records, clip)
            if rec is None or rec.apex is not None:
                continue
            pre, _ = preprocess_clip(rec, cfg)
            assert pre.apex_source.startswith("estimated")
            span = clip["offset"] - clip["onset"]
            assert abs(pre.apex - clip["apex"]) <= max(3, 0.25 * span), (
                clip["path"],
                pre.apex,
                clip["apex"],
            )
            checked += 1
    assert checked >= 3


def test_planted_frame_errors_are_repaired_or_skipped(generated):
    roots, truth = generated
    cfg = PreprocessConfig(frames=8, size=32)
    for dataset in ("casme2", "casme", "samm"):
        records = scan(dataset, roots[dataset]).records
        for clip in (c for c in truth if c["dataset"] == dataset and c["quirks"]):
            quirks = " ".join(clip["quirks"])
            rec = _record_for(records, clip)
            if "past the last frame" in quirks:
                pre, _ = preprocess_clip(rec, cfg)
                assert pre.offset == clip["last_frame"] and any("clamped" in r for r in pre.repairs)
            if "before the first frame" in quirks:
                with pytest.raises(ClipError, match="onset"):
                    preprocess_clip(rec, cfg)

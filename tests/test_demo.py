"""`lightman demo` end to end at a tiny size: generate, ingest, inspect, train, table, then
serve the trained checkpoint and score the real carphone video over HTTP.

The demo's own config is checked for what `make demo` relies on (2 Ray Train workers, a
meta-batch they can split, the serving step); the full-size run is `make demo` itself.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lightman.platform.config import load_config
from lightman.platform.demo import DemoConfig, run_demo, sample_video

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TINY = [
    "synth.datasets=[casme2,ckplus]",
    "synth.casme2.subjects=8",
    "synth.casme2.clips=60",
    "synth.ckplus.subjects=4",
    "synth.ckplus.clips=12",
    "ingest_primary.preprocess.size=16",
    "ingest_other.preprocess.size=16",
    "learners=[lightman]",
    "train.model.image_size=16",
    "train.model.hidden=8",
    "train.model.aux_dim=8",
    "train.episode.ways=3",
    "train.model.ways=3",
    "train.meta_batch=2",
    "train.workers=1",
    "train.iterations=2",
    "train.eval_every=2",
    "train.val_episodes=2",
    "train.test_episodes=4",
]


def test_demo_config_trains_on_two_workers_and_serves():
    cfg = load_config(DemoConfig, str(CONFIGS / "demo" / "demo.yaml"))
    assert cfg.train.workers == 2 and cfg.train.uses_ray
    assert cfg.train.meta_batch % cfg.train.workers == 0
    assert cfg.serve and cfg.learners[0] == "lightman"


def test_demo_end_to_end_serves_the_carphone_video(ray_local, tmp_path, capsys):
    cfg = load_config(DemoConfig, str(CONFIGS / "demo" / "demo.yaml"), TINY)
    text = run_demo(cfg, tmp_path)

    results = json.loads((tmp_path / "demo_results.json").read_text())
    assert [r["learner"] for r in results["runs"]] == ["lightman"]
    served = results["served"]
    probs = served["probabilities"]
    assert served["label"] in probs and len(probs) == 3
    assert abs(sum(probs.values()) - 1) < 1e-4
    # the video carries no annotation: the service estimated the span and the apex
    assert served["span_source"] != "given" and served["apex_source"].startswith("estimated")
    assert 0 <= served["onset"] <= served["apex"] <= served["offset"] < 120
    assert len(served["frames_used"]) == cfg.ingest_primary.preprocess.frames
    assert served["face_box"] is not None  # Haar found the face on the onset frame
    assert "POST /v1/predict carphone_pristine.mp4" in text
    assert "demo wall time" in capsys.readouterr().out


def test_sample_video_names_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="video='nope.mp4'"):
        sample_video("nope.mp4")
    assert sample_video().name == "carphone_pristine.mp4"

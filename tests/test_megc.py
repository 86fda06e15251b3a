"""MEGC 2019 LOSO (`lightman eval --protocol megc-loso`) on a tiny toy index: one fold per
subject, every clip predicted once by the model that never saw its subject, pooled UF1 /
UAR recomputed here from predictions.csv, no look at the left-out labels, Ray only when
asked, and the same predictions with folds as Ray tasks."""

from __future__ import annotations

import csv
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from lightman.models.net import ModelConfig
from lightman.platform.cli import main
from lightman.platform.megc import MegcConfig, run_fold, run_folds
from lightman.platform.selection import load_pool

sys.path.insert(0, str(Path(__file__).parent))  # pytest runs with --import-mode=importlib
from toy_clips import supervised_miacnet_run, toy_index  # noqa: E402

MODEL = ModelConfig(backbone="miacnet", image_size=16, frames=6, hidden=8, aux_dim=8, ways=3)
FOLD = MegcConfig(epochs=3, batch_size=8)


@pytest.fixture(scope="module")
def index(tmp_path_factory) -> str:
    uri = str(tmp_path_factory.mktemp("megc") / "index")
    return toy_index(uri, "casme2", "micro", subjects=4, per_class=2, classes=3, seed=2)


@pytest.fixture(scope="module")
def pool(index):
    return load_pool(index, datasets=["casme2"], expression="micro")


def reference_uf1_uar(t: np.ndarray, p: np.ndarray) -> tuple[float, float]:
    """MEGC 2019: per class c of y_true, F1_c = 2TP / (2TP + FP + FN) and recall_c from the
    counts pooled over every fold; UF1 and UAR are their means over the classes."""
    f1s, recalls = [], []
    for c in np.unique(t):
        tp = np.sum((t == c) & (p == c))
        fp, fn = np.sum((t != c) & (p == c)), np.sum((t == c) & (p != c))
        f1s.append(2 * tp / (2 * tp + fp + fn))
        recalls.append(tp / (tp + fn))
    return float(np.mean(f1s)), float(np.mean(recalls))


def test_cli_pools_one_fold_per_subject_and_reports_megc_scores(index, pool, tmp_path, capsys):
    run = tmp_path / "sup"
    small = ["model.image_size=16", "model.frames=6", "model.hidden=8", "model.aux_dim=8"]
    train = supervised_miacnet_run(index, run, *small)
    assert main(train) == 0
    out = tmp_path / "megc"
    args = ["eval", "--checkpoint", str(run / "best.pt"), "--index", index]
    assert main([*args, "--protocol", "megc-loso", "--out", str(out), "megc.epochs=2"]) == 0
    assert "| megc-loso | miacnet | random | all | 24 | 4 | 2 |" in capsys.readouterr().out
    with (out / "predictions.csv").open() as f:
        rows = list(csv.DictReader(f))
    ids = [r["clip_id"] for r in rows]
    assert len(ids) == len(set(ids)) == 24  # every clip exactly once
    subject_of = dict(zip(pool.clip_ids.tolist(), pool.subjects.tolist()))
    assert all(r["fold"] == subject_of[r["clip_id"]] for r in rows)  # in its own subject's fold
    assert sorted({r["fold"] for r in rows}) == [f"casme2/s{s:02d}" for s in range(4)]
    t = np.array([int(r["y_true"]) for r in rows])
    p = np.array([int(r["y_pred"]) for r in rows])
    uf1, uar = reference_uf1_uar(t, p)
    result = json.loads((out / "results.json").read_text())
    assert result["metrics"]["metrics"]["all"]["uf1"] == pytest.approx(uf1, abs=1e-12)
    assert result["metrics"]["metrics"]["all"]["uar"] == pytest.approx(uar, abs=1e-12)
    assert result["metrics"]["epochs"] == 2 and result["megc_config"]["epochs"] == 2


def test_a_fold_never_looks_at_the_left_out_labels(pool):
    """Fixed epochs, no selection: relabelling the left-out subject's clips changes nothing
    of its predictions."""
    subject = "casme2/s01"
    own = pool.subjects == subject
    labels = pool.labels.copy()
    labels[own] = (labels[own] + 1) % 3
    relabelled = replace(pool, labels=labels)
    a = run_fold(MODEL, pool, subject, 1, FOLD, 1e-3, 0.0, seed=0)
    b = run_fold(MODEL, relabelled, subject, 1, FOLD, 1e-3, 0.0, seed=0)
    assert np.array_equal(a.y_pred, b.y_pred) and not np.array_equal(a.y_true, b.y_true)


def test_single_process_folds_never_import_ray(index, pool, tmp_path, monkeypatch):
    """With `ray` blocked (import ray raises), the whole single-process path still runs."""
    monkeypatch.setitem(sys.modules, "ray", None)
    run_folds(MODEL, pool, replace(FOLD, epochs=1), 1e-3, 0.0, seed=0)
    with pytest.raises(ImportError):
        run_folds(MODEL, pool, replace(FOLD, epochs=1, workers=2), 1e-3, 0.0, seed=0)


@pytest.mark.slow
@pytest.mark.integration
def test_folds_as_ray_tasks_give_the_in_process_predictions(ray_local, pool):
    """On the session's local Ray (conftest), which run_folds uses when it is up."""
    one = run_folds(MODEL, pool, FOLD, 1e-3, 0.0, seed=0)
    two = run_folds(MODEL, pool, replace(FOLD, workers=2), 1e-3, 0.0, seed=0)
    assert [f.fold for f in one] == [f.fold for f in two]
    for a, b in zip(one, two):
        assert a.clip_ids == b.clip_ids and np.array_equal(a.y_pred, b.y_pred)


def test_ways_must_cover_every_class(index, pool):
    from lightman.platform.megc import megc_loso

    with pytest.raises(ValueError, match="ways=2"):
        megc_loso(replace(MODEL, ways=2), pool, FOLD, 1e-3, 0.0, 0)


def test_corruption_reaches_only_the_left_out_subjects_clips(pool, monkeypatch):
    """corrupt= on megc-loso: every fold trains on clean clips (never a corrupted frame) and
    predicts its subject's clips as corrupted; a corrupted run differs from a clean one."""
    from lightman.platform import megc
    from lightman.tasks.corrupt import corrupt_pool

    bad_pool, bad_ids = corrupt_pool(pool, "mask", 1.0, seed=0)
    bad = {bytes(c) for c in bad_pool.frames[np.isin(pool.clip_ids, bad_ids)]}
    clean = {bytes(c) for c in pool.frames}
    assert bad and not bad & clean
    calls = []
    real = megc.to_tensor
    monkeypatch.setattr(megc, "to_tensor", lambda a: calls.append(a.copy()) or real(a))
    subject = "casme2/s02"
    fold = run_fold(MODEL, pool, subject, 2, replace(FOLD, epochs=1), 1e-3, 0.0, 0, tested=bad_pool)
    *training, test = calls
    assert all(bytes(c) in clean for batch in training for c in batch)  # clean training
    own = pool.subjects == subject
    assert np.array_equal(test, bad_pool.frames[own])  # the corrupted test clips
    assert fold.clip_ids == tuple(pool.clip_ids[own].tolist())
    monkeypatch.setattr(megc, "to_tensor", real)
    small = replace(FOLD, epochs=1)
    a = megc.megc_loso(MODEL, pool, small, 1e-3, 0.0, 0)
    b = megc.megc_loso(MODEL, pool, small, 1e-3, 0.0, 0, corrupt=("mask", 1.0))
    assert a["corrupted_clips"] == [] and len(b["corrupted_clips"]) == len(pool)
    assert a["predictions"] != b["predictions"]


def test_a_meta_learner_run_is_refused_with_the_study_that_evaluates_it(index, tmp_path):
    """megc-loso trains each fold with cross-entropy: on a maml run it would report a
    supervised model as maml's, so it refuses, naming the study that meta-trains the folds."""
    from lightman.models.learners import learner_config
    from lightman.platform.config import to_dict
    from lightman.platform.megc import MegcConfig, evaluate_megc
    from lightman.platform.train import TrainConfig

    run = to_dict(TrainConfig(learner=learner_config("maml")))
    with pytest.raises(ValueError, match=r"learner.name=maml run.*reproduce --study table1"):
        evaluate_megc(run, index, MegcConfig(), 0, str(tmp_path / "megc"), {})
    assert not (tmp_path / "megc").exists()

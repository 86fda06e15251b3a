"""The loso and loso-composite3 protocols end to end: tiny checkpoints trained with
`run_training` on a generated CASME II + SAMM + SMIC + CK+ index, evaluated through the
real CLI and API.

Metrics are recomputed here from predictions.csv with independent numpy code, and the
composite relabelling is checked against the MEGC 2019 mapping written out by hand
(docs/datasets.md, "Composite evaluation").
"""

from __future__ import annotations

import csv
import json
import math
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest

from lightman.models.checkpoint import load_checkpoint
from lightman.models.learners import LearnerConfig, build_learner
from lightman.platform import generated
from lightman.platform.cli import main
from lightman.platform.config import from_dict, load_config
from lightman.platform.evaluate import EvalConfig, evaluate_checkpoint
from lightman.platform.protocols import LosoConfig, evaluate_protocol
from lightman.platform.selection import DataSelection, load_pool
from lightman.platform.train import TrainConfig, run_training
from lightman.tasks.episodes import UNPAIRED, ClipPool, draw_aux, pair_aux
from lightman.tasks.splits import SplitError, draw_support

TINY = [
    "episode.shots=1",
    "episode.query=1",
    "episode.aux_shots=1",
    "model.image_size=32",
    "model.hidden=16",
    "model.aux_dim=16",
    "model.input_mode=delta",
    "meta_batch=2",
    "threads=1",
    "val_episodes=2",
    "test_episodes=2",
    "data.test_fraction=0.4",
    "data.val_fraction=0.2",
    "seed=1",
]
PRIMARY = ("casme2", "samm", "smic")
# MEGC 2019 composite classes from the raw emotions (docs/datasets.md), written out independently.
MEGC = {
    "casme2": {
        "disgust": "negative",
        "repression": "negative",
        "happiness": "positive",
        "surprise": "surprise",
    },
    "samm": {e: "negative" for e in ("anger", "contempt", "disgust", "fear", "sadness")}
    | {"happiness": "positive", "surprise": "surprise"},
    "smic": {"negative": "negative", "positive": "positive", "surprise": "surprise"},
}
# Student t_{0.975} with 2 degrees of freedom (3 draws): F(t) = 1/2 + t / (2 sqrt(2 + t²)) = 0.975
T975_DF2 = math.sqrt(2 * 0.95**2 / (1 - 0.95**2))


@pytest.fixture(scope="module")
def index(tmp_path_factory) -> str:
    return generated.small_index(
        tmp_path_factory.mktemp("protocol-data"),
        [
            "datasets=[casme2,samm,smic,ckplus]",
            "seed=5",
            "casme2.subjects=8",
            "casme2.clips=60",
            "samm.subjects=4",
            "samm.clips=24",
            "smic.subjects=4",
            "smic.clips=24",
            "ckplus.subjects=4",
            "ckplus.clips=16",
        ],
    )


def _train(index: str, out, *overrides: str) -> str:
    run_training(load_config(TrainConfig, None, [f"data.index={index}", *TINY, *overrides]), out)
    return str(out / "best.pt")


@pytest.fixture(scope="module")
def composite_ckpt(index, tmp_path_factory) -> str:
    """3-way LightmanNet (auxiliary branch on) on the composite labels of CASME II + SAMM + SMIC."""
    return _train(
        index,
        tmp_path_factory.mktemp("composite-run"),
        "data.primary=[casme2,samm,smic]",
        "data.labels=composite3",
        "episode.ways=3",
        "model.ways=3",
        "iterations=2",
        "eval_every=2",
    )


@pytest.fixture(scope="module")
def casme2_ckpt(index, tmp_path_factory) -> str:
    """3-way, on CASME II under its five-class index labels (untrained: iterations=0). Seed 4 draws
    test subjects of which, in every fold, the other ones have a clip of each composite class
    (the generated CASME II has few surprise clips)."""
    return _train(
        index,
        tmp_path_factory.mktemp("casme2-run"),
        "episode.ways=3",
        "model.ways=3",
        "iterations=0",
        "seed=4",
    )


def _test_subjects(ckpt: str) -> list[str]:
    return list(load_checkpoint(ckpt)[2]["extra"]["split"]["test"])


def _composite_truth(index: str, subjects: list[str]) -> dict[str, str]:
    """clip id -> composite class of the subjects' micro clips, from the raw emotions."""
    pool = load_pool(index, datasets=PRIMARY, expression="micro")
    return {
        c: MEGC[d][e]
        for c, d, e, s in zip(pool.clip_ids, pool.datasets, pool.emotions, pool.subjects)
        if s in subjects and e in MEGC[d]
    }


def _read_csv(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _labels(rows: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """(y_true, y_pred) of predictions.csv rows."""
    return np.array([int(r["y_true"]) for r in rows]), np.array([int(r["y_pred"]) for r in rows])


def _reference_scores(t: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """ACC, macro-F1 (classes in t ∪ p), UAR and UF1 (classes in t), counts pooled."""

    def f1(c):
        tp, fp, fn = (
            np.sum((t == c) & (p == c)),
            np.sum((t != c) & (p == c)),
            np.sum((t == c) & (p != c)),
        )
        return 2 * tp / (2 * tp + fp + fn)

    present = sorted(set(t.tolist()))
    return {
        "acc": float(np.mean(t == p)),
        "macro_f1": float(np.mean([f1(c) for c in sorted(set(t.tolist()) | set(p.tolist()))])),
        "uar": float(np.mean([np.sum((t == c) & (p == c)) / np.sum(t == c) for c in present])),
        "uf1": float(np.mean([f1(c) for c in present])),
    }


def test_loso_joins_every_test_clip_once_with_supports_from_other_test_subjects(
    index, composite_ckpt
):
    model, _, meta = load_checkpoint(composite_ckpt)
    extra = meta["extra"]
    learner = build_learner(from_dict(LearnerConfig, extra["learner"]))
    data = from_dict(DataSelection, {**extra["config"]["data"], "index": index})
    test = list(extra["split"]["test"])
    truth = _composite_truth(index, test)
    cfg = LosoConfig(shots=1, repeats=2, seed=3, aux_shots=1)
    result = evaluate_protocol("loso", learner, model, data, test, cfg)

    classes = result.class_names
    assert classes == ("negative", "positive", "surprise")
    subject_of = {c: c.rsplit("/", 1)[0] for c in truth}  # clip ids are dataset/subject/filename
    assert len(result.folds) == 2 * len(set(subject_of.values()))
    for draw in (0, 1):
        folds = [f for f in result.folds if f.draw == draw]
        predicted = [c for f in folds for c in f.clip_ids]
        assert len(predicted) == len(set(predicted)) and set(predicted) == set(truth)
        for f in folds:
            assert {subject_of[c] for c in f.clip_ids} == {f.fold}
            assert [classes[y] for y in f.y_true] == [truth[c] for c in f.clip_ids]
            support_subjects = {subject_of[c] for c in f.support_ids}
            assert f.fold not in support_subjects and support_subjects <= set(test)
            assert sorted(truth[c] for c in f.support_ids) == sorted(classes)  # K=1 clip per class
            assert len(f.aux_ids) == 3 and all(a.startswith("ckplus/") for a in f.aux_ids)
        pooled = result.pooled[draw]
        assert pooled.clip_ids == tuple(sorted(truth))
    # draw r depends on (seed, r) only: one draw alone is the first of two
    alone = evaluate_protocol(
        "loso", learner, model, data, test, LosoConfig(shots=1, repeats=1, seed=3, aux_shots=1)
    )
    for a, b in zip(alone.folds, result.folds):
        assert (a.fold, a.support_ids, a.aux_ids) == (b.fold, b.support_ids, b.aux_ids)
        assert np.array_equal(a.y_pred, b.y_pred)


def test_loso_gives_class_conditional_alignment_the_macro_clips_ways(index, composite_ckpt):
    """aux_align=class needs each macro clip's way: LOSO passes the ways of its aux draw
    (it used to pass none, and the learner refused)."""
    model, _, meta = load_checkpoint(composite_ckpt)
    extra = meta["extra"]
    learner_cfg = from_dict(LearnerConfig, extra["learner"])
    data = from_dict(DataSelection, {**extra["config"]["data"], "index": index})
    test = list(extra["split"]["test"])
    cfg = LosoConfig(shots=1, repeats=1, seed=3, aux_shots=1)
    results = {
        align: evaluate_protocol(
            "loso", build_learner(replace(learner_cfg, aux_align=align)), model, data, test, cfg
        )
        for align in ("marginal", "class")
    }
    marginal, conditional = results["marginal"], results["class"]
    assert [f.aux_ids for f in conditional.folds] == [f.aux_ids for f in marginal.folds]
    assert all(len(f.aux_ids) == 3 for f in conditional.folds)


def test_loso_cli_writes_files_whose_predictions_give_the_reported_metrics(
    index, composite_ckpt, tmp_path, capsys
):
    out = tmp_path / "loso"
    assert (
        main(
            [
                "eval",
                "--checkpoint",
                composite_ckpt,
                "--index",
                index,
                "--protocol",
                "loso",
                "--out",
                str(out),
                "repeats=3",
                "seed=7",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "| loso | lightman | all |" in printed
    assert "| true \\ predicted | negative | positive | surprise |" in printed
    record = json.loads((out / "results.json").read_text())
    assert record["train_meta"]["split"]["test"] == _test_subjects(composite_ckpt)
    assert record["checkpoint_versions"]["torch"] and record["versions"]["torch"]
    assert record["protocol_config"]["repeats"] == 3 and record["protocol_config"]["shots"] == 1
    metrics = record["metrics"]

    rows = _read_csv(out / "predictions.csv")
    assert {r["draw"] for r in rows} == {"0", "1", "2"}
    per_draw = []
    confusion = np.zeros((3, 3), dtype=int)
    for draw in ("0", "1", "2"):
        t, p = _labels([r for r in rows if r["draw"] == draw])
        per_draw.append(_reference_scores(t, p))
        np.add.at(confusion, (t, p), 1)
    for name in ("acc", "macro_f1", "uar", "uf1"):
        values = np.array([s[name] for s in per_draw])
        mean, ci = metrics["test"][name]
        assert mean == pytest.approx(values.mean(), abs=1e-12)
        assert ci == pytest.approx(
            T975_DF2 * values.std(ddof=1) / math.sqrt(3), rel=1e-4
        )  # 1e-4: the t table rounds
    assert metrics["confusion"] == confusion.tolist()

    results_csv = _read_csv(out / "results.csv")
    assert results_csv[0]["data"] == "all"
    assert float(results_csv[0]["uf1_mean"]) == pytest.approx(metrics["test"]["uf1"][0])
    supports = _read_csv(out / "supports.csv")
    assert (
        len(supports) == 3 * len(metrics["test_subjects"]) * 3
    )  # draws x folds x (3 classes x 1 shot)
    assert all(not s["clip_id"].startswith(s["fold"] + "/") for s in supports)


def test_composite_cli_relabels_like_megc_and_reports_each_dataset(
    index, composite_ckpt, tmp_path, capsys
):
    out = tmp_path / "composite"
    assert (
        main(
            [
                "eval",
                "--checkpoint",
                composite_ckpt,
                "--index",
                index,
                "--protocol",
                "loso-composite3",
                "--out",
                str(out),
                "repeats=2",
            ]
        )
        == 0
    )
    assert "| loso-composite3 | lightman | all |" in capsys.readouterr().out
    metrics = json.loads((out / "results.json").read_text())["metrics"]
    truth = _composite_truth(index, _test_subjects(composite_ckpt))
    rows = _read_csv(out / "predictions.csv")
    first = [r for r in rows if r["draw"] == "0"]
    assert Counter(metrics["classes"][int(r["y_true"])] for r in first) == Counter(truth.values())
    true_counts = np.sum(metrics["confusion"], axis=1).tolist()  # summed over the 2 draws
    assert true_counts == [2 * Counter(truth.values())[c] for c in metrics["classes"]]
    datasets = Counter(c.split("/")[0] for c in truth)
    assert len(datasets) == 3  # the run's test subjects come from CASME II, SAMM and SMIC
    assert metrics["clips"] == {"all": len(truth), **datasets}
    assert set(metrics["per_dataset"]) == set(datasets)
    for (
        d
    ) in datasets:  # per-dataset UF1 / UAR from that dataset's pooled predictions, mean over draws
        mine = [r for r in rows if r["clip_id"].startswith(d + "/")]
        per_draw = [
            _reference_scores(*_labels([r for r in mine if r["draw"] == draw]))
            for draw in ("0", "1")
        ]
        for name in ("uf1", "uar"):
            expected = (per_draw[0][name] + per_draw[1][name]) / 2
            assert metrics["per_dataset"][d][name][0] == pytest.approx(expected, abs=1e-12)


def test_composite_of_an_index_labelled_checkpoint_keeps_only_composite_clips(
    index, casme2_ckpt, tmp_path
):
    result = evaluate_checkpoint(
        casme2_ckpt, index, "loso-composite3", EvalConfig(repeats=1), str(tmp_path)
    )
    truth = _composite_truth(index, _test_subjects(casme2_ckpt))
    assert set(truth) and all(c.startswith("casme2/") for c in truth)
    assert result.metrics["clips"] == {"all": len(truth), "casme2": len(truth)}
    assert result.metrics["test_subjects"] == sorted({c.rsplit("/", 1)[0] for c in truth})
    counts = np.sum(result.metrics["confusion"], axis=1).tolist()
    assert counts == [Counter(truth.values())[c] for c in result.metrics["classes"]]


def test_mismatched_ways_fail_with_how_to_train(index, casme2_ckpt, tmp_path, capsys):
    assert (
        main(
            [
                "eval",
                "--checkpoint",
                casme2_ckpt,
                "--index",
                index,
                "--protocol",
                "loso",
                "--out",
                str(tmp_path / "loso"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert (
        "all 5 classes" in err
        and "classifies 3 ways" in err
        and "episode.ways=5 model.ways=5" in err
    )
    two_way = _train(index, tmp_path / "two-way", "episode.ways=2", "model.ways=2", "iterations=0")
    assert (
        main(
            [
                "eval",
                "--checkpoint",
                two_way,
                "--index",
                index,
                "--protocol",
                "loso-composite3",
                "--out",
                str(tmp_path / "composite"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert (
        "classifies 2 ways" in err and "data.labels=composite3 episode.ways=3 model.ways=3" in err
    )
    assert not (tmp_path / "composite").exists()


def _pool(labels, subjects, class_names, dataset="casme2") -> ClipPool:
    n = len(labels)
    return ClipPool(
        frames=np.zeros((n, 2, 4, 4, 3), np.uint8),
        labels=np.array(labels),
        subjects=[f"{dataset}/{s}" for s in subjects],
        clip_ids=[f"{dataset}/{s}/c{i}" for i, s in enumerate(subjects)],
        datasets=[dataset] * n,
        emotions=[class_names[y] for y in labels],
        expressions=["micro"] * n,
        class_names=tuple(class_names),
        name="test",
    )


def test_support_draw_takes_k_per_class_from_the_given_rows_or_names_the_shortage():
    pool = _pool(
        [0, 1, 2, 0, 1, 2, 2],
        ["a", "a", "a", "b", "b", "b", "c"],
        ("negative", "positive", "surprise"),
    )
    rows = np.flatnonzero(pool.subjects != "casme2/a")
    picked = draw_support(pool, rows, 1, np.random.default_rng(0), "casme2/a")
    assert set(picked) <= set(rows) and sorted(pool.labels[picked]) == [0, 1, 2]
    with pytest.raises(SplitError, match=r"fold casme2/a.*shots=2.*negative \(1\), positive \(1\)"):
        draw_support(pool, rows, 2, np.random.default_rng(0), "casme2/a")


def test_aux_draw_pairs_classes_by_name_and_marks_the_rest_unpaired():
    aux = _pool(
        [0, 0, 1, 2, 2, 2], list("uvwxyz"), ("happy", "sadness", "neutral"), dataset="ckplus"
    )
    micro = _pool([0, 1, 2], list("abc"), ("negative", "positive", "others"))
    idx, ways = draw_aux(pair_aux(micro, aux, "class"), len(aux), 4, np.random.default_rng(1))
    assert idx.shape == ways.shape == (12,)
    assert set(aux.labels[idx[ways == 0]]) == {
        1
    }  # negative <-> sadness (one clip, drawn with replacement)
    assert set(aux.labels[idx[ways == 1]]) == {0}  # positive <-> happy
    assert (ways == UNPAIRED).sum() == 4  # "others" pairs with nothing
    _, unpaired = draw_aux(pair_aux(micro, aux, "unpaired"), len(aux), 2, np.random.default_rng(1))
    assert (unpaired == UNPAIRED).all()


class _Spy:
    """A learner whose `adapt` and `logits` record what they are given (frames as numpy)."""

    def __init__(self, learner):
        self.learner, self.seen, self.out = learner, [], []

    def __getattr__(self, name):
        return getattr(self.learner, name)

    def adapt(self, model, params, buffers, support_x, support_y, aux_x, **kw):
        self.seen.append(("aux", None if aux_x is None else aux_x.numpy().copy()))
        return self.learner.adapt(model, params, buffers, support_x, support_y, aux_x, **kw)

    def logits(self, model, adapted, buffers, support_x, support_y, x):
        out = self.learner.logits(model, adapted, buffers, support_x, support_y, x)
        self.out.append(out.detach().numpy().copy())
        return out


@pytest.mark.parametrize("protocol", ["loso", "loso-composite3"])
def test_corruption_reaches_the_loso_protocols_test_clips_only(index, composite_ckpt, protocol):
    """corrupt= on loso / loso-composite3: the corrupted clips are test clips (of the run's test
    subjects), the macro clips stay clean, and the corrupted run's logits differ from the
    clean run's on the same draws."""
    model, _, meta = load_checkpoint(composite_ckpt)
    extra = meta["extra"]
    learner = build_learner(from_dict(LearnerConfig, extra["learner"]))
    data = from_dict(DataSelection, {**extra["config"]["data"], "index": index})
    test = list(extra["split"]["test"])
    cfg = LosoConfig(shots=1, repeats=1, seed=3, aux_shots=1)
    clean_spy, bad_spy = _Spy(learner), _Spy(learner)
    clean = evaluate_protocol(protocol, clean_spy, model, data, test, cfg)
    bad = evaluate_protocol(protocol, bad_spy, model, data, test, cfg, "mask", 0.5)
    tested = {c for f in clean.folds for c in f.clip_ids}
    assert clean.corrupted == () and bad.corrupted
    assert set(bad.corrupted) <= tested and len(bad.corrupted) == round(0.5 * len(tested))
    assert [f.support_ids for f in bad.folds] == [f.support_ids for f in clean.folds]
    for (_, a), (_, b) in zip(clean_spy.seen, bad_spy.seen):  # the macro clips: untouched
        assert np.array_equal(a, b)
    diff = sum(np.abs(a - b).sum() for a, b in zip(clean_spy.out, bad_spy.out))
    assert diff > 0


def test_the_old_composite_name_is_refused_naming_its_new_name_and_megc(tmp_path):
    with pytest.raises(ValueError, match="loso-composite3.*megc-loso"):
        evaluate_checkpoint(str(tmp_path / "none.pt"), "", "composite", EvalConfig(), None)

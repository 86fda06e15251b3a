"""LOSO over a run's test subjects (`loso`, `loso-composite3`) of a meta-learned checkpoint
(docs/architecture.md). Neither is MEGC 2019's protocol: each fold adapts on a support set
of the OTHER TEST subjects; MEGC 2019's leave-one-subject-out, which trains on every other
subject, is `megc-loso` (platform/megc.py).

Model selection never touches a test subject: these protocols use only the subjects the
checkpoint's run recorded as TEST, none of which it trained or validated on. For each
support draw r = 0..R-1 and each test subject s (a LOSO fold):

1. draw a support set of K clips per class from the OTHER test subjects (never s, never
   a training or validation subject; `tasks.splits.draw_support`), plus the auxiliary
   macro clips the run's episodes had, paired and drawn as `EpisodeSampler` does
   (`tasks.episodes.pair_aux`, `draw_aux`; way j is class j);
2. adapt the checkpoint on it with the learner's test-time adaptation (paper 4.2);
3. predict EVERY clip of s with the adapted parameters (`Learner.logits`), in batches of
   `batch_size`, the model in eval mode for the call (`eval_mode`).

Each draw's predictions are joined over the folds by clip id (`pool_predictions`, every
test clip expected exactly once), and the pooled metrics ACC, macro-F1, UAR and UF1
(MEGC 2019: counts pooled over folds, docs/datasets.md) are reported
as mean ± 95% CI over the R draws; the confusion matrix is summed over the draws.

The classifier predicts every class at once, so its ways must equal the pool's classes
(5 for the CASME II five-class set, 3 for composite3). Way j is class j. `loso-composite3`
is the same evaluation on the negative / positive / surprise relabelling (`composite_pool`)
of the run's primary datasets, reported per dataset as well, as in the MEGC table.

Batch statistics: with bn_mode "task" a batch is normalised with its own statistics and a
query batch holds clips of one subject only, so a clip's prediction depends on that
subject's other clips: the evaluation is transductive per subject (as MAML's usual
evaluation is per task). With "clip" (each clip on its own) and "running" (stored
statistics) no clip's prediction depends on any other clip.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from lightman.models.learners import Learner
from lightman.models.modes import eval_mode
from lightman.platform.selection import DataSelection, auxiliary_pool, primary_pool
from lightman.tasks import storage
from lightman.tasks.corrupt import corrupt_pool
from lightman.tasks.episodes import ClipPool, draw_aux, pair_aux, to_tensor
from lightman.tasks.labels import COMPOSITE3
from lightman.tasks.metrics import SCORES, confusion_matrix, mean_ci
from lightman.tasks.splits import PooledPredictions, draw_support, loso_folds, pool_predictions

log = logging.getLogger(__name__)

COMPOSITE = "loso-composite3"  # `loso` on the negative / positive / surprise labels
PROTOCOLS = ("loso", COMPOSITE)
RENAMED = {
    "composite": (
        f"protocol 'composite' is now {COMPOSITE!r}: it adapts on support sets of the other "
        "test subjects, which MEGC 2019 does not; MEGC 2019's leave-one-subject-out over "
        "the composite labels is --protocol megc-loso with a run of data.labels=composite3"
    )
}
ALL = "all"  # the group of every test clip, beside one group per dataset


@dataclass(frozen=True)
class LosoConfig:
    """Support draws of the LOSO protocols."""

    shots: int = 5
    """K: support clips per class, drawn from the other test subjects of each fold."""
    repeats: int = 10
    """R: support draws; metrics are mean ± 95% CI over the draws."""
    seed: int = 0
    """Seeds the draws; draw r uses the stream (seed, r) whatever R is."""
    batch_size: int = 64
    """Clips of the left-out subject predicted per forward pass."""
    aux_shots: int = 0
    """Macro clips per class in each support set's auxiliary batch (0: none)."""
    aux_pairing: Literal["class", "unpaired"] = "class"
    """'class': a class's macro clips share its name where one matches; 'unpaired': random."""

    def __post_init__(self) -> None:
        for name, low in (("shots", 1), ("repeats", 1), ("batch_size", 1), ("aux_shots", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if self.aux_pairing not in ("class", "unpaired"):
            raise ValueError(f"aux_pairing must be 'class' or 'unpaired', got {self.aux_pairing!r}")


@dataclass(frozen=True, eq=False)
class FoldPrediction:
    """One fold of one draw: the support it adapted on and its predictions of subject `fold`."""

    draw: int
    fold: str  # the left-out test subject
    support_ids: tuple[str, ...]  # (C*K,) clips of the other test subjects
    aux_ids: tuple[str, ...]  # macro clips of the auxiliary batch (empty without one)
    clip_ids: tuple[str, ...]  # every clip of `fold`
    y_true: np.ndarray  # (n,) int64, class index
    y_pred: np.ndarray  # (n,) int64


@dataclass(frozen=True, eq=False)
class LosoResult:
    """Predictions and pooled metrics of a LOSO protocol over R support draws."""

    protocol: str
    class_names: tuple[str, ...]
    folds: tuple[FoldPrediction, ...]  # R * subjects, draw-major, subjects sorted
    pooled: tuple[PooledPredictions, ...]  # (R,) each draw joined by clip id
    metrics: dict[
        str, dict[str, tuple[float, float]]
    ]  # group (ALL | dataset) -> metric -> (mean, CI)
    clips: dict[str, int]  # group -> test clips
    confusion: np.ndarray  # (C, C) int64 summed over draws; row = true, column = predicted
    corrupted: tuple[str, ...] = ()  # test clips corrupted before any draw (`corrupt=`)


def protocol_pool(protocol: str, data: DataSelection, test_subjects: Sequence[str]) -> ClipPool:
    """The test subjects' clips: the run's primary pool under its labels (loso), or the
    composite 3-class relabelling of its primary datasets (composite)."""
    if protocol in RENAMED:
        raise ValueError(RENAMED[protocol])
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {list(PROTOCOLS)}, got {protocol!r}")
    relabel = protocol == COMPOSITE and data.labels != "composite3"
    pool = primary_pool(
        dataclasses.replace(data, labels="composite3") if protocol == COMPOSITE else data
    )
    # Relabelling drops clips outside the scheme (CASME II others, …): a test subject may be
    # left with none.
    test = pool.by_subjects(test_subjects, name=f"{protocol} test", strict=not relabel)
    gone = sorted(set(test_subjects) - set(test.subjects.tolist()))
    if gone:
        log.info(
            "%s: %d test subject(s) have no clip under the composite labels: %s",
            protocol,
            len(gone),
            gone,
        )
    return test


def check_ways(protocol: str, ways: int, class_names: Sequence[str]) -> None:
    """The classifier must predict every class at once (way j = class j)."""
    if protocol == COMPOSITE and ways != len(COMPOSITE3):
        raise ValueError(
            f"the {COMPOSITE} protocol predicts {' / '.join(COMPOSITE3)}, but the checkpoint "
            f"classifies {ways} ways; train it with data.labels=composite3 episode.ways=3 "
            "model.ways=3"
        )
    n = len(class_names)
    if ways != n:
        raise ValueError(
            f"{protocol}: every clip is classified among all {n} classes {list(class_names)} "
            f"of the test pool, but the checkpoint classifies {ways} ways; train it with "
            f"episode.ways={n} model.ways={n}, or evaluate it with --protocol fewshot"
        )


def predict_fold(
    learner: Learner,
    model: nn.Module,
    pool: ClipPool,
    support: np.ndarray,
    target: np.ndarray,
    batch_size: int,
    aux: ClipPool | None = None,
    aux_rows: np.ndarray | None = None,
    aux_ways: np.ndarray | None = None,
) -> np.ndarray:
    """(len(target),) predicted classes of pool rows `target` after adapting once on pool rows
    `support` (labels = ways) and the aux-pool rows `aux_rows` (paired with `aux_ways`).
    The clips go to the device of the model's parameters (`lightman eval ... device=cuda`
    moves the model there)."""
    params, buffers = dict(model.named_parameters()), dict(model.named_buffers())
    device = next(iter(params.values())).device
    support_x = to_tensor(pool.frames[support]).to(device)  # (C*K, M, C, H, W)
    support_y = torch.from_numpy(pool.labels[support]).to(device)
    aux_x = aux_y = None
    if aux_rows is not None:
        aux_x = to_tensor(aux.frames[aux_rows]).to(device)  # (C*A, M, C, H, W)
    if aux_ways is not None:
        aux_y = torch.from_numpy(aux_ways).to(device)  # (C*A,)
    adapted = learner.adapt(model, params, buffers, support_x, support_y, aux_x, aux_y=aux_y)
    preds = []
    for start in range(0, target.size, batch_size):
        rows = target[start : start + batch_size]
        x = to_tensor(pool.frames[rows]).to(device)  # (batch, M, C, H, W)
        logits = learner.logits(model, adapted, buffers, support_x, support_y, x)  # (batch, C)
        preds.append(logits.argmax(-1).cpu().numpy())
    return np.concatenate(preds).astype(np.int64)


def loso_predictions(
    learner: Learner, model: nn.Module, pool: ClipPool, cfg: LosoConfig, aux: ClipPool | None = None
) -> list[FoldPrediction]:
    """Every clip of every subject of `pool` predicted once per draw, each fold adapted on a
    support set of the pool's other subjects."""
    # per class (way j = class j): its aux-pool indices, paired as the sampler pairs them
    paired = pair_aux(pool, aux, cfg.aux_pairing) if aux is not None and cfg.aux_shots else None
    folds = list(loso_folds(pool.subjects))
    out = []
    for draw in range(cfg.repeats):
        rng = np.random.default_rng((cfg.seed, draw))
        for fold in folds:
            own = pool.subjects == fold.test_subject
            support = draw_support(pool, np.flatnonzero(~own), cfg.shots, rng, fold.test_subject)
            aux_rows, aux_ways = (
                draw_aux(paired, len(aux), cfg.aux_shots, rng)
                if paired is not None
                else (None, None)
            )
            target = np.flatnonzero(own)
            y_pred = predict_fold(
                learner, model, pool, support, target, cfg.batch_size, aux, aux_rows, aux_ways
            )
            out.append(
                FoldPrediction(
                    draw,
                    fold.test_subject,
                    tuple(pool.clip_ids[support].tolist()),
                    () if aux_rows is None else tuple(aux.clip_ids[aux_rows].tolist()),
                    tuple(pool.clip_ids[target].tolist()),
                    pool.labels[target].copy(),
                    y_pred,
                )
            )
    return out


def scores(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """ACC, macro-F1, UAR and UF1 of one set of (pooled) predictions."""
    return {name: fn(y_true, y_pred) for name, fn in SCORES.items()}


def summarise(protocol: str, pool: ClipPool, folds: Sequence[FoldPrediction]) -> LosoResult:
    """Join each draw's folds by clip id (every clip of the pool exactly once) and summarise
    the pooled metrics over draws, for all clips and per dataset."""
    expected = dict(zip(pool.clip_ids.tolist(), pool.labels.tolist()))
    draws = sorted({f.draw for f in folds})
    pooled = tuple(
        pool_predictions(
            [
                dict(zip(f.clip_ids, zip(f.y_true.tolist(), f.y_pred.tolist())))
                for f in folds
                if f.draw == r
            ],
            expected,
        )
        for r in draws
    )
    dataset_of = dict(zip(pool.clip_ids.tolist(), pool.datasets.tolist()))
    datasets = np.array(
        [dataset_of[c] for c in pooled[0].clip_ids]
    )  # every draw has the same sorted ids
    groups = {ALL: np.ones(datasets.size, dtype=bool)} | {
        d: datasets == d for d in sorted(set(datasets.tolist()))
    }
    metrics = {}
    for group, mask in groups.items():
        per_draw = [scores(p.y_true[mask], p.y_pred[mask]) for p in pooled]  # (R,) dicts
        metrics[group] = {m: mean_ci([s[m] for s in per_draw]) for m in SCORES}
    n = len(pool.class_names)
    confusion = sum(confusion_matrix(p.y_true, p.y_pred, n) for p in pooled)
    return LosoResult(
        protocol,
        pool.class_names,
        tuple(folds),
        pooled,
        metrics,
        {g: int(m.sum()) for g, m in groups.items()},
        confusion,
    )


def evaluate_protocol(
    protocol: str,
    learner: Learner,
    model: nn.Module,
    data: DataSelection,
    test_subjects: Sequence[str],
    cfg: LosoConfig,
    corrupt: str = "none",
    corrupt_fraction: float = 0.0,
) -> LosoResult:
    """LOSO (`loso`; `loso-composite3` on the composite labels) of `model` on the run's
    test subjects.

    `corrupt` (mask | noise | grey, tasks/corrupt.py): `corrupt_fraction` of the test
    subjects' clips are corrupted once (seeded by cfg.seed), before any draw, as the
    fewshot protocol corrupts its test pool: the support sets (other test subjects) and
    the predicted clips are both test clips; the auxiliary macro clips are never touched."""
    if protocol in RENAMED:
        raise ValueError(RENAMED[protocol])
    if protocol == COMPOSITE:  # before loading any clip
        check_ways(protocol, model.cfg.ways, COMPOSITE3)
    pool = protocol_pool(protocol, data, test_subjects)
    check_ways(protocol, model.cfg.ways, pool.class_names)
    corrupted: tuple[str, ...] = ()
    if corrupt != "none":
        pool, corrupted = corrupt_pool(pool, corrupt, corrupt_fraction, seed=cfg.seed)
    aux = auxiliary_pool(data) if cfg.aux_shots else None
    with eval_mode(model):
        result = summarise(protocol, pool, loso_predictions(learner, model, pool, cfg, aux))
    return dataclasses.replace(result, corrupted=corrupted)


def format_protocol_table(result: LosoResult, learner: str, shots: int, bn_mode: str) -> str:
    """Markdown: one row for all test clips and one per dataset (mean ± 95% CI over draws, in
    percent), then the confusion matrix summed over draws."""
    draws = len(result.pooled)
    head = "| protocol | learner | data | clips | ACC | macro-F1 | UAR | UF1 | K | draws | BN |"
    lines = [head, "|" + "---|" * 11]
    for group, m in result.metrics.items():
        cells = [f"{100 * m[k][0]:.2f} ± {100 * m[k][1]:.2f}" for k in SCORES]
        lines.append(
            f"| {result.protocol} | {learner} | {group} | {result.clips[group]} | "
            + " | ".join(cells)
            + f" | {shots} | {draws} | {bn_mode} |"
        )
    lines += [
        "",
        "confusion (rows: true, columns: predicted, summed over draws)",
        "",
        "| true \\ predicted | " + " | ".join(result.class_names) + " |",
        "|" + "---|" * (len(result.class_names) + 1),
    ]
    for name, row in zip(result.class_names, result.confusion.tolist()):
        lines.append(f"| {name} | " + " | ".join(str(v) for v in row) + " |")
    return "\n".join(lines)


def protocol_metrics(result: LosoResult) -> dict:
    """The plain-data summary of a result (results.json "metrics")."""
    return {
        "protocol": result.protocol,
        "classes": list(result.class_names),
        "draws": len(result.pooled),
        "test": result.metrics[ALL],
        "per_dataset": {g: m for g, m in result.metrics.items() if g != ALL},
        "clips": result.clips,
        "confusion": result.confusion.tolist(),
        "test_subjects": sorted({f.fold for f in result.folds}),
        "corrupted_clips": list(result.corrupted),
    }


def write_protocol_results(out: str, result: LosoResult, record: dict) -> None:
    """results.json (`record`: metrics, configs, recorded meta, versions), results.csv (one
    row per group), predictions.csv (draw, fold, clip_id, y_true, y_pred) and supports.csv
    (draw, fold, clip_id of each support clip), from which every number can be recomputed;
    under `out`, a local folder or s3://."""
    root = storage.resolve(out)
    storage.write_text(root.join("results.json"), json.dumps(record, indent=2, default=str))
    header = ["protocol", "data", "clips", "draws"]
    storage.write_csv(
        root.join("results.csv"),
        [
            [*header, *[f"{k}_{s}" for k in SCORES for s in ("mean", "ci95")]],
            *(
                [result.protocol, group, result.clips[group], len(result.pooled)]
                + [v for k in SCORES for v in m[k]]
                for group, m in result.metrics.items()
            ),
        ],
    )
    storage.write_csv(
        root.join("predictions.csv"),
        [
            ["draw", "fold", "clip_id", "y_true", "y_pred"],
            *(
                (fp.draw, fp.fold, c, t, p)
                for fp in result.folds
                for c, t, p in zip(fp.clip_ids, fp.y_true.tolist(), fp.y_pred.tolist())
            ),
        ],
    )
    storage.write_csv(
        root.join("supports.csv"),
        [
            ["draw", "fold", "clip_id"],
            *((fp.draw, fp.fold, c) for fp in result.folds for c in fp.support_ids),
        ],
    )

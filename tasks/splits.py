"""Evaluation protocols over subjects (docs/architecture.md; docs/datasets.md).

- Few-shot on unseen subjects: `subject_split` puts every subject in exactly one of
  meta-train / validation / test, so neither training nor model selection ever sees a
  test subject (individual differences are what the paper's decision level is about).
- LOSO: `loso_folds` leaves one subject out per fold; `draw_support` draws a fold's
  support set from the other subjects; `pool_predictions` joins the folds' predictions
  back **by clip id**, never by order.
- Composite (MEGC 2019): `composite_pool` maps SMIC + CASME II + SAMM (and any dataset
  with a composite mapping in `tasks/labels.py`) to negative / positive / surprise.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from lightman.tasks.episodes import ClipPool, abbreviate
from lightman.tasks.labels import COMPOSITE3, build_scheme

log = logging.getLogger(__name__)


class SplitError(ValueError):
    """A split leaks subjects, misses subjects, or predictions do not join by clip id."""


@dataclass(frozen=True)
class SubjectSplit:
    """Subjects for meta-training, validation (model selection) and test; pairwise disjoint."""

    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]


def assert_disjoint(split: SubjectSplit, subjects: Iterable[str] | None = None) -> None:
    """Raise SplitError if two parts share a subject, or (given `subjects`) if the parts
    do not cover exactly those subjects."""
    parts = {"train": set(split.train), "val": set(split.val), "test": set(split.test)}
    for name, items in (("train", split.train), ("val", split.val), ("test", split.test)):
        if len(items) != len(parts[name]):
            dup = sorted({s for s in items if list(items).count(s) > 1})
            raise SplitError(f"split.{name} lists subject(s) twice: {abbreviate(dup)}")
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        shared = sorted(parts[a] & parts[b])
        if shared:
            raise SplitError(f"subjects in both {a} and {b}: {abbreviate(shared)}")
    if subjects is not None:
        everyone = set(subjects)
        covered = parts["train"] | parts["val"] | parts["test"]
        if covered - everyone:
            raise SplitError(
                f"split names subjects not in the pool: {abbreviate(sorted(covered - everyone))}"
            )
        if everyone - covered:
            raise SplitError(
                f"subjects in no part of the split: {abbreviate(sorted(everyone - covered))}"
            )


def _count(fraction: float, n: int, what: str) -> int:
    """round-half-up(fraction · n), at least 1 when fraction > 0."""
    if not 0 <= fraction < 1:
        raise SplitError(f"{what} must be in [0, 1), got {fraction}")
    return max(int(np.floor(fraction * n + 0.5)), 1 if fraction > 0 else 0)


def subject_split(
    subjects: Iterable[str],
    eval_fraction: float | None = None,
    eval_subjects: Iterable[str] | None = None,
    seed: int = 0,
    val_fraction: float = 0.0,
) -> SubjectSplit:
    """Split subjects into disjoint meta-train / validation / test parts.

    `subjects` may repeat (e.g. `pool.subjects`, one entry per clip). Test subjects are
    either named (`eval_subjects`) or drawn at random (`eval_fraction` of the subjects,
    rounded half up, at least one); `val_fraction` of all subjects are then drawn for
    validation from the rest. The draw is deterministic for `seed` and independent of
    the input order. Parts are sorted tuples.
    """
    everyone = sorted({str(s) for s in subjects})
    if (eval_fraction is None) == (eval_subjects is None):
        raise SplitError("give exactly one of eval_fraction and eval_subjects")
    rng = np.random.default_rng(seed)
    if eval_subjects is not None:
        test = sorted({str(s) for s in eval_subjects})
        unknown = sorted(set(test) - set(everyone))
        if unknown:
            raise SplitError(
                f"eval_subjects not among the {len(everyone)} subjects: {abbreviate(unknown)}"
            )
    else:
        n_test = _count(eval_fraction, len(everyone), "eval_fraction")
        test = sorted(rng.permutation(everyone)[:n_test].tolist())
    rest = [s for s in everyone if s not in set(test)]
    n_val = _count(val_fraction, len(everyone), "val_fraction")
    val = sorted(rng.permutation(rest)[:n_val].tolist()) if rest else []
    train = [s for s in rest if s not in set(val)]
    if not train:
        raise SplitError(
            f"no meta-train subjects left: {len(everyone)} subjects, {len(test)} test, "
            f"{len(val)} validation"
        )
    split = SubjectSplit(tuple(train), tuple(val), tuple(test))
    assert_disjoint(split, everyone)
    return split


def episode_ready_split(
    pool: ClipPool,
    *,
    eval_fraction: float,
    val_fraction: float,
    seed: int,
    ways: int,
    min_clips: int,
    attempts: int = 500,
) -> tuple[SubjectSplit, int]:
    """A `subject_split` whose three parts can each supply `ways`-way episodes.

    MER data sets are imbalanced per subject (a CASME II subject may have no
    "happiness" clip), so a random subject split often leaves a part with fewer than
    `ways` classes of `min_clips` (= shots + query) clips. Draws are tried in a fixed
    order (seed, seed+1, ...) and the first feasible one is returned with its attempt
    number, so the split is deterministic and reported, never hand-picked.
    """

    def ready(subjects: tuple[str, ...]) -> bool:
        counts = pool.by_subjects(subjects).class_counts() if subjects else np.zeros(1, int)
        return int((counts >= min_clips).sum()) >= ways

    for attempt in range(attempts):
        split = subject_split(
            pool.subjects,
            eval_fraction=eval_fraction,
            val_fraction=val_fraction,
            seed=seed + attempt,
        )
        parts = (
            (split.train, split.val, split.test) if val_fraction > 0 else (split.train, split.test)
        )
        if all(ready(p) for p in parts):
            return split, attempt
    raise SplitError(
        f"no subject split of pool {pool.name!r} in {attempts} draws gives every part "
        f"{ways} classes with >= {min_clips} clips; class counts "
        f"{dict(zip(pool.class_names, pool.class_counts().tolist()))}; "
        f"use fewer ways/shots/query or smaller eval/val fractions"
    )


def split_pools(pool: ClipPool, split: SubjectSplit) -> tuple[ClipPool, ClipPool, ClipPool]:
    """(train, val, test) pools of the split's subjects, named "train", "val", "test"."""
    assert_disjoint(split, pool.subjects.tolist())
    return (
        pool.by_subjects(split.train, name="train"),
        pool.by_subjects(split.val, name="val"),
        pool.by_subjects(split.test, name="test"),
    )


@dataclass(frozen=True)
class Fold:
    """One leave-one-subject-out fold."""

    test_subject: str
    train_subjects: tuple[str, ...]


def loso_folds(subjects: Iterable[str]) -> Iterator[Fold]:
    """One fold per distinct subject (sorted), training on all the others."""
    everyone = sorted({str(s) for s in subjects})
    if len(everyone) < 2:
        raise SplitError(f"LOSO needs at least 2 subjects, got {everyone}")
    for s in everyone:
        yield Fold(s, tuple(o for o in everyone if o != s))


def draw_support(
    pool: ClipPool, rows: np.ndarray, shots: int, rng: np.random.Generator, fold: str
) -> np.ndarray:
    """(C*K,) pool indices of a LOSO fold's support set: K distinct clips of every class of
    the pool, class by class, all among `rows` (the other test subjects' clips)."""
    labels = pool.labels[rows]
    counts = np.bincount(labels, minlength=len(pool.class_names))
    short = [f"{name} ({n})" for name, n in zip(pool.class_names, counts.tolist()) if n < shots]
    if short:
        raise SplitError(
            f"{pool.name} fold {fold}: the other test subjects have fewer than shots={shots} "
            f"clips of {', '.join(short)}; use fewer shots, or more test subjects "
            "(data.test_fraction) when training"
        )
    return np.concatenate(
        [
            rng.choice(rows[labels == c], size=shots, replace=False)
            for c in range(len(pool.class_names))
        ]
    )


@dataclass(frozen=True, eq=False)
class PooledPredictions:
    """Predictions of all folds joined by clip id, sorted by clip id."""

    clip_ids: tuple[str, ...]
    y_true: np.ndarray  # (n,) int64
    y_pred: np.ndarray  # (n,) int64


def pool_predictions(
    fold_predictions: Sequence[Mapping[str, tuple[int, int]]],
    expected: Mapping[str, int] | None = None,
) -> PooledPredictions:
    """Join per-fold {clip_id: (y_true, y_pred)} by clip id.

    A clip predicted in two folds is an error. With `expected` ({clip_id: true label},
    e.g. `dict(zip(pool.clip_ids, pool.labels))`) every expected clip must be predicted
    exactly once, no other clip may appear, and each y_true must equal the expected label.
    The result does not depend on the order of the folds.
    """
    joined: dict[str, tuple[int, int]] = {}
    fold_of: dict[str, int] = {}
    for k, preds in enumerate(fold_predictions):
        for cid, (t, p) in preds.items():
            if cid in joined:
                raise SplitError(
                    f"clip {cid} is predicted in fold {fold_of[cid]} and again in fold {k}"
                )
            joined[cid], fold_of[cid] = (int(t), int(p)), k
    if expected is not None:
        missing = sorted(set(expected) - set(joined))
        if missing:
            raise SplitError(
                f"{len(missing)} expected clip(s) have no prediction: {abbreviate(missing)}"
            )
        extra = sorted(set(joined) - set(expected))
        if extra:
            raise SplitError(
                f"{len(extra)} predicted clip(s) are not expected: {abbreviate(extra)}"
            )
        wrong = sorted(c for c, (t, _) in joined.items() if t != int(expected[c]))
        if wrong:
            rows = [f"{c} (y_true {joined[c][0]}, expected {int(expected[c])})" for c in wrong]
            raise SplitError(f"y_true disagrees with the expected label: {abbreviate(rows)}")
    ids = tuple(sorted(joined))
    y = np.array([joined[c] for c in ids], dtype=np.int64).reshape(-1, 2)
    return PooledPredictions(ids, y[:, 0].copy(), y[:, 1].copy())


def _has_composite_mapping(dataset: str) -> bool:
    try:
        build_scheme("composite3", (dataset,))
    except ValueError:
        return False
    return True


def composite_pool(
    pool: ClipPool, name: str | None = None
) -> tuple[ClipPool, dict[str, dict[str, int]]]:
    """The pool under the MEGC 2019 composite scheme (negative / positive / surprise).

    Each clip is labelled from its dataset and raw emotion with
    `build_scheme("composite3", datasets)`; clips outside the scheme (CASME II others /
    fear / sadness, SAMM other, …) and clips of datasets without a composite mapping are
    dropped. Returns the pool and the dropped counts, dataset → raw emotion → clips.
    """
    datasets = sorted(set(pool.datasets.tolist()))
    mapped = [d for d in datasets if _has_composite_mapping(d)]
    scheme = build_scheme("composite3", mapped)
    labels = np.full(len(pool), -1, dtype=np.int64)
    dropped: dict[str, dict[str, int]] = {}
    for i, (d, e, cid) in enumerate(
        zip(pool.datasets.tolist(), pool.emotions.tolist(), pool.clip_ids.tolist())
    ):
        try:
            label = scheme.label(d, e) if d in mapped else None
        except ValueError as err:
            raise SplitError(f"clip {cid}: {err}") from err
        if label is None:
            per = dropped.setdefault(d, {})
            per[e] = per.get(e, 0) + 1
        else:
            labels[i] = label
    for d, per in dropped.items():
        why = "no composite mapping" if d not in mapped else "outside the composite scheme"
        log.info("composite: dropped %d %s clips (%s): %s", sum(per.values()), d, why, per)
    return pool.relabel(labels, COMPOSITE3, name=name), dropped

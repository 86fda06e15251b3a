"""Clip pools and N-way K-shot episodes with auxiliary macro-expression batches.

Paper Sec. 3 and 5.3 ("Few-shot MER"): a task τ_i has a support set D_i^s of N classes ×
K clips and a query set D_i^q drawn from the same N classes, disjoint from the support;
the auxiliary task τ_i^aux brings macro-expression clips (CK+) for the alignment loss
L_aux (Eq. 3). Here:

- `ClipPool` holds the materialised clips of an index (numpy, one row per clip);
- `EpisodeSampler` draws `Episode`s from a pool, deterministically for a seed;
- `seeded_episodes` draws n episodes as a function of the seed: the same n for the same
  seed, whoever asks. The evaluation sets are drawn with it once (every learner is
  evaluated on the same episodes: paired comparison), and so is each training step's
  meta-batch, at a seed of its own (new episodes every step).
- `pair_aux` and `draw_aux` pair macro clips with classes and draw a task's auxiliary
  batch, for the sampler and for the LOSO protocols' support sets alike.

Labels inside an episode are episode-relative (way j = 0..N-1); `Episode.classes[j]` is
the pool's global label of way j. Auxiliary clips are paired with a way by class *name*
(`default_aux_names`: "happiness" ↔ CK+ "happy", "negative" ↔ anger/contempt/…), and
fall back to unpaired random macro clips (label -1) where no name matches.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Literal

import numpy as np
import pyarrow as pa
import torch

from lightman.tasks.labels import build_scheme

UNPAIRED = -1  # aux_y of a macro clip not paired with any way
POOL_COLUMNS = (
    "clip_id",
    "dataset",
    "subject",
    "expression",
    "emotion",
    "label",
    "frames",
    "frames_shape",
)
_STR_FIELDS = ("subjects", "clip_ids", "datasets", "emotions", "expressions")
_ARRAY_FIELDS = ("frames", "labels") + _STR_FIELDS


class PoolError(ValueError):
    """A pool's arrays are inconsistent or a table cannot be decoded; names the pool and clips."""


class EpisodeError(ValueError):
    """A pool cannot supply the requested episodes; names the pool, classes and counts."""


def abbreviate(items: Sequence[str], k: int = 5) -> str:
    """The first k items and how many more, for error messages."""
    head = ", ".join(str(i) for i in items[:k])
    return head + (f", … ({len(items) - k} more)" if len(items) > k else "")


@dataclass(frozen=True, eq=False)
class ClipPool:
    """Materialised clips, one row per clip (index columns as numpy arrays).

    `labels[i]` indexes `class_names`; every per-clip array has length n = frames.shape[0].
    A pool without frames (`frames_loaded=False`, `from_table(..., frames=False)`) holds the
    clips' labels, subjects and shape only: `frames` is a read-only zero view of no memory,
    kept a view by `subset`. It can be counted, split and checked, never sampled (the
    driver of a sharded run draws the split from it; each worker reads its own frames).
    """

    frames: np.ndarray  # (n, M, H, W, C) uint8
    labels: np.ndarray  # (n,) int64 in [0, len(class_names))
    subjects: np.ndarray  # (n,) str, prefixed by dataset
    clip_ids: np.ndarray  # (n,) str, unique
    datasets: np.ndarray  # (n,) str
    emotions: np.ndarray  # (n,) str, raw as annotated
    expressions: np.ndarray  # (n,) str, "micro" | "macro"
    class_names: tuple[str, ...]
    name: str = "pool"  # used in error messages ("pool 'train' has: …")
    frames_loaded: bool = True  # False: labels, subjects and shape only (above)

    def __post_init__(self) -> None:
        frames = np.asarray(self.frames)
        if frames.dtype != np.uint8 or frames.ndim != 5:
            raise PoolError(
                f"pool {self.name!r}: frames must be uint8 (n, M, H, W, C), "
                f"got {frames.dtype} {frames.shape}"
            )
        n = frames.shape[0]
        labels = np.asarray(self.labels)
        if labels.size and labels.dtype.kind not in "iu":
            raise PoolError(
                f"pool {self.name!r}: labels must be integers, got dtype {labels.dtype}"
            )
        if labels.shape != (n,):
            raise PoolError(
                f"pool {self.name!r}: labels has shape {labels.shape}, expected ({n},) like frames"
            )
        object.__setattr__(self, "frames", frames)
        object.__setattr__(self, "labels", labels.astype(np.int64))
        object.__setattr__(self, "class_names", tuple(str(c) for c in self.class_names))
        for f in _STR_FIELDS:
            a = np.asarray(getattr(self, f), dtype=np.str_)
            if a.shape != (n,):
                raise PoolError(
                    f"pool {self.name!r}: {f} has shape {a.shape}, expected ({n},) like frames"
                )
            object.__setattr__(self, f, a)
        bad = np.flatnonzero((self.labels < 0) | (self.labels >= len(self.class_names)))
        if bad.size:
            rows = [f"{self.clip_ids[i]} (label {self.labels[i]})" for i in bad]
            raise PoolError(
                f"pool {self.name!r}: labels must lie in [0, {len(self.class_names)}) "
                f"for class_names {list(self.class_names)}; bad: {abbreviate(rows)}"
            )
        ids, counts = np.unique(self.clip_ids, return_counts=True)
        if np.any(counts > 1):
            raise PoolError(
                f"pool {self.name!r}: duplicated clip ids: {abbreviate(ids[counts > 1].tolist())}"
            )

    def __len__(self) -> int:
        return int(self.frames.shape[0])

    @property
    def clip_shape(self) -> tuple[int, int, int, int]:
        """(M, H, W, C) of every clip."""
        return tuple(self.frames.shape[1:])  # type: ignore[return-value]

    def class_counts(self) -> np.ndarray:
        """(len(class_names),) number of clips per class."""
        return np.bincount(self.labels, minlength=len(self.class_names))

    @classmethod
    def from_table(
        cls, table: pa.Table, class_names: Sequence[str], name: str = "pool", frames: bool = True
    ) -> ClipPool:
        """A pool from index rows (tasks/schema.py: INDEX_SCHEMA) with materialised frames;
        `frames=False`: without them (the table may lack the column), labels and shape only."""
        needed = [c for c in POOL_COLUMNS if frames or c != "frames"]
        missing = [c for c in needed if c not in table.column_names]
        if missing:
            raise PoolError(
                f"pool {name!r}: the table lacks column(s) {missing}; it has {table.column_names}"
            )
        if table.num_rows == 0:
            raise PoolError(f"pool {name!r}: the table has no rows")
        ids = np.asarray(table.column("clip_id").to_pylist(), dtype=np.str_)
        label_col = table.column("label")
        if label_col.null_count:
            nulls = np.flatnonzero(label_col.is_null().to_numpy(zero_copy_only=False))
            raise PoolError(
                f"pool {name!r}: rows without a label: {abbreviate(ids[nulls].tolist())}"
            )
        shapes = table.column("frames_shape").to_pylist()
        if frames:
            clips = _decode_frames(table.column("frames"), shapes, ids, name)
        else:
            shape = _one_shape(shapes, ids, name)
            clips = np.broadcast_to(np.zeros((1, *shape), np.uint8), (len(ids), *shape))
        return cls(
            frames=clips,
            labels=label_col.to_numpy().astype(np.int64),
            subjects=table.column("subject").to_pylist(),
            clip_ids=ids,
            datasets=table.column("dataset").to_pylist(),
            emotions=table.column("emotion").to_pylist(),
            expressions=table.column("expression").to_pylist(),
            class_names=tuple(class_names),
            name=name,
            frames_loaded=frames,
        )

    def _indices(self, sel: Sequence[int] | Sequence[bool] | np.ndarray) -> np.ndarray:
        """Row indices from a boolean mask (n,) or integer indices."""
        s = np.asarray(sel)
        if s.size == 0:
            return np.zeros(0, dtype=np.int64)
        if s.dtype == bool:
            if s.shape != (len(self),):
                raise PoolError(
                    f"pool {self.name!r}: mask has shape {s.shape}, expected ({len(self)},)"
                )
            return np.flatnonzero(s)
        if s.dtype.kind not in "iu" or s.ndim != 1:
            raise PoolError(
                f"pool {self.name!r}: select with a boolean mask or 1-D integer indices, "
                f"got {s.dtype} {s.shape}"
            )
        out = np.flatnonzero((s < 0) | (s >= len(self)))
        if out.size:
            raise PoolError(
                f"pool {self.name!r}: indices out of range [0, {len(self)}): "
                f"{abbreviate(s[out].tolist())}"
            )
        return s.astype(np.int64)

    def subset(
        self, sel: Sequence[int] | Sequence[bool] | np.ndarray, name: str | None = None
    ) -> ClipPool:
        """The clips selected by a boolean mask or integer indices (in that order)."""
        idx = self._indices(sel)
        rows = {f: getattr(self, f)[idx] for f in _ARRAY_FIELDS if f != "frames"}
        rows["frames"] = (
            self.frames[idx]
            if self.frames_loaded
            else np.broadcast_to(self.frames[:1], (idx.size, *self.clip_shape))
        )
        return dataclasses.replace(self, **rows, name=name or self.name)

    def by_subjects(
        self, subjects: Sequence[str], name: str | None = None, strict: bool = True
    ) -> ClipPool:
        """The clips of these subjects; with `strict`, every subject must occur in the pool."""
        wanted = sorted({str(s) for s in subjects})
        if strict:
            absent = sorted(set(wanted) - set(self.subjects.tolist()))
            if absent:
                have = sorted(set(self.subjects.tolist()))
                raise PoolError(
                    f"pool {self.name!r} has no clips of subject(s) {abbreviate(absent)}; "
                    f"its {len(have)} subjects are e.g. {abbreviate(have)} "
                    "(subjects are prefixed by dataset)"
                )
        return self.subset(np.isin(self.subjects, wanted), name=name)

    def relabel(
        self,
        labels: Callable[[str, str], int | None] | Sequence[int] | np.ndarray,
        class_names: Sequence[str],
        name: str | None = None,
    ) -> ClipPool:
        """The pool under new labels indexing `class_names`; clips without a new label are dropped.

        `labels` is either a function `(dataset, emotion) -> int | None` called per clip
        (`LabelScheme.label` fits) or an (n,) array where -1 drops the clip.
        """
        if callable(labels):
            new = np.array(
                [
                    _call_label(labels, d, e, c)
                    for d, e, c in zip(self.datasets, self.emotions, self.clip_ids)
                ],
                dtype=np.int64,
            )
        else:
            new = np.asarray(labels)
            if new.shape != (len(self),) or (new.size and new.dtype.kind not in "iu"):
                raise PoolError(
                    f"pool {self.name!r}: new labels must be ({len(self)},) integers, "
                    f"got {new.dtype} {new.shape}"
                )
        keep = new != -1
        kept = self.subset(keep)  # still under the old labels
        return dataclasses.replace(
            kept,
            labels=new[keep].astype(np.int64),
            class_names=tuple(class_names),
            name=name or self.name,
        )


def _call_label(
    fn: Callable[[str, str], int | None], dataset: str, emotion: str, clip_id: str
) -> int:
    """fn(dataset, emotion) with -1 for None, and the clip named in any error."""
    try:
        label = fn(str(dataset), str(emotion))
    except ValueError as e:
        raise PoolError(f"clip {clip_id}: {e}") from e
    return -1 if label is None else int(label)


def _one_shape(shapes: list, ids: np.ndarray, name: str) -> tuple[int, int, int, int]:
    """The one (M, H, W, C) of the clips' `frames_shape` values (a pool needs one)."""
    empty = [i for i, s in enumerate(shapes) if not s]
    if empty:
        raise PoolError(
            f"pool {name!r}: clips without frames (index not materialised): "
            f"{abbreviate(ids[empty].tolist())}"
        )
    by_shape: dict[tuple[int, ...], list[str]] = {}
    for cid, s in zip(ids.tolist(), shapes):
        by_shape.setdefault(tuple(s), []).append(cid)
    if len(by_shape) > 1:
        detail = "; ".join(f"{s}: {abbreviate(c, 3)}" for s, c in by_shape.items())
        raise PoolError(
            f"pool {name!r}: clips have different frame shapes, a pool needs one: {detail}"
        )
    shape = next(iter(by_shape))
    if len(shape) != 4:
        raise PoolError(f"pool {name!r}: frames_shape must be (M, H, W, C), got {shape}")
    return shape  # type: ignore[return-value]


def _decode_frames(col: pa.ChunkedArray, shapes: list, ids: np.ndarray, name: str) -> np.ndarray:
    """The `frames` column as one (n, M, H, W, C) uint8 array: one np.frombuffer over the
    concatenated bytes (all clips must have the same shape)."""
    shape = _one_shape(shapes, ids, name)
    arr = col.combine_chunks()
    if arr.null_count:
        nulls = np.flatnonzero(arr.is_null().to_numpy(zero_copy_only=False))
        raise PoolError(f"pool {name!r}: clips with null frames: {abbreviate(ids[nulls].tolist())}")
    if not (pa.types.is_binary(arr.type) or pa.types.is_large_binary(arr.type)):
        arr = arr.cast(pa.large_binary())  # e.g. binary_view: get the offsets + data layout
    off_dtype = np.int64 if pa.types.is_large_binary(arr.type) else np.int32
    _, off_buf, data_buf = arr.buffers()
    offsets = np.frombuffer(off_buf, dtype=off_dtype)[arr.offset : arr.offset + len(arr) + 1]
    sizes = np.diff(offsets)
    expected = int(np.prod(shape))
    wrong = np.flatnonzero(sizes != expected)
    if wrong.size:
        rows = [f"{ids[i]} ({sizes[i]} bytes)" for i in wrong]
        raise PoolError(
            f"pool {name!r}: frames bytes do not match frames_shape {shape} "
            f"({expected} bytes): {abbreviate(rows)}"
        )
    data = np.frombuffer(data_buf, dtype=np.uint8)
    return data[offsets[0] : offsets[-1]].reshape((len(ids),) + shape)


def to_tensor(frames: np.ndarray) -> torch.Tensor:
    """(n, M, H, W, C) uint8 → (n, M, C, H, W) float32 in [0, 1] (the backbone's layout)."""
    if frames.dtype != np.uint8 or frames.ndim != 5:
        raise ValueError(
            f"to_tensor expects uint8 (n, M, H, W, C), got {frames.dtype} {frames.shape}"
        )
    x = frames.transpose(0, 1, 4, 2, 3).copy()  # (n, M, C, H, W) uint8, own (writable) memory
    return torch.from_numpy(x).to(torch.float32).div_(255.0)


@dataclass(frozen=True, eq=False)
class Episode:
    """One N-way task τ_i: support D_i^s, query D_i^q and the auxiliary macro batch D_i^aux."""

    support_x: torch.Tensor  # (N*K, M, C, H, W) float32 in [0, 1]
    support_y: torch.Tensor  # (N*K,) int64, episode-relative 0..N-1
    query_x: torch.Tensor  # (N*Q, M, C, H, W)
    query_y: torch.Tensor  # (N*Q,) int64, episode-relative
    aux_x: torch.Tensor | None  # (A, M, C, H, W) macro clips, None without an aux pool
    aux_y: torch.Tensor | None  # (A,) int64: way paired by class name, -1 unpaired
    classes: tuple[int, ...]  # classes[j] = the pool's global label of way j
    support_ids: tuple[str, ...]
    query_ids: tuple[str, ...]
    aux_ids: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for part in ("support", "query", "aux"):
            x, y, ids = (
                getattr(self, f"{part}_x"),
                getattr(self, f"{part}_y"),
                getattr(self, f"{part}_ids"),
            )
            if x is None and y is None and not ids and part == "aux":
                continue
            if x is None or y is None or not (x.shape[0] == y.shape[0] == len(ids)):
                raise ValueError(
                    f"episode {part}: x, y and ids must have the same length, got "
                    f"{None if x is None else tuple(x.shape)}, "
                    f"{None if y is None else tuple(y.shape)}, {len(ids)}"
                )

    @property
    def ways(self) -> int:
        return len(self.classes)

    def to(self, device: torch.device | str) -> Episode:
        """The same episode with its tensors on `device`."""
        move = {
            f: getattr(self, f).to(device)
            for f in ("support_x", "support_y", "query_x", "query_y", "aux_x", "aux_y")
            if getattr(self, f) is not None
        }
        return dataclasses.replace(self, **move)


@dataclass(frozen=True)
class EpisodeConfig:
    """Shape of the episodes (paper 5.3: N-way K-shot, K ∈ {1, 5})."""

    ways: int = 5
    """N: classes per episode."""
    shots: int = 5
    """K: support clips per class."""
    query: int = 5
    """Q: query clips per class, disjoint from the support."""
    aux_shots: int = 5
    """Macro clips per way in the auxiliary batch (A = ways × aux_shots); 0 turns it off."""
    aux_pairing: Literal["class", "unpaired"] = "class"
    """'class': a way's macro clips share its class name where one matches;
    'unpaired': random macro clips."""

    def __post_init__(self) -> None:
        if self.ways < 2:
            raise ValueError(f"ways must be >= 2, got {self.ways}")
        if self.shots < 1:
            raise ValueError(f"shots must be >= 1, got {self.shots}")
        if self.query < 1:
            raise ValueError(f"query must be >= 1, got {self.query}")
        if self.aux_shots < 0:
            raise ValueError(f"aux_shots must be >= 0, got {self.aux_shots}")
        if self.aux_pairing not in ("class", "unpaired"):
            raise ValueError(f"aux_pairing must be 'class' or 'unpaired', got {self.aux_pairing!r}")


# Spellings of the same emotion across datasets (canonical name first).
_SYNONYMS: tuple[tuple[str, ...], ...] = (
    ("happiness", "happy", "amusement", "joy"),
    ("sadness", "sad"),
    ("anger", "angry"),
    ("disgust", "disgusted"),
    ("fear", "afraid", "fearful", "scared"),
    ("surprise", "surprised"),
    ("others", "other"),
)


def _canonical(name: str) -> str:
    e = " ".join(str(name).strip().lower().split())
    return next((group[0] for group in _SYNONYMS if e in group), e)


@cache
def _valence_groups() -> dict[str, frozenset[str]]:
    """negative/positive/surprise → its canonical emotions (composite scheme over CK+)."""
    groups: dict[str, set[str]] = {}
    for _, emotion, cls in build_scheme("composite3", ("ckplus",)).mapping:
        groups.setdefault(cls, set()).add(_canonical(emotion))
    return {cls: frozenset(g) for cls, g in groups.items()}


def _emotions_of(name: str) -> frozenset[str]:
    """The fine canonical emotions a class name stands for ("negative" → anger, …)."""
    c = _canonical(name)
    return _valence_groups().get(c, frozenset({c}))


def default_aux_names(
    micro_names: Sequence[str], macro_names: Sequence[str]
) -> dict[str, tuple[str, ...]]:
    """Micro class name → the macro class names sharing an emotion with it.

    Synonyms are folded ("happiness" ↔ "happy", "amusement"), and the valence classes of
    the composite scheme stand for their members ("negative" ↔ anger, contempt, disgust,
    fear, sadness). Micro classes with no match (e.g. "others", "repression") are absent.
    """
    out = {}
    for m in micro_names:
        matches = tuple(a for a in macro_names if _emotions_of(m) & _emotions_of(a))
        if matches:
            out[m] = matches
    return out


def _resolve_aux_names(
    aux_names: Mapping[str, str | Sequence[str]], micro: ClipPool, macro: ClipPool
) -> dict[str, tuple[str, ...]]:
    """Validate a user's name mapping against both pools' class names."""
    out = {}
    for m, targets in aux_names.items():
        if m not in micro.class_names:
            raise EpisodeError(
                f"aux_names key {m!r} is not a class of pool {micro.name!r}: "
                f"{list(micro.class_names)}"
            )
        targets = (targets,) if isinstance(targets, str) else tuple(targets)
        unknown = [t for t in targets if t not in macro.class_names]
        if unknown:
            raise EpisodeError(
                f"aux_names[{m!r}] names {unknown}, not classes of aux pool {macro.name!r}: "
                f"{list(macro.class_names)}"
            )
        out[m] = targets
    return out


def pair_aux(
    pool: ClipPool,
    aux: ClipPool,
    pairing: Literal["class", "unpaired"] = "class",
    aux_names: Mapping[str, str | Sequence[str]] | None = None,
) -> list[np.ndarray]:
    """Per class of the micro `pool`: the indices of the `aux` pool's clips of its paired
    macro classes (empty: unpaired). Pairing "class" matches names (`aux_names`, default
    `default_aux_names`); "unpaired" pairs nothing. Both pools must have one clip shape."""
    if len(aux) == 0:
        raise EpisodeError(f"auxiliary pool {aux.name!r} is empty")
    if aux.clip_shape != pool.clip_shape:
        raise EpisodeError(
            f"auxiliary pool {aux.name!r} clips are {aux.clip_shape} (M, H, W, C) but pool "
            f"{pool.name!r} clips are {pool.clip_shape}; preprocess both alike"
        )
    if pairing == "unpaired":
        names = {}
    elif aux_names is None:
        names = default_aux_names(pool.class_names, aux.class_names)
    else:
        names = _resolve_aux_names(aux_names, pool, aux)
    return [
        np.flatnonzero(np.isin(aux.labels, [aux.class_names.index(t) for t in names.get(m, ())]))
        for m in pool.class_names
    ]


def draw_aux(
    paired: Sequence[np.ndarray], n_aux: int, shots: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(A,) aux-pool indices and (A,) way labels, A = len(paired) * shots, shuffled.

    Way j gets `shots` clips among paired[j] (`pair_aux`), with replacement where there
    are fewer; the ways with no paired clip share random clips of the n_aux, labelled
    UNPAIRED, which avoid the paired draws unless the pool is too small.
    """
    idx, ys, unpaired = [], [], 0
    for j, cand in enumerate(paired):
        if cand.size:
            idx.append(rng.choice(cand, size=shots, replace=cand.size < shots))
            ys.append(np.full(shots, j, dtype=np.int64))
        else:
            unpaired += shots
    if unpaired:
        free = np.setdiff1d(np.arange(n_aux), np.concatenate(idx)) if idx else np.arange(n_aux)
        free = free if free.size >= unpaired else np.arange(n_aux)
        idx.append(rng.choice(free, size=unpaired, replace=free.size < unpaired))
        ys.append(np.full(unpaired, UNPAIRED, dtype=np.int64))
    aux, aux_y = np.concatenate(idx), np.concatenate(ys)
    perm = rng.permutation(aux.size)
    return aux[perm], aux_y[perm]


def _shortage(pool: ClipPool, cfg: EpisodeConfig) -> str:
    need = cfg.shots + cfg.query
    counts = ", ".join(f"{n} {c}" for n, c in zip(pool.class_names, pool.class_counts()))
    return (
        f"{cfg.ways}-way {cfg.shots}-shot {cfg.query}-query needs {cfg.ways} classes "
        f"with >= {need} clips; pool {pool.name!r} ({len(pool)} clips) has: {counts or 'none'}"
    )


@dataclass(frozen=True, eq=False)
class _Plan:
    """An episode as pool indices (cheap to keep; materialised on demand)."""

    classes: np.ndarray  # (N,) global labels
    support: np.ndarray  # (N*K,) pool indices
    support_y: np.ndarray  # (N*K,) int64 episode-relative
    query: np.ndarray  # (N*Q,)
    query_y: np.ndarray
    aux: np.ndarray | None  # (A,) aux-pool indices
    aux_y: np.ndarray | None


class EpisodeSampler:
    """Draws N-way K-shot episodes from `pool` (paper 5.3), deterministic for `seed`.

    Ways are drawn uniformly among the classes with at least K + Q clips; per way, K
    support and Q query clips without replacement (disjoint); each set is shuffled. With
    `aux_pool` (macro clips, e.g. CK+) and `cfg.aux_shots > 0`, each way gets aux_shots
    macro clips of a class with the same name (`aux_names`, default `default_aux_names`)
    under `aux_pairing="class"`, and random macro clips (label -1) otherwise. A class
    with fewer than aux_shots macro clips is sampled with replacement; random clips
    avoid the paired ones unless the pool is too small.
    """

    def __init__(
        self,
        pool: ClipPool,
        cfg: EpisodeConfig,
        seed: int | Sequence[int],
        aux_pool: ClipPool | None = None,
        aux_names: Mapping[str, str | Sequence[str]] | None = None,
    ) -> None:
        self.pool, self.cfg = pool, cfg
        self._rng = np.random.default_rng(seed)
        self._by_class = [np.flatnonzero(pool.labels == c) for c in range(len(pool.class_names))]
        self._eligible = np.array(
            [c for c, idx in enumerate(self._by_class) if idx.size >= cfg.shots + cfg.query],
            dtype=np.int64,
        )
        if self._eligible.size < cfg.ways:
            raise EpisodeError(_shortage(pool, cfg))
        self.aux_pool = aux_pool if cfg.aux_shots > 0 else None
        self._aux_by_class: list[np.ndarray] = []  # per pool class: paired aux-pool indices
        if self.aux_pool is not None:
            self._aux_by_class = pair_aux(pool, self.aux_pool, cfg.aux_pairing, aux_names)

    def _plan(self) -> _Plan:
        rng, n, k, q = self._rng, self.cfg.ways, self.cfg.shots, self.cfg.query
        classes = rng.choice(self._eligible, size=n, replace=False)  # (N,): way j is classes[j]
        # K + Q distinct clips per way: the first K support, the rest query (disjoint)
        picks = [rng.choice(self._by_class[c], size=k + q, replace=False) for c in classes]
        ways = np.arange(n, dtype=np.int64)
        s_perm, q_perm = rng.permutation(n * k), rng.permutation(n * q)
        support = np.concatenate([p[:k] for p in picks])[s_perm]
        query = np.concatenate([p[k:] for p in picks])[q_perm]
        aux, aux_y = (
            draw_aux(
                [self._aux_by_class[c] for c in classes],
                len(self.aux_pool),
                self.cfg.aux_shots,
                rng,
            )
            if self.aux_pool is not None
            else (None, None)
        )
        return _Plan(
            classes,
            support,
            np.repeat(ways, k)[s_perm],
            query,
            np.repeat(ways, q)[q_perm],
            aux,
            aux_y,
        )

    def _materialise(self, plan: _Plan) -> Episode:
        pool, aux = self.pool, self.aux_pool
        if not pool.frames_loaded:
            raise PoolError(
                f"pool {pool.name!r} holds no frames (labels and subjects only): "
                "it can be split and checked, not sampled"
            )
        has_aux = plan.aux is not None
        return Episode(
            support_x=to_tensor(pool.frames[plan.support]),
            support_y=torch.from_numpy(plan.support_y.copy()),
            query_x=to_tensor(pool.frames[plan.query]),
            query_y=torch.from_numpy(plan.query_y.copy()),
            aux_x=to_tensor(aux.frames[plan.aux]) if has_aux else None,
            aux_y=torch.from_numpy(plan.aux_y.copy()) if has_aux else None,
            classes=tuple(int(c) for c in plan.classes),
            support_ids=tuple(pool.clip_ids[plan.support].tolist()),
            query_ids=tuple(pool.clip_ids[plan.query].tolist()),
            aux_ids=tuple(aux.clip_ids[plan.aux].tolist()) if has_aux else (),
        )

    def sample(self) -> Episode:
        """The next episode."""
        return self._materialise(self._plan())

    def sample_batch(self, tasks: int) -> list[Episode]:
        """The next `tasks` episodes (a meta-batch)."""
        return [self.sample() for _ in range(tasks)]


class FixedEpisodes(Sequence[Episode]):
    """A list of drawn episodes kept as indices and materialised on access (600 evaluation
    episodes would not fit in memory as tensors): what `seeded_episodes` returns."""

    def __init__(self, sampler: EpisodeSampler, plans: list[_Plan]) -> None:
        self._sampler, self._plans = sampler, plans

    def __len__(self) -> int:
        return len(self._plans)

    def __getitem__(self, i):  # int -> Episode, slice -> list[Episode]
        if isinstance(i, slice):
            return [self._sampler._materialise(p) for p in self._plans[i]]
        return self._sampler._materialise(self._plans[i])

    def __iter__(self) -> Iterator[Episode]:
        return (self._sampler._materialise(p) for p in self._plans)


def seeded_episodes(
    pool: ClipPool,
    cfg: EpisodeConfig,
    n: int,
    seed: int | Sequence[int],
    aux_pool: ClipPool | None = None,
    aux_names: Mapping[str, str | Sequence[str]] | None = None,
) -> FixedEpisodes:
    """n episodes drawn from (pool, cfg, seed), as indices materialised on access: the
    same n for the same arguments, whoever asks (`FixedEpisodes`). A function of its seed,
    not an evaluation set: the trainer draws the validation and test episodes with it once
    (seeds seed + 1, seed + 2) and every meta-batch too, at seed (seed, step) or
    (seed, step, rank), so each training step gets new episodes that any worker, a
    resumed run or a rerun draws again exactly."""
    if n < 1:
        raise ValueError(f"seeded_episodes needs n >= 1, got {n}")
    sampler = EpisodeSampler(pool, cfg, seed, aux_pool=aux_pool, aux_names=aux_names)
    return FixedEpisodes(sampler, [sampler._plan() for _ in range(n)])

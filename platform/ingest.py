"""`lightman ingest`: a dataset release → rows of the Parquet index (DESIGN.md, "The flow of data").

    scan (adapter) → label (scheme) → preprocess (parallel) → rows → write_index

Every clip that cannot be used ends up in the manifest's `skipped` list with its
reason: from the adapter (layout/sheet problems), from the label scheme (unknown
emotion, or outside the scheme), or from preprocessing (`ClipError`, or any other
per-clip exception, recorded with its type). Results keep the scan's clip order
whatever the number of workers, so 1 and N workers write the same index.

Parallelism: a process pool (spawned workers, one OpenCV thread each). On the 2-core
reference machine it beat Ray tasks for this workload (see benchmarks/ingest.py and
the note in `_parallel_map`).
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Literal

from tqdm import tqdm

from lightman.platform import storage
from lightman.platform.config import to_dict
from lightman.platform.index import ROW_GROUP_SIZE, repair_kind, write_index
from lightman.tasks.datasets import scan
from lightman.tasks.labels import LabelScheme, UnknownEmotion, build_scheme
from lightman.tasks.preprocess import ClipError, PreprocessConfig, preprocess_clip
from lightman.tasks.schema import EXPRESSIONS, ClipRecord, Skipped, row_from_record


@dataclass(frozen=True)
class IngestConfig:
    """How a dataset release becomes index rows; recorded in the manifest."""

    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    """Face crop, M frames, size, flow, apex estimation (tasks/preprocess.py)."""
    label_scheme: Literal["native", "five", "composite3"] = "native"
    """Classes the labels index: the dataset's own, the 5-class set, or the MEGC 2019
    composite negative/positive/surprise. Clips outside it are skipped with the reason."""
    workers: int = 1
    """Processes preprocessing clips in parallel (1: in this process)."""
    limit: int | None = None
    """At most this many clips (the first in clip-id order), for quick runs."""
    subjects: tuple[str, ...] = ()
    """Only these subjects ('sub01' or 'casme2/sub01'); empty: all."""
    expression: Literal["micro", "macro"] | None = None
    """Only micro- or macro-expression clips; None: both."""
    row_group_size: int = ROW_GROUP_SIZE
    """Rows per Parquet row group."""

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1 or None, got {self.limit}")
        if self.expression is not None and self.expression not in EXPRESSIONS:
            raise ValueError(f"expression must be one of {EXPRESSIONS} or None, got {self.expression!r}")
        if self.row_group_size < 1:
            raise ValueError(f"row_group_size must be >= 1, got {self.row_group_size}")


@dataclass(frozen=True)
class IngestSummary:
    """What one ingest did (printed by `lightman ingest`)."""

    dataset: str
    src: str
    out: str
    ingested: int
    skipped: tuple[Skipped, ...]
    repairs: dict[str, int]  # repaired notes by kind ("apex", "offset", "face", ...)
    class_counts: dict[str, int]
    subject_counts: dict[str, int]
    frames: int  # frames materialised (clips × M)
    seconds: float
    workers: int
    content_hash: str  # of this dataset's rows

    @property
    def clips_per_s(self) -> float:
        return self.ingested / self.seconds if self.seconds > 0 else 0.0

    @property
    def frames_per_s(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


# ---------------------------------------------------------------- steps (pure)


def label_records(
    records: Sequence[ClipRecord], scheme: LabelScheme,
) -> tuple[list[tuple[ClipRecord, int]], list[Skipped]]:
    """(record, label) for the clips inside the scheme; the others skipped with the reason."""
    jobs, skipped = [], []
    for rec in records:
        try:
            label = scheme.label(rec.dataset, rec.emotion)
        except UnknownEmotion as e:
            skipped.append(Skipped(rec.dataset, rec.clip_id, str(e)))
            continue
        if label is None:
            skipped.append(Skipped(
                rec.dataset, rec.clip_id,
                f"emotion {rec.emotion!r} is outside the {scheme.name} scheme {list(scheme.class_names)}",
            ))
        else:
            jobs.append((rec, label))
    return jobs, skipped


def process_clip(job: tuple[ClipRecord, int], cfg: PreprocessConfig) -> dict | Skipped:
    """One index row, or the clip skipped with the reason (never raises for a bad clip)."""
    rec, label = job
    try:
        pre, flow = preprocess_clip(rec, cfg)
        return row_from_record(rec, pre, label, flow)
    except ClipError as e:
        reason = str(e)
        while reason.startswith(f"{rec.clip_id}: "):  # the Skipped names the clip already
            reason = reason.removeprefix(f"{rec.clip_id}: ")
    except Exception as e:  # a clip that breaks preprocessing must not lose the others
        reason = f"unexpected {type(e).__name__} in preprocessing: {e}"
    return Skipped(rec.dataset, rec.clip_id, reason)


def _worker_init() -> None:
    import cv2

    cv2.setNumThreads(1)  # one process per core: OpenCV's own threads would oversubscribe


def _parallel_map(jobs: list, cfg: PreprocessConfig, workers: int) -> Iterator[dict | Skipped]:
    """process_clip over jobs, results in job order.

    A spawned process pool: Ray tasks cost a Ray start (~5 s when none is running) plus
    per-task scheduling and object-store copies of the frames, and measured slower on 2
    cores; fork is unsafe once the S3 client (scan from s3://) has started its threads.
    """
    if workers == 1:
        yield from (process_clip(j, cfg) for j in jobs)
        return
    ctx = multiprocessing.get_context("spawn")
    chunk = max(1, min(8, len(jobs) // (4 * workers)))
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init) as pool:
        yield from pool.map(process_clip, jobs, [cfg] * len(jobs), chunksize=chunk)


def dataset_entry(dataset: str, src: str, cfg: IngestConfig, scheme: LabelScheme, skipped: list[Skipped]) -> dict:
    """The manifest entry the ingest records (the writer adds counts, files, hash, ...)."""
    return {
        "dataset": dataset,
        "adapter": dataset,
        "source_uri": src,
        "label_scheme": scheme.to_dict(),
        "preprocess": to_dict(cfg.preprocess),
        "ingest": to_dict(cfg),
        "skipped": [s.to_dict() for s in skipped],
    }


# ---------------------------------------------------------------- driver


def ingest(dataset: str, src: str, out: str, cfg: IngestConfig = IngestConfig()) -> IngestSummary:
    """Scan `src`, label, preprocess and write `dataset` into the index at `out` (local or s3://).

    Replaces `dataset` in the index and keeps the others. Raises LayoutError for a
    source in the wrong layout and ValueError for a scheme that does not cover the
    dataset; clips that cannot be used are skipped, not raised.
    """
    start = time.perf_counter()
    src_uri, out_uri = storage.resolve(src).uri, storage.resolve(out).uri
    scheme = build_scheme(cfg.label_scheme, [dataset])  # fails before the scan if it does not cover `dataset`
    found = scan(dataset, src_uri, limit=cfg.limit, subjects=cfg.subjects or None, expression=cfg.expression)
    if dataset == "video":  # the generic adapter's classes are the emotions its CSV names
        scheme = build_scheme(cfg.label_scheme, [dataset], extra_emotions=tuple(r.emotion for r in found.records))
    jobs, label_skips = label_records(found.records, scheme)
    skipped_before = list(found.skipped) + label_skips

    results = _parallel_map(jobs, cfg.preprocess, cfg.workers)
    bar = tqdm(results, total=len(jobs), desc=f"ingest {dataset}", unit="clip", disable=None)
    manifest = write_index(
        bar, out_uri, dataset_entry(dataset, src_uri, cfg, scheme, skipped_before),
        row_group_size=cfg.row_group_size,
    )
    bar.close()
    entry = manifest.entry(dataset)
    counts = entry["counts"]
    return IngestSummary(
        dataset=dataset,
        src=src_uri,
        out=out_uri,
        ingested=counts["clips"],
        skipped=tuple(Skipped(**s) for s in entry["skipped"]),
        repairs=dict(counts["repairs_by_kind"]),
        class_counts=dict(counts["per_class"]),
        subject_counts=dict(counts["per_subject"]),
        frames=sum(f["rows"] for f in entry["files"]) * cfg.preprocess.frames,
        seconds=time.perf_counter() - start,
        workers=cfg.workers,
        content_hash=entry["content_hash"],
    )


def format_summary(summary: IngestSummary) -> str:
    """The summary as `lightman ingest` prints it."""
    s = summary
    lines = [
        f"ingested {s.ingested} {s.dataset} clips from {s.src} into {s.out}",
        f"  {s.seconds:.1f} s with {s.workers} worker(s): {s.clips_per_s:.1f} clips/s, {s.frames_per_s:.0f} frames/s",
        f"  per class: {', '.join(f'{k} {v}' for k, v in s.class_counts.items()) or 'none'}",
        f"  subjects: {len(s.subject_counts)}",
        f"  repairs: {', '.join(f'{k} {v}' for k, v in sorted(s.repairs.items())) or 'none'}",
        f"  skipped: {len(s.skipped)}",
    ]
    lines += [f"    {k.clip}: {k.reason}" for k in s.skipped]
    lines.append(f"  content hash {s.content_hash}")
    return "\n".join(lines)


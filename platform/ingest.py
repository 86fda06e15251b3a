"""`lightman ingest`: a dataset release → rows of the Parquet index (docs/architecture.md).

    scan (adapter) → label (scheme) → preprocess (parallel) → rows → write_index

Every clip that cannot be used ends up in the manifest's `skipped` list with its
reason: from the adapter (layout/sheet problems), from the label scheme (unknown
emotion, or outside the scheme), or from preprocessing (`ClipError`, or any other
per-clip exception, recorded with its type). Results keep the scan's clip order
whatever the number of workers, so 1 and N workers write the same index.

Parallelism (`parallel_map`): a local process pool, or Ray tasks when Ray is already
running; benchmarks/ingest.py measures both.

Nothing is lost silently: the index location is checked (writable, manifest readable)
before the scan, and an ingest that would replace a dataset's rows with fewer than half
as many (a `limit=N` quick look into the real index) is refused unless `replace=True`.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import select
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Literal

from tqdm import tqdm

from lightman.models.provenance import to_dict
from lightman.platform.index import ROW_GROUP_SIZE, prepare_write, write_index
from lightman.tasks import storage
from lightman.tasks.datasets import scan
from lightman.tasks.labels import LabelScheme, UnknownEmotion, build_scheme
from lightman.tasks.preprocess import ClipError, PreprocessConfig, preprocess_clip
from lightman.tasks.schema import EXPRESSIONS, ClipRecord, Skipped, row_from_record


class IngestError(ValueError):
    """Nothing usable to ingest; the index is left as it was. The message gives reasons."""


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
            raise ValueError(
                f"expression must be one of {EXPRESSIONS} or None, got {self.expression!r}"
            )
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
    records: Sequence[ClipRecord],
    scheme: LabelScheme,
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
            skipped.append(
                Skipped(
                    rec.dataset,
                    rec.clip_id,
                    f"emotion {rec.emotion!r} is outside the {scheme.name} scheme "
                    f"{list(scheme.class_names)}",
                )
            )
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


_STOP = {signal.SIGINT, signal.SIGTERM}


def _worker_init(ingest_pid: int) -> None:
    import cv2

    cv2.setNumThreads(1)  # one process per core: OpenCV's own threads would oversubscribe
    # Ctrl-C signals the whole process group; the ingest stops the pool, and a worker's own
    # KeyboardInterrupt would only print a traceback per worker
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # pool_map held these back while the pool started, a mask the fork server, and so
    # every worker, inherited
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP)
    _exit_with(ingest_pid)


def _exit_with(pid: int) -> None:
    """End this worker as soon as process `pid` (the ingest) ends, however it ends.

    A worker of a killed ingest (SIGKILL included) would otherwise wait forever on a task
    queue that nobody writes to. Its parent is the fork server, not the ingest, and the
    fork server lives as long as its children, so the parent-death signal of Linux would
    never come: a daemon thread waits on the ingest's process itself (a pidfd on Linux,
    which also sees a killed but not yet reaped process; polling elsewhere).
    """
    pidfd_open = getattr(os, "pidfd_open", None)  # Linux >= 5.3
    try:
        fd = pidfd_open(pid) if pidfd_open else None
    except ProcessLookupError:  # gone before this worker started
        os._exit(1)
    except OSError:  # refused (e.g. a seccomp profile): poll instead
        fd = None

    def wait() -> None:
        if fd is not None:
            select.select([fd], [], [])
            os._exit(1)
        while True:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                os._exit(1)
            time.sleep(0.5)

    threading.Thread(target=wait, name=f"exit-with-{pid}", daemon=True).start()


def pool_map(jobs: list, cfg: PreprocessConfig, workers: int) -> Iterator[dict | Skipped]:
    """process_clip over jobs in a local process pool, results in job order.

    Workers fork from a forkserver that has imported this module once: a fresh process
    per worker would import it again (slow), and forking the caller itself is unsafe once
    it has threads (the S3 client's, after a scan of s3://). Like any spawn/forkserver
    pool, a script calling `ingest` needs the `if __name__ == "__main__":` guard.

    SIGINT and SIGTERM are held back while the pool starts (a worker cut off half-way
    through its start prints a traceback, and one not yet registered cannot be stopped);
    on any exit but the normal one the workers are stopped and waited for, not left to
    finish the queued clips.
    """
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])
    chunk = max(1, min(8, len(jobs) // (4 * workers)))
    others = set(multiprocessing.active_children())
    pool = ProcessPoolExecutor(
        workers,
        mp_context=ctx,
        initializer=_worker_init,
        initargs=(os.getpid(),),
    )
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP)
    try:
        # submits every chunk at once, which starts the workers
        results = pool.map(process_clip, jobs, [cfg] * len(jobs), chunksize=chunk)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # a signal held back is raised here
        yield from results
    except BaseException:
        # Ctrl-C, SIGTERM, a failed write, or the consumer stopped. The workers are waited for:
        # one still starting needs this process's semaphores, which go when it exits
        pool.shutdown(wait=False, cancel_futures=True)
        mine = set(multiprocessing.active_children()) - others
        for worker in mine:
            worker.terminate()
        for worker in mine:
            worker.join(timeout=10)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        raise
    pool.shutdown()


def ray_map(jobs: list, cfg: PreprocessConfig, workers: int) -> Iterator[dict | Skipped]:
    """process_clip over jobs as Ray tasks (at most 2 × workers in flight), results in job order."""
    import ray

    task = ray.remote(num_cpus=1)(process_clip)
    cfg_ref = ray.put(cfg)
    pending: deque = deque()
    for job in jobs:
        pending.append(task.remote(job, cfg_ref))
        if len(pending) >= 2 * workers:
            yield ray.get(pending.popleft())
    while pending:
        yield ray.get(pending.popleft())


def parallel_map(jobs: list, cfg: PreprocessConfig, workers: int) -> Iterator[dict | Skipped]:
    """process_clip over jobs with `workers` in parallel, results in job order.

    Measured on 2 cores (benchmarks/ingest.py): starting a local Ray costs ~5-6 s, more
    than preprocessing a few hundred clips, so without a running Ray the work goes to a
    process pool; inside a running Ray (a job on a cluster) Ray tasks are used, with no
    start-up cost and every node's CPUs.
    """
    if workers == 1:
        return (process_clip(j, cfg) for j in jobs)
    ray = sys.modules.get("ray")  # never imported: certainly not running (and not worth importing)
    return (
        ray_map(jobs, cfg, workers)
        if ray and ray.is_initialized()
        else pool_map(jobs, cfg, workers)
    )


def _examples(skipped: Sequence[Skipped], k: int = 3) -> str:
    return "; ".join(f"{s.clip}: {s.reason}" for s in skipped[:k])


def require_rows(results: Iterator[dict | Skipped], jobs: int) -> Iterator[dict | Skipped]:
    """Pass results through; raise IngestError at the end if none of `jobs` gave a row.

    Raised inside the row stream, so `write_index` aborts and the dataset's previous
    rows stay in the index (an ingest whose every clip failed, e.g. S3 credentials
    missing on the workers, must not replace good data with nothing).
    """
    failed: list[Skipped] = []
    for r in results:
        if isinstance(r, Skipped):
            failed.append(r)
        yield r
    if jobs and len(failed) == jobs:
        raise IngestError(
            f"all {jobs} clips failed preprocessing; the index was not changed. "
            f"e.g. {_examples(failed)}"
        )


SHRINK_LIMIT = 0.5  # an ingest may replace a dataset's rows with no fewer than this fraction


def _narrowed_by(cfg: IngestConfig) -> str:
    """The settings that narrowed the scan, as the command line spells them (key=value)."""
    opts = {
        "limit": cfg.limit,
        "subjects": f"[{','.join(cfg.subjects)}]" if cfg.subjects else "",
        "expression": cfg.expression,
    }
    return " ".join(f"{k}={v}" for k, v in opts.items() if v)


def _shrink_error(
    dataset: str,
    out: str,
    old: int,
    new: int,
    cfg: IngestConfig,
    at_most: bool = False,
) -> IngestError:
    narrowed = _narrowed_by(cfg)
    return IngestError(
        f"refusing to replace the {old} {dataset} clips in the index at {out} with "
        f"{'at most ' if at_most else ''}{new}: {'at least ' if at_most else ''}{old - new} clips "
        f"would be lost{f' (the scan was narrowed by {narrowed})' if narrowed else ''}; "
        f"the index was not changed. Pass --replace to replace them anyway, or give --out a new "
        f"location for a quick look"
    )


def refuse_shrink(results: Iterator[dict | Skipped], least: int, error) -> Iterator[dict | Skipped]:
    """Pass results through; raise `error(rows)` at the end if fewer than `least` were rows.

    Raised inside the row stream, like `require_rows`, so nothing is committed.
    """
    rows = 0
    for r in results:
        rows += not isinstance(r, Skipped)
        yield r
    if rows < least:
        raise error(rows)


def dataset_entry(
    dataset: str, src: str, cfg: IngestConfig, scheme: LabelScheme, skipped: list[Skipped]
) -> dict:
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


def ingest(
    dataset: str,
    src: str,
    out: str,
    cfg: IngestConfig = IngestConfig(),
    *,
    replace: bool = False,
) -> IngestSummary:
    """Scan `src`, label, preprocess and write `dataset` into the index at `out` (local or s3://).

    Replaces `dataset` in the index and keeps the others. Raises LayoutError for a
    source in the wrong layout, ValueError for an unknown dataset or a scheme that does
    not cover it, BadIndexError for an index location that cannot be written or whose
    manifest is damaged (both before the scan), and IngestError when no clip is usable
    or when the dataset's rows would be replaced with fewer than SHRINK_LIMIT of them
    and `replace` is False (the index is then unchanged); single clips that cannot be
    used are skipped, not raised.
    """
    start = time.perf_counter()
    src_uri, out_uri = storage.resolve(src).uri, storage.resolve(out).uri
    scheme = build_scheme(
        cfg.label_scheme, [dataset]
    )  # fails before the scan if it does not cover `dataset`
    previous = prepare_write(out_uri)
    held = previous["datasets"].get(dataset) if previous and not replace else None
    old = held["counts"]["clips"] if held else 0
    least = math.ceil(old * SHRINK_LIMIT)
    found = scan(
        dataset, src_uri, limit=cfg.limit, subjects=cfg.subjects or None, expression=cfg.expression
    )
    if dataset == "video":  # the generic adapter's classes are the emotions its CSV names
        scheme = build_scheme(
            cfg.label_scheme, [dataset], extra_emotions=tuple(r.emotion for r in found.records)
        )
    jobs, label_skips = label_records(found.records, scheme)
    skipped_before = list(found.skipped) + label_skips
    if not jobs:
        raise IngestError(
            f"no usable {dataset} clips in {src_uri} ({len(skipped_before)} skipped); the index "
            f"was not changed. e.g. {_examples(skipped_before) or 'the scan found no clips'}"
        )

    if len(jobs) < least:
        raise _shrink_error(dataset, out_uri, old, len(jobs), cfg, at_most=True)

    results = require_rows(parallel_map(jobs, cfg.preprocess, cfg.workers), len(jobs))
    results = refuse_shrink(results, least, lambda n: _shrink_error(dataset, out_uri, old, n, cfg))
    bar = tqdm(results, total=len(jobs), desc=f"ingest {dataset}", unit="clip", disable=None)
    try:
        manifest = write_index(
            bar,
            out_uri,
            dataset_entry(dataset, src_uri, cfg, scheme, skipped_before),
            row_group_size=cfg.row_group_size,
        )
    finally:
        bar.close()  # also on Ctrl-C: the error message then starts on a line of its own
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
        f"  {s.seconds:.1f} s with {s.workers} worker(s): {s.clips_per_s:.1f} clips/s, "
        f"{s.frames_per_s:.0f} frames/s",
        f"  per class: {', '.join(f'{k} {v}' for k, v in s.class_counts.items()) or 'none'}",
        f"  subjects: {len(s.subject_counts)}",
        f"  repairs: {', '.join(f'{k} {v}' for k, v in sorted(s.repairs.items())) or 'none'}",
        f"  skipped: {len(s.skipped)}",
    ]
    lines += [f"    {k.clip}: {k.reason}" for k in s.skipped]
    # the dataset's own hash, which `lightman inspect` prints per dataset; not the index's
    lines.append(f"  {s.dataset} dataset hash: {s.content_hash}")
    return "\n".join(lines)

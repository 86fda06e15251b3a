"""Ingest and read throughput, with ratios measured in the same run.

    .venv/bin/python benchmarks/ingest.py            # minutes on a laptop-class CPU
    .venv/bin/python benchmarks/ingest.py --smoke    # toy sizes: it runs (figures mean nothing)

1. ingest (scan + preprocess + write) of a seeded CASME II set with 1 and 2 workers
   (process pool), and the preprocessing alone in a 2-process pool and as 2 Ray tasks
   (with and without starting Ray), for the choice of parallel backend in
   platform/ingest.py (`parallel_map`);
2. reading the clips for training: the materialised index through Ray Data and through
   pyarrow (`load_pool`'s path), against decoding the same sampled frames from their
   JPEG files each time (read + decode + crop/resize with the stored face box);
3. the training data path in `shard` mode (data_mode=shard, W = 2): each epoch, each
   rank's subjects (`shard_subjects`) streamed from the index's Parquet files by Ray Data
   (`read_dataset` with the subject filter, iterated in pyarrow blocks as a shard worker
   reads its shard, every clip's frames viewed as an array), in the same run as the JPEG
   decoding of the same frames; beside it, the clips per second one worker needs at the
   meta-step's speed: the clips of one task of benchmarks/meta_step.py's setting (5-way
   1-shot, 5 query and 5 macro clips per class, one inner step, Conv4-64, M = 8 at the
   index's size) over the wall seconds of LightmanNet's meta-step on it, timed in this
   process (after a warm-up task). The shard reads run one rank after the other in this
   process, so their clips/s is what one worker's stream delivers.

--smoke (tests/test_benchmarks_smoke.py) runs every row at toy size (SMOKE), so the
script cannot rot between the runs it is meant for; its figures mean nothing.

Prints a markdown table for docs/benchmarks.md. Numbers depend on the machine and on what else
runs on it: the load average is printed with them.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from lightman.platform.runtime import setup  # noqa: E402

setup()  # an entry point: process-wide settings before torch loads (runtime.py)

import numpy as np  # noqa: E402

from lightman.platform import index  # noqa: E402
from lightman.platform.ingest import IngestConfig, ingest, label_records, parallel_map  # noqa: E402
from lightman.tasks.datasets import scan  # noqa: E402
from lightman.tasks.face import FaceBox, crop_face  # noqa: E402
from lightman.tasks.frames import ClipFrames  # noqa: E402
from lightman.tasks.labels import build_scheme  # noqa: E402
from lightman.tasks.preprocess import PreprocessConfig  # noqa: E402
from lightman.tasks.schema import frames_from_row  # noqa: E402
from lightman.tasks.synth import SetSize, SynthConfig, synthesize  # noqa: E402


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def timed(fn, repeats: int = 1) -> tuple[float, object]:
    """Median wall time of `repeats` calls of fn, and the last result."""
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def ray_tasks_preprocess(jobs: list, cfg: PreprocessConfig, workers: int) -> tuple[float, float]:
    """(seconds including a local ray.init, seconds with Ray already running) of
    `parallel_map` over `jobs` (inside a running Ray it uses Ray tasks)."""
    import ray

    start = time.perf_counter()
    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
    try:
        list(parallel_map(jobs, cfg, workers))
        cold = time.perf_counter() - start
        warm, _ = timed(lambda: list(parallel_map(jobs, cfg, workers)))
    finally:
        ray.shutdown()
    return cold, warm


def read_ray_data(
    uri: str, epochs: int
) -> tuple[tuple[float, int], tuple[float, int], tuple[float, int]]:
    """Median seconds of one epoch through Ray Data, and the clips read: streaming from
    Parquet each epoch, from a dataset materialised once in the object store, and in shard
    mode (`read_shard_mode`)."""
    import ray

    from lightman.platform.data import read_dataset

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        from ray.data import DataContext

        DataContext.get_current().enable_progress_bars = False
        ds = read_dataset(uri, columns=["clip_id", "label", "frames", "frames_shape"])

        def epoch(d) -> int:
            n = 0
            for batch in d.iter_batches(batch_size=32, batch_format="pyarrow"):
                for row in batch.select(["frames", "frames_shape"]).to_pylist():
                    n += frames_from_row(row).shape[0] > 0  # (M, H, W, C) view on the bytes
            return n

        epoch(ds)  # warm-up: workers start
        streaming = timed(lambda: epoch(ds), epochs)
        cached = ds.materialize()
        return streaming, timed(lambda: epoch(cached), epochs), read_shard_mode(uri, epochs)
    finally:
        ray.shutdown()


def replicate_index(uri: str, out: str, copies: int) -> int:
    """An index holding every row of `uri` `copies` times (distinct clip ids): a read set of
    realistic size (CASME II has 247 clips, CK+ 593) without rendering more clips."""
    rows = index.read_table(uri).to_pylist()
    entry = {
        "dataset": "casme2",
        "label_scheme": index.read_manifest(uri)["datasets"]["casme2"]["label_scheme"],
    }
    index.write_index(
        (dict(r, clip_id=f"{r['clip_id']}#{k}") for k in range(copies) for r in rows), out, entry
    )
    return len(rows) * copies


def read_shard_mode(uri: str, epochs: int, workers: int = 2) -> tuple[float, int]:
    """Median seconds of one shard-mode epoch (module docstring, 3.) and the clips read:
    for each rank, a Ray Dataset of its subjects' rows streamed from Parquet anew (nothing
    materialised), iterated in whole blocks, every clip's frames viewed as (M, H, W, C).
    Ray must be running."""
    from lightman.platform.data import read_dataset
    from lightman.platform.loop import shard_subjects

    subjects = sorted(set(index.read_table(uri, columns=["subject"]).column("subject").to_pylist()))

    def epoch() -> int:
        n = 0
        for rank in range(workers):
            ds = read_dataset(
                uri,
                subjects=shard_subjects(subjects, rank, workers),
                columns=["clip_id", "subject", "label", "frames", "frames_shape"],
            )
            for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
                for row in batch.select(["frames", "frames_shape"]).to_pylist():
                    n += frames_from_row(row).shape[0] > 0
        return n

    epoch()  # warm-up: Ray Data's workers start
    t, n = timed(epoch, epochs)
    return t, n


def meta_step_need(size: int, frames: int, smoke: bool) -> tuple[float, int, float, str]:
    """(clips/s one worker needs, clips per task, seconds per task, the setting): one task of
    benchmarks/meta_step.py's setting at this index's size, LightmanNet's meta-step (fast
    mode) timed after a warm-up task; --smoke: meta_step.py's own smoke sizes."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from meta_step import SMOKE as STEP_SMOKE
    from meta_step import Setting, lightman, make_model, make_tasks

    from lightman.models.learners import learner_config

    if smoke:
        setting = Setting(shots=1, steps=1, frames=frames, **STEP_SMOKE)
    else:
        setting = Setting(shots=1, steps=1, image_size=size, frames=frames, meta_batch=1)
    model, tasks = make_model(setting), make_tasks(setting, seed=0)
    step = lightman("fast")
    cfg = learner_config(inner_steps=setting.steps)
    step(model, make_tasks(setting, seed=1)[:1], cfg)  # warm-up
    seconds, _ = timed(lambda: step(model, tasks, cfg))
    s = setting
    clips = s.ways * (s.shots + s.query + s.aux_shots)
    return clips / seconds, clips, seconds, s.label + f", hidden {s.hidden}"


def read_pyarrow(uri: str, epochs: int) -> tuple[float, int]:
    def epoch() -> int:
        table = index.read_table(uri, columns=["clip_id", "label", "frames", "frames_shape"])
        return sum(frames_from_row(r).shape[0] > 0 for r in table.to_pylist())

    return timed(epoch, epochs)


def read_jpeg(src: str, uri: str, epochs: int) -> tuple[float, int]:
    """Each epoch: read + decode the sampled JPEGs of every clip, crop with its box, resize."""
    recs = {r.clip_id: r for r in scan("casme2", src).records}
    meta = index.read_table(
        uri, columns=["clip_id", "sampled_frames", "face_box", "frames_shape"]
    ).to_pylist()

    def epoch() -> int:
        for row in meta:
            size = row["frames_shape"][1]
            x, y, w, h = row["face_box"]
            imgs = ClipFrames(recs[row["clip_id"]]).read(row["sampled_frames"])  # (M, H, W, 3)
            np.stack([crop_face(img, FaceBox(x, y, w, h, 0.0), size) for img in imgs])
        return len(meta)

    return timed(epoch, epochs)


# --smoke: the fewest clips, epochs and copies that run every row (2 subjects: the CASME II
# stand-in needs one per clip group)
SMOKE = {"clips": 8, "subjects": 2, "epochs": 1, "read_copies": 2}
SMOKE_LINE = "smoke run: toy sizes, only that the benchmark runs; its figures mean nothing"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clips", type=int, default=60, help="CASME II clips to generate")
    ap.add_argument("--subjects", type=int, default=6)
    ap.add_argument("--epochs", type=int, default=3, help="timed read epochs (median)")
    ap.add_argument(
        "--read-copies", type=int, default=10, help="copies of the clips in the read-test index"
    )
    ap.add_argument(
        "--work", default=None, help="folder for the generated data (default: a temp dir)"
    )
    ap.add_argument(
        "--smoke",
        action="store_true",
        help=f"{SMOKE}: that the benchmark runs, in seconds (its figures mean nothing)",
    )
    args = ap.parse_args()
    if args.smoke:
        for key, value in SMOKE.items():
            setattr(args, key, value)

    work = Path(args.work or tempfile.mkdtemp(prefix="lightman-bench-"))
    cfg = PreprocessConfig()  # M = 8 frames, 64 × 64, Haar face crop
    synthesize(
        work / "synth",
        SynthConfig(seed=0, datasets=("casme2",), casme2=SetSize(args.subjects, args.clips, 200.0)),
    )
    src = str(work / "synth" / "CASME2")

    rows: list[tuple[str, str, str]] = []
    t1, s1 = timed(
        lambda: ingest("casme2", src, str(work / "idx1"), IngestConfig(preprocess=cfg, workers=1))
    )
    t2, s2 = timed(
        lambda: ingest("casme2", src, str(work / "idx2"), IngestConfig(preprocess=cfg, workers=2))
    )
    assert s1.content_hash == s2.content_hash, "1 and 2 workers must write the same index"
    n, frames = s1.ingested, s1.frames
    rows.append(("ingest, 1 worker", f"{n / t1:.1f} clips/s, {frames / t1:.0f} frames/s", "1.00"))
    rows.append(
        (
            "ingest, 2 workers (process pool)",
            f"{n / t2:.1f} clips/s, {frames / t2:.0f} frames/s",
            f"{t1 / t2:.2f}",
        )
    )

    jobs, _ = label_records(scan("casme2", src).records, build_scheme("native", ["casme2"]))
    t_pre, _ = timed(lambda: list(parallel_map(jobs, cfg, 1)))
    t_pool, _ = timed(lambda: list(parallel_map(jobs, cfg, 2)))
    cold, warm = ray_tasks_preprocess(jobs, cfg, 2)
    rows.append(("preprocess only, in process", f"{len(jobs) / t_pre:.1f} clips/s", "1.00"))
    rows.append(
        (
            "preprocess only, 2-process pool",
            f"{len(jobs) / t_pool:.1f} clips/s",
            f"{t_pre / t_pool:.2f}",
        )
    )
    rows.append(
        (
            "preprocess only, 2 Ray tasks incl. ray.init",
            f"{len(jobs) / cold:.1f} clips/s",
            f"{t_pre / cold:.2f}",
        )
    )
    rows.append(
        (
            "preprocess only, 2 Ray tasks, Ray running",
            f"{len(jobs) / warm:.1f} clips/s",
            f"{t_pre / warm:.2f}",
        )
    )

    uri = str(work / "idx1")
    t_jpeg, n_jpeg = read_jpeg(src, uri, args.epochs)
    read_uri = str(work / "read-index")
    n_read = replicate_index(uri, read_uri, args.read_copies)
    t_pa, n_pa = read_pyarrow(read_uri, args.epochs)
    (t_ray, n_ray), (t_cached, n_cached), (t_shard, n_shard) = read_ray_data(read_uri, args.epochs)
    assert n_jpeg == n and n_pa == n_ray == n_cached == n_shard == n_read, (
        n_jpeg,
        n_pa,
        n_ray,
        n_cached,
        n_shard,
        n_read,
    )
    jpeg = n / t_jpeg  # clips/s
    rows.append(("read: JPEG decode + crop/resize each time", f"{jpeg:.0f} clips/s", "1.00"))
    for what, t in (
        ("index via pyarrow (load_pool)", t_pa),
        ("index via Ray Data, streamed each epoch", t_ray),
        ("index via Ray Data, materialised once", t_cached),
    ):
        rows.append((f"read: {what}", f"{n_read / t:.0f} clips/s", f"{n_read / t / jpeg:.1f}"))
    need, task_clips, task_s, setting = meta_step_need(cfg.size, cfg.frames, args.smoke)
    rows.append(
        (
            "shard mode, W=2: JPEG decode + crop/resize each epoch",
            f"{jpeg:.0f} clips/s",
            "1.00",
        )
    )
    rows.append(
        (
            "shard mode, W=2: each rank's subjects streamed by Ray Data each epoch",
            f"{n_read / t_shard:.0f} clips/s",
            f"{n_read / t_shard / jpeg:.2f}",
        )
    )
    rows.append(
        (
            "shard mode: what one worker needs at the meta-step's speed",
            f"{need:.1f} clips/s ({task_clips} clips in {task_s:.2f} s)",
            f"{need / jpeg:.3f}",
        )
    )

    load = os.getloadavg()[0]
    print(
        f"\n{n} CASME II clips (seeded), M={cfg.frames}, {cfg.size}x{cfg.size}; "
        f"{os.cpu_count()} CPUs, load average {load:.1f}; reads: median of {args.epochs} epochs "
        f"over "
        f"{n_read} clips (the {n} repeated {args.read_copies} times), JPEG over the {n}; "
        f"the meta-step: {setting}, LightmanNet (fast), {torch_threads()} torch thread(s)\n"
    )
    if args.smoke:
        print(SMOKE_LINE + "\n")
    print("| measurement | throughput | ratio to the row marked 1.00 above it |")
    print("|---|---|---|")
    for what, value, ratio in rows:
        print(f"| {what} | {value} | {ratio} |")


if __name__ == "__main__":
    main()

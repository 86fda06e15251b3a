"""Batch scoring with Ray Data: every clip of an index, or a folder of a user's own videos,
through a pool of model actors; a predictions Parquet, and metrics where labels exist.

Each actor of the pool loads the checkpoint once (`Predictor`, the same base model the
service answers with: adapted at start to the reference support set), and Ray Data
streams the clips to the pool in batches (`map_batches` over an `ActorPoolStrategy`).
With predictor.device=cuda each actor holds one GPU (`actor_resources`), checked to exist
where the command starts before Ray does (platform/devices.py).
An index's clips are already preprocessed; a video of a folder with no annotation goes
through the upload path of the service (`prepare_clip`: the video adapter's decoding
checks, face box on the onset frame, whole clip as the span, apex estimated), so a clip
scores the same here as over HTTP. A video that cannot be used is a row with its
reason in `error`, not a failed run.

Outputs under `out` (local or s3://), none of them gathered on the driver:
`predictions/<run>/*.parquet`, written by Ray Data's write tasks on the workers (clip_id,
label, probabilities in the order of `classes`, true_label where known, error);
`predictions.json`, the manifest written last (the classes, the devices the actors'
models ran on, the files of the run, the config; `read_predictions` reads the run
through it); and, where the index has labels, `metrics.json` / `metrics.csv` (ACC,
macro-F1, UAR, UF1 over the clips of the served classes, from counts aggregated on the
workers) and `confusion.png`.
"""

from __future__ import annotations

import csv
import io
import json
import time
import uuid
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lightman.models.provenance import to_dict, versions
from lightman.platform.devices import is_cuda, resolve_device
from lightman.platform.predictor import Predictor, PredictorConfig
from lightman.platform.runtime import setup
from lightman.platform.upload import BadUpload, Span, UploadLimits, prepare_clip
from lightman.tasks import storage
from lightman.tasks.metrics import accuracy, confusion_matrix, macro_f1, uar, uf1

PREDICTIONS_MANIFEST = "predictions.json"  # written last: lists the files of the run
PREDICTIONS_DIR = "predictions"  # predictions/<run>/*.parquet, written by the workers
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")
METRICS = {"acc": accuracy, "macro_f1": macro_f1, "uar": uar, "uf1": uf1}


@dataclass(frozen=True)
class ScoreConfig:
    """The model and the pool that scores a source."""

    predictor: PredictorConfig = field(default_factory=PredictorConfig)
    """Checkpoint, served classes and reference support (as the service's)."""
    actors: int = 2
    """Model actors in the pool; each loads the checkpoint once and takes cpus_per_actor
    (and one GPU when predictor.device is cuda)."""
    cpus_per_actor: float = 1.0
    """CPUs reserved per actor (give it as many as its torch threads)."""
    batch_size: int = 16
    """Clips per call of an actor."""
    expression: str = "micro"
    """Index clips scored: micro, macro or all."""
    face_crop: str = ""
    """Videos only: "" preprocesses as the training index did; haar or none overrides it."""
    limits: UploadLimits = field(default_factory=UploadLimits)
    """What one video may hold (as an upload to the service)."""

    def __post_init__(self) -> None:
        if self.actors < 1 or self.batch_size < 1 or not self.cpus_per_actor > 0:
            raise ValueError("actors and batch_size must be >= 1 and cpus_per_actor > 0")
        if self.expression not in ("micro", "macro", "all"):
            raise ValueError(f"expression must be micro, macro or all, got {self.expression!r}")
        if self.face_crop not in ("", "haar", "none"):
            raise ValueError(f"face_crop must be '', haar or none, got {self.face_crop!r}")
        if self.predictor.device.startswith("cuda:"):
            raise ValueError(
                f"predictor.device={self.predictor.device}: Ray gives each actor one GPU of "
                "its own, which the actor sees as cuda; use predictor.device=cuda"
            )


@dataclass(frozen=True)
class ScoreResult:
    out: str  # the output folder's URI
    clips: int  # rows written
    metrics: dict | None  # None when the source has no labels
    seconds: float  # wall time of the Ray Data pipeline
    summary: str  # what `lightman score` prints


def _answer(predictor: Predictor, probs: np.ndarray) -> tuple[list[str], list[list[float]]]:
    return (
        [predictor.classes[i] for i in probs.argmax(1)],
        [[float(v) for v in row] for row in probs],
    )


class IndexScorer:
    """A pool actor over index rows (preprocessed frames, labels by class index)."""

    def __init__(self, cfg: PredictorConfig, class_names: dict[str, list[str]]):
        setup()  # this actor's process-wide settings, before its first kernel (runtime.py)
        self.predictor = Predictor(cfg)
        self.class_names = class_names

    def __call__(self, batch: dict) -> dict:
        frames = np.stack(
            [
                np.frombuffer(b, np.uint8).reshape(tuple(s))
                for b, s in zip(batch["frames"], batch["frames_shape"])
            ]
        )
        labels, probs = _answer(
            self.predictor, self.predictor.probabilities(self.predictor.base, frames)
        )
        truth = [self.class_names[d][int(y)] for d, y in zip(batch["dataset"], batch["label"])]
        n = len(labels)
        return {
            "clip_id": list(batch["clip_id"]),
            "label": labels,
            "probabilities": probs,
            "true_label": truth,
            "error": [""] * n,
            "classes": [list(self.predictor.classes)] * n,
            "device": [str(self.predictor.device)] * n,
        }


class VideoScorer:
    """A pool actor over video files: each is preprocessed as an upload to the service."""

    def __init__(self, cfg: PredictorConfig, face_crop: str, limits: UploadLimits):
        setup()  # this actor's process-wide settings, before its first kernel (runtime.py)
        self.predictor = Predictor(cfg)
        pre = to_dict(self.predictor.preprocess)
        self.preprocess = type(self.predictor.preprocess)(
            **{**pre, "face_crop": face_crop or pre["face_crop"]}
        )
        self.limits = limits

    def __call__(self, batch: dict) -> dict:
        ok, frames, errors = [], [], []
        for uri in batch["uri"]:
            try:
                prep = prepare_clip(storage.read_bytes(uri), Span(), self.preprocess, self.limits)
                frames.append(prep.pre.frames)
                ok.append(True)
                errors.append("")
            except (BadUpload, OSError) as e:
                ok.append(False)
                errors.append(str(e))
        labels, probs = [""] * len(ok), [[] for _ in ok]
        if frames:
            got, p = _answer(
                self.predictor, self.predictor.probabilities(self.predictor.base, np.stack(frames))
            )
            slots = [i for i, good in enumerate(ok) if good]
            for i, lab, pr in zip(slots, got, p):
                labels[i], probs[i] = lab, pr
        return {
            "clip_id": list(batch["clip_id"]),
            "label": labels,
            "probabilities": probs,
            "true_label": [""] * len(ok),
            "error": errors,
            "classes": [list(self.predictor.classes)] * len(ok),
            "device": [str(self.predictor.device)] * len(ok),
        }


def _videos(root: storage.Location) -> list[dict]:
    items = [
        {"clip_id": info.path[len(root.path) :].lstrip("/"), "uri": storage.uri_of(root, info.path)}
        for info in storage.list_files(root)
        if info.base_name.lower().endswith(VIDEO_SUFFIXES)
    ]
    if not items:
        raise ValueError(
            f"{root.uri} is neither an index (no manifest.json) nor a folder "
            f"holding videos ({', '.join(VIDEO_SUFFIXES)})"
        )
    return items


def actor_resources(cfg: ScoreConfig) -> dict:
    """What each actor of the pool reserves (map_batches' num_cpus / num_gpus): its
    cpus_per_actor, and on cuda one GPU of its own, which Ray makes the actor's only
    visible GPU (its CUDA_VISIBLE_DEVICES), seen as cuda."""
    return {
        "num_cpus": cfg.cpus_per_actor,
        "num_gpus": 1 if is_cuda(cfg.predictor.device) else 0,
    }


def _dataset(cfg: ScoreConfig, source: str):
    """(Ray Dataset of scored rows, whether the source has labels)."""
    import ray

    from lightman.platform.data import read_dataset
    from lightman.platform.index import read_manifest

    root = storage.resolve(source)
    pool = ray.data.ActorPoolStrategy(size=cfg.actors)
    common = {
        "compute": pool,
        "batch_size": cfg.batch_size,
        **actor_resources(cfg),
        "batch_format": "numpy",
    }
    if storage.exists(root.join("manifest.json")):
        manifest = read_manifest(root.uri)
        names = {d: list(e["label_scheme"]["class_names"]) for d, e in manifest["datasets"].items()}
        columns = ["clip_id", "dataset", "label", "frames", "frames_shape"]
        expression = None if cfg.expression == "all" else cfg.expression
        # Read first, then score: actors holding every CPU would starve the read tasks of
        # a streaming pipeline, and one block per actor or more lets the whole pool work.
        ds = read_dataset(root.uri, expression=expression, columns=columns)
        ds = ds.repartition(4 * cfg.actors).materialize()
        return ds.map_batches(
            IndexScorer,
            fn_constructor_kwargs={"cfg": cfg.predictor, "class_names": names},
            **common,
        ), True
    if not storage.is_dir(root):
        raise ValueError(f"{source}: no such index or folder of videos")
    items = _videos(root)
    ds = ray.data.from_items(items, override_num_blocks=min(len(items), 4 * cfg.actors))
    return ds.map_batches(
        VideoScorer,
        fn_constructor_kwargs={
            "cfg": cfg.predictor,
            "face_crop": cfg.face_crop,
            "limits": cfg.limits,
        },
        **common,
    ), False


def _confusion_png(metrics: dict, classes: list[str]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.array(metrics["confusion"])
    fig, ax = plt.subplots(figsize=(1.2 * len(classes) + 2, 1.2 * len(classes) + 1.5))
    ax.imshow(cm, cmap="Blues")
    for (i, j), v in np.ndenumerate(cm):
        ax.text(
            j, i, str(v), ha="center", va="center", color="white" if v > cm.max() / 2 else "black"
        )
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"ACC {100 * metrics['acc']:.1f}%  UF1 {100 * metrics['uf1']:.1f}%")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def _pair_counts(block: pa.Table) -> pa.Table:
    """(true_label, label, n): the (true, predicted) pair counts of one block's rows."""
    counted = block.group_by(["true_label", "label"]).aggregate([([], "count_all")])
    return pa.table(
        {"true_label": counted["true_label"], "label": counted["label"], "n": counted["count_all"]}
    )


def _counts(scored, classes: list[str]) -> dict | None:
    """Metrics from the (true, predicted) pair counts, counted by Ray Data on the workers
    block by block (the driver receives at most classes² counts per block, never the rows),
    over the clips whose true class is served (the others cannot be right); None when no
    clip is. Not a Ray Data groupby: its hash shuffle starts aggregator actors and 200
    partitions for these few counts, tens of seconds on a loaded 2-core machine."""
    blocks = scored.select_columns(["true_label", "label"]).map_batches(
        _pair_counts, batch_format="pyarrow", batch_size=None
    )
    pairs: dict[tuple[str, str], int] = {}
    for row in blocks.take_all():
        key = (row["true_label"], row["label"])
        pairs[key] = pairs.get(key, 0) + row["n"]
    t, p = [], []
    other = 0
    for (true_label, label), n in sorted(pairs.items()):
        if true_label in classes:
            t += [classes.index(true_label)] * n
            p += [classes.index(label)] * n
        else:
            other += n
    if not t:
        return None
    t, p = np.array(t), np.array(p)
    return {
        "clips": len(t),
        "clips_of_other_classes": other,
        **{k: float(fn(t, p)) for k, fn in METRICS.items()},
        "confusion": confusion_matrix(t, p, len(classes)).tolist(),
    }


def read_predictions(out: str) -> pa.Table:
    """The predictions a `score` run wrote under `out` (local or s3://): the Parquet files its
    manifest lists, as one table sorted by clip id, the manifest as the schema's "lightman"
    metadata."""
    root = storage.resolve(out)
    manifest = json.loads(storage.read_bytes(root.join(PREDICTIONS_MANIFEST)))
    tables = [
        pq.read_table(io.BytesIO(storage.read_bytes(root.join(part)))) for part in manifest["files"]
    ]
    table = pa.concat_tables(tables).sort_by("clip_id")
    return table.replace_schema_metadata({"lightman": json.dumps(manifest)})


def _write_parts(scored, root: storage.Location) -> list[str]:
    """The actors' rows as Parquet files written by Ray Data's write tasks on the workers,
    into a fresh folder under predictions/ (a run never mixes with an earlier one's files);
    their paths relative to `root`."""
    folder = root.join(PREDICTIONS_DIR, uuid.uuid4().hex)
    storage.make_dirs(folder)
    scored.write_parquet(folder.path, filesystem=folder.fs)
    return sorted(
        info.path[len(root.path) + 1 :]
        for info in storage.list_files(folder)
        if info.base_name.endswith(".parquet")
    )


def score(cfg: ScoreConfig, source: str, out: str) -> ScoreResult:
    """Score `source` (an index, or a folder of videos; local or s3://) into `out`.

    The rows never gather on the driver: the actors' predictions are written by Ray Data's
    write tasks, the metrics come from counts aggregated on the workers, and the manifest
    (predictions.json, written last, in one write) lists the files of this run, so a reader
    never sees a half-written result."""
    import ray

    if not cfg.predictor.checkpoint:
        raise ValueError("predictor.checkpoint is required")
    # CUDA actors need CUDA where the command starts: fail before Ray starts or reads a row
    resolve_device(cfg.predictor.device, "predictor.device")
    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    else:  # a training earlier in this job may have left its CPUs held (distributed.py)
        from lightman.platform.distributed import free_orphaned_placement_groups

        free_orphaned_placement_groups()
    started = time.perf_counter()
    ds, labelled = _dataset(cfg, source)
    scored = ds.materialize()  # in the object store, on the workers: written and counted
    rows = scored.count()
    if rows == 0:
        raise ValueError(f"{source}: no clips to score")
    # every actor serves the same classes; they travel with the rows, as does the device
    # each actor's model ran on (what the run used, not what it asked for)
    classes = scored.take(1)[0]["classes"]
    classes = [str(c) for c in classes]
    devices = sorted(str(d) for d in scored.unique("device"))
    failed = scored.filter(expr="error != ''").count()
    root = storage.resolve(out)
    files = _write_parts(scored.drop_columns(["classes", "device"]), root)
    metrics = _counts(scored, classes) if labelled else None
    if labelled and metrics is None:
        raise ValueError(f"no clip of the index has a served class {classes}")
    seconds = time.perf_counter() - started
    meta = {
        "classes": classes,
        "devices": devices,
        "clips": rows,
        "files": files,
        "checkpoint": cfg.predictor.checkpoint,
        "source": source,
        "config": to_dict(cfg),
        "versions": versions(),
    }
    if metrics:
        storage.write_bytes(
            root.join("metrics.json"), json.dumps({**meta, "metrics": metrics}, indent=2).encode()
        )
        text = io.StringIO()
        w = csv.writer(text)
        w.writerow(["clips", *METRICS])
        w.writerow([metrics["clips"], *(metrics[k] for k in METRICS)])
        storage.write_bytes(root.join("metrics.csv"), text.getvalue().encode())
        storage.write_bytes(root.join("confusion.png"), _confusion_png(metrics, classes))
    storage.write_text(root.join(PREDICTIONS_MANIFEST), json.dumps(meta, indent=2))
    for info in storage.list_dir(root.join(PREDICTIONS_DIR)):  # earlier runs' files
        if info.base_name != files[0].split("/")[1]:
            storage.delete_dir(root.join(PREDICTIONS_DIR, info.base_name))
    lines = [
        f"scored {rows} clips in {seconds:.1f} s with {cfg.actors} actors "
        f"on {', '.join(devices)} -> {root.join(PREDICTIONS_MANIFEST).uri}"
        + (f" ({failed} unusable)" if failed else "")
    ]
    if metrics:
        lines.append(
            "| clips | ACC | macro-F1 | UAR | UF1 |\n|---|---|---|---|---|\n"
            f"| {metrics['clips']} | "
            + " | ".join(f"{100 * metrics[k]:.2f}" for k in METRICS)
            + " |"
        )
    return ScoreResult(root.uri, rows, metrics, seconds, "\n".join(lines))

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

Outputs under `out` (local or s3://): `predictions.parquet` (clip_id, label,
probabilities in the order of `classes`, true_label where known, error; its metadata
holds the classes, the config and the devices the actors' models ran on) and, where the
index has labels, `metrics.json` / `metrics.csv` (ACC, macro-F1, UAR, UF1 over the clips
of the served classes) and `confusion.png`.
"""

from __future__ import annotations

import csv
import io
import json
import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lightman.models.provenance import to_dict, versions
from lightman.platform.devices import is_cuda, resolve_device
from lightman.platform.predictor import Predictor, PredictorConfig
from lightman.platform.upload import BadUpload, Span, UploadLimits, prepare_clip
from lightman.tasks import storage
from lightman.tasks.metrics import accuracy, confusion_matrix, macro_f1, uar, uf1

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


def _metrics(table: pa.Table, classes: list[str]) -> dict:
    """Metrics over the clips whose true class is served (the others cannot be right)."""
    truth = table.column("true_label").to_pylist()
    pred = table.column("label").to_pylist()
    keep = [i for i, t in enumerate(truth) if t in classes]
    if not keep:
        raise ValueError(f"no clip of the index has a served class {classes}")
    t = np.array([classes.index(truth[i]) for i in keep])
    p = np.array([classes.index(pred[i]) for i in keep])
    return {
        "clips": len(keep),
        "clips_of_other_classes": len(truth) - len(keep),
        **{k: float(fn(t, p)) for k, fn in METRICS.items()},
        "confusion": confusion_matrix(t, p, len(classes)).tolist(),
    }


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


def score(cfg: ScoreConfig, source: str, out: str) -> ScoreResult:
    """Score `source` (an index, or a folder of videos; local or s3://) into `out`."""
    import ray

    if not cfg.predictor.checkpoint:
        raise ValueError("predictor.checkpoint is required")
    # CUDA actors need CUDA where the command starts: fail before Ray starts or reads a row
    resolve_device(cfg.predictor.device, "predictor.device")
    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    started = time.perf_counter()
    ds, labelled = _dataset(cfg, source)
    batches = list(ds.iter_batches(batch_format="pyarrow", batch_size=None))
    seconds = time.perf_counter() - started
    table = pa.concat_tables(batches) if batches else None
    if table is None or table.num_rows == 0:
        raise ValueError(f"{source}: no clips to score")
    # every actor serves the same classes; they travel with the rows, once per clip, as
    # does the device each actor's model ran on (what the run used, not what it asked for)
    classes = table.column("classes")[0].as_py()
    devices = sorted(set(table.column("device").to_pylist()))
    table = table.drop_columns(["classes", "device"]).sort_by("clip_id")
    meta = {
        "classes": classes,
        "devices": devices,
        "checkpoint": cfg.predictor.checkpoint,
        "source": source,
        "config": to_dict(cfg),
        "versions": versions(),
    }
    table = table.replace_schema_metadata({"lightman": json.dumps(meta)})
    root = storage.resolve(out)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    storage.write_bytes(root.join("predictions.parquet"), buf.getvalue())
    metrics = None
    if labelled:
        metrics = _metrics(table, classes)
        storage.write_bytes(
            root.join("metrics.json"), json.dumps({**meta, "metrics": metrics}, indent=2).encode()
        )
        text = io.StringIO()
        w = csv.writer(text)
        w.writerow(["clips", *METRICS])
        w.writerow([metrics["clips"], *(metrics[k] for k in METRICS)])
        storage.write_bytes(root.join("metrics.csv"), text.getvalue().encode())
        storage.write_bytes(root.join("confusion.png"), _confusion_png(metrics, classes))
    failed = sum(1 for e in table.column("error").to_pylist() if e)
    lines = [
        f"scored {table.num_rows} clips in {seconds:.1f} s with {cfg.actors} actors "
        f"on {', '.join(devices)} "
        f"-> {root.uri}/predictions.parquet" + (f" ({failed} unusable)" if failed else "")
    ]
    if metrics:
        lines.append(
            "| clips | ACC | macro-F1 | UAR | UF1 |\n|---|---|---|---|---|\n"
            f"| {metrics['clips']} | "
            + " | ".join(f"{100 * metrics[k]:.2f}" for k in METRICS)
            + " |"
        )
    return ScoreResult(root.uri, table.num_rows, metrics, seconds, "\n".join(lines))

"""A checkpoint ready to answer: its classes, its reference support set, adaptation to a
person, batched class probabilities, and the store of adapted models.

A few-shot model's h_pri has no fixed meaning per output: its ways mean what the
support set it adapted to says. So a served model is always *adapted*: the base model
is the checkpoint adapted once, at start, to a reference support set (K clips per
served class from the training index's meta-train subjects, seeded); a person's model
is the checkpoint adapted to that person's own labelled clips (`Predictor.adapt`).
Both are an `Adapted`: the adapted parameters plus the support set that
`Learner.logits` needs (ProtoNet classifies by distance to its prototypes).

Predictions normalise each clip by its own statistics: a `bn_mode=task` checkpoint is
served with `bn_mode=clip` (the same parameters), which for one clip is exactly the
task statistics of that clip alone. A clip's answer therefore never depends on which
other requests share its batch. Adaptation keeps the checkpoint's own mode: the support
set is one task, as in training.

Adapted models live in a store (`AdaptedStore`: a local or s3:// folder, one file per
id), so that any replica behind the load balancer can load a model that another
replica created. An adapted model holds the person's face crops (its support set): a
local store is private to the service's user (folders 0700, files 0600), an s3:// one is
as private as its bucket's policy makes it (docs/bad-inputs.md, "Serving"); it is capped
in count and in bytes, and `DELETE /v1/adapt/{id}` deletes one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import posixpath
import re
import tempfile
import time
import uuid
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from lightman.models.checkpoint import load_checkpoint
from lightman.models.learners import LearnerConfig, build_learner
from lightman.models.learners.config import record_keys
from lightman.models.modes import eval_mode
from lightman.models.net import build_model
from lightman.platform.config import from_dict
from lightman.platform.devices import check_device_name, resolve_device
from lightman.platform.index import read_manifest
from lightman.platform.selection import DataSelection, auxiliary_pool, primary_pool
from lightman.tasks import storage
from lightman.tasks.episodes import ClipPool, EpisodeConfig, draw_aux, pair_aux, to_tensor
from lightman.tasks.preprocess import PreprocessConfig

ID_PATTERN = re.compile(r"[0-9a-f]{32}")  # adapted-model ids: uuid4 hex, never a path (fullmatch)
SHOWN_ID = 64  # characters of a refused id an answer repeats


class UnknownModel(KeyError):
    """An adapted-model id that the store does not hold (never made, or evicted)."""

    def __str__(self) -> str:
        return str(self.args[0])


class BadSupport(ValueError):
    """A support set that cannot adapt the model (unknown label, a class without a shot)."""


@dataclass(frozen=True)
class PredictorConfig:
    """What a replica serves and where adapted models live."""

    checkpoint: str = ""
    """Checkpoint URI (local path or s3://): the best.pt of a training run."""
    index: str = ""
    """Training index URI for class names, preprocessing and the reference support set;
    "" takes the index recorded in the checkpoint's training config."""
    classes: tuple[str, ...] = ()
    """The classes served, `ways` of them; () takes the `ways` classes with most clips
    among the meta-train subjects (ties in class order)."""
    shots: int = 0
    """Reference support clips per class; 0 takes the shots the model was trained with."""
    seed: int = 0
    """Seeds the reference support draw (the same seed serves the same base model)."""
    store: str = ""
    """Folder (local or s3://) of adapted models, shared by every replica; "" is a folder
    under the machine's temporary directory (enough for replicas on one machine)."""
    max_stored: int = 1000
    """Adapted models kept in the store; the oldest are evicted past it (their id -> 404)."""
    max_store_bytes: int = 2**30
    """Bytes the store may hold (a model of 60 support clips of 8 frames at 128 px is
    about 6 MB); the oldest models are evicted past it, as past max_stored."""
    device: str = "cpu"
    """Where the model runs: cpu, cuda or cuda:N; a Ray replica or actor given a GPU sees it
    as cuda (`lightman serve --gpus N` and `lightman score predictor.device=cuda` reserve
    the GPUs). A CUDA device this process cannot see fails when the Predictor is made."""

    def __post_init__(self) -> None:
        if self.shots < 0:
            raise ValueError(f"shots must be >= 0 (0: as trained), got {self.shots}")
        if self.max_stored < 1 or self.max_store_bytes < 1:
            raise ValueError(
                f"max_stored and max_store_bytes must be >= 1, got {self.max_stored}, "
                f"{self.max_store_bytes}"
            )
        check_device_name(self.device, "predictor.device")  # it is always nested as that
        if len(set(self.classes)) != len(self.classes):
            raise ValueError(f"classes must be distinct, got {list(self.classes)}")


@dataclass(frozen=True, eq=False)
class Adapted:
    """A model fitted to one support set: what `Learner.logits` takes besides the clips."""

    params: dict[str, Tensor]  # adapted θ, detached
    support_x: Tensor  # (n, M, C, H, W) float32 in [0, 1]
    support_y: Tensor  # (n,) int64, ways in the served class order


def shown_id(model_id: str) -> str:
    """A refused id as an answer may repeat it: at most `SHOWN_ID` characters."""
    if len(model_id) <= SHOWN_ID:
        return repr(model_id)
    return f"{model_id[:SHOWN_ID]!r}... ({len(model_id)} characters)"


def _private_dirs(path: str) -> None:
    """Create a local folder and its missing parents 0700; an existing one of ours
    becomes 0700 (a store made before stores were private)."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    if os.stat(path).st_uid == os.getuid():
        os.chmod(path, 0o700)


class AdaptedStore:
    """Adapted models by id in a local or s3:// folder; bounded by `max_stored` models and
    `max_bytes` bytes; a local store is private (0700 folders, 0600 files)."""

    def __init__(self, uri: str, max_stored: int, device: torch.device, max_bytes: int = 2**30):
        self.root = storage.resolve(uri)
        self.max_stored = max_stored
        self.max_bytes = max_bytes
        self.device = device
        if not self.root.is_s3:
            parent = os.path.dirname(self.root.path.rstrip("/"))
            if os.path.basename(parent) == "lightman-adapted":  # the default, under /tmp
                _private_dirs(parent)
            _private_dirs(self.root.path)

    def _loc(self, model_id: str) -> storage.Location:
        if not ID_PATTERN.fullmatch(model_id):
            raise UnknownModel(
                f"adapted model {shown_id(model_id)} is unknown: ids are 32 hex digits"
            )
        return self.root.join(f"{model_id}.pt")

    def _write(self, loc: storage.Location, data: bytes) -> None:
        if loc.is_s3:  # private by the bucket's policy (docs/bad-inputs.md)
            storage.write_bytes(loc, data)
            return
        tmp = f"{loc.path}.tmp-{uuid.uuid4().hex}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, loc.path)

    def save(self, adapted: Adapted) -> str:
        model_id = uuid.uuid4().hex
        buf = io.BytesIO()
        torch.save(
            {
                "params": _to(adapted.params, "cpu"),
                "support_x": adapted.support_x.cpu(),
                "support_y": adapted.support_y.cpu(),
            },
            buf,
        )
        self._write(self._loc(model_id), buf.getvalue())
        self._evict()
        return model_id

    def delete(self, model_id: str) -> None:
        """Delete one adapted model (it holds a person's face crops); `UnknownModel` if the
        store does not hold it."""
        loc = self._loc(model_id)
        if not storage.exists(loc):
            raise self._unknown(model_id)
        try:
            loc.fs.delete_file(loc.path)
        except FileNotFoundError:  # another request deleted it, or eviction did
            pass

    def _unknown(self, model_id: str) -> UnknownModel:
        return UnknownModel(
            f"adapted model {model_id} is unknown, deleted or was evicted (the store keeps "
            f"the newest {self.max_stored}, {self.max_bytes} bytes at most); adapt again "
            "with POST /v1/adapt"
        )

    def check(self, model_id: str) -> None:
        """Raise `UnknownModel` unless the store holds `model_id` now: a replica that still
        caches an evicted model must answer as every other replica does."""
        if not storage.exists(self._loc(model_id)):
            raise self._unknown(model_id)

    def load(self, model_id: str) -> Adapted:
        loc = self._loc(model_id)
        try:
            raw = storage.read_bytes(loc)
        except FileNotFoundError:
            raise self._unknown(model_id) from None
        data = torch.load(io.BytesIO(raw), map_location=self.device, weights_only=True)
        return Adapted(data["params"], data["support_x"], data["support_y"])

    def _evict(self) -> None:
        """Delete the oldest models (by modification time) past `max_stored` or `max_bytes`;
        the newest is always kept."""
        files = [
            i for i in storage.list_files(self.root, recursive=False) if i.base_name.endswith(".pt")
        ]
        files.sort(key=lambda i: (i.mtime_ns or 0, i.base_name))
        total, drop = sum(i.size or 0 for i in files), 0
        while drop < len(files) - 1 and (
            len(files) - drop > self.max_stored or total > self.max_bytes
        ):
            total -= files[drop].size or 0
            drop += 1
        for info in files[:drop]:
            try:
                self.root.fs.delete_file(info.path)
            except (FileNotFoundError, OSError):  # another replica evicted it first
                pass


def _to(params: dict[str, Tensor], device) -> dict[str, Tensor]:
    return {k: v.to(device) for k, v in params.items()}


def _default_store(version: str) -> str:
    return posixpath.join(tempfile.gettempdir(), "lightman-adapted", version)


def _served_classes(pool: ClipPool, ways: int, wanted: tuple[str, ...]) -> tuple[str, ...]:
    """The served class names, in the pool's class order."""
    if wanted:
        unknown = [c for c in wanted if c not in pool.class_names]
        if unknown or len(wanted) != ways:
            raise ValueError(
                f"classes {list(wanted)}: the model is {ways}-way, so name {ways} of "
                f"{list(pool.class_names)}" + (f" (unknown: {unknown})" if unknown else "")
            )
        return tuple(c for c in pool.class_names if c in wanted)
    counts = pool.class_counts()
    order = sorted(range(len(counts)), key=lambda i: (-counts[i], i))[:ways]
    if len(order) < ways or counts[order[-1]] == 0:
        raise ValueError(f"the training pool has fewer than {ways} classes with clips")
    return tuple(pool.class_names[i] for i in sorted(order))


class Predictor:
    """One checkpoint, loaded once per replica (or per scoring actor)."""

    def __init__(self, cfg: PredictorConfig):
        started = time.perf_counter()
        if not cfg.checkpoint:
            raise ValueError("checkpoint is required: the URI of a training run's best.pt")
        # before the checkpoint and the index are read: no model is loaded onto the CPU
        # in place of a GPU that this replica or actor was not given
        self.device = resolve_device(cfg.device, "predictor.device")
        raw = storage.read_bytes(cfg.checkpoint)
        self.version = hashlib.sha256(raw).hexdigest()[:16]
        model, self.model_cfg, meta = load_checkpoint(io.BytesIO(raw))  # weights_only=True
        extra = meta["extra"]
        train = extra["config"]
        self.learner = build_learner(from_dict(LearnerConfig, record_keys(extra["learner"])))
        self.episode = from_dict(EpisodeConfig, dict(train["episode"]))
        self.index = cfg.index or train["data"]["index"]
        data = from_dict(DataSelection, {**train["data"], "index": self.index})
        manifest = read_manifest(self.index)
        entry = manifest["datasets"][data.primary[0]]
        self.preprocess = from_dict(PreprocessConfig, dict(entry["preprocess"]))
        self.label_scheme = entry["label_scheme"]["name"]
        self.index_hash = manifest.get("content_hash", "")
        pool = primary_pool(data).by_subjects(extra["split"]["train"], name="meta-train")
        self.classes = _served_classes(pool, self.model_cfg.ways, cfg.classes)
        self.model = model.to(self.device).eval()
        self.serving = self._serving_model(self.model)
        self.params = dict(model.named_parameters())
        self.buffers = dict(model.named_buffers())
        self.aux = auxiliary_pool(data) if self.episode.aux_shots else None
        self.aux_pairing = self.episode.aux_pairing
        self.meta = {
            "versions": meta["versions"],
            "train_config": train,
            "iteration": extra.get("iteration"),
            "val": extra.get("val"),
        }
        self.seed = cfg.seed
        shots = cfg.shots or self.episode.shots
        sx, sy = self._reference_support(pool, shots, np.random.default_rng(cfg.seed))
        self.base = self.adapt_frames(sx, sy)
        self.store = AdaptedStore(
            cfg.store or _default_store(self.version),
            cfg.max_stored,
            self.device,
            cfg.max_store_bytes,
        )
        self.load_seconds = time.perf_counter() - started

    def _serving_model(self, model):
        """The same weights with per-clip statistics where the checkpoint uses task ones."""
        if self.model_cfg.bn_mode != "task":
            return model
        clip = build_model(dataclasses.replace(self.model_cfg, bn_mode="clip"))
        clip.load_state_dict(model.state_dict(), strict=True)
        return clip.to(self.device).eval()

    def _reference_support(self, pool: ClipPool, shots: int, rng: np.random.Generator):
        """(frames (n, M, H, W, C) uint8, way labels (n,)): `shots` clips per served class."""
        xs, ys = [], []
        for way, name in enumerate(self.classes):
            have = np.flatnonzero(pool.labels == pool.class_names.index(name))
            pick = rng.choice(have, size=shots, replace=have.size < shots)
            xs.append(pool.frames[pick])
            ys += [way] * shots
        return np.concatenate(xs), np.asarray(ys, dtype=np.int64)

    def _aux_clips(self, rng: np.random.Generator) -> tuple[Tensor | None, Tensor | None]:
        """(macro clips, the way each is paired with) for the auxiliary branch of the inner
        loss, drawn as in training; (None, None) without an auxiliary pool."""
        if self.aux is None:
            return None, None
        ways = ClipPool(
            frames=np.zeros((0, *self.aux.clip_shape), np.uint8),
            labels=np.zeros(0, np.int64),
            subjects=[],
            clip_ids=[],
            datasets=[],
            emotions=[],
            expressions=[],
            class_names=self.classes,
            name="served classes",
        )
        paired = pair_aux(ways, self.aux, self.aux_pairing)
        idx, aux_ways = draw_aux(paired, len(self.aux), self.episode.aux_shots, rng)
        aux_y = torch.from_numpy(aux_ways).to(self.device)
        return to_tensor(self.aux.frames[idx]).to(self.device), aux_y

    def label_ways(self, labels: list[str]) -> np.ndarray:
        """Class names -> way indices; every served class needs at least one shot."""
        unknown = sorted({s for s in labels if s not in self.classes})
        if unknown:
            raise BadSupport(f"unknown label(s) {unknown}; this model serves {list(self.classes)}")
        missing = [c for c in self.classes if c not in labels]
        if missing:
            raise BadSupport(
                f"class(es) {missing} have no shot in the support set; every class "
                f"of {list(self.classes)} needs at least one labelled clip"
            )
        return np.asarray([self.classes.index(s) for s in labels], dtype=np.int64)

    def adapt_frames(self, frames: np.ndarray, ways: np.ndarray) -> Adapted:
        """Learner.adapt on a support set: frames (n, M, H, W, C) uint8, ways (n,) int."""
        sx = to_tensor(frames).to(self.device)
        sy = torch.as_tensor(ways, dtype=torch.int64, device=self.device)
        aux, aux_y = self._aux_clips(np.random.default_rng([self.seed, len(frames)]))
        with eval_mode(self.model), torch.enable_grad():  # test-time steps take gradients
            params = self.learner.adapt(
                self.model, self.params, self.buffers, sx, sy, aux, aux_y=aux_y
            )
        return Adapted({k: v.detach() for k, v in params.items()}, sx, sy)

    def probabilities(self, adapted: Adapted, frames: np.ndarray) -> np.ndarray:
        """(n, ways) class probabilities of clips (n, M, H, W, C) uint8."""
        logits = self.learner.logits(
            self.serving,
            adapted.params,
            self.buffers,
            adapted.support_x,
            adapted.support_y,
            to_tensor(frames).to(self.device),
        )
        return torch.softmax(logits.detach().float(), dim=-1).cpu().numpy()

    def info(self) -> dict:
        """What GET /v1/model answers."""
        return {
            "version": self.version,
            "classes": list(self.classes),
            "label_scheme": self.label_scheme,
            "learner": self.learner.cfg.name,
            "device": str(self.device),
            "model_config": dataclasses.asdict(self.model_cfg),
            "preprocess": dataclasses.asdict(self.preprocess),
            "training_index": self.index,
            "training_index_hash": self.index_hash,
            "reference_support": {
                "shots": int(len(self.base.support_y) // len(self.classes)),
                "seed": self.seed,
            },
            **self.meta,
        }

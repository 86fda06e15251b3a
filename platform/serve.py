"""The Ray Serve app: a FastAPI ingress that scores clips and adapts the model to a person.

Endpoints (docs/commands.md, "serve"):
  POST /v1/predict   one clip (video, zip or npz of frames; optional onset/apex/offset)
                     -> class probabilities, label, model version, frames used, timings;
                     header `serve_multiplexed_model_id` picks a person's adapted model
  POST /v1/adapt     a person's labelled support clips (+ optional query clips)
                     -> an adapted-model id and the query predictions
  GET  /healthz, GET /v1/model

`app` is bound at import without touching any file: the replica reads its checkpoint
when Serve hands it its `user_config` (deploy/serve.yaml, or `lightman serve`), in
`reconfigure`, so changing the config of a running deployment reloads the model in
place. Requests are preprocessed in a worker thread (one at a time per replica: the
decoder's log capture redirects the process's stderr), then batched across requests
for the forward pass (`@serve.batch`; `max_batch_size=1` turns batching off). A
person's model is loaded through `@serve.multiplexed` from the shared store of adapted
models (platform/predictor.py), so whichever replica gets the request can answer it.

Every error of the request is a 4xx naming what is wrong (platform/upload.py checks
uploads before decoding them); only a bug is a 500, and the replica keeps serving.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoint signatures after
# Serve has rebuilt the methods, and string annotations would turn uploads into queries.
import asyncio
import math
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Annotated, Literal

import numpy as np
import torch
from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse
from ray import serve

from lightman.models.provenance import to_dict
from lightman.platform.config import ConfigError, from_dict
from lightman.platform.devices import check_device_name, cuda_missing, is_cuda
from lightman.platform.predictor import (
    Adapted,
    BadSupport,
    Predictor,
    PredictorConfig,
    UnknownModel,
)
from lightman.platform.runtime import setup
from lightman.platform.upload import (
    BadUpload,
    Prepared,
    Span,
    UploadLimits,
    parse_span,
    prepare_clip,
)

# Adapted models a replica keeps loaded (LRU, `@serve.multiplexed`); an id evicted from
# a replica is reloaded from the store, an id evicted from the store is a 404.
MODELS_PER_REPLICA = 16
FaceCrop = Literal["haar", "none"]


@dataclass(frozen=True)
class ServeConfig:
    """One replica's model, upload limits and batching (the deployment's user_config)."""

    predictor: PredictorConfig = field(default_factory=PredictorConfig)
    """Checkpoint, served classes, reference support and the store of adapted models."""
    limits: UploadLimits = field(default_factory=UploadLimits)
    """What one uploaded clip may hold."""
    max_batch_size: int = 8
    """Clips of concurrent requests run in one forward pass; 1 turns batching off."""
    batch_wait_timeout_s: float = 0.01
    """How long the first clip of a batch waits for others to join it."""
    max_clips_per_adapt: int = 64
    """Support plus query clips in one POST /v1/adapt."""
    threads: int = 1
    """torch threads of a replica (give a replica as many CPUs as threads)."""

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {self.max_batch_size}")
        if not self.batch_wait_timeout_s >= 0:
            raise ValueError(f"batch_wait_timeout_s must be >= 0, got {self.batch_wait_timeout_s}")
        if self.max_clips_per_adapt < 1 or self.threads < 1:
            raise ValueError("max_clips_per_adapt and threads must be >= 1")


class NotReady(RuntimeError):
    """The replica has no model yet (no user_config, or it failed to load)."""


api = FastAPI(
    title="Lightman",
    description="Micro-expression recognition with LightmanNet: score a clip, adapt to a person.",
    version="1",
)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"detail": message})


@api.exception_handler(BadUpload)
async def _bad_upload(request: Request, e: BadUpload) -> JSONResponse:
    return _error(e.status, str(e))


@api.exception_handler(BadSupport)
async def _bad_support(request: Request, e: BadSupport) -> JSONResponse:
    return _error(422, str(e))


@api.exception_handler(UnknownModel)
async def _unknown_model(request: Request, e: UnknownModel) -> JSONResponse:
    return _error(404, str(e))


@api.exception_handler(NotReady)
async def _not_ready(request: Request, e: NotReady) -> JSONResponse:
    return _error(503, str(e))


async def _read_upload(upload: UploadFile, limit: int, what: str) -> bytes:
    """The upload's bytes, refusing (413) past `limit` without reading further."""
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise BadUpload(f"{what} is over the upload limit of {limit} bytes", status=413)
    return data


def _clip_answer(predictor: Predictor, probs: np.ndarray, prep: Prepared) -> dict:
    pre = prep.pre
    return {
        "label": predictor.classes[int(np.argmax(probs))],
        "probabilities": {c: float(p) for c, p in zip(predictor.classes, probs)},
        "onset": prep.onset,
        "apex": pre.apex,
        "offset": pre.offset,
        "apex_source": pre.apex_source,
        "span_source": prep.span_source,
        "frames_in_upload": prep.frames_in_upload,
        "frames_used": list(pre.sampled),
        "face_box": None if pre.face_box is None else list(pre.face_box),
        "repairs": list(pre.repairs),
    }


@serve.deployment(max_ongoing_requests=32, health_check_period_s=10)
@serve.ingress(api)
class LightmanService:
    """One replica: a Predictor, its preprocessing thread and its batch queue."""

    def __init__(self) -> None:
        setup()  # this replica's process-wide settings, before its first kernel (runtime.py)
        self.cfg: ServeConfig | None = None
        self.predictor: Predictor | None = None
        self.error = (
            "no checkpoint configured: deploy with a user_config naming predictor.checkpoint"
        )
        self._prep_lock = threading.Lock()

    def reconfigure(self, user_config: dict) -> None:
        """Load the model named by the deployment's user_config (at start and on change)."""
        cfg = from_dict(ServeConfig, dict(user_config))
        torch.set_num_threads(cfg.threads)
        self.predictor = Predictor(cfg.predictor)
        self.cfg = cfg
        self._predict_batch.set_max_batch_size(cfg.max_batch_size)
        self._predict_batch.set_batch_wait_timeout_s(cfg.batch_wait_timeout_s)

    def _ready(self) -> tuple[Predictor, ServeConfig]:
        if self.predictor is None or self.cfg is None:
            raise NotReady(self.error)
        return self.predictor, self.cfg

    def _prepare(self, data: bytes, span: Span, face_crop: FaceCrop | None) -> Prepared:
        predictor, cfg = self._ready()
        pre_cfg = predictor.preprocess
        if face_crop is not None and face_crop != pre_cfg.face_crop:
            pre_cfg = type(pre_cfg)(**{**to_dict(pre_cfg), "face_crop": face_crop})
        with self._prep_lock:
            return prepare_clip(data, span, pre_cfg, cfg.limits)

    @serve.multiplexed(max_num_models_per_replica=MODELS_PER_REPLICA)
    async def _adapted_model(self, model_id: str) -> Adapted:
        predictor, _ = self._ready()
        return await asyncio.to_thread(predictor.store.load, model_id)

    async def _model_for_request(self) -> tuple[Adapted, str | None]:
        model_id = serve.get_multiplexed_model_id()
        predictor, _ = self._ready()
        if not model_id:
            return predictor.base, None
        await asyncio.to_thread(predictor.store.check, model_id)
        return await self._adapted_model(model_id), model_id

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def _predict_batch(self, items: list[tuple[Adapted, np.ndarray]]) -> list[tuple]:
        """Probabilities of each (model, clip): one forward pass per distinct model."""
        predictor, _ = self._ready()

        def run() -> list[tuple]:
            out: list = [None] * len(items)
            groups: dict[int, list[int]] = {}
            for i, (adapted, _) in enumerate(items):
                groups.setdefault(id(adapted), []).append(i)
            for idx in groups.values():
                started = time.perf_counter()
                frames = np.stack([items[i][1] for i in idx])
                probs = predictor.probabilities(items[idx[0]][0], frames)
                ms = 1000 * (time.perf_counter() - started)
                for k, i in enumerate(idx):
                    out[i] = (probs[k], ms, len(items))
            return out

        return await asyncio.to_thread(run)

    @api.get("/healthz")
    async def healthz(self) -> dict:
        """200 once the model is loaded, 503 before."""
        predictor, _ = self._ready()
        return {"status": "ok", "model_version": predictor.version}

    @api.get("/v1/model")
    async def model_info(self) -> dict:
        """Classes, label scheme, configs, versions and the training index's content hash."""
        return self._ready()[0].info()

    @api.post("/v1/predict")
    async def predict(
        self,
        clip: Annotated[UploadFile, File(description="video file, or zip / npz of frames")],
        onset: Annotated[int | None, Form(ge=0)] = None,
        apex: Annotated[int | None, Form(ge=0)] = None,
        offset: Annotated[int | None, Form(ge=0)] = None,
        face_crop: Annotated[FaceCrop | None, Form()] = None,
    ) -> dict:
        """Score one clip; frames are numbered from 0 in the upload's order."""
        started = time.perf_counter()
        predictor, cfg = self._ready()
        data = await _read_upload(clip, cfg.limits.max_bytes, "the clip")
        adapted, model_id = await self._model_for_request()
        prep = await asyncio.to_thread(self._prepare, data, Span(onset, apex, offset), face_crop)
        prepared = time.perf_counter()
        probs, model_ms, batch = await self._predict_batch((adapted, prep.pre.frames))
        done = time.perf_counter()
        return {
            **_clip_answer(predictor, probs, prep),
            "model": {"version": predictor.version, "adapted_id": model_id},
            "timings_ms": {
                "preprocess": round(1000 * (prepared - started), 2),
                "model": round(model_ms, 2),
                "queue_and_model": round(1000 * (done - prepared), 2),
                "total": round(1000 * (done - started), 2),
            },
            "batch_size": batch,
        }

    @api.post("/v1/adapt")
    async def adapt(
        self,
        support: Annotated[list[UploadFile], File(description="the person's labelled clips")],
        labels: Annotated[list[str], Form(description="one class name per support clip")],
        query: Annotated[list[UploadFile] | None, File(description="clips to predict")] = None,
        spans: Annotated[
            list[str] | None,
            Form(
                description="one onset:apex:offset per clip, support then query; an empty "
                "part (e.g. '::' or '2::30') is estimated from the clip"
            ),
        ] = None,
        face_crop: Annotated[FaceCrop | None, Form()] = None,
    ) -> dict:
        """Adapt the model to one person's support set; later predictions use its id."""
        started = time.perf_counter()
        predictor, cfg = self._ready()
        if len(labels) != len(support):
            raise BadSupport(
                f"{len(support)} support clips but {len(labels)} labels: "
                "send one label per support clip, in order"
            )
        query = query or []
        if len(support) + len(query) > cfg.max_clips_per_adapt:
            raise BadUpload(
                f"{len(support) + len(query)} clips in one adapt request, more "
                f"than the limit of {cfg.max_clips_per_adapt}",
                status=413,
            )
        if spans is not None and len(spans) != len(support) + len(query):
            raise BadUpload(
                f"{len(spans)} spans for {len(support) + len(query)} clips: send one "
                "onset:apex:offset per clip, support clips first, or none"
            )
        ways = predictor.label_ways(list(labels))
        clips = [("support", i, u) for i, u in enumerate(support)]
        clips += [("query", i, u) for i, u in enumerate(query)]
        preps = []
        for n, (part, i, upload) in enumerate(clips):
            what = f"{part} clip {i} ({upload.filename})"
            span = parse_span(spans[n], what) if spans is not None else Span()
            data = await _read_upload(upload, cfg.limits.max_bytes, what)
            try:
                preps.append(await asyncio.to_thread(self._prepare, data, span, face_crop))
            except BadUpload as e:
                raise BadUpload(f"{what}: {e}", e.status) from None
        shots = np.stack([p.pre.frames for p in preps[: len(support)]])
        adapted = await asyncio.to_thread(predictor.adapt_frames, shots, ways)
        model_id = await asyncio.to_thread(predictor.store.save, adapted)
        queries = preps[len(support) :]
        answers = []
        if queries:
            probs = await asyncio.to_thread(
                predictor.probabilities, adapted, np.stack([p.pre.frames for p in queries])
            )
            answers = [_clip_answer(predictor, pr, p) for pr, p in zip(probs, queries)]
        return {
            "adapted_id": model_id,
            "classes": list(predictor.classes),
            "support_per_class": {
                c: int((ways == k).sum()) for k, c in enumerate(predictor.classes)
            },
            "query": answers,
            "model": {"version": predictor.version, "adapted_id": model_id},
            "timings_ms": {"total": round(1000 * (time.perf_counter() - started), 2)},
        }


app = LightmanService.bind()


def replica_device(device: str, gpus: float) -> str:
    """The predictor.device of every replica given `gpus` GPUs each (`--gpus`).

    `--gpus N > 0` puts the replicas on cuda: Ray sets each replica's CUDA_VISIBLE_DEVICES
    to its own ceil(N) GPU(s), which it sees as cuda:0, ...; predictor.device may only pick
    one of those. A CUDA predictor.device with `--gpus 0` is refused: Ray would place
    the replicas without a GPU of their own (in Ray 2.60 they still see every GPU of
    their node, so they would share them with whatever else Ray put there)."""
    check_device_name(device, "predictor.device")
    if not gpus >= 0:
        raise ConfigError(f"--gpus must be >= 0, got {gpus:g}")
    if gpus == 0:
        if is_cuda(device):
            raise ConfigError(
                f"predictor.device={device} with --gpus 0: no GPU is reserved for the "
                "replicas; pass --gpus 1 (one GPU per replica), or leave predictor.device=cpu"
            )
        return device
    own = math.ceil(gpus)
    index = torch.device(device).index if is_cuda(device) else None
    if index is not None and index >= own:
        raise ConfigError(
            f"predictor.device={device} with --gpus {gpus:g}: each replica sees its {own} "
            f"GPU(s) as cuda:0 to cuda:{own - 1}"
        )
    return device if index is not None else "cuda"


def build_app(
    cfg: ServeConfig, replicas: int = 1, cpus: float = 1.0, gpus: float = 0.0
) -> serve.Application:
    """The app with its config and resources, as `lightman serve` deploys it: `gpus` GPUs
    per replica, on which its model runs (`replica_device`)."""
    device = replica_device(cfg.predictor.device, gpus)
    cfg = replace(cfg, predictor=replace(cfg.predictor, device=device))
    return LightmanService.options(
        user_config=to_dict(cfg),
        num_replicas=replicas,
        ray_actor_options={"num_cpus": cpus, "num_gpus": gpus},
    ).bind()


def run_service(
    cfg: ServeConfig,
    replicas: int = 1,
    cpus: float = 1.0,
    gpus: float = 0.0,
    host: str = "127.0.0.1",
    port: int = 8000,
    wait: bool = True,
) -> str:
    """Start Ray (if not running) and Serve, deploy the app and return its URL; with `wait`,
    serve until interrupted. The model loads before this returns, so a bad checkpoint
    fails here with its own message. GPU replicas (`gpus` > 0) need CUDA where the command
    starts: without it this fails in one line before Ray starts (platform/devices.py)."""
    import ray

    from lightman.tasks import storage

    device = replica_device(cfg.predictor.device, gpus)
    if is_cuda(device):
        missing = cuda_missing()
        if missing is not None:
            raise ConfigError(f"--gpus {gpus:g}: the replicas run on {device}, but {missing}")
    checkpoint = cfg.predictor.checkpoint
    if not checkpoint or not storage.exists(storage.resolve(checkpoint)):
        raise ValueError(f"checkpoint {checkpoint!r} not found")  # before minutes of startup
    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    serve.start(http_options={"host": host, "port": port})
    try:
        serve.run(
            build_app(cfg, replicas, cpus, gpus), name="lightman", route_prefix="/", blocking=False
        )
    except RuntimeError as e:  # Serve wraps the replica's error: keep its last line
        raise ValueError(f"the service did not start: {str(e).strip().splitlines()[-1]}") from e
    url = f"http://{host}:{port}"
    if wait:
        print(
            f"lightman serve: {url} (POST /v1/predict, POST /v1/adapt, GET /v1/model); "
            "Ctrl-C stops it",
            flush=True,
        )
        try:
            while True:
                time.sleep(3600)
        finally:
            serve.shutdown()
    return url

"""The Ray Serve app: a FastAPI ingress that scores clips and adapts the model to a person.

Endpoints (docs/commands.md, "serve"):
  POST /v1/predict   one clip (video, zip or npz of frames; optional onset/apex/offset)
                     -> class probabilities, label, model version, frames used, timings;
                     header `serve_multiplexed_model_id` picks a person's adapted model
  POST /v1/adapt     a person's labelled support clips (+ optional query clips)
                     -> an adapted-model id and the query predictions
  DELETE /v1/adapt/{id}  deletes a person's adapted model (it holds their face crops)
  GET  /healthz, GET /v1/model

`app` is bound at import without touching any file: the replica reads its checkpoint
when Serve hands it its `user_config` (deploy/serve.yaml, or `lightman serve`), in
`reconfigure`, so changing the config of a running deployment reloads the model in
place. Requests are preprocessed in a pool of `prep_workers` processes per replica
(platform/upload.py, `PrepPool`), never on the event loop, then batched across requests
for the forward pass (`@serve.batch`; `max_batch_size=1` turns batching off). A
person's model is loaded through `@serve.multiplexed` from the shared store of adapted
models (platform/predictor.py), so whichever replica gets the request can answer it.

Every error of the request is a 4xx naming what is wrong (platform/upload.py checks
uploads before decoding them); only a bug is a 500, and the replica keeps serving.

Hostile traffic (docs/bad-inputs.md, "Serving"): an ASGI guard in front of every route
(`_Guard`) checks the optional bearer token (`LIGHTMAN_API_TOKEN`, or a file named by
`LIGHTMAN_API_TOKEN_FILE`, e.g. a Kubernetes secret mount; never a config key), refuses a
`Content-Length` over the route's body limit before reading any of it, cuts a chunked or
lying body off at the limit, and holds every request to `limits.max_seconds`. So a
request takes at most its body limit of the replica (Ray's proxy forwards the body as it
arrives; the multipart parser spools a file past 1 MiB to disk, up to the same limit),
plus one clip's bytes while it is preprocessed in a worker process, whose decoding reads
at most `apex_candidates` + M frames at a time. The OpenAPI schema states every answer:
each error is `{"detail": "<one line>"}` with its status (400, 401, 404, 413, 422, 503).
"""

# No `from __future__ import annotations`: FastAPI reads the endpoint signatures after
# Serve has rebuilt the methods, and string annotations would turn uploads into queries.
import asyncio
import hmac
import json
import math
import os
import signal
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Annotated, Literal

import numpy as np
import torch
from fastapi import FastAPI, File, Form, Path, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from ray import serve
from starlette.exceptions import HTTPException

from lightman.models.provenance import to_dict
from lightman.platform.config import ConfigError, from_dict
from lightman.platform.devices import check_device_name, cuda_missing, is_cuda
from lightman.platform.predictor import (
    ID_PATTERN,
    Adapted,
    BadSupport,
    Predictor,
    PredictorConfig,
    UnknownModel,
)
from lightman.platform.runtime import setup
from lightman.platform.upload import (
    BadUpload,
    OverBudget,
    Prepared,
    PrepPool,
    Span,
    UploadLimits,
    parse_span,
)

# Adapted models a replica keeps loaded (LRU, `@serve.multiplexed`); an id evicted from
# a replica is reloaded from the store, an id evicted from the store is a 404.
MODELS_PER_REPLICA = 16
FaceCrop = Literal["haar", "none"]
# The optional bearer token of the HTTP API: the token itself, or a file holding it (a
# Kubernetes secret mounted as a file); at most one of the two. Never a config key.
TOKEN_ENV = "LIGHTMAN_API_TOKEN"
TOKEN_FILE_ENV = "LIGHTMAN_API_TOKEN_FILE"
FORM_BYTES = 64 * 2**10  # a body's room for form fields and part headers beside its clips
OPEN_PATHS = ("/healthz",)  # answered without the token


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
    prep_workers: int = 2
    """Processes of a replica that preprocess uploads, one clip each at a time; a request
    waits for a free one (its wait counts in limits.max_seconds)."""

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {self.max_batch_size}")
        if not self.batch_wait_timeout_s >= 0:
            raise ValueError(f"batch_wait_timeout_s must be >= 0, got {self.batch_wait_timeout_s}")
        if self.max_clips_per_adapt < 1 or self.threads < 1 or self.prep_workers < 1:
            raise ValueError("max_clips_per_adapt, threads and prep_workers must be >= 1")


class NotReady(RuntimeError):
    """The replica has no model yet (no user_config, or it failed to load)."""


def api_token() -> str | None:
    """The bearer token the HTTP API asks for, from the environment; None: no token."""
    value = os.environ.get(TOKEN_ENV, "").strip()
    path = os.environ.get(TOKEN_FILE_ENV, "").strip()
    if value and path:
        raise ConfigError(f"set {TOKEN_ENV} or {TOKEN_FILE_ENV}, not both")
    if path:
        try:
            with open(path) as f:
                value = f.read().strip()
        except OSError as e:
            raise ConfigError(
                f"{TOKEN_FILE_ENV}={path}: cannot read the token ({e.strerror})"
            ) from None
        if not value:
            raise ConfigError(f"{TOKEN_FILE_ENV}={path}: the file is empty")
    return value or None


class _GuardState:
    """What the guard of this process's replica enforces (one replica per process)."""

    limits = UploadLimits()
    token: str | None = None


_GUARD = _GuardState()


def _configure_guard(limits: UploadLimits | None = None, token: bool = False) -> None:
    """Set what this process's guard enforces. A module function on purpose: the replica
    class is pickled by value (its module name is bound to the Deployment), so a global it
    names is a copy in the replica, where a function of the module is the module's own."""
    if limits is not None:
        _GUARD.limits = limits
    if token:
        _GUARD.token = api_token()


def _route_path(scope: dict) -> str:
    path, root = scope.get("path", ""), scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


def _body_limit(path: str, limits: UploadLimits) -> tuple[int, str]:
    """(bytes, the limit's name) a request body to `path` may hold."""
    if path == "/v1/predict":
        return limits.max_bytes + FORM_BYTES, "limits.max_bytes + 64 KiB of form fields"
    if path == "/v1/adapt":
        return limits.max_request_bytes, "limits.max_request_bytes"
    return FORM_BYTES, "64 KiB, for a request without an upload"


async def _send_error(send, status: int, message: str, headers: dict | None = None) -> None:
    """An error answer sent by the guard itself; the connection closes after it (the
    body may be unread)."""
    body = json.dumps({"detail": message}).encode()
    extra = [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    start = {
        "type": "http.response.start",
        "status": status,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
            *extra,
        ],
    }
    await send(start)
    await send({"type": "http.response.body", "body": body})


class _Guard:
    """ASGI middleware in front of every route: the bearer token, the body limit while the
    body streams (refused at the limit, never read past it) and the time budget."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limits, token, path = _GUARD.limits, _GUARD.token, _route_path(scope)
        headers = dict(scope.get("headers") or [])
        if token is not None and path not in OPEN_PATHS:
            given = headers.get(b"authorization", b"")
            if not hmac.compare_digest(given, b"Bearer " + token.encode()):
                why = "a wrong" if given else "no"
                return await _send_error(
                    send,
                    401,
                    f"{why} bearer token: this service asks for 'Authorization: Bearer <token>'",
                    {"www-authenticate": 'Bearer realm="lightman"'},
                )
        limit, name = _body_limit(path, limits)
        declared = headers.get(b"content-length")
        if declared is not None and declared.strip().isdigit() and int(declared) > limit:
            return await _send_error(
                send,
                413,
                f"the request body is {int(declared)} bytes (Content-Length), over the limit "
                f"of {limit} bytes ({name}); none of it was read",
            )
        state = {"received": 0, "over": False, "started": False}

        async def guarded_receive() -> dict:
            if state["over"]:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                if state["received"] > limit:
                    state["over"] = True  # the app sees the client gone; the 413 follows
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: dict) -> None:
            if state["over"]:
                return
            if message["type"] == "http.response.start":
                state["started"] = True
            await send(message)

        budget = asyncio.timeout(limits.max_seconds)
        try:
            async with budget:
                await self.app(scope, guarded_receive, guarded_send)
        except TimeoutError:
            if not budget.expired():
                raise
            if not state["started"]:
                await _send_error(send, 503, _over_budget(limits))
            return
        except OverBudget as e:
            if not state["started"]:
                await _send_error(send, 503, str(e))
            return
        except Exception:
            if not state["over"]:
                raise
        if state["over"] and not state["started"]:
            await _send_error(
                send,
                413,
                f"the request body is over the limit of {limit} bytes ({name}): refused at "
                "the limit, nothing past it was read",
            )


def _over_budget(limits: UploadLimits) -> str:
    return (
        f"the request took longer than its time budget, limits.max_seconds = "
        f"{limits.max_seconds:g} s, and was stopped; send a shorter or smaller clip, or fewer clips"
    )


class Error(BaseModel):
    """Every error answer: one line naming what is wrong and, where there is one, the fix."""

    detail: str


def _answers(*statuses: int) -> dict:
    meaning = {
        400: "the body is not a readable multipart form",
        401: "the bearer token is missing or wrong (only when the service has one)",
        404: "an unknown, deleted or evicted adapted-model id",
        413: "the body or a clip is over its byte limit, or too many clips",
        422: "a field or a clip that cannot be used; the detail names it",
        503: "no model loaded yet, or the request ran past limits.max_seconds",
    }
    return {s: {"model": Error, "description": meaning[s]} for s in statuses}


api = FastAPI(
    title="Lightman",
    description="Micro-expression recognition with LightmanNet: score a clip, adapt to a person.",
    version="1",
)
api.add_middleware(_Guard)


def _openapi() -> dict:
    """FastAPI's schema, with the bearer token declared where this replica has one."""
    if api.openapi_schema:
        return api.openapi_schema
    schema = get_openapi(
        title=api.title, version=api.version, description=api.description, routes=api.routes
    )
    for name, body in schema.get("components", {}).get("schemas", {}).items():
        if name.startswith("Body_"):  # an upload of 0 bytes is refused: say so
            for prop in body["properties"].values():
                for part in [prop, *prop.get("anyOf", [])]:
                    item = part.get("items", part)
                    if item.get("contentMediaType") == "application/octet-stream":
                        item["minLength"] = 1
    if _GUARD.token is not None:
        schema.setdefault("components", {})["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer"}
        }
        for path, operations in schema["paths"].items():
            if path not in OPEN_PATHS:
                for operation in operations.values():
                    operation["security"] = [{"bearer": []}]
    api.openapi_schema = schema
    return schema


api.openapi = _openapi


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"detail": message})


@api.exception_handler(RequestValidationError)
async def _invalid(request: Request, e: RequestValidationError) -> JSONResponse:
    """FastAPI's validation errors as one line naming each field, like every other error."""
    parts = []
    for err in e.errors():
        where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "path"))
        parts.append(f"{where or 'the request'}: {err.get('msg', 'invalid')}")
    return _error(422, "; ".join(parts)[:1000])


@api.exception_handler(HTTPException)
async def _http_error(request: Request, e: HTTPException) -> JSONResponse:
    response = _error(e.status_code, str(e.detail))
    for k, v in (e.headers or {}).items():
        response.headers[k] = v
    return response


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
        raise BadUpload(
            f"{what} is over the upload limit of {limit} bytes (limits.max_bytes)", status=413
        )
    return data


async def _once(request: Request, *names: str) -> None:
    """422 naming a field sent more than once (FastAPI would keep one and drop the rest)."""
    form = await request.form()  # parsed already, for the endpoint's own parameters
    for name in names:
        n = len(form.getlist(name))
        if n > 1:
            raise BadUpload(f"field '{name}' was sent {n} times; send it once")


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
    """One replica: a Predictor, its preprocessing processes and its batch queue."""

    def __init__(self) -> None:
        setup()  # this replica's process-wide settings, before its first kernel (runtime.py)
        _configure_guard(token=True)
        self.cfg: ServeConfig | None = None
        self.predictor: Predictor | None = None
        self.pool: PrepPool | None = None
        self.error = (
            "no checkpoint configured: deploy with a user_config naming predictor.checkpoint"
        )

    def reconfigure(self, user_config: dict) -> None:
        """Load the model named by the deployment's user_config (at start and on change)."""
        cfg = from_dict(ServeConfig, dict(user_config))
        torch.set_num_threads(cfg.threads)
        predictor = Predictor(cfg.predictor)
        old, self.pool = self.pool, PrepPool(cfg.prep_workers)
        if old is not None:
            old.close()
        self.predictor, self.cfg = predictor, cfg
        _configure_guard(cfg.limits)
        self._predict_batch.set_max_batch_size(cfg.max_batch_size)
        self._predict_batch.set_batch_wait_timeout_s(cfg.batch_wait_timeout_s)

    def __del__(self) -> None:
        if getattr(self, "pool", None) is not None:
            self.pool.close()

    def _ready(self) -> tuple[Predictor, ServeConfig]:
        if self.predictor is None or self.cfg is None:
            raise NotReady(self.error)
        return self.predictor, self.cfg

    async def _prepare(self, data: bytes, span: Span, face_crop: FaceCrop | None) -> Prepared:
        """`prepare_clip` in a worker process of the replica's pool."""
        predictor, cfg = self._ready()
        pre_cfg = predictor.preprocess
        if face_crop is not None and face_crop != pre_cfg.face_crop:
            pre_cfg = type(pre_cfg)(**{**to_dict(pre_cfg), "face_crop": face_crop})
        return await self.pool.prepare(data, span, pre_cfg, cfg.limits)

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

    @api.get("/healthz", responses=_answers(503))
    async def healthz(self) -> dict:
        """200 once the model is loaded, 503 before."""
        predictor, _ = self._ready()
        return {"status": "ok", "model_version": predictor.version}

    @api.get("/v1/model", responses=_answers(401, 503))
    async def model_info(self) -> dict:
        """Classes, label scheme, configs, versions and the training index's content hash."""
        return self._ready()[0].info()

    @api.post("/v1/predict", responses=_answers(400, 401, 404, 413, 422, 503))
    async def predict(
        self,
        request: Request,
        clip: Annotated[UploadFile, File(description="video file, or zip / npz of frames")],
        onset: Annotated[int | None, Form(ge=0)] = None,
        apex: Annotated[int | None, Form(ge=0)] = None,
        offset: Annotated[int | None, Form(ge=0)] = None,
        face_crop: Annotated[FaceCrop | None, Form()] = None,
    ) -> dict:
        """Score one clip; frames are numbered from 0 in the upload's order."""
        started = time.perf_counter()
        predictor, cfg = self._ready()
        await _once(request, "clip", "onset", "apex", "offset", "face_crop")
        data = await _read_upload(clip, cfg.limits.max_bytes, "the clip")
        adapted, model_id = await self._model_for_request()
        prep = await self._prepare(data, Span(onset, apex, offset), face_crop)
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

    @api.post("/v1/adapt", responses=_answers(400, 401, 413, 422, 503))
    async def adapt(
        self,
        request: Request,
        support: Annotated[
            list[UploadFile], File(min_length=1, description="the person's labelled clips")
        ],
        labels: Annotated[
            list[str], Form(min_length=1, description="one class name per support clip")
        ],
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
        await _once(request, "face_crop")
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
                preps.append(await self._prepare(data, span, face_crop))
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

    @api.delete("/v1/adapt/{model_id}", responses=_answers(401, 404, 422, 503))
    async def delete_adapted(
        self,
        model_id: Annotated[
            str,
            Path(
                pattern=f"^{ID_PATTERN.pattern}$",
                description="an adapted_id from POST /v1/adapt (32 hex digits)",
            ),
        ],
    ) -> dict:
        """Delete a person's adapted model (it holds their face crops) from the store; no
        replica serves it again (each request checks the store)."""
        predictor, _ = self._ready()
        await asyncio.to_thread(predictor.store.delete, model_id)
        return {"deleted": model_id}


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
    api_token()  # a token file that cannot be read fails here, before Serve starts
    actor: dict = {"num_cpus": cpus, "num_gpus": gpus}
    # the API token reaches the replicas as this process has it (a file path is better:
    # a token in env_vars is visible to whoever can read the Ray cluster's state)
    token_env = {k: os.environ[k] for k in (TOKEN_ENV, TOKEN_FILE_ENV) if os.environ.get(k)}
    if token_env:
        actor["runtime_env"] = {"env_vars": token_env}
    return LightmanService.options(
        user_config=to_dict(cfg), num_replicas=replicas, ray_actor_options=actor
    ).bind()


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, start time) of every process (Linux /proc; {} elsewhere)."""
    out = {}
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else ():
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rpartition(")")[2].split()
                out[int(entry)] = (int(fields[1]), fields[19])
            except (OSError, IndexError, ValueError):
                pass  # gone meanwhile
    return out


def _descendants() -> dict[int, str]:
    """pid -> start time of every process this one started, directly or not."""
    table = _processes()
    found, todo = {}, [os.getpid()]
    while todo:
        parent = todo.pop()
        for pid, (ppid, start) in table.items():
            if ppid == parent and pid not in found:
                found[pid] = start
                todo.append(pid)
    return found


def _stop_leftovers(started: dict[int, str], grace_s: float) -> None:
    """Wait up to `grace_s` for the processes `started` to exit, then kill what is left of
    them (the same pid and start time: never a process that reused a pid)."""
    deadline = time.monotonic() + grace_s
    while True:
        table = _processes()
        alive = [p for p, start in started.items() if p in table and table[p][1] == start]
        if not alive:
            return
        if time.monotonic() > deadline:
            for pid in alive:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            return
        time.sleep(0.2)


def _deployment_messages(app: str) -> str:
    """What Serve's status says of the application and its deployments (a failed
    replica's traceback is there, not in the exception `serve.run` raises)."""
    try:
        status = serve.status().applications[app]
        parts = [status.message] + [d.message for d in status.deployments.values()]
    except Exception:  # a status that cannot be read adds nothing
        return ""
    return "\n".join(p for p in parts if p)


def _start_error(e: BaseException, details: str = "") -> str:
    """The cause of a failed deployment in one line: the replica's own exception where
    Serve's status or message carries its traceback, else Serve's last line."""
    lines = [ln.strip() for ln in f"{e}\n{details}".splitlines() if ln.strip()]
    for line in reversed(lines):  # "ValueError: ..." / "lightman...ConfigError: ..."
        head = line.split(":", 1)[0]
        if head.endswith(("Error", "Exception")) and " " not in head and head != "RuntimeError":
            return line
    return str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__


def run_service(
    cfg: ServeConfig,
    replicas: int = 1,
    cpus: float = 1.0,
    gpus: float = 0.0,
    host: str = "127.0.0.1",
    port: int = 8000,
    wait: bool = True,
    grace_s: float = 20.0,
) -> str:
    """Start Ray (if not running) and Serve, deploy the app and return its URL; with `wait`,
    serve until interrupted. The model loads before this returns, so a bad checkpoint
    fails here with its own message, in one line. GPU replicas (`gpus` > 0) need CUDA where
    the command starts: without it this fails in one line before Ray starts
    (platform/devices.py).

    SIGTERM and SIGINT stop it cleanly: Ray's core worker takes SIGTERM over in `ray.init`
    (its C++ handler prints a stack trace and aborts), so the handlers this process had are
    put back after it; on the way out Serve and the Ray this started are shut down, and
    every process it started is waited for up to `grace_s` seconds, then killed. A SIGTERM
    raises what the caller's handler raises (`lightman serve`: exit 143), else SystemExit(143)."""
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
    api_token()  # an unreadable token file: one line, before Ray starts
    in_main = threading.current_thread() is threading.main_thread()
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)} if in_main else {}
    if in_main and not callable(handlers[signal.SIGTERM]):
        handlers[signal.SIGTERM] = _exit_143
    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    else:  # a training earlier in this job may have left its CPUs held (distributed.py)
        from lightman.platform.distributed import free_orphaned_placement_groups

        free_orphaned_placement_groups()
    for sig, handler in handlers.items():
        signal.signal(sig, handler)
    ok = False
    try:
        serve.start(http_options={"host": host, "port": port})
        try:
            serve.run(
                build_app(cfg, replicas, cpus, gpus),
                name="lightman",
                route_prefix="/",
                blocking=False,
            )
        except RuntimeError as e:  # Serve wraps the replica's error: keep its cause
            cause = _start_error(e, _deployment_messages("lightman"))
            raise ValueError(f"the service did not start: {cause}") from e
        url = f"http://{host}:{port}"
        if not wait:
            ok = True
            return url
        print(
            f"lightman serve: {url} (POST /v1/predict, POST /v1/adapt, GET /v1/model); "
            "Ctrl-C stops it",
            flush=True,
        )
        while True:
            time.sleep(3600)
    finally:
        if not ok:
            _shut_down(started_ray, grace_s, in_main)


def _exit_143(signum: int, frame) -> None:
    raise SystemExit(143)


def _shut_down(started_ray: bool, grace_s: float, in_main: bool) -> None:
    """Serve, then the Ray this process started, then whatever of their processes is left;
    a second signal meanwhile does not cut it short."""
    import ray

    if in_main:
        saved = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        started = _descendants()
        try:
            serve.shutdown()
        finally:
            if started_ray and ray.is_initialized():
                ray.shutdown()
            _stop_leftovers(started, grace_s)
    finally:
        if in_main:
            for sig, handler in saved.items():
                signal.signal(sig, handler)

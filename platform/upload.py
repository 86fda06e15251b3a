"""One uploaded clip -> the same `Preprocessed` an ingest would make of it, or `BadUpload`.

An upload is untrusted bytes: a video file (decoded with decord), a zip of frame images
(temporal order by the number in each name, as ingest sorts frame files), or an npz
holding one uint8 array `frames` (n, H, W, 3). Everything is checked before anything
large is decoded: the upload's size, an archive's member names (none may leave its
folder), the number of frames and the pixels of each frame (read from the image or
array header, so a small file that claims a huge image is refused unread), and that
every frame has one shape. The clip is then written to a private temporary folder and
preprocessed by `preprocess_clip`, the ingest's own function: face box on the onset
frame, the same box for every frame, apex kept or estimated, M frames sampled.

Frame numbers of an upload are 0-based positions (the video adapter's convention).
Without onset and offset the whole clip is the span; without an apex it is estimated,
and `apex_source` says so.

The work one clip may cost is capped before decoding: frames x pixels per frame summed
over the clip (`max_total_pixels`, from the same headers). The service runs
`prepare_clip` in a `PrepPool`: a few worker processes of their own, so the event loop
never decodes, the decoder's stderr capture (process-wide) never meets another request's,
a crash of the decoder on a hostile file is a 422, and a request past its time budget
stops its decoding by killing its worker (a thread could not be stopped).
"""

from __future__ import annotations

import asyncio
import io
import os
import pickle
import subprocess
import sys
import tempfile
import threading
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from lightman.tasks.cv import cv2
from lightman.tasks.datasets.video import build as open_video_record
from lightman.tasks.face import NO_FACE
from lightman.tasks.frames import FrameReadError, decoder_log, numeric_key
from lightman.tasks.preprocess import ClipError, PreprocessConfig, preprocess_clip
from lightman.tasks.schema import ClipRecord, Preprocessed, Skipped

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
_HEADERS = {
    (1, 0): np.lib.format.read_array_header_1_0,
    (2, 0): np.lib.format.read_array_header_2_0,
}


class BadUpload(ValueError):
    """An upload that cannot be a clip; `status` is the HTTP status it deserves."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class UploadLimits:
    """What one uploaded clip may hold."""

    max_bytes: int = 64 * 2**20
    """Largest upload accepted, in bytes (413 above it)."""
    max_frames: int = 3000
    """Frames in one clip (video or archive): 15 s at 200 fps."""
    max_pixels: int = 1920 * 1080
    """Pixels of one frame (H x W); larger frames are refused before decoding."""
    max_unpacked_bytes: int = 512 * 2**20
    """Total bytes an archive may unpack to (guards against zip bombs)."""
    max_total_pixels: int = 500_000_000
    """Pixels of one clip summed over its frames (frames x H x W, read from the headers
    before decoding): 240 frames of 1920x1080, 1,600 of 640x480."""
    max_request_bytes: int = 256 * 2**20
    """Largest body of one POST /v1/adapt, all its clips together (413 above it, read no
    further); a /v1/predict body may hold max_bytes plus 64 KiB of form fields."""
    max_seconds: float = 30.0
    """Time budget of one request, from its first byte to its answer (503 past it, naming
    this limit; its preprocessing is stopped)."""

    def __post_init__(self) -> None:
        for name in (
            "max_bytes",
            "max_frames",
            "max_pixels",
            "max_unpacked_bytes",
            "max_total_pixels",
            "max_request_bytes",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.max_seconds > 0:
            raise ValueError(f"max_seconds must be > 0, got {self.max_seconds}")


@dataclass(frozen=True)
class Span:
    """The annotation a request may carry; None fields are taken from the clip."""

    onset: int | None = None
    apex: int | None = None
    offset: int | None = None

    def __post_init__(self) -> None:
        for name in ("onset", "apex", "offset"):
            v = getattr(self, name)
            if v is not None and v < 0:
                raise BadUpload(f"{name} must be a frame number >= 0, got {v}")
        if self.onset is not None and self.offset is not None and self.onset > self.offset:
            raise BadUpload(f"onset {self.onset} is after offset {self.offset}")


def parse_span(text: str, what: str) -> Span:
    """A span written "onset:apex:offset", any part empty (taken from the clip): "0:9:15",
    "::" or "2::30"."""
    parts = text.strip().split(":")
    if len(parts) != 3:
        raise BadUpload(f"{what}: span {text!r} is not onset:apex:offset (e.g. 0:9:15 or ::)")
    try:
        onset, apex, offset = (int(v) if v.strip() else None for v in parts)
    except ValueError:
        raise BadUpload(f"{what}: span {text!r} holds a part that is not a frame number") from None
    try:
        return Span(onset, apex, offset)
    except BadUpload as e:
        raise BadUpload(f"{what}: {e}") from None


@dataclass(frozen=True)
class Prepared:
    """A preprocessed upload and how its span was chosen."""

    pre: Preprocessed
    onset: int
    span_source: str  # "given" | "whole clip" (no onset/offset in the request)
    frames_in_upload: int


def _kind(data: bytes) -> str:
    if not data:
        raise BadUpload("the upload is empty (0 bytes)")
    if not zipfile.is_zipfile(io.BytesIO(data)):
        return "video"
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        names = [n for n in z.namelist() if not n.endswith("/")]
    return "npz" if names and all(n.endswith(".npy") for n in names) else "zip"


def _check_frame_count(n: int, limits: UploadLimits, what: str) -> None:
    if n == 0:
        raise BadUpload(f"the {what} holds no frames")
    if n > limits.max_frames:
        raise BadUpload(f"the {what} holds {n} frames, more than the limit of {limits.max_frames}")


def _check_pixels(h: int, w: int, limits: UploadLimits, what: str) -> None:
    if h * w > limits.max_pixels:
        raise BadUpload(
            f"{what} is {w}x{h} = {h * w} pixels, more than the limit of "
            f"{limits.max_pixels} pixels per frame"
        )


def _check_total_pixels(n: int, h: int, w: int, limits: UploadLimits, what: str) -> None:
    if n * h * w > limits.max_total_pixels:
        raise BadUpload(
            f"the {what} holds {n} frames of {w}x{h} = {n * h * w} pixels in all, more than "
            f"limits.max_total_pixels = {limits.max_total_pixels}; send a shorter or smaller clip"
        )


def _safe_member(name: str) -> PurePosixPath:
    path = PurePosixPath(name)
    if name.startswith(("/", "\\")) or ".." in path.parts or "\\" in name or ":" in name:
        raise BadUpload(f"archive member {name!r} escapes its folder (absolute path or '..')")
    return path


def _unpack_zip(data: bytes, folder: Path, limits: UploadLimits) -> tuple[str, ...]:
    """Frame images of a zip -> files in `folder`, in temporal order; their paths."""
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        infos = [i for i in z.infolist() if not i.is_dir()]
        for i in infos:
            _safe_member(i.filename)
        frames = [i for i in infos if i.filename.lower().endswith(IMAGE_SUFFIXES)]
        if not frames:
            raise BadUpload(f"the zip holds no frame images ({', '.join(IMAGE_SUFFIXES)})")
        _check_frame_count(len(frames), limits, "zip")
        if sum(i.file_size for i in frames) > limits.max_unpacked_bytes:
            raise BadUpload(f"the zip unpacks to more than {limits.max_unpacked_bytes} bytes")
        try:
            frames.sort(key=lambda i: numeric_key(i.filename))
        except ValueError as e:
            raise BadUpload(str(e)) from None
        numbers = [numeric_key(i.filename)[0] for i in frames]
        if len(set(numbers)) != len(numbers):
            raise BadUpload("two frame images of the zip carry the same frame number")
        shapes: dict[tuple[int, int], str] = {}
        paths = []
        for k, info in enumerate(frames):
            with z.open(info) as f:
                blob = f.read(info.file_size + 1)  # a lying header cannot unpack more
            if len(blob) > info.file_size:
                raise BadUpload(f"archive member {info.filename!r} unpacks past its stated size")
            try:
                with Image.open(io.BytesIO(blob)) as img:  # reads the header only
                    w, h = img.size
            except Image.DecompressionBombError as e:  # far past PIL's own limit, and ours
                raise BadUpload(f"frame {info.filename!r}: {e}") from None
            except Exception as e:  # PIL raises many types for non-images
                raise BadUpload(
                    f"archive member {info.filename!r} is not a readable image ({type(e).__name__})"
                ) from None
            _check_pixels(h, w, limits, f"frame {info.filename!r}")
            if k == 0:  # every frame must have this shape (checked below)
                _check_total_pixels(len(frames), h, w, limits, "zip")
            shapes.setdefault((h, w), info.filename)
            if len(shapes) > 1:
                (a, na), (b, nb) = list(shapes.items())[:2]
                raise BadUpload(
                    f"frames differ in shape: {na!r} is {a[1]}x{a[0]} but {nb!r} is {b[1]}x{b[0]}"
                )
            path = folder / f"{k:06d}{PurePosixPath(info.filename).suffix.lower()}"
            path.write_bytes(blob)
            paths.append(str(path))
    return tuple(paths)


def _unpack_npz(data: bytes, folder: Path, limits: UploadLimits) -> tuple[str, ...]:
    """An npz's `frames` array (n, H, W, 3) uint8 -> lossless PNG files in `folder`."""
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        for i in z.infolist():
            _safe_member(i.filename)
        if "frames.npy" not in z.namelist():
            raise BadUpload(
                f"the npz needs an array named 'frames', found "
                f"{[n.removesuffix('.npy') for n in z.namelist()]}"
            )
        info = z.getinfo("frames.npy")
        if info.file_size > limits.max_unpacked_bytes:
            raise BadUpload(f"the npz unpacks to more than {limits.max_unpacked_bytes} bytes")
        with z.open(info) as f:
            try:
                header = _HEADERS.get(np.lib.format.read_magic(f))
                if header is None:
                    raise ValueError("unsupported .npy format version")
                shape, fortran, dtype = header(f)
            except ValueError as e:
                raise BadUpload(f"'frames' in the npz is not a valid array: {e}") from None
            if dtype != np.uint8 or len(shape) != 4 or shape[3] != 3 or fortran:
                raise BadUpload(
                    f"'frames' must be a C-ordered uint8 array (n, H, W, 3), got {dtype} {shape}"
                )
            _check_frame_count(shape[0], limits, "npz")
            _check_pixels(shape[1], shape[2], limits, "each frame of the npz")
            _check_total_pixels(shape[0], shape[1], shape[2], limits, "npz")
            count = int(np.prod(shape))
            if count > limits.max_unpacked_bytes:
                raise BadUpload(
                    f"'frames' holds {count} bytes, more than the limit of "
                    f"{limits.max_unpacked_bytes}"
                )
            raw = f.read(count + 1)
        if len(raw) != count:
            raise BadUpload(f"'frames' is truncated: {len(raw)} of {count} bytes")
    frames = np.frombuffer(raw, np.uint8).reshape(shape)
    paths = []
    for k, frame in enumerate(frames):
        path = folder / f"{k:06d}.png"
        cv2.imwrite(str(path), frame[:, :, ::-1])  # RGB -> OpenCV's BGR
        paths.append(str(path))
    return tuple(paths)


def _probe_video(path: Path, limits: UploadLimits) -> tuple[int, int]:
    """Refuse too many frames or pixels from the container's header, before decoding;
    the frame's (height, width) as the header states it."""
    with decoder_log():  # OpenCV's FFmpeg logs a garbage file's errors to fd 2
        cap = cv2.VideoCapture(str(path))
    try:
        if cap.isOpened():
            w = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
            h = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
            n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
            _check_pixels(h, w, limits, "the video's frame")
            if n > limits.max_frames:
                _check_frame_count(n, limits, "video")
            _check_total_pixels(max(n, 0), h, w, limits, "video")
            return h, w
    finally:
        cap.release()
    return 0, 0


def _record(folder: Path, data: bytes, kind: str, limits: UploadLimits) -> ClipRecord:
    base = ClipRecord(
        dataset="upload",
        subject="upload/request",
        filename="clip",
        expression="micro",
        emotion="",
        onset=0,
        apex=None,
        offset=0,
        fps=0.0,
        apex_source="missing",
    )
    if kind == "video":
        path = folder / "clip.video"
        path.write_bytes(data)
        h, w = _probe_video(path, limits)
        rec = open_video_record(base, str(path), True)
        if isinstance(rec, Skipped):
            reason = rec.reason.replace(f"{path}: ", "").replace(str(path), "the upload")
            raise BadUpload(f"the upload is not a video, or is truncated: {reason}")
        _check_frame_count(len(rec.frame_numbers), limits, "video")
        _check_total_pixels(len(rec.frame_numbers), h, w, limits, "video")
        return rec
    unpack = _unpack_zip if kind == "zip" else _unpack_npz
    uris = unpack(data, folder, limits)
    return replace(base, frame_uris=uris, frame_numbers=tuple(range(len(uris))))


def prepare_clip(data: bytes, span: Span, cfg: PreprocessConfig, limits: UploadLimits) -> Prepared:
    """Check, unpack and preprocess one uploaded clip; `BadUpload` names what is wrong."""
    if len(data) > limits.max_bytes:
        raise BadUpload(
            f"the upload is {len(data)} bytes, over the limit of {limits.max_bytes}", status=413
        )
    kind = _kind(data)
    with tempfile.TemporaryDirectory(prefix="lightman-upload-") as tmp:
        rec = _record(Path(tmp), data, kind, limits)
        n = len(rec.frame_numbers)
        onset = 0 if span.onset is None else span.onset
        offset = n - 1 if span.offset is None else span.offset
        if onset >= n:
            raise BadUpload(f"onset {onset} is past the last frame {n - 1}")
        if onset > offset:
            raise BadUpload(f"onset {onset} is after offset {offset} (the clip has {n} frames)")
        rec = replace(
            rec,
            onset=onset,
            offset=offset,
            apex=span.apex,
            apex_source="annotated" if span.apex is not None else "missing",
        )
        try:
            pre, _ = preprocess_clip(rec, cfg)
        except (ClipError, FrameReadError) as e:
            raise BadUpload(str(e).replace(tmp, "upload")) from None
    if cfg.face_crop == "haar" and NO_FACE in pre.repairs:
        raise BadUpload(
            "no face found on the onset frame; send face_crop=none for a clip that "
            "is already a face crop"
        )
    given = span.onset is not None or span.offset is not None
    return Prepared(pre, onset, "given" if given else "whole clip", n)


class OverBudget(RuntimeError):
    """A request past its time budget (`limits.max_seconds`): a 503 naming the limit."""


def _worker_loop() -> None:
    """A preprocessing worker (`PrepPool`): (data, span, cfg, limits) pickles on stdin, one
    ("ok", Prepared) / ("bad", message, status) / ("error", text) pickle on stdout each."""
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # a library's stray print must not corrupt the answers
    inp = sys.stdin.buffer
    while True:
        try:
            data, span, cfg, limits = pickle.load(inp)
        except EOFError:  # the replica closed the pipe or exited
            return
        try:
            answer: tuple = ("ok", prepare_clip(data, span, cfg, limits))
        except BadUpload as e:
            answer = ("bad", str(e), e.status)
        except Exception as e:  # a bug: the replica answers 500 and keeps serving
            answer = ("error", f"{type(e).__name__}: {e}")
        pickle.dump(answer, out, protocol=pickle.HIGHEST_PROTOCOL)
        out.flush()


class _Worker:
    """One preprocessing process (trusted: it is this package, fed by the replica)."""

    def __init__(self) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from lightman.platform.upload import _worker_loop as w; w()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )

    def call(self, payload: tuple) -> tuple:
        pickle.dump(payload, self.proc.stdin, protocol=pickle.HIGHEST_PROTOCOL)
        self.proc.stdin.flush()
        return pickle.load(self.proc.stdout)

    def kill(self) -> None:
        self.proc.kill()
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass
        # reaped in the background: wait() on a killed process returns at once
        threading.Thread(target=self.proc.wait, daemon=True).start()


class PrepPool:
    """`prepare_clip` in `workers` processes: a request waits for a free one (never more
    than `workers` clips are decoded at once per replica, each in its own process, so the
    decoding memory of a replica is `workers` clips'); a request cancelled by its time
    budget kills its worker, which is replaced at once."""

    def __init__(self, workers: int):
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.workers = workers
        self._idle = [_Worker() for _ in range(workers)]
        self._free: asyncio.Semaphore | None = None  # made in the event loop that uses it
        self._closed = False

    async def prepare(
        self, data: bytes, span: Span, cfg: PreprocessConfig, limits: UploadLimits
    ) -> Prepared:
        if self._free is None:
            self._free = asyncio.Semaphore(self.workers)
        async with self._free:
            worker = self._idle.pop() if self._idle else _Worker()
            healthy = False
            try:
                answer = await asyncio.to_thread(worker.call, (data, span, cfg, limits))
                healthy = True
            except (EOFError, OSError, pickle.UnpicklingError):
                code = worker.proc.poll()
                raise BadUpload(
                    "the upload could not be decoded: the decoder stopped "
                    f"(exit status {code}) on it"
                ) from None
            finally:
                if healthy and not self._closed:
                    self._idle.append(worker)
                else:  # cancelled (time budget, client gone), crashed or closed: not reused
                    worker.kill()
                    if not self._closed:
                        self._idle.append(_Worker())
        if answer[0] == "ok":
            return answer[1]
        if answer[0] == "bad":
            raise BadUpload(answer[1], answer[2])
        raise RuntimeError(f"preprocessing failed: {answer[1]}")

    def close(self) -> None:
        """Stop the idle workers now, the busy ones when their clip is done."""
        self._closed = True
        for worker in self._idle:
            worker.kill()
        self._idle = []

"""Reading clip frames: image sequences (numeric order) and video files (decord).

Everything here reads local paths and s3:// URIs alike (`lightman.tasks.storage`)
and returns RGB uint8 arrays shaped (H, W, 3) per frame, (n, H, W, 3) per batch.
Frames are addressed by their absolute number as annotated (`ClipRecord`), never by
their position in a listing. Unreadable or truncated files raise `FrameReadError`,
naming the file.

decord's C++ code and the FFmpeg it wraps log straight to file descriptor 2 ("moov atom
not found", "[time] /path/video_reader.cc:83: ERROR opening ..."), past Python's
sys.stderr. Every decord call here runs with fd 2 captured (`decoder_log`): the lines
never reach the user's terminal, and when the call fails they become the reason in the
error (hence the manifest's `skipped` entry), without the C++ prefixes.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import tempfile
from collections.abc import Iterator, Sequence

import numpy as np

from lightman.tasks import storage
from lightman.tasks.cv import cv2
from lightman.tasks.schema import ClipRecord

_INT = re.compile(r"(\d+)")
# "[mov,mp4,m4a @ 0x55d5]", "[20:02:17]" and "/github/workspace/src/video/video_reader.cc:83:"
_LOG_PREFIX = re.compile(r"^(\[[^\]]*\]\s*|\S+\.(cc|cpp|c|h):\d+:\s*)+")


class FrameReadError(ValueError):
    """A frame file or video cannot be read or decoded; the message names the file."""


def numeric_key(name: str) -> tuple[int, str]:
    """Sort key by the last integer in a file name.

    img9 < img10; image559740.bmp → 559740; S005_001_00000001.png → 1; 006_05562.jpg → 5562.
    """
    base = name.rsplit("/", 1)[-1]
    nums = _INT.findall(base.rsplit(".", 1)[0])
    if not nums:
        raise ValueError(f"frame file {name!r} has no frame number in its name")
    return int(nums[-1]), base


def sort_frame_files(names: list[str]) -> list[str]:
    """Frame files in temporal order (by number, never as strings)."""
    return sorted(names, key=numeric_key)


def _read(uri: str) -> bytes:
    try:
        return storage.read_bytes(uri)
    except (OSError, ValueError) as e:  # FileNotFoundError is an OSError; pyarrow raises both
        raise FrameReadError(f"cannot read {uri}: {e}") from e


def decode_image(data: bytes, name: str) -> np.ndarray:
    """Encoded image bytes → (H, W, 3) uint8 RGB; greyscale is expanded to 3 channels.

    OpenCV 4.x returns None for truncated JPEG/PNG/BMP data, which is turned into an
    error here rather than a half-grey frame.
    """
    if not data:
        raise FrameReadError(f"{name}: empty file")
    try:
        bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)  # grey → 3 channels
    except cv2.error as e:
        raise FrameReadError(f"{name}: not a readable image ({e})") from e
    if bgr is None:
        raise FrameReadError(
            f"{name}: not a readable image (corrupt or truncated, {len(data)} bytes)"
        )
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def read_image(uri: str) -> np.ndarray:
    """One frame file (local or s3://) → (H, W, 3) uint8 RGB."""
    return decode_image(_read(uri), uri)


@contextlib.contextmanager
def decoder_log() -> Iterator[list[str]]:
    """Capture fd 2 for the duration: yields a list that holds, on exit, the decoder's log lines.

    Process-wide, so anything another thread writes to stderr meanwhile is captured too;
    decoding runs in the ingest's main thread or in a worker process of its own.
    """
    lines: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            for line in tmp.read().decode(errors="replace").splitlines():
                line = _LOG_PREFIX.sub("", line).strip()
                if line and line not in lines:
                    lines.append(line)


def decoder_reason(lines: list[str], error: BaseException) -> str:
    """Why a decord call failed: what the decoder logged, else the exception's own text."""
    return "; ".join(lines) if lines else str(error)


def open_video(uri: str):
    """A `decord.VideoReader` over a local or s3:// video file.

    decord 0.6.0 takes a path, or a file-like object whose bytes it copies into
    memory: S3 objects are passed as BytesIO. One decoding thread per reader: the
    ingest already runs one clip per core.
    """
    import decord  # lazy: image-sequence datasets never load the video decoder

    loc = storage.resolve(uri)
    if not storage.exists(loc):
        raise FrameReadError(f"cannot read {uri}: no such file")
    source = io.BytesIO(_read(uri)) if loc.is_s3 else loc.path
    try:
        with decoder_log() as log:
            return decord.VideoReader(source, ctx=decord.cpu(0), num_threads=1)
    except (RuntimeError, AssertionError, decord.DECORDError) as e:
        raise FrameReadError(
            f"{uri}: not a decodable video (corrupt or truncated): {decoder_reason(log, e)}"
        ) from e


def video_length(uri: str) -> int:
    """Number of decodable frames of a video."""
    return len(open_video(uri))


def video_fps(uri: str) -> float:
    """Average frame rate stored in a video's container."""
    return float(open_video(uri).get_avg_fps())


def _decode_batch(reader, indices: Sequence[int], uri: str) -> np.ndarray:
    """Frames at decoded positions `indices` (any order, repeats allowed) → (n, H, W, 3)."""
    unique = sorted(set(int(i) for i in indices))
    if unique and (unique[0] < 0 or unique[-1] >= len(reader)):
        raise FrameReadError(f"{uri}: frame index out of range [0, {len(reader) - 1}]: {unique}")
    try:
        with decoder_log() as log:
            batch = reader.get_batch(unique).asnumpy()  # (len(unique), H, W, 3) RGB
    except Exception as e:  # decord raises DECORDError/RuntimeError on broken packets
        raise FrameReadError(
            f"{uri}: cannot decode frames {unique}: {decoder_reason(log, e)}"
        ) from e
    if batch.shape[0] != len(unique):
        raise FrameReadError(f"{uri}: decoded {batch.shape[0]} frames, expected {len(unique)}")
    pos = {i: k for k, i in enumerate(unique)}
    return batch[[pos[int(i)] for i in indices]]


def read_video_frames(uri: str, indices: Sequence[int]) -> np.ndarray:
    """Frames at decoded positions `indices` of a video → (n, H, W, 3) uint8 RGB."""
    return _decode_batch(open_video(uri), indices, uri)


def _stack(frames: list[np.ndarray], names: list[str]) -> np.ndarray:
    shapes = {f.shape for f in frames}
    if len(shapes) > 1:
        found = ", ".join(f"{n}: {f.shape}" for n, f in zip(names, frames))
        raise FrameReadError(f"frames of one clip differ in size ({found})")
    return np.stack(frames)


class ClipFrames:
    """Random access to one clip's frames by absolute frame number; a video is opened once.

    `numbers` lists the absolute numbers of the frames actually on disk, in order:
    `rec.frame_numbers`, else the numbers in the frame file names, else (video) the
    decoded positions 0..n-1.
    """

    def __init__(self, rec: ClipRecord):
        self.name = rec.video_uri or rec.source_uri or rec.clip_id
        self._reader = None
        if rec.video_uri:
            self._reader = open_video(rec.video_uri)
            n = len(self._reader)
            numbers = tuple(rec.frame_numbers) or tuple(range(n))
            if len(numbers) > n:
                raise FrameReadError(
                    f"{rec.video_uri}: video has {n} decodable frames but the record lists "
                    f"{len(numbers)} frame numbers"
                )
            self._where = {num: i for i, num in enumerate(numbers)}
        elif rec.frame_uris:
            numbers = tuple(rec.frame_numbers) or tuple(numeric_key(u)[0] for u in rec.frame_uris)
            if len(numbers) != len(rec.frame_uris):
                raise FrameReadError(
                    f"{self.name}: {len(rec.frame_uris)} frame files but "
                    f"{len(numbers)} frame numbers"
                )
            self._where = dict(zip(numbers, rec.frame_uris))
        else:
            raise FrameReadError(f"{rec.clip_id}: record has neither frame_uris nor video_uri")
        if list(numbers) != sorted(set(numbers)):
            raise FrameReadError(f"{self.name}: frame numbers are not strictly increasing")
        self.numbers: tuple[int, ...] = numbers

    def read(self, numbers: Sequence[int]) -> np.ndarray:
        """Frames with these absolute numbers (any order, repeats allowed) → (n, H, W, 3)."""
        missing = [n for n in numbers if n not in self._where]
        if missing:
            raise FrameReadError(f"{self.name}: frames {missing} are not on disk")
        if self._reader is not None:
            return _decode_batch(self._reader, [self._where[n] for n in numbers], self.name)
        cache: dict[int, np.ndarray] = {}  # a repeated number is read once
        for n in numbers:
            if n not in cache:
                cache[n] = read_image(self._where[n])
        return _stack([cache[n] for n in numbers], [self._where[n] for n in numbers])


def read_clip_frames(rec: ClipRecord, numbers: list[int]) -> np.ndarray:
    """Only the requested absolute frame numbers of a clip → (n, H, W, 3) uint8 RGB."""
    return ClipFrames(rec).read(numbers)

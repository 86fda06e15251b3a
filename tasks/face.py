"""Face box on the onset frame (OpenCV Haar cascades), applied identically to every frame.

Per-frame detection jitters by more than a micro-expression moves (docs/datasets.md,
"Preprocessing conventions"), so a clip gets one `FaceBox`, found on its onset frame.

Box convention. `FaceBox(x, y, w, h, angle)`: (x, y, w, h) is a square in onset-frame
pixels; `angle` (degrees) is the angle of the line from the image-left eye to the
image-right eye, measured from the +x axis with y pointing down, so it is positive when
the image-right eye is lower (head rolled clockwise as seen). A frame is cropped by
rotating it by +angle about the box centre (`cv2.getRotationMatrix2D`, which turns
counter-clockwise as seen for positive angles, levelling the eyes) and then taking the
box. With two eyes found, the box side is the detected face's side and the box is
placed so that, after that rotation, the eyes' midpoint lies on the box's vertical
centre line at `EYE_ROW` of its height from the top.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from functools import cache

import numpy as np

from lightman.tasks.cv import cv2

EYE_ROW = 0.4  # eyes' height in the crop, as a fraction of its side (aligned-face layout)
MAX_ROLL = 30.0  # degrees; a steeper "eye line" is a false eye detection
EYE_ROI_WIDTH = 240  # the upper half-face is upscaled to this width: small eyes need it
NO_FACE = "face not found on onset frame; used centre crop"
NO_EYES = "eyes not found on onset frame; face box not rotated"


@dataclass(frozen=True)
class FaceBox:
    """A square crop (x, y, w, h) in onset-frame pixels, taken after rotating by `angle` degrees."""

    x: int
    y: int
    w: int
    h: int
    angle: float = 0.0

    @property
    def centre(self) -> tuple[float, float]:
        return self.x + self.w / 2.0, self.y + self.h / 2.0

    def as_tuple(self) -> tuple[int, int, int, int]:
        return self.x, self.y, self.w, self.h


@cache
def _cascade(name: str) -> cv2.CascadeClassifier:
    """Loaded once per process (each Ray worker / pool process loads its own)."""
    path = os.path.join(cv2.data.haarcascades, name)
    clf = cv2.CascadeClassifier(path)
    if clf.empty():
        raise RuntimeError(f"cannot load Haar cascade {path} (needs opencv-python-headless 4.x)")
    return clf


def grey(img: np.ndarray) -> np.ndarray:
    """(H, W, 3) RGB or (H, W[, 1]) grey uint8 → (H, W) uint8."""
    if img.ndim == 3 and img.shape[2] == 3:
        return cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    return img.reshape(img.shape[:2])


def detect_face(img: np.ndarray) -> FaceBox | None:
    """The largest frontal face in an (H, W, 3) RGB frame, or None."""
    g = cv2.equalizeHist(grey(img))
    min_side = max(24, min(g.shape) // 8)
    faces = _cascade("haarcascade_frontalface_default.xml").detectMultiScale(
        g, scaleFactor=1.1, minNeighbors=5, minSize=(min_side, min_side)
    )
    if len(faces) == 0:
        return None
    x, y, w, h = max((tuple(int(v) for v in f) for f in faces), key=lambda f: f[2] * f[3])
    return FaceBox(x, y, w, h, 0.0)


Point = tuple[float, float]


def find_eyes(img: np.ndarray, face: FaceBox) -> tuple[Point, Point] | None:
    """Centres (x, y) of the image-left and image-right eye inside the face's upper half, or None.

    The largest detection on each side of the face's vertical centre line is taken; a
    pair whose distance is implausible for the face size, or whose line is steeper than
    `MAX_ROLL`, is rejected.
    """
    g = cv2.equalizeHist(grey(img))
    x0, y0 = max(face.x, 0), max(face.y, 0)
    roi = g[y0 : face.y + face.h // 2, x0 : face.x + face.w]  # upper half of the face
    if roi.size == 0:
        return None
    scale = max(1.0, EYE_ROI_WIDTH / roi.shape[1])
    big = cv2.resize(roi, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
    min_eye = max(8, int(face.w * scale / 12))
    eyes = _cascade("haarcascade_eye.xml").detectMultiScale(
        big, scaleFactor=1.05, minNeighbors=3, minSize=(min_eye, min_eye)
    )
    cx = face.x + face.w / 2.0
    centres = [  # (x, y, size) in frame pixels
        (x0 + (ex + ew / 2) / scale, y0 + (ey + eh / 2) / scale, ew) for ex, ey, ew, eh in eyes
    ]
    left = [c for c in centres if c[0] < cx]
    right = [c for c in centres if c[0] >= cx]
    if not left or not right:
        return None
    (lx, ly, _), (rx, ry, _) = max(left, key=lambda c: c[2]), max(right, key=lambda c: c[2])
    dist = math.hypot(rx - lx, ry - ly)
    if not 0.2 * face.w <= dist <= 0.7 * face.w or abs(eye_angle((lx, ly), (rx, ry))) > MAX_ROLL:
        return None
    return (lx, ly), (rx, ry)


def eye_angle(left: Point, right: Point) -> float:
    """Roll in degrees of the eye line (y down): positive when the image-right eye is lower."""
    return math.degrees(math.atan2(right[1] - left[1], right[0] - left[0]))


def box_from_eyes(face: FaceBox, left: Point, right: Point) -> FaceBox:
    """The crop box: the face's side, eye midpoint m at (side/2, EYE_ROW·side) once rotated.

    Rotating about the centre c by angle a maps p to c + R(p − c) with
    R = [[cos a, sin a], [−sin a, cos a]]. Requiring R(m − c) = (0, −d) with
    d = (½ − EYE_ROW)·side gives c = m + d·(−sin a, cos a): the centre lies d below
    the eyes along the face's own vertical axis.
    """
    side = max(face.w, face.h)
    a = eye_angle(left, right)
    mx, my = (left[0] + right[0]) / 2.0, (left[1] + right[1]) / 2.0
    d = (0.5 - EYE_ROW) * side
    cx = mx - d * math.sin(math.radians(a))
    cy = my + d * math.cos(math.radians(a))
    return FaceBox(int(round(cx - side / 2.0)), int(round(cy - side / 2.0)), side, side, a)


def square_box(face: FaceBox) -> FaceBox:
    """The detected face box made square about its centre, unrotated."""
    side = max(face.w, face.h)
    cx, cy = face.centre
    return FaceBox(int(round(cx - side / 2.0)), int(round(cy - side / 2.0)), side, side, 0.0)


def align_box(img: np.ndarray, box: FaceBox) -> FaceBox:
    """The aligned crop box for a detected face; `square_box(box)` if no eye pair is found."""
    eyes = find_eyes(img, box)
    return square_box(box) if eyes is None else box_from_eyes(box, *eyes)


def centre_box(height: int, width: int) -> FaceBox:
    """The centred square of a frame: the fallback when no face is found."""
    side = min(height, width)
    return FaceBox((width - side) // 2, (height - side) // 2, side, side, 0.0)


def locate_face(img: np.ndarray) -> tuple[FaceBox, tuple[str, ...]]:
    """Detect and align the face on the onset frame; fall back to the centre crop, saying so."""
    face = detect_face(img)
    if face is None:
        return centre_box(*img.shape[:2]), (NO_FACE,)
    eyes = find_eyes(img, face)
    if eyes is None:
        return square_box(face), (NO_EYES,)
    return box_from_eyes(face, *eyes), ()


def crop_face(img: np.ndarray, box: FaceBox, size: int) -> np.ndarray:
    """Rotate by box.angle about the box centre, crop the box, resize → (size, size, C) uint8.

    Rotation and crop are one `cv2.warpAffine` (the crop is a translation folded into the
    matrix); pixels outside the frame repeat the border. An angle of 0 with an integer
    box is an exact copy of the box's pixels.
    """
    m = cv2.getRotationMatrix2D(box.centre, box.angle, 1.0)  # (2, 3)
    m[:, 2] -= (box.x, box.y)
    crop = cv2.warpAffine(
        img, m, (box.w, box.h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    crop = crop.reshape(box.h, box.w, -1)  # warpAffine drops a single channel axis
    if (box.w, box.h) != (size, size):
        crop = cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA).reshape(size, size, -1)
    return crop

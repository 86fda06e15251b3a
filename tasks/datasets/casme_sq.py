"""CAS(ME)^2 adapter: micro- and macro-expressions of 22 subjects in long videos, 30 fps.

Expected layout: `LAYOUT` below (first match wins, in the order listed), which a
folder in another layout fails with.

How a row finds its frames: the participant (1) gives the folder number (15) through
`naming rule1`; the clip name's video part (`disgust1` of `disgust1_1`) gives the
video code (0101) through `naming rule2`; the frames are in the folder under
`rawpic/s15/` whose name starts with `15_0101`. One video folder holds many clips:
it is listed once, and each record keeps only its frames from onset to offset.

Fields: `type` gives the expression (macro-expression -> macro, micro-expression ->
micro); `category` (negative/positive/surprise/others) is the emotion; the fine
emotion is kept in `action_units` after the AUs as "; fine emotion: <text>".
0 means unknown: apex 0 -> apex=None with a repair note; offset 0 -> offset = apex
(recorded; skipped when the apex is unknown too); onset 0 -> skipped.
Subjects are `casme_sq/sNN`; clip ids `casme_sq/sNN/<clip name>`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from functools import partial

import pyarrow.fs as pafs

from lightman.tasks import storage
from lightman.tasks.datasets.base import (
    Candidate,
    FrameError,
    RowError,
    ScanResult,
    annotated_record,
    canonical_emotion,
    cell,
    child,
    collect,
    header_key,
    is_blank,
    layout_block,
    layout_error,
    list_frames,
    name_of,
    parse_apex,
    parse_int,
    parse_onset_offset,
    pick,
    read_workbook,
    subdirs,
    text,
    unusable_row,
)
from lightman.tasks.schema import ClipRecord, Skipped
from lightman.tasks.storage import Location

DATASET = "casme_sq"
TITLE = "CAS(ME)^2"
LAYOUT = layout_block("""
<root>/CAS(ME)^2code_final.xlsx (any CAS(ME)^2*.xlsx or CAS(ME)2*.xlsx; last in name order):
  sheet CASFEcode_final, no header row: participant, clip name, onset, apex, offset,
    AUs, category, type, fine emotion
  sheet naming rule1: subject folder (s15), folder number (15), participant (1)
  sheet naming rule2: video code (101 or 0101), video name (disgust1)
<root>/rawpic/sNN/NN_CCCC<description>/imgN.jpg,
  e.g. rawpic/s15/15_0101disgustingteeth/img1.jpg
""")
FPS = 30.0
SHEETS = (r"cas\(me\)\^?2.*\.xlsx",)
CODE_SHEETS = ("casfecodefinal", "casmecodefinal")  # header_key of the name: loaders spell both
# CASFEcode_final columns (no header row)
PARTICIPANT, CLIP, ONSET, APEX, OFFSET, AUS, CATEGORY, TYPE, FINE = range(9)
TYPES = {"macroexpression": "macro", "microexpression": "micro"}

Listing = tuple[tuple[str, ...], tuple[int, ...]]  # (frame URIs, frame numbers)


@dataclass(frozen=True)
class Naming:
    """The two naming sheets: participant -> subject folder number, video name -> video code."""

    numbers: dict[int, int]  # 1 -> 15 (folder s15, video folders 15_*)
    codes: dict[str, str]  # 'disgust1' -> '0101'


def sheet_by_key(book: dict[str, list[tuple]], keys: tuple[str, ...]) -> list[tuple] | None:
    return next((rows for name, rows in book.items() if header_key(name) in keys), None)


def folder_numbers(rule1: list[tuple], where: str) -> dict[int, int]:
    """participant -> subject folder number, from `naming rule1` rows (s15 | 15 | 1)."""
    out: dict[int, int] = {}
    for i, row in enumerate(rule1):
        participant = text(cell(row, 2))
        number = re.sub(r"\D", "", text(cell(row, 1)) or text(cell(row, 0)))
        if re.fullmatch(r"\d+", participant) and number:
            out[int(participant)] = int(number)
        elif not is_blank(row) and i > 0:  # row 1 may be a header
            raise RowError(
                f"{where} row {i + 1}: expected subject folder, folder number, "
                f"participant; got {row}"
            )
    return out


def video_codes(rule2: list[tuple], where: str) -> dict[str, str]:
    """video name (lower case) -> 4-digit code, from `naming rule2` rows (101 | disgust1)."""
    out: dict[str, str] = {}
    for i, row in enumerate(rule2):
        code, name = text(cell(row, 0)), text(cell(row, 1)).lower()
        if re.fullmatch(r"\d+", code) and name:
            out[name] = f"{int(code):04d}"
        elif not is_blank(row) and i > 0:
            raise RowError(f"{where} row {i + 1}: expected video code, video name; got {row}")
    return out


def read_sheets(loc: Location, root: Location) -> tuple[list[tuple], Naming]:
    """(CASFEcode_final rows, the naming sheets); LayoutError when a sheet is absent or garbled."""
    name = name_of(loc)
    book = read_workbook(loc)
    code = sheet_by_key(book, CODE_SHEETS)
    rule1, rule2 = sheet_by_key(book, ("namingrule1",)), sheet_by_key(book, ("namingrule2",))
    if code is None or rule1 is None or rule2 is None:
        raise layout_error(
            TITLE,
            LAYOUT,
            root,
            f"{name} has sheets {list(book)}, not CASFEcode_final, naming rule1 and naming rule2",
        )
    try:
        naming = Naming(
            folder_numbers(rule1, f"{name} sheet naming rule1"),
            video_codes(rule2, f"{name} sheet naming rule2"),
        )
    except RowError as e:
        raise layout_error(TITLE, LAYOUT, root, str(e)) from None
    return code, naming


class Rawpic:
    """The rawpic/ tree; every folder in it is listed at most once, however many clips share it."""

    def __init__(self, loc: Location):
        self.loc = loc
        self.subject_dirs = {
            int(re.sub(r"\D", "", i.base_name)): i.base_name
            for i in subdirs(loc)
            if re.fullmatch(r"s\d+", i.base_name, re.I)
        }
        self._videos: dict[str, tuple[str, ...]] = {}
        self._frames: dict[str, Listing | FrameError] = {}

    def video_folders(self, subject_dir: str, prefix: str) -> list[str]:
        """Video folders of a subject whose names start with `prefix` (e.g. 15_0101)."""
        if subject_dir not in self._videos:
            folders = subdirs(self.loc.join(subject_dir))
            self._videos[subject_dir] = tuple(i.base_name for i in folders)
        return [v for v in self._videos[subject_dir] if v.lower().startswith(prefix.lower())]

    def frames(self, folder: str) -> Listing | FrameError:
        if folder not in self._frames:
            try:
                self._frames[folder] = list_frames(self.loc.join(folder))
            except FrameError as e:
                self._frames[folder] = e
        return self._frames[folder]


def interval(row: tuple, where: str) -> tuple[int, int | None, int, tuple[str, ...]]:
    """(onset, apex, offset, repairs) with 0 = unknown handled as the module docstring says."""
    onset = parse_int(cell(row, ONSET), "onset", where)
    offset = parse_int(cell(row, OFFSET), "offset", where)
    if onset == 0:
        raise RowError(f"{where}: onset unknown (0)")
    repairs: tuple[str, ...] = ()
    if offset == 0:
        apex, _ = parse_apex(cell(row, APEX), where, "apex")
        if apex is None:
            raise RowError(f"{where}: offset unknown (0) and no usable apex to end the clip at")
        offset, repairs = apex, (f"offset unknown (0) in {where}; set to the apex {apex}",)
    onset, offset = parse_onset_offset(onset, offset, where, ("onset", "offset"))
    apex, notes = parse_apex(cell(row, APEX), where, "apex")
    return onset, apex, offset, repairs + notes


def clip_frames(rec: ClipRecord, rawpic: Rawpic, folder: str) -> ClipRecord | Skipped:
    """`rec` with the frames of its video folder that lie between its onset and offset."""
    listing = rawpic.frames(folder)
    if isinstance(listing, FrameError):
        return Skipped(DATASET, rec.clip_id, str(listing))
    uris, numbers = listing
    keep = [i for i, n in enumerate(numbers) if rec.onset <= n <= rec.offset]
    uri = rawpic.loc.join(folder).uri
    if not keep:
        return Skipped(
            DATASET,
            rec.clip_id,
            f"no frames between onset {rec.onset} and offset {rec.offset} in {uri} "
            f"(it holds frames {numbers[0]}..{numbers[-1]})",
        )
    return replace(
        rec,
        source_uri=uri,
        frame_uris=tuple(uris[i] for i in keep),
        frame_numbers=tuple(numbers[i] for i in keep),
    )


def row_subject(
    row: tuple, where: str, naming: Naming, rawpic: Rawpic
) -> tuple[str, str, int, str]:
    """(clip name, subject folder, folder number, expression) of a row, or RowError."""
    participant = parse_int(cell(row, PARTICIPANT), "participant", where)
    clip_name = text(cell(row, CLIP))
    if not clip_name or "/" in clip_name:
        raise RowError(f"{where}: clip name {clip_name!r} does not name a clip")
    if participant not in naming.numbers:
        raise RowError(f"{where}: participant {participant} is not in sheet 'naming rule1'")
    number = naming.numbers[participant]
    if number not in rawpic.subject_dirs:
        raise RowError(
            f"{where}: missing subject folder {rawpic.loc.uri}/s{number} "
            f"(participant {participant})"
        )
    kind = TYPES.get(header_key(cell(row, TYPE)))
    if kind is None:
        raise RowError(
            f"{where}: type {text(cell(row, TYPE))!r} is neither macro-expression "
            "nor micro-expression"
        )
    return clip_name, rawpic.subject_dirs[number], number, kind


def row_candidate(row: tuple, where: str, naming: Naming, rawpic: Rawpic) -> Candidate:
    """The clip a CASFEcode_final row names (RowError when it names none)."""
    clip_name, subject_dir, number, kind = row_subject(row, where, naming, rawpic)
    subject = f"{DATASET}/{subject_dir}"
    clip_id = f"{subject}/{clip_name}"
    try:
        onset, apex, offset, repairs = interval(row, where)
        emotion, notes = canonical_emotion(DATASET, cell(row, CATEGORY), where)
        video = clip_name.rsplit("_", 1)[0].lower()
        if video not in naming.codes:
            raise RowError(
                f"{where}: video {video!r} of clip {clip_name!r} is not in sheet 'naming rule2'"
            )
        prefix = f"{number}_{naming.codes[video]}"
        folders = rawpic.video_folders(subject_dir, prefix)
        if len(folders) != 1:
            found = "no" if not folders else f"{len(folders)} ({', '.join(folders)})"
            raise RowError(
                f"{where}: {found} folder {rawpic.loc.uri}/{subject_dir}/{prefix}* "
                f"for clip {clip_name!r}"
            )
    except ValueError as e:  # RowError or UnknownEmotion
        return unusable_row(DATASET, clip_id, subject, kind, where, e)
    fine = text(cell(row, FINE))
    aus = text(cell(row, AUS)) + (f"; fine emotion: {fine}" if fine else "")
    names = (DATASET, subject, clip_name, kind)
    rec = annotated_record(names, emotion, (onset, apex, offset), FPS, repairs + notes, aus)
    folder = f"{subject_dir}/{folders[0]}"
    return Candidate(clip_id, subject, kind, where, partial(clip_frames, rec, rawpic, folder))


def scan(
    root: Location, *, limit: int | None = None, subjects=None, expression: str | None = None
) -> ScanResult:
    """All CAS(ME)^2 clips under `root`, in the layout `LAYOUT` shows."""
    infos = storage.list_dir(root)
    sheet_info = pick(infos, SHEETS, pafs.FileType.File)
    if sheet_info is None:
        raise layout_error(TITLE, LAYOUT, root, "no CAS(ME)^2*.xlsx sheet")
    rawpic_info = pick(infos, (r"rawpic",), pafs.FileType.Directory)
    if rawpic_info is None:
        raise layout_error(TITLE, LAYOUT, root, "no rawpic/ folder")
    rows, naming = read_sheets(child(root, sheet_info), root)
    rawpic = Rawpic(child(root, rawpic_info))
    name = name_of(child(root, sheet_info))
    candidates: list[Candidate] = []
    row_skips: list[Skipped] = []
    for i, row in enumerate(rows):
        where = f"{name} sheet CASFEcode_final row {i + 1}"
        if is_blank(row) or (i == 0 and "onset" in [header_key(v) for v in row]):
            continue  # blank, or a header row some copies add
        try:
            candidates.append(row_candidate(row, where, naming, rawpic))
        except RowError as e:
            row_skips.append(Skipped(DATASET, where, str(e)))
    return collect(
        DATASET, candidates, row_skips, limit=limit, subjects=subjects, expression=expression
    )

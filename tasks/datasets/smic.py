"""SMIC-HS adapter: 164 micro-expression clips of 16 subjects, 100 fps (lit.), no apex.

Expected layout: `LAYOUT` below (first match wins, in the order listed), which a
folder in another layout fails with.

The label is the emotion folder's name; frame numbers are absolute (image559740.bmp).
Onset/offset are the first/last frame in the clip folder, unless a sheet is shipped:
then its row for the clip gives them (a clip without a row falls back to the folder,
recorded as a repair; a row without a folder is reported as skipped). SMIC has no
apex: every record has apex=None and a repair note; preprocessing estimates it.
Folders beside `micro/` (e.g. `non_micro/`) are not read. Subjects are `smic/sN`;
clip ids `smic/sN/sN_xx_NN`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from functools import partial

import pyarrow.fs as pafs

from lightman.tasks import storage
from lightman.tasks.datasets.base import (
    Candidate,
    CodingSheet,
    RowError,
    ScanResult,
    cell,
    child,
    collect,
    decided,
    frames_root,
    is_blank,
    layout_block,
    name_of,
    numbered_folder,
    open_coding_sheet,
    parse_onset_offset,
    pick,
    subdirs,
    text,
    with_frames,
)
from lightman.tasks.labels import UnknownEmotion, normalise
from lightman.tasks.schema import ClipRecord, Skipped
from lightman.tasks.storage import Location

DATASET = "smic"
TITLE = "SMIC-HS"
LAYOUT = layout_block("""
<root>/HS/sN/micro/{negative,positive,surprise}/sN_xx_NN/imageNNNNNN.bmp,
  else <root>/sN/micro/...
optional onset/offset sheet: <root>/SMIC*.xlsx, else <root>/HS/SMIC*.xlsx,
  columns Subject, Filename, Onset, Offset
""")
FPS = 100.0
SHEETS = (r"smic.*\.xlsx",)
REQUIRED = {
    "subject": ("Subject",),
    "filename": ("Filename", "material", "clip"),
    "onset": ("Onset", "OnsetFrame", "OnsetF"),
    "offset": ("Offset", "OffsetFrame", "OffsetF"),
}
APEX_NOTE = "SMIC has no apex annotation; estimated later"


@dataclass(frozen=True)
class SheetRow:
    """A sheet row's onset/offset for one clip, or why they are unusable."""

    where: str
    interval: tuple[int, int] | None
    error: str | None = None


def sheet_rows(sheet: CodingSheet) -> tuple[dict[tuple[str, str], SheetRow], list[Skipped]]:
    """(subject folder, Filename) -> SheetRow, plus the rows that name no clip."""
    rows: dict[tuple[str, str], SheetRow] = {}
    row_skips: list[Skipped] = []
    subject_folder = numbered_folder("s", 1)
    c = sheet.cols
    for i in range(sheet.header + 1, len(sheet.rows)):
        row, where = sheet.rows[i], sheet.where(i)
        if is_blank(row):
            continue
        try:
            key = (subject_folder(cell(row, c["subject"]), where), text(cell(row, c["filename"])))
            if not key[1]:
                raise RowError(f"{where}: {sheet.label('filename')} is blank")
            if key in rows:
                raise RowError(
                    f"{where}: a second row for {key[0]}/{key[1]} (first at {rows[key].where})"
                )
        except RowError as e:
            row_skips.append(Skipped(DATASET, where, str(e)))
            continue
        try:
            rows[key] = SheetRow(
                where,
                parse_onset_offset(
                    cell(row, c["onset"]),
                    cell(row, c["offset"]),
                    where,
                    (sheet.label("onset"), sheet.label("offset")),
                ),
            )
        except RowError as e:
            rows[key] = SheetRow(where, None, str(e))
    return rows, row_skips


def clip_folders(hs: Location) -> Iterator[tuple[str, Location, Location]]:
    """(subject folder name, emotion folder, clip folder) for every sN/micro/<emotion>/<clip>/."""
    for subject_info in subdirs(hs):
        if pick([subject_info], (r"s\d+",), pafs.FileType.Directory) is None:
            continue
        subject_loc = child(hs, subject_info)
        micro = pick(subdirs(subject_loc), (r"micro",), pafs.FileType.Directory)
        if micro is None:
            continue
        micro_loc = child(subject_loc, micro)
        for emotion_info in subdirs(micro_loc):
            emotion_loc = child(micro_loc, emotion_info)
            for clip_info in subdirs(emotion_loc):
                yield subject_info.base_name, emotion_loc, child(emotion_loc, clip_info)


def build(
    rec: ClipRecord, folder: Location, annotated: SheetRow | None, sheet_name: str | None
) -> ClipRecord | Skipped:
    """List the clip's frames; onset/offset from the sheet row, else the first/last frame."""
    listed = with_frames(rec, folder)
    if isinstance(listed, Skipped):
        return listed
    if annotated is not None and annotated.interval is not None:
        onset, offset = annotated.interval
        return replace(listed, onset=onset, offset=offset)
    first, last = listed.frame_numbers[0], listed.frame_numbers[-1]
    repairs = listed.repairs
    if sheet_name is not None:
        repairs += (
            f"no row in {sheet_name}: onset/offset = first/last frame in the folder "
            f"({first}, {last})",
        )
    return replace(listed, onset=first, offset=last, repairs=repairs)


def candidate(
    subject_dir: str,
    emotion_loc: Location,
    clip_loc: Location,
    annotated: SheetRow | None,
    sheet_name: str | None,
) -> Candidate:
    """The clip in `clip_loc`, labelled by its emotion folder."""
    filename = name_of(clip_loc)
    subject = f"{DATASET}/{subject_dir}"
    clip_id = f"{subject}/{filename}"
    try:
        emotion = normalise(DATASET, name_of(emotion_loc))
    except UnknownEmotion as e:
        skip = Skipped(DATASET, clip_id, f"{e} (folder {emotion_loc.uri})")
        return Candidate(clip_id, subject, "micro", clip_loc.uri, decided(skip))
    if annotated is not None and annotated.error is not None:
        skip = Skipped(DATASET, clip_id, annotated.error)
        return Candidate(clip_id, subject, "micro", clip_loc.uri, decided(skip))
    rec = ClipRecord(
        dataset=DATASET,
        subject=subject,
        filename=filename,
        expression="micro",
        emotion=emotion,
        onset=0,
        apex=None,
        offset=0,
        fps=FPS,
        apex_source="missing",
        repairs=(APEX_NOTE,),
    )  # onset/offset are set by `build` once the frames are listed
    return Candidate(
        clip_id,
        subject,
        "micro",
        clip_loc.uri,
        partial(build, rec, clip_loc, annotated, sheet_name),
    )


def scan(
    root: Location, *, limit: int | None = None, subjects=None, expression: str | None = None
) -> ScanResult:
    """All SMIC-HS clips under `root`, in the layout `LAYOUT` shows."""
    infos = storage.list_dir(root)
    hs = frames_root(root, infos, (r"hs",), r"s\d+", TITLE, LAYOUT)
    sheet_dir, sheet_info = root, pick(infos, SHEETS, pafs.FileType.File)
    if sheet_info is None and hs.path != root.path:
        sheet_dir, sheet_info = hs, pick(storage.list_dir(hs), SHEETS, pafs.FileType.File)
    annotated: dict[tuple[str, str], SheetRow] = {}
    row_skips: list[Skipped] = []
    sheet_name = None
    if sheet_info is not None:
        sheet = open_coding_sheet(child(sheet_dir, sheet_info), REQUIRED, {}, TITLE, LAYOUT, root)
        annotated, row_skips = sheet_rows(sheet)
        sheet_name = sheet.name
    candidates = []
    for subject_dir, emotion_loc, clip_loc in clip_folders(hs):
        row = annotated.pop((subject_dir, name_of(clip_loc)), None)
        candidates.append(candidate(subject_dir, emotion_loc, clip_loc, row, sheet_name))
    for (subject_dir, filename), row in annotated.items():  # rows whose clip is not on disk
        missing = f"{hs.uri}/{subject_dir}/micro/*/{filename}"
        row_skips.append(Skipped(DATASET, row.where, f"{row.where}: no clip folder {missing}"))
    return collect(
        DATASET, candidates, row_skips, limit=limit, subjects=subjects, expression=expression
    )

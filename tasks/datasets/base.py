"""What every dataset adapter shares: the scan result, layout errors, sheet and folder reading.

An adapter turns a release folder into `ClipRecord`s and `Skipped`s in three steps:

1. find the annotation (sheet / tree) and the frames folder, or raise `LayoutError`
   naming the expected layout;
2. turn every annotation row into a `Candidate` (its clip id, subject, expression and a
   `build` that lists the clip's frames), or a `Skipped` when the row cannot even name
   a clip (blank filename, unreadable subject);
3. `collect` applies the filters, sorts by clip id, drops duplicate ids and calls
   `build` until `limit` usable clips are found. Frame folders are listed only here,
   once each, so a filtered or limited scan touches only the folders it needs.

Frame numbers are absolute (from the file names); onset/apex/offset are checked here
only for what the sheet alone can decide (integers, onset <= offset, apex present).
Checks against the frames on disk (offset past the last frame, apex outside the clip)
are `tasks/preprocess.py`'s.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from itertools import pairwise

import openpyxl
import pyarrow.fs as pafs

from lightman.tasks import storage
from lightman.tasks.frames import numeric_key
from lightman.tasks.labels import normalise
from lightman.tasks.schema import EXPRESSIONS, ClipRecord, Skipped
from lightman.tasks.storage import Location

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
# Apex cells that mean "not annotated" in the real sheets (besides non-positive numbers).
MISSING_CELLS = ("", "/", "-", "--", "n/a", "na", "none", "nan", "null", "?")


@dataclass(frozen=True)
class ScanResult:
    """Usable clips (sorted by clip id) and the clips that were skipped, with reasons."""

    records: tuple[ClipRecord, ...]
    skipped: tuple[Skipped, ...]


class LayoutError(ValueError):
    """The source folder is not in the dataset's layout; the message shows the expected one."""


class RowError(ValueError):
    """One annotation row cannot be used; the message names the sheet, row and field."""


class FrameError(ValueError):
    """A clip's frame folder cannot be used (missing, empty, unnumbered or repeated frames)."""


@dataclass(frozen=True)
class Candidate:
    """A clip named by the annotation, before its frames are listed.

    `build` lists the frames and returns the finished record, or a `Skipped` with the
    reason; `where` says where the clip was annotated (for duplicate-id messages).
    """

    clip_id: str
    subject: str  # prefixed by dataset
    expression: str
    where: str
    build: Callable[[], ClipRecord | Skipped]


def decided(outcome: Skipped) -> Callable[[], Skipped]:
    """A `build` for a candidate whose fate the annotation already settled."""
    return lambda: outcome


# ---------------------------------------------------------------- layout and search


def layout_block(text: str) -> str:
    """The expected layout as LayoutError shows it: `text`'s lines, each indented two spaces.

    Adapters keep their layout in a module constant, never in their docstrings, which
    `python -OO` strips. `text` is written flush left, one entry per line.
    """
    return "\n".join("  " + line for line in text.strip("\n").splitlines())


def layout_error(title: str, layout: str, root: Location, problem: str) -> LayoutError:
    """A LayoutError naming the expected layout, the problem and what the root holds."""
    try:
        infos = storage.list_dir(root)
    except (FileNotFoundError, NotADirectoryError):
        infos = []
    names = [i.base_name + ("/" if i.type == pafs.FileType.Directory else "") for i in infos]
    shown = ", ".join(names[:20]) + (f", ... ({len(names)} entries)" if len(names) > 20 else "")
    return LayoutError(
        f"expected {title} layout:\n{layout}\n{problem}; found in {root.uri}: [{shown}]"
    )


def pick(
    infos: Sequence[pafs.FileInfo], patterns: Sequence[str], kind: pafs.FileType
) -> pafs.FileInfo | None:
    """The entry matching the earliest pattern (full-match regex, case-insensitive).

    Within one pattern the last name in name order wins, so a newer dated or versioned
    release (`-updated`, `_v2`, a later date) is preferred over an older one beside it.
    """
    for pattern in patterns:
        rx = re.compile(pattern, re.IGNORECASE)
        hits = [i for i in infos if i.type == kind and rx.fullmatch(i.base_name)]
        if hits:
            return sorted(hits, key=lambda i: i.base_name)[-1]
    return None


def frames_root(
    root: Location,
    infos: Sequence[pafs.FileInfo],
    dirs: Sequence[str],
    subject_dir: str,
    title: str,
    layout: str,
) -> Location:
    """The first of `dirs` (regexes) in the root, else the root if it has `subject_dir` folders."""
    found = pick(infos, dirs, pafs.FileType.Directory)
    if found is not None:
        return child(root, found)
    if pick(infos, (subject_dir,), pafs.FileType.Directory) is not None:
        return root
    raise layout_error(title, layout, root, "no frames folder in the places listed")


def child(root: Location, info: pafs.FileInfo) -> Location:
    return root.join(info.base_name)


def name_of(loc: Location) -> str:
    """The last component of a location's path (a file or folder name)."""
    return loc.path.rsplit("/", 1)[-1]


def subdirs(loc: Location) -> list[pafs.FileInfo]:
    """Direct sub-folders of `loc`, by name (files such as .DS_Store are ignored)."""
    return [i for i in storage.list_dir(loc) if i.type == pafs.FileType.Directory]


# ---------------------------------------------------------------- sheets


def read_workbook(loc: Location) -> dict[str, list[tuple]]:
    """Every worksheet of an .xlsx file as rows of cell values (read via storage: s3 works).

    Raises LayoutError naming the file and openpyxl's error when it cannot be parsed.
    """
    data = storage.read_bytes(loc)
    try:
        wb = openpyxl.load_workbook(io.BytesIO(data), read_only=True, data_only=True)
        try:
            return {
                ws.title: [tuple(r) for r in ws.iter_rows(values_only=True)] for ws in wb.worksheets
            }
        finally:
            wb.close()
    except Exception as e:  # broken files raise zipfile, KeyError, XML or value errors
        raise LayoutError(f"cannot read annotation sheet {loc.uri}: {type(e).__name__}: {e}") from e


def header_key(value: object) -> str:
    """A header cell compared loosely: 'Onset Frame' == 'OnsetFrame' == 'onset_frame'."""
    return re.sub(r"[^0-9a-z]", "", str(value).lower()) if value is not None else ""


Spellings = dict[str, tuple[str, ...]]  # field -> header spellings accepted for it


def find_header(
    rows: Sequence[tuple],
    required: Spellings,
    optional: Spellings | None = None,
    search_rows: int = 40,
) -> tuple[int, dict[str, int]] | None:
    """(index of the header row, field -> column index), columns located by NAME, never position.

    `required` maps a field to the header spellings accepted for it (compared with
    `header_key`); the header is the first of the first `search_rows` rows holding all
    of them (SAMM has ~12 text rows above it). None when no row qualifies.
    """
    fields = {**required, **(optional or {})}
    for r, row in enumerate(rows[:search_rows]):
        keys = [header_key(v) for v in row]
        cols = {}
        for name, spellings in fields.items():
            wanted = {header_key(s) for s in spellings}
            idx = next((c for c, k in enumerate(keys) if k in wanted), None)
            if idx is not None:
                cols[name] = idx
        if all(name in cols for name in required):
            return r, cols
    return None


def cell(row: tuple, col: int | None) -> object:
    """The value at `col`, None when the row is shorter (read-only rows drop trailing blanks)."""
    return row[col] if col is not None and col < len(row) else None


def text(value: object) -> str:
    """A cell as stripped text; integral floats lose their '.0' (Excel stores 46 as 46.0)."""
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def is_blank(row: tuple) -> bool:
    return all(text(v) == "" for v in row)


def parse_int(value: object, field: str, where: str) -> int:
    """An integer cell (46, 46.0, ' 46 '), else RowError naming the field and row."""
    if isinstance(value, bool):
        raise RowError(f"{where}: {field} {value!r} is not an integer frame number")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    s = text(value)
    if re.fullmatch(r"[+-]?\d+", s):
        return int(s)
    if re.fullmatch(r"[+-]?\d+\.0*", s):
        return int(s.split(".")[0])
    raise RowError(f"{where}: {field} {value!r} is not an integer frame number")


def parse_onset_offset(
    onset: object, offset: object, where: str, names: tuple[str, str]
) -> tuple[int, int]:
    """Onset and offset frame numbers; RowError when not integers or onset > offset."""
    on, off = parse_int(onset, names[0], where), parse_int(offset, names[1], where)
    if on < 0 or off < 0:
        raise RowError(f"{where}: negative frame number ({names[0]} {on}, {names[1]} {off})")
    if on > off:
        raise RowError(f"{where}: {names[0]} {on} is after {names[1]} {off}")
    return on, off


def parse_apex(
    value: object, where: str, field: str, first_frame: int = 1
) -> tuple[int | None, tuple[str, ...]]:
    """(apex, repairs): None plus a repair note when the sheet's apex is missing or unparseable.

    Missing: blank, '/', not an integer, or below `first_frame` (-1, and 0 where frames
    start at 1, mean "unknown"). Preprocessing estimates it; an integer apex outside
    onset..offset is passed on as annotated, for preprocessing to judge against the
    frames on disk.
    """
    s = text(value)
    if s.lower() in MISSING_CELLS:
        return None, (f"apex missing in {where} ({field} {s!r}); estimated later",)
    try:
        apex = parse_int(value, field, where)
    except RowError:
        return None, (f"apex {s!r} is not a frame number in {where}; estimated later",)
    if apex < first_frame:
        return None, (f"apex missing in {where} ({field} {apex} means unknown); estimated later",)
    return apex, ()


def canonical_emotion(dataset: str, raw: object, where: str) -> tuple[str, tuple[str, ...]]:
    """(canonical emotion, repairs); raises UnknownEmotion (its message is the skip reason).

    A spelling the label table folds onto another name ('Others' -> 'other' in SAMM)
    is recorded as a repair; case and spacing differences are not.
    """
    raw_text = text(raw)
    emotion = normalise(dataset, raw_text)
    if emotion != " ".join(raw_text.lower().split()):
        return emotion, (f"emotion {raw_text!r} read as {emotion!r} ({where})",)
    return emotion, ()


def row_reason(error: Exception, where: str) -> str:
    """A skip reason that names the row: the error's message, prefixed by `where` if it lacks it."""
    return str(error) if where in str(error) else f"{where}: {error}"


def unusable_row(
    dataset: str, clip_id: str, subject: str, expression: str, where: str, error: Exception
) -> Candidate:
    """The candidate of a row that names a clip but whose values cannot be used (onset
    after offset, unknown emotion...): skipped, the reason naming the row."""
    return Candidate(
        clip_id,
        subject,
        expression,
        where,
        decided(Skipped(dataset, clip_id, row_reason(error, where))),
    )


def annotated_record(
    names: tuple[str, str, str, str],
    emotion: str,
    frames: tuple[int, int | None, int],
    fps: float,
    repairs: tuple[str, ...],
    action_units: str = "",
) -> ClipRecord:
    """A clip as its annotation row gives it, before its frames are listed.

    names: (dataset, prefixed subject, filename, expression); frames: (onset, apex,
    offset) as annotated, a None apex being missing (preprocessing estimates it).
    """
    dataset, subject, filename, expression = names
    onset, apex, offset = frames
    return ClipRecord(
        dataset=dataset,
        subject=subject,
        filename=filename,
        expression=expression,
        emotion=emotion,
        onset=onset,
        apex=apex,
        offset=offset,
        fps=fps,
        action_units=action_units,
        apex_source="annotated" if apex is not None else "missing",
        repairs=repairs,
    )


# ---------------------------------------------------------------- frames


def list_frames(folder: Location) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """(frame URIs in numeric order, their absolute frame numbers), listing the folder once.

    Only image files count (other files such as Thumbs.db are ignored). Raises
    FrameError when the folder is missing or empty, a frame has no number in its name,
    or two files carry the same frame number (img46.jpg and reg_img46.jpg).
    """
    try:
        infos = storage.list_dir(folder)
    except FileNotFoundError:
        raise FrameError(f"missing frame folder {folder.uri}") from None
    except NotADirectoryError:
        raise FrameError(f"frame folder {folder.uri} is a file, not a folder") from None
    images = [
        i.base_name
        for i in infos
        if i.type == pafs.FileType.File and i.base_name.lower().endswith(IMAGE_EXTENSIONS)
    ]
    if not images:
        raise FrameError(f"empty frame folder {folder.uri} (no {'/'.join(IMAGE_EXTENSIONS)} files)")
    keyed = []  # (frame number, file name)
    for name in images:
        try:
            keyed.append((numeric_key(name)[0], name))
        except ValueError:
            raise FrameError(
                f"frame file {folder.uri}/{name} has no frame number in its name"
            ) from None
    keyed.sort()
    for (n1, a), (n2, b) in pairwise(keyed):
        if n1 == n2:
            raise FrameError(f"frame number {n1} appears twice in {folder.uri}: {a}, {b}")
    return tuple(folder.join(name).uri for _, name in keyed), tuple(n for n, _ in keyed)


def with_frames(rec: ClipRecord, folder: Location) -> ClipRecord | Skipped:
    """`rec` with its frames listed from `folder`, or Skipped naming the folder problem."""
    try:
        uris, numbers = list_frames(folder)
    except FrameError as e:
        return Skipped(rec.dataset, rec.clip_id, str(e))
    return replace(rec, source_uri=folder.uri, frame_uris=uris, frame_numbers=numbers)


# ---------------------------------------------------------------- filters and collection


def prefixed(dataset: str, subject: str) -> str:
    """'sub01' -> 'casme2/sub01'; already prefixed ids (of any dataset) are kept."""
    s = str(subject).strip()
    return s if "/" in s else f"{dataset}/{s}"


def collect(
    dataset: str,
    candidates: Iterable[Candidate],
    row_skips: Iterable[Skipped] = (),
    *,
    limit: int | None = None,
    subjects: Iterable[str] | None = None,
    expression: str | None = None,
) -> ScanResult:
    """Filter, sort by clip id, de-duplicate and build the candidates.

    subjects: ids with or without the dataset prefix; ids of other datasets are ignored,
        and an id of this dataset that the release does not have is a ValueError.
    expression: 'micro' or 'macro'.
    limit: stop after this many usable clips in clip-id order (deterministic); the skips
        met on the way are reported.
    Duplicate clip ids: the first in annotation order is kept, later ones are skipped.
    Rows that could not name a clip (`row_skips`) are always reported.
    """
    if expression is not None and expression not in EXPRESSIONS:
        raise ValueError(f"expression filter must be one of {EXPRESSIONS}, got {expression!r}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of clips, got {limit}")
    candidates = list(candidates)
    if subjects is not None:
        wanted = {prefixed(dataset, s) for s in subjects}
        wanted = {s for s in wanted if s.startswith(dataset + "/")}
        present = {c.subject for c in candidates}
        unknown = sorted(wanted - present)
        if unknown:
            raise ValueError(
                f"{dataset}: unknown subjects {unknown}; this release has {sorted(present)}"
            )
        candidates = [c for c in candidates if c.subject in wanted]
    if expression is not None:
        candidates = [c for c in candidates if c.expression == expression]
    records: list[ClipRecord] = []
    skipped: list[Skipped] = list(row_skips)
    first_seen: dict[str, str] = {}
    for c in sorted(candidates, key=lambda c: c.clip_id):  # stable: annotation order kept
        if limit is not None and len(records) >= limit:
            break
        if c.clip_id in first_seen:
            why = f"duplicate clip id (first at {first_seen[c.clip_id]}, again at {c.where})"
            skipped.append(Skipped(dataset, c.clip_id, why))
            continue
        first_seen[c.clip_id] = c.where
        outcome = c.build()
        (records if isinstance(outcome, ClipRecord) else skipped).append(outcome)
    return ScanResult(tuple(records), tuple(skipped))


# ---------------------------------------------------------------- standard coding sheets


@dataclass(frozen=True)
class CodingSheet:
    """A coding sheet with one row per clip (CASME II, CASME, SAMM); columns located by name."""

    name: str  # file name, used in every message
    rows: list[tuple]
    header: int  # index of the header row in `rows`
    cols: dict[str, int]  # field -> column index

    def label(self, field: str) -> str:
        """The header text of a field's column, as the sheet spells it."""
        return text(self.rows[self.header][self.cols[field]])

    def where(self, index: int) -> str:
        """'<file> row N', N numbered as Excel shows it (1-based)."""
        return f"{self.name} row {index + 1}"


def open_coding_sheet(
    loc: Location,
    required: Spellings,
    optional: Spellings,
    title: str,
    layout: str,
    root: Location,
) -> CodingSheet:
    """Read `loc` and find its header row (first worksheet that has one), else LayoutError."""
    name = name_of(loc)
    for rows in read_workbook(loc).values():
        found = find_header(rows, required, optional)
        if found is not None:
            return CodingSheet(name, rows, found[0], found[1])
    wanted = ", ".join(spellings[0] for spellings in required.values())
    raise layout_error(title, layout, root, f"{name} has no header row with the columns {wanted}")


def coding_candidates(
    dataset: str,
    sheet: CodingSheet,
    *,
    subject_folder: Callable[[object, str], str],
    frames: Location,
    fps: float,
) -> tuple[list[Candidate], list[Skipped]]:
    """One micro-expression candidate per row, its frames in `frames/<subject folder>/<Filename>/`.

    `subject_folder(cell, where)` turns the Subject cell into the folder name (1 ->
    'sub01') or raises RowError. Rows that name no clip are returned as skips;
    rows with a clip id but unusable onset/offset/emotion become decided candidates.
    """
    candidates: list[Candidate] = []
    row_skips: list[Skipped] = []
    c = sheet.cols
    for i in range(sheet.header + 1, len(sheet.rows)):
        row = sheet.rows[i]
        if is_blank(row):
            continue
        where = sheet.where(i)
        try:
            folder = subject_folder(cell(row, c["subject"]), where)
            filename = text(cell(row, c["filename"]))
            if not filename or "/" in filename:
                raise RowError(
                    f"{where}: {sheet.label('filename')} {filename!r} does not name a clip folder"
                )
        except RowError as e:
            row_skips.append(Skipped(dataset, where, str(e)))
            continue
        subject = f"{dataset}/{folder}"
        clip_id = f"{dataset}/{folder}/{filename}"
        try:
            onset, offset = parse_onset_offset(
                cell(row, c["onset"]),
                cell(row, c["offset"]),
                where,
                (sheet.label("onset"), sheet.label("offset")),
            )
            emotion, emotion_notes = canonical_emotion(dataset, cell(row, c["emotion"]), where)
        except ValueError as e:  # RowError or UnknownEmotion
            candidates.append(unusable_row(dataset, clip_id, subject, "micro", where, e))
            continue
        apex, apex_notes = parse_apex(cell(row, c["apex"]), where, sheet.label("apex"))
        rec = annotated_record(
            (dataset, subject, filename, "micro"),
            emotion,
            (onset, apex, offset),
            fps,
            apex_notes + emotion_notes,
            text(cell(row, c.get("action_units"))),
        )
        folder_loc = frames.join(folder, filename)
        candidates.append(
            Candidate(clip_id, subject, "micro", where, partial(with_frames, rec, folder_loc))
        )
    return candidates, row_skips


def numbered_folder(prefix: str, width: int) -> Callable[[object, str], str]:
    """A Subject-cell parser: 1, 1.0, '01' or '<prefix>01' -> '<prefix>01' (`width` digits)."""

    def parse(value: object, where: str) -> str:
        s = text(value)
        digits = s[len(prefix) :] if prefix and s.lower().startswith(prefix.lower()) else s
        if not re.fullmatch(r"\d+", digits):
            raise RowError(f"{where}: Subject {value!r} is not a subject number")
        return f"{prefix}{int(digits):0{width}d}"

    return parse


# The columns named alike in every coding sheet; the other spellings differ per release.
SUBJECT_AND_FILENAME: Spellings = {"subject": ("Subject",), "filename": ("Filename",)}
ACTION_UNITS: Spellings = {"action_units": ("Action Units", "AUs")}


@dataclass(frozen=True)
class CodingRelease:
    """What tells one coding-sheet release (CASME II, CASME, SAMM) from another: the scan
    is the same (find the sheet, find the frame root, read the sheet, one clip per row)."""

    dataset: str
    title: str  # as messages name it
    layout: str  # the expected layout, shown in every LayoutError
    fps: float
    sheets: tuple[str, ...]  # sheet file patterns, first match wins
    sheet_hint: str  # what "no sheet" says is missing
    frame_dirs: tuple[str, ...]  # frame-root folder patterns, first match wins
    subject_dir: str  # pattern of a subject folder, were the frames directly under root
    subject_folder: Callable[[object, str], str]  # Subject cell -> folder name
    # field -> accepted header spellings for onset, apex, offset and emotion (the first
    # spelling is the one "no header row" messages name)
    spellings: Spellings

    @property
    def required(self) -> Spellings:
        return {**SUBJECT_AND_FILENAME, **self.spellings}


def scan_coding_release(
    release: CodingRelease,
    root: Location,
    *,
    limit: int | None = None,
    subjects=None,
    expression: str | None = None,
) -> ScanResult:
    """All clips of a coding-sheet release under `root`, in the layout `release.layout` shows."""
    r = release
    infos = storage.list_dir(root)
    sheet_info = pick(infos, r.sheets, pafs.FileType.File)
    if sheet_info is None:
        raise layout_error(r.title, r.layout, root, f"no {r.sheet_hint} sheet")
    frames = frames_root(root, infos, r.frame_dirs, r.subject_dir, r.title, r.layout)
    sheet = open_coding_sheet(
        child(root, sheet_info), r.required, ACTION_UNITS, r.title, r.layout, root
    )
    candidates, row_skips = coding_candidates(
        r.dataset, sheet, subject_folder=r.subject_folder, frames=frames, fps=r.fps
    )
    return collect(
        r.dataset, candidates, row_skips, limit=limit, subjects=subjects, expression=expression
    )

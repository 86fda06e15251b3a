"""The Parquet clip index and its manifest (docs/architecture.md, "Index").

Layout of an index root (a local folder or an s3:// prefix):

    manifest.json                                   the only entry point for readers
    _v/<version>/dataset=casme2/expression=micro/part-00000.parquet
    _v/<version>/dataset=ckplus/expression=macro/part-00000.parquet

Every file holds whole rows of `INDEX_SCHEMA` (the hive folders only group them), with
the sampled frames materialised as uint8 bytes plus their shape, so training never
decodes a JPEG again. Files are cut into row groups of `row_group_size` rows, so Ray
Data and the subject filter can work on parts of a file.

Commit protocol (atomic locally and on S3; one writer at a time):
1. the rows of one dataset go to a fresh version folder `_v/<uuid>/`;
2. `manifest.json` is replaced in one atomic write (local: temp file + rename; S3: one
   PUT) and lists exactly the files of the current index: the new dataset's plus the
   other datasets' files from the previous manifest;
3. version folders that the new manifest does not list are deleted.
Readers read the manifest first and then only the files it lists, so a failed or
interrupted write leaves the previous index as it was (its manifest never saw the new
folder, and the next commit collects it).

Content hash: each row is hashed over all its columns as stored (after Arrow's type
conversion, so the hash can be recomputed from the files); a dataset's hash is over its
sorted row hashes, and the index's over the sorted (dataset, hash) pairs. The same rows
give the same hash whatever their order and whenever they were written. Re-writing a
dataset whose content hash is unchanged keeps its existing files, so re-running an
ingest leaves the manifest unchanged apart from timestamps.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import tempfile
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from lightman.models.provenance import versions
from lightman.tasks import storage
from lightman.tasks.schema import EXPRESSIONS, INDEX_COLUMNS, INDEX_SCHEMA, SCHEMA_VERSION, Skipped

MANIFEST = "manifest.json"
VERSIONS_DIR = "_v"
FORMAT = "lightman-index"
ROW_GROUP_SIZE = 128  # rows per Parquet row group (8×64×64×3 frames: ~12 MiB a group)
ROWS_PER_FILE = 1024  # rows per file: Ray Data reads files in parallel
_REQUIRED_ENTRY_KEYS = ("dataset", "label_scheme")
_WRITER_KEYS = ("counts", "repairs", "files", "content_hash", "version", "versions", "written_at")


class BadIndexError(ValueError):
    """The index is missing, corrupt, or the request does not fit it (message names the URI)."""


@dataclass(frozen=True)
class Manifest:
    """A committed index: its root URI and the parsed manifest.json."""

    uri: str
    data: dict

    @property
    def content_hash(self) -> str:
        return self.data["content_hash"]

    @property
    def datasets(self) -> tuple[str, ...]:
        return tuple(sorted(self.data["datasets"]))

    @property
    def files(self) -> tuple[str, ...]:
        """Data files relative to the index root."""
        return tuple(self.data["files"])

    @property
    def num_rows(self) -> int:
        return int(self.data["num_rows"])

    def entry(self, dataset: str) -> dict:
        if dataset not in self.data["datasets"]:
            raise BadIndexError(
                f"dataset {dataset!r} not in index at {self.uri}; it has {list(self.datasets)}"
            )
        return self.data["datasets"][dataset]


# ---------------------------------------------------------------- content hash


def _value_bytes(value) -> bytes:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


# Where a clip's source lay is provenance, not content: the same release ingested from a
# copy in another folder, or from S3, gives the same rows and the same hash.
CONTENT_COLUMNS = tuple(c for c in INDEX_COLUMNS if c != "source_uri")


def row_digest(row: dict) -> bytes:
    """sha256 of one row over CONTENT_COLUMNS (name, length and value)."""
    h = hashlib.sha256()
    for name in CONTENT_COLUMNS:
        b = _value_bytes(row[name])
        h.update(name.encode() + b"\0" + len(b).to_bytes(8, "little") + b)
    return h.digest()


def table_digests(table: pa.Table) -> list[bytes]:
    """Row digests of a table holding all CONTENT_COLUMNS (values as stored)."""
    return [row_digest(r) for r in table.select(list(CONTENT_COLUMNS)).to_pylist()]


def combine_digests(digests: Iterable[bytes]) -> str:
    """Order-independent hash of a multiset of row digests: sha256 over the sorted digests."""
    h = hashlib.sha256()
    for d in sorted(digests):
        h.update(d)
    return "sha256:" + h.hexdigest()


def index_hash(dataset_hashes: dict[str, str]) -> str:
    """The index's hash from its datasets' hashes (sorted by dataset name)."""
    text = "\n".join(f"{name}:{dataset_hashes[name]}" for name in sorted(dataset_hashes))
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


# ---------------------------------------------------------------- repairs

REPAIR_KINDS = ("apex", "onset/offset", "onset", "offset", "emotion", "face", "eyes", "frames")


def repair_kind(note: str) -> str:
    """What a repair note is about: the first annotation field it names, else "other".

    Notes are free text written by adapters and preprocessing ("apex missing in row 7;
    estimated later", "offset 250 past last frame 240; clamped", "face not found on
    onset frame; used centre crop"), so the earliest field word decides.
    """
    low = note.lower()
    found = [(low.find(k), -len(k), k) for k in REPAIR_KINDS if k in low]
    return min(found)[2] if found else "other"


# ---------------------------------------------------------------- row checks


def _check_row(row: dict, dataset: str, class_names: tuple[str, ...], n: int) -> None:
    """Raise a ValueError naming the clip (or row number) and field for a malformed row."""
    if not isinstance(row, dict):
        raise ValueError(f"row {n}: expected a dict of index columns, got {type(row).__name__}")
    who = f"row {n} ({row.get('clip_id', '<no clip_id>')})"
    missing = [c for c in INDEX_COLUMNS if c not in row]
    extra = sorted(set(row) - set(INDEX_COLUMNS))
    if missing or extra:
        raise ValueError(f"{who}: missing columns {missing}, unknown columns {extra}")
    if row["dataset"] != dataset:
        raise ValueError(
            f"{who}: dataset {row['dataset']!r} differs from the entry's dataset {dataset!r}"
        )
    if row["expression"] not in EXPRESSIONS:
        raise ValueError(
            f"{who}: expression must be one of {EXPRESSIONS}, got {row['expression']!r}"
        )
    if not isinstance(row["label"], (int, np.integer)) or not 0 <= row["label"] < len(class_names):
        raise ValueError(
            f"{who}: label {row['label']!r} is outside the scheme's {len(class_names)} classes "
            f"{list(class_names)}"
        )
    shape = list(row["frames_shape"])
    size = 1
    for s in shape:
        size *= int(s)
    if len(shape) != 4 or size != len(row["frames"]):
        raise ValueError(
            f"{who}: frames hold {len(row['frames'])} bytes but frames_shape is {shape} "
            "(M, H, W, C)"
        )


def _to_table(rows: list[dict]) -> pa.Table:
    """Rows → Arrow table of INDEX_SCHEMA; a conversion error names the clip and column."""
    try:
        return pa.Table.from_pylist(rows, schema=INDEX_SCHEMA)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError) as err:
        for row in rows:
            for col in INDEX_SCHEMA:
                try:
                    pa.array([row[col.name]], type=col.type)
                except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError) as e:
                    raise ValueError(
                        f"{row['clip_id']}: column {col.name!r} = {row[col.name]!r:.80}: {e}"
                    ) from e
        raise ValueError(f"cannot convert rows to the index schema: {err}") from err


# ---------------------------------------------------------------- writing


@dataclass
class _Partition:
    """Buffered rows and the open file of one (dataset, expression) partition."""

    folder: storage.Location
    expression: str
    rows: list = field(default_factory=list)
    files: list = field(
        default_factory=list
    )  # [{"path", "expression", "rows"}], relative to the root
    writer: pq.ParquetWriter | None = None


@dataclass
class _Written:
    """What streaming the rows produced: files, row digests and the tallies of the manifest."""

    files: list = field(default_factory=list)
    digests: list = field(default_factory=list)
    labels: Counter = field(default_factory=Counter)
    subjects: Counter = field(default_factory=Counter)
    expressions: Counter = field(default_factory=Counter)
    repairs: dict = field(default_factory=dict)
    skipped: list = field(default_factory=list)  # Skipped items met in the stream


def _flush(p: _Partition, root: storage.Location, rows_per_file: int) -> list[bytes]:
    """Write the buffered rows as one row group (a new file when the last is full); digests."""
    if not p.rows:
        return []
    table = _to_table(p.rows)
    p.rows = []
    if p.writer is None:
        loc = p.folder.join(f"part-{len(p.files):05d}.parquet")
        p.writer = pq.ParquetWriter(loc.path, INDEX_SCHEMA, filesystem=loc.fs)
        p.files.append(
            {"path": posixpath.relpath(loc.path, root.path), "expression": p.expression, "rows": 0}
        )
    p.writer.write_table(table, row_group_size=table.num_rows)
    p.files[-1]["rows"] += table.num_rows
    if p.files[-1]["rows"] >= rows_per_file:
        _close(p)
    return table_digests(table)


def _close(p: _Partition) -> None:
    if p.writer is not None:
        p.writer.close()
        p.writer = None


def _write_rows(
    rows: Iterable[dict | Skipped],
    root: storage.Location,
    vdir: storage.Location,
    dataset: str,
    class_names: tuple[str, ...],
    row_group_size: int,
    rows_per_file: int,
) -> _Written:
    """Stream rows into partition files under `vdir`; memory holds one row group a partition."""
    out = _Written()
    parts: dict[str, _Partition] = {}
    seen: set[str] = set()
    try:
        for n, row in enumerate(rows):
            if isinstance(row, Skipped):
                out.skipped.append(row.to_dict())
                continue
            _check_row(row, dataset, class_names, n)
            if row["clip_id"] in seen:
                raise ValueError(
                    f"duplicate clip_id {row['clip_id']!r} (row {n}): clip ids must be unique"
                )
            seen.add(row["clip_id"])
            expr = row["expression"]
            if expr not in parts:
                folder = vdir.join(f"dataset={dataset}", f"expression={expr}")
                if not folder.is_s3:  # S3 has no folders; creating one leaves a marker object
                    folder.fs.create_dir(folder.path, recursive=True)
                parts[expr] = _Partition(folder, expr)
            parts[expr].rows.append(row)
            if len(parts[expr].rows) >= row_group_size:
                out.digests += _flush(parts[expr], root, rows_per_file)
            out.labels[int(row["label"])] += 1
            out.subjects[row["subject"]] += 1
            out.expressions[expr] += 1
            if row["repairs"]:
                out.repairs[row["clip_id"]] = list(row["repairs"])
        for p in parts.values():
            out.digests += _flush(p, root, rows_per_file)
    finally:
        for p in parts.values():
            _close(p)
    out.files = sorted((f for p in parts.values() for f in p.files), key=lambda f: f["path"])
    return out


def _check_entry(entry: dict) -> tuple[str, tuple[str, ...]]:
    """The dataset name and class names of a caller's dataset entry, or a clear error."""
    missing = [k for k in _REQUIRED_ENTRY_KEYS if k not in entry]
    if missing:
        raise ValueError(f"dataset entry lacks {missing}; it needs {list(_REQUIRED_ENTRY_KEYS)}")
    scheme = entry["label_scheme"]
    if not isinstance(scheme, dict) or "name" not in scheme or "class_names" not in scheme:
        raise ValueError(
            f"dataset entry's label_scheme must be {{'name', 'class_names'}}, got {scheme!r}"
        )
    name = entry["dataset"]
    if not name or "/" in name or "=" in name:
        raise ValueError(f"dataset name {name!r} must be non-empty without '/' or '='")
    return name, tuple(scheme["class_names"])


def _counts(w: _Written, class_names: tuple[str, ...]) -> dict:
    return {
        "clips": sum(w.labels.values()),
        "per_class": {class_names[i]: w.labels.get(i, 0) for i in range(len(class_names))},
        "per_subject": dict(sorted(w.subjects.items())),
        "per_expression": dict(sorted(w.expressions.items())),
        "repairs_by_kind": dict(
            sorted(Counter(repair_kind(n) for ns in w.repairs.values() for n in ns).items())
        ),
    }


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _assemble(previous: dict | None, dataset: str, entry: dict) -> dict:
    """The new manifest: the previous one with `dataset`'s entry replaced, totals recomputed."""
    datasets = dict(previous["datasets"]) if previous else {}
    datasets[dataset] = entry
    files = sorted(f["path"] for e in datasets.values() for f in e["files"])
    return {
        "format": FORMAT,
        "schema_version": SCHEMA_VERSION,
        "content_hash": index_hash({n: e["content_hash"] for n, e in datasets.items()}),
        "num_rows": sum(e["counts"]["clips"] for e in datasets.values()),
        "files": files,
        "datasets": dict(sorted(datasets.items())),
        "written_at": _now(),
    }


def _referenced_versions(manifest: dict) -> set[str]:
    return {e["version"] for e in manifest["datasets"].values()}


def _collect_garbage(root: storage.Location, manifest: dict) -> None:
    """Delete version folders and stale manifest temp files the manifest does not reference."""
    keep = _referenced_versions(manifest)
    vroot = root.join(VERSIONS_DIR)
    if storage.exists(vroot):
        for info in storage.list_dir(vroot):
            if info.base_name not in keep:
                if info.type == pafs.FileType.Directory:
                    root.fs.delete_dir(info.path)
                else:
                    root.fs.delete_file(info.path)
    if not root.is_s3:
        for info in storage.list_dir(root):
            if info.base_name.startswith(MANIFEST + ".tmp-"):
                root.fs.delete_file(info.path)


def _discard(loc: storage.Location) -> None:
    """Best-effort removal of an uncommitted version folder (the next commit collects leftovers)."""
    try:
        storage.delete_dir(loc)
    except OSError:
        pass


def write_index(
    rows: Iterable[dict | Skipped],
    out_uri: str,
    dataset_entry: dict,
    *,
    row_group_size: int = ROW_GROUP_SIZE,
    rows_per_file: int = ROWS_PER_FILE,
) -> Manifest:
    """Write one dataset's rows into the index at `out_uri`, replacing that dataset only.

    `dataset_entry` describes the dataset: `dataset`, `label_scheme` {name, class_names}
    (required) and whatever else the caller records (adapter, source_uri, preprocess,
    ingest, skipped, ...). `rows` may also yield `Skipped` items (clips that failed while
    the rows were being made): they are appended to the entry's `skipped` list. The
    writer adds counts, repairs, files, content_hash, version, versions and written_at.
    Atomic: on any error (including one raised by `rows`) the previous index is left
    untouched and the error propagates.
    """
    if row_group_size < 1 or rows_per_file < 1:
        raise ValueError(
            f"row_group_size and rows_per_file must be >= 1, got {row_group_size}, {rows_per_file}"
        )
    dataset, class_names = _check_entry(dataset_entry)
    root = storage.resolve(out_uri)
    previous = _read_manifest_or_none(root)
    fresh = not storage.exists(root)
    version = uuid.uuid4().hex
    vdir = root.join(VERSIONS_DIR, version)
    try:
        written = _write_rows(rows, root, vdir, dataset, class_names, row_group_size, rows_per_file)
        counts = _counts(written, class_names)
        _check_files_exist(root, [f["path"] for f in written.files])
    except BaseException:
        _discard(root if fresh else vdir)  # a failed first write leaves no folder at all
        raise
    entry = {k: v for k, v in dataset_entry.items() if k not in _WRITER_KEYS}
    entry.update(
        skipped=list(entry.get("skipped", [])) + written.skipped,
        counts=counts,
        repairs=dict(sorted(written.repairs.items())),
        files=written.files,
        content_hash=combine_digests(written.digests),
        version=version,
        versions=versions(),
        written_at=_now(),
    )
    old = (previous or {}).get("datasets", {}).get(dataset)
    same = old is not None and old["content_hash"] == entry["content_hash"]
    if same and not file_problems(root, old["files"]):
        # same rows as the committed files, and those are intact: keep them (idempotent
        # re-runs); a re-run is also how a damaged dataset is repaired
        _discard(vdir)
        entry.update(files=old["files"], version=old["version"])
    manifest = _assemble(previous, dataset, entry)
    # the commit point; if this write fails the new folder stays (an S3 PUT may have
    # landed even though it reported an error) and the next commit collects it
    storage.write_bytes(
        root.join(MANIFEST), json.dumps(manifest, indent=1, sort_keys=True).encode()
    )
    _collect_garbage(root, manifest)
    return Manifest(root.uri, manifest)


# ---------------------------------------------------------------- reading


def file_problems(root: storage.Location, files: list[dict]) -> list[str]:
    """One line for every listed file ({"path", "rows", ...}) that is missing, does not open as
    Parquet (truncated, overwritten), or holds another number of rows than recorded."""
    problems = []
    for f in files:
        loc = root.join(f["path"])
        try:
            with loc.fs.open_input_file(loc.path) as fh:
                rows = pq.ParquetFile(fh).metadata.num_rows
        except FileNotFoundError:
            problems.append(f"{loc.uri}: missing")
        except (OSError, pa.ArrowException) as e:
            problems.append(f"{loc.uri}: unreadable ({e})")
        else:
            if rows != f["rows"]:
                problems.append(f"{loc.uri}: holds {rows} rows, the manifest lists {f['rows']}")
    return problems


def _check_files_exist(root: storage.Location, rel_paths: list[str]) -> None:
    if not rel_paths:
        return
    infos = root.fs.get_file_info([root.join(p).path for p in rel_paths])
    missing = [p for p, i in zip(rel_paths, infos) if i.type != pafs.FileType.File]
    if missing:
        raise BadIndexError(
            f"index at {root.uri} is corrupt: manifest lists missing files {missing[:5]}"
        )


def _parse_manifest(root: storage.Location, raw: bytes) -> dict:
    try:
        data = json.loads(raw)
    except ValueError as e:
        raise BadIndexError(f"index at {root.uri}: {MANIFEST} is not valid JSON ({e})") from e
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise BadIndexError(f"index at {root.uri}: {MANIFEST} is not a Lightman index manifest")
    if data.get("schema_version") != SCHEMA_VERSION:
        raise BadIndexError(
            f"index at {root.uri} has schema version {data.get('schema_version')}; this "
            f"Lightman reads version {SCHEMA_VERSION}: re-run `lightman ingest` into a new location"
        )
    problem = _manifest_problem(data)
    if problem:
        raise BadIndexError(
            f"index at {root.uri}: {MANIFEST} is damaged: {problem}; restore it from a copy, or "
            f"re-run `lightman ingest` into a new location"
        )
    return data


# Fields (and their JSON types) that readers and the writer of an index rely on; a manifest
# edited by hand or cut short must fail here, naming the field, not as a KeyError later.
_MANIFEST_FIELDS = {"content_hash": str, "num_rows": int, "files": list, "datasets": dict}
_ENTRY_FIELDS = {
    "label_scheme": dict,
    "counts": dict,
    "repairs": dict,
    "files": list,
    "skipped": list,
    "content_hash": str,
    "version": str,
    "written_at": str,
}
_SCHEME_FIELDS = {"name": str, "class_names": list}
_COUNT_FIELDS = {
    "clips": int,
    "per_class": dict,
    "per_subject": dict,
    "per_expression": dict,
    "repairs_by_kind": dict,
}
_FILE_FIELDS = {"path": str, "expression": str, "rows": int}
_SKIP_FIELDS = {"clip": str, "reason": str}
_JSON_TYPE = {str: "a string", int: "an integer", list: "a list", dict: "an object"}


def _field_problem(obj: object, fields: dict[str, type], where: str) -> str | None:
    """What is wrong with `obj` (missing field, wrong type), named by its path, or None."""
    if not isinstance(obj, dict):
        return f"{where} must be an object, got {json.dumps(obj)[:60]}"
    for name, tp in fields.items():
        path = f"{where}.{name}" if where else name
        if name not in obj:
            return f"{path} is missing"
        value = obj[name]
        if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
            return f"{path} must be {_JSON_TYPE[tp]}, got {json.dumps(value)[:60]}"
    return None


def _problems(data: dict) -> Iterator[str | None]:
    """Structural checks of a parsed manifest, each run only if the ones before it passed."""
    yield _field_problem(data, _MANIFEST_FIELDS, "")
    for name, e in data["datasets"].items():
        where = f"datasets.{name}"
        yield _field_problem(e, _ENTRY_FIELDS, where)
        yield _field_problem(e["label_scheme"], _SCHEME_FIELDS, f"{where}.label_scheme")
        yield _field_problem(e["counts"], _COUNT_FIELDS, f"{where}.counts")
        absent = [c for c in e["label_scheme"]["class_names"] if c not in e["counts"]["per_class"]]
        yield f"{where}.counts.per_class lacks the classes {absent}" if absent else None
        for i, f in enumerate(e["files"]):
            yield _field_problem(f, _FILE_FIELDS, f"{where}.files[{i}]")
        for i, sk in enumerate(e["skipped"]):
            yield _field_problem(sk, _SKIP_FIELDS, f"{where}.skipped[{i}]")
        bad = [c for c, notes in e["repairs"].items() if not isinstance(notes, list)]
        yield f"{where}.repairs[{bad[0]!r}] must be a list of notes" if bad else None


def _manifest_problem(data: dict) -> str | None:
    """The first structural problem of a parsed manifest, or None."""
    return next((p for p in _problems(data) if p), None)


def _read_manifest_or_none(root: storage.Location) -> dict | None:
    loc = root.join(MANIFEST)
    if not storage.exists(loc):
        return None
    return _parse_manifest(root, storage.read_bytes(loc))


def read_manifest(uri: str) -> dict:
    """The parsed manifest.json of the index at `uri` (local path or s3://)."""
    root = storage.resolve(uri)
    data = _read_manifest_or_none(root)
    if data is None:
        raise BadIndexError(f"no index at {root.uri}: {MANIFEST} not found")
    return data


def prepare_write(uri: str) -> dict | None:
    """Check, before any work, that the index at `uri` can be committed; its current manifest.

    Fails (BadIndexError) when `uri` is a file, when its manifest is unreadable or
    damaged, or when the root or its version folder cannot be written (tried with a
    probe file, which is the only sure test: permissions, read-only mounts, S3 policies).
    Returns None for a new index, and leaves nothing behind: folders it had to create
    for the probe are removed again.
    """
    root = storage.resolve(uri)
    if storage.exists(root) and not storage.is_dir(root):
        raise BadIndexError(
            f"index location {root.uri} is a file, not a folder; give a new folder "
            f"or an existing index"
        )
    previous = _read_manifest_or_none(root)
    vroot = root.join(VERSIONS_DIR)
    try:
        if root.is_s3:
            probe = vroot.join(f".write-test-{uuid.uuid4().hex}")
            storage.write_bytes(probe, b"")
            root.fs.delete_file(probe.path)
        else:
            _probe_local(root.path, vroot.path)
    except OSError as e:
        why = f"{e.strerror}: {e.filename}" if e.strerror and e.filename else str(e)
        raise BadIndexError(
            f"cannot write the index at {root.uri} ({why}); choose a location "
            f"you can write, or fix its permissions"
        ) from e
    return previous


def _probe_local(root: str, vroot: str) -> None:
    """Create a file in `root` and in `vroot` (the manifest's and the data's folders), then undo."""
    created = []
    folder = vroot
    while not os.path.exists(folder):
        created.append(folder)
        folder = os.path.dirname(folder)
    try:
        for d in (root, vroot):
            os.makedirs(d, exist_ok=True)
            tempfile.TemporaryFile(dir=d).close()
    finally:
        for d in created:  # deepest first
            if os.path.isdir(d):
                os.rmdir(d)


def select_files(
    manifest: dict,
    uri: str,
    datasets: Iterable[str] | None,
    expression: str | None,
) -> list[str]:
    """Relative paths of the files holding `datasets` (all when None) and `expression`."""
    have = sorted(manifest["datasets"])
    wanted = (
        have if datasets is None else [datasets] if isinstance(datasets, str) else list(datasets)
    )
    unknown = [d for d in wanted if d not in manifest["datasets"]]
    if unknown:
        raise BadIndexError(f"datasets {unknown} not in index at {uri}; it has {have}")
    if expression is not None and expression not in EXPRESSIONS:
        raise ValueError(f"expression must be one of {EXPRESSIONS} or None, got {expression!r}")
    return sorted(
        f["path"]
        for d in wanted
        for f in manifest["datasets"][d]["files"]
        if expression is None or f["expression"] == expression
    )


def check_subjects(subjects: Iterable[str] | None) -> list[str] | None:
    """Subject filters are dataset-prefixed ids ("casme2/sub01"): ids collide across datasets."""
    if subjects is None:
        return None
    subjects = [subjects] if isinstance(subjects, str) else list(subjects)
    bare = [s for s in subjects if "/" not in s]
    if bare:
        raise ValueError(
            f"subjects {bare} must be prefixed by their dataset, e.g. 'casme2/{bare[0]}'"
        )
    return subjects


def check_columns(columns: Iterable[str] | None) -> list[str]:
    cols = list(INDEX_COLUMNS) if columns is None else list(columns)
    unknown = [c for c in cols if c not in INDEX_COLUMNS]
    if unknown:
        raise ValueError(f"unknown index columns {unknown}; valid columns: {list(INDEX_COLUMNS)}")
    return cols


def select_read(
    uri: str,
    datasets: Iterable[str] | None,
    expression: str | None,
    subjects: Iterable[str] | None,
    columns: Iterable[str] | None,
) -> tuple[storage.Location, list[str], list[str], list[str] | None]:
    """A filtered read of the committed index at `uri`, checked: (its root, the relative
    paths of the files to read, the columns, the subjects or None). What `read_table` and
    platform/data.py's `read_dataset` read."""
    root = storage.resolve(uri)
    manifest = read_manifest(root.uri)
    rel = select_files(manifest, root.uri, datasets, expression)
    return root, rel, check_columns(columns), check_subjects(subjects)


def index_files(
    uri: str, *, datasets: Iterable[str] | None = None, expression: str | None = None
) -> list[str]:
    """URIs of the data files of the committed index (what Ray Data reads), filtered."""
    root = storage.resolve(uri)
    manifest = read_manifest(root.uri)
    return [root.join(p).uri for p in select_files(manifest, root.uri, datasets, expression)]


def read_table(
    uri: str,
    *,
    datasets: Iterable[str] | None = None,
    expression: str | None = None,
    subjects: Iterable[str] | None = None,
    columns: Iterable[str] | None = None,
) -> pa.Table:
    """Rows of the committed index as one Arrow table, filtered.

    Dataset and expression select files (from the manifest); subjects are pushed down
    to the Parquet reader (row-group statistics). Rows come in file order.
    """
    root, rel, cols, subjects = select_read(uri, datasets, expression, subjects, columns)
    if not rel:
        return INDEX_SCHEMA.empty_table().select(cols)
    _check_files_exist(root, rel)
    data = pads.dataset(
        [root.join(p).path for p in rel], schema=INDEX_SCHEMA, format="parquet", filesystem=root.fs
    )
    filt = pc.field("subject").isin(subjects) if subjects is not None else None
    return data.to_table(columns=cols, filter=filt)


def iter_rows(table: pa.Table, batch_size: int = 64) -> Iterator[dict]:
    """Rows of a table as dicts, a batch at a time (frames stay bytes)."""
    for batch in table.to_batches(max_chunksize=batch_size):
        yield from batch.to_pylist()

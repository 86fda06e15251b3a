"""Kept result rows: one JSON file per finished benchmark run, so a table of many seeds
prints without training, resumes where it stopped on any machine, and refuses a row that
was measured on other data.

A row holds the run's figures plus `index` (the content hash of the index it ran on,
never a path of one machine: see platform/index.py), `config` (what the caller says made
it, with paths replaced by that hash), `versions` and `cpus`. Files are written
atomically (temporary file and rename), so an interrupted run leaves no half row.

`measure_once` is how a benchmark gets one run's figures: the kept row, else the row.json a
finished run left in its run folder, else the run itself, and in every case the row is
kept if it was not yet. `read_rows` reads a whole table's rows without the index (to
print it on a machine that does not have, or cannot rebuild, that exact index): every row
must be kept, and all of them measured on one index; `read_grid` reads them from a folder
of <name>/seed<k>.json, the layout every benchmark keeps.

A study's cells (platform/reproduce.py) are kept rows too, in the output storage (a local
folder or s3://, through lightman.tasks.storage): `cell_location` puts a cell at
<folder>/<config hash>.json, the hash (`config_hash`) of its path-free config, so that a
finished cell is found again on any machine; `read_cell` refuses, naming the cell and
both indexes, a cell kept there that was measured on another index; `kept_cells` reads
every cell of a folder (to refuse a study's output folder that holds another index's).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

from lightman.models.provenance import versions
from lightman.tasks import storage

PROVENANCE = ("index", "config", "versions", "cpus")


class KeptRowError(ValueError):
    """A kept row that cannot be used: unreadable, or measured on another index."""


def _parse(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise KeptRowError(f"{path}: not a kept row ({e})") from e


def _same_index(path: Path, row: dict, index_hash: str) -> dict:
    made_on = row.get("index")
    if made_on != index_hash:
        raise KeptRowError(f"{path} was measured on index {made_on}, not {index_hash}")
    return row


def read_row(path: str | Path, index_hash: str) -> dict | None:
    """The kept row at `path`, None if there is none; an error naming the file if it does not
    parse or was measured on an index other than `index_hash`."""
    path = Path(path)
    return _same_index(path, _parse(path), index_hash) if path.is_file() else None


def _write_atomically(path: Path, body: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(body))
    tmp.replace(path)


def _with_provenance(figures: dict, config: dict, index_hash: str) -> dict:
    """`figures` plus their provenance (module docstring), refusing figures that use its keys."""
    clash = sorted(set(figures) & set(PROVENANCE))
    if clash:
        raise KeptRowError(f"figures may not use the provenance keys {clash}")
    return {
        **figures,
        "index": index_hash,
        "config": config,
        "versions": versions(),
        "cpus": os.cpu_count(),
    }


def write_row(path: str | Path, figures: dict, config: dict, index_hash: str) -> dict:
    """Keep `figures` at `path` with their provenance (module docstring); the row written."""
    row = _with_provenance(figures, config, index_hash)
    _write_atomically(Path(path), row)
    return row


def measure_once(
    kept: str | Path | None,
    done: str | Path,
    index_hash: str,
    config: dict,
    run: Callable[[], dict],
) -> dict:
    """One benchmark run's figures, measured at most once: the row kept at `kept` (None: no
    results folder), else the row at `done` that a finished run left, else `run()`'s
    figures, written to `done`. A row not yet at `kept` is kept there with `config`."""
    row = read_row(kept, index_hash) if kept else None
    done = Path(done)
    if row is None and done.is_file():
        row = json.loads(done.read_text())
    elif row is None:
        row = run()
        _write_atomically(done, row)
    if kept and not Path(kept).is_file():
        row = write_row(kept, row, config, index_hash)
    return row


def read_rows(paths: list[str | Path]) -> list[dict]:
    """The kept rows at `paths`, in order: an error naming the first that is not kept, or
    the first measured on another index than the first row's."""
    paths = [Path(p) for p in paths]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise KeptRowError(
            f"{missing[0]} is not kept ({len(missing)} of {len(paths)} rows missing): "
            "measuring them needs the index"
        )
    rows = [_parse(p) for p in paths]
    return [_same_index(p, r, rows[0].get("index")) for p, r in zip(paths, rows, strict=True)]


def read_grid(folder: str | Path, names: list[str], seeds: list[int]) -> dict[str, dict[int, dict]]:
    """A table's kept rows `folder`/<name>/seed<k>.json as {name: {seed: row}}, read as
    `read_rows` reads them (all kept, one index)."""
    rows = iter(read_rows([Path(folder, n, f"seed{s}.json") for n in names for s in seeds]))
    return {n: {s: next(rows) for s in seeds} for n in names}


def config_hash(config: dict) -> str:
    """A config's content hash: SHA-256 of its canonical JSON (sorted keys), 16 hex digits."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cell_location(folder: str, chash: str) -> storage.Location:
    """Where the cell of config hash `chash` is kept under `folder` (local or s3://)."""
    return storage.resolve(folder).join(f"{chash}.json")


def _parse_cell(loc: storage.Location) -> dict:
    try:
        return json.loads(storage.read_bytes(loc))
    except json.JSONDecodeError as e:
        raise KeptRowError(f"{loc.uri}: not a kept cell ({e})") from e


def read_cell(loc: storage.Location, index_hash: str) -> dict | None:
    """The cell kept at `loc`, None if there is none; an error naming the cell and both
    indexes if it was measured on an index other than `index_hash`."""
    if not storage.exists(loc):
        return None
    row = _parse_cell(loc)
    if row.get("index") != index_hash:
        raise KeptRowError(
            f"cell {row.get('cell', '?')} kept at {loc.uri} was measured on index "
            f"{row.get('index')}, not on this index {index_hash}: use another --out"
        )
    return row


def write_cell(loc: storage.Location, figures: dict, config: dict, index_hash: str) -> dict:
    """Keep a cell's `figures` at `loc` with their provenance, as `write_row` keeps a row
    (written atomically through the storage layer); the row written."""
    row = _with_provenance(figures, config, index_hash)
    storage.write_text(loc, json.dumps(row, indent=1))
    return row


def kept_cells(folder: str) -> list[dict]:
    """Every cell kept under `folder` (none when it does not exist), each with `_uri`."""
    root = storage.resolve(folder)
    if not storage.exists(root):
        return []
    rows = []
    for info in storage.list_files(root, recursive=False):
        if info.path.endswith(".json"):
            loc = storage.resolve(storage.uri_of(root, info.path))
            rows.append({**_parse_cell(loc), "_uri": loc.uri})
    return rows

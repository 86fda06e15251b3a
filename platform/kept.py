"""Kept results: one JSON file per finished unit of a study (platform/reproduce.py: a
cell, a pre-training or a search), so that a study resumes where it stopped on any machine
and refuses a result that was measured on other data.

A kept row holds the figures plus `index` (the content hash of the index it ran on, never a
path of one machine: see platform/index.py), `config` (what made it, path-free), `versions`
and `cpus`. They live in the output storage (a local folder or s3://, through
lightman.tasks.storage): `cell_location` puts one at <folder>/<config hash>.json, the hash
(`config_hash`) of its path-free config, so that a finished one is found again on any
machine; `read_cell` refuses, naming it and both indexes, one kept there that was measured
on another index; `kept_cells` reads every one of a folder (to refuse a study's output
folder that holds another index's).
"""

from __future__ import annotations

import hashlib
import json
import os

from lightman.models.provenance import versions
from lightman.tasks import storage

PROVENANCE = ("index", "config", "versions", "cpus")


class KeptRowError(ValueError):
    """A kept row that cannot be used: unreadable, or measured on another index."""


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

"""Kept result rows: one JSON file per finished benchmark run, so a table of many seeds
prints without training, resumes where it stopped on any machine, and refuses a row that
was measured on other data.

A row holds the run's figures plus `index` (the content hash of the index it ran on,
never a path of one machine: see platform/index.py), `config` (what the caller says made
it, with paths replaced by that hash), `versions` and `cpus`. Files are written
atomically (temporary file and rename), so an interrupted run leaves no half row.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from lightman.models.provenance import versions

PROVENANCE = ("index", "config", "versions", "cpus")


class KeptRowError(ValueError):
    """A kept row that cannot be used: unreadable, or measured on another index."""


def read_row(path: str | Path, index_hash: str) -> dict | None:
    """The kept row at `path`, None if there is none; an error naming the file if it does not
    parse or was measured on an index other than `index_hash`."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        row = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise KeptRowError(f"{path}: not a kept row ({e})") from e
    made_on = row.get("index")
    if made_on != index_hash:
        raise KeptRowError(f"{path} was measured on index {made_on}, not {index_hash}")
    return row


def write_row(path: str | Path, figures: dict, config: dict, index_hash: str) -> dict:
    """Keep `figures` at `path` with their provenance (module docstring); the row written."""
    clash = sorted(set(figures) & set(PROVENANCE))
    if clash:
        raise KeptRowError(f"figures may not use the provenance keys {clash}")
    row = {
        **figures,
        "index": index_hash,
        "config": config,
        "versions": versions(),
        "cpus": os.cpu_count(),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(row))
    tmp.replace(path)
    return row

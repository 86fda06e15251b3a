"""Dataset adapters: a release folder (local path or s3://) -> ClipRecords and Skipped clips.

`scan("casme2", "/data/CASME2")` finds the release's annotation and frames, and returns
a `ScanResult`. Each adapter module keeps its expected layout as data (`LAYOUT`, here
`LAYOUTS[name]`), never in its docstring (`python -OO` strips those); a folder in the
wrong layout raises `LayoutError` showing it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from lightman.tasks import storage
from lightman.tasks.datasets import casme, casme2, casme_sq, ckplus, samm, smic, video
from lightman.tasks.datasets.base import LayoutError, ScanResult

MODULES = (casme2, samm, smic, casme, casme_sq, ckplus, video)
ADAPTERS: dict[str, Callable[..., ScanResult]] = {m.DATASET: m.scan for m in MODULES}
# name -> the expected layout, as LayoutError shows it (indented lines)
LAYOUTS: dict[str, str] = {m.DATASET: m.LAYOUT for m in MODULES}

__all__ = ["ADAPTERS", "LAYOUTS", "LayoutError", "ScanResult", "scan"]


def scan(
    dataset: str,
    src: str,
    *,
    limit: int | None = None,
    subjects: Iterable[str] | None = None,
    expression: str | None = None,
) -> ScanResult:
    """Scan the release of `dataset` at `src` (local path or s3://bucket/prefix).

    limit: at most this many usable clips, the first in clip-id order.
    subjects: keep only these subjects ('sub01' or 'casme2/sub01').
    expression: keep only 'micro' or 'macro' clips.
    """
    if dataset not in ADAPTERS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {sorted(ADAPTERS)}")
    root = storage.resolve(src)
    if not storage.is_dir(root):
        what = "does not exist" if not storage.exists(root) else "is a file, not a folder"
        raise LayoutError(f"{dataset} source {root.uri} {what}")
    return ADAPTERS[dataset](root, limit=limit, subjects=subjects, expression=expression)

"""Dataset adapters: a release folder (local path or s3://) -> ClipRecords and Skipped clips.

`scan("casme2", "/data/CASME2")` finds the release's annotation and frames (each
module's docstring shows its expected layout), and returns a `ScanResult`. A folder
in the wrong layout raises `LayoutError` naming the expected one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from lightman.tasks import storage
from lightman.tasks.datasets import casme, casme2, casme_sq, ckplus, samm, smic, video
from lightman.tasks.datasets.base import LayoutError, ScanResult

ADAPTERS: dict[str, Callable[..., ScanResult]] = {
    "casme2": casme2.scan,
    "samm": samm.scan,
    "smic": smic.scan,
    "casme": casme.scan,
    "casme_sq": casme_sq.scan,
    "ckplus": ckplus.scan,
    "video": video.scan,
}

__all__ = ["ADAPTERS", "LayoutError", "ScanResult", "scan"]


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

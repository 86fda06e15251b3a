"""What every artifact records about how it was made: its config as plain data, and the
versions of the software that made it.

Indexes, checkpoints, training runs and reports all record these, so the helpers live
in the bottom layer, where every layer above may use them. Nothing here imports torch
or Ray: version numbers come from the installed distributions' metadata.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata as md
import platform as _stdlib_platform  # the standard library's, never lightman.platform
from typing import Any

from lightman.models.cpu_kernels import requested

PACKAGES = (
    "lightman",
    "torch",
    "ray",
    "numpy",
    "pyarrow",
    "opencv-python-headless",
    "decord",
    "optuna",
)


def versions() -> dict[str, str]:
    """The Python version, each of PACKAGES' installed version ("not installed" if absent) and
    the CPU kernels torch was asked for (models/cpu_kernels.py)."""
    out = {"python": _stdlib_platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "not installed"
    out["torch_cpu_kernels"] = requested()
    return out


def to_dict(cfg: Any) -> dict:
    """A (nested) config dataclass as a plain dict (tuples as lists), for YAML/JSON artifacts."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v

    return plain(cfg)

"""Versions of what made an artifact (index, checkpoint, report): reproducibility."""

from __future__ import annotations

import importlib.metadata as md
import platform as _stdlib_platform  # the standard library's, never lightman.platform

PACKAGES = ("lightman", "torch", "ray", "numpy", "pyarrow", "opencv-python-headless", "decord", "optuna")


def versions() -> dict[str, str]:
    out = {"python": _stdlib_platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "not installed"
    return out

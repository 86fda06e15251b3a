"""Reading clip frames: image sequences (numeric order) and video files (decord)."""

from __future__ import annotations

import re

_INT = re.compile(r"(\d+)")


def numeric_key(name: str) -> tuple[int, str]:
    """Sort key by the last integer in a file name: img9 < img10, image559740.bmp, S005_001_00000001.png."""
    base = name.rsplit("/", 1)[-1]
    nums = _INT.findall(base.rsplit(".", 1)[0])
    if not nums:
        raise ValueError(f"frame file {name!r} has no frame number in its name")
    return int(nums[-1]), base


def sort_frame_files(names: list[str]) -> list[str]:
    """Frame files in temporal order (by number, never as strings)."""
    return sorted(names, key=numeric_key)

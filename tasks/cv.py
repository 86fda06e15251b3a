"""OpenCV on its baseline code paths and one thread, so that every x86-64 CPU computes the
same pixels.

At run time OpenCV picks SIMD code for the CPU it finds (SSE4, AVX, AVX2, AVX-512) and
Intel IPP, and their float rounding differs. The seeded generator (resizes, blurs,
remaps, anti-aliased drawing, JPEG) and ingest's preprocessing (face detection, crop
resize, the apex estimate's blur, optical flow) would therefore give a different index on
a machine with other CPU features (docs/architecture.md, "The generated data", has the
measurement). `cv2.setUseOptimized(False)` sends every dispatched function, and IPP, to
the baseline code (SSE3 on x86-64), which is the same on every x86-64 CPU. Other
architectures (ARM NEON) have another baseline and may still differ.

OpenCV also runs one thread: its parallel loops (the Haar cascade over its scales) return
detections in the order their threads finish, and the face detector keeps the largest of
them, so two faces of equal size would make the crop box depend on thread timing.

Every module that computes pixels with OpenCV uses the `cv2` of this module: importing it
changes nothing; OpenCV is configured by `configure()` (which `lightman.platform.runtime.
setup` calls) or, at the latest, at the first OpenCV name used through it, in whichever
process that happens (a pool worker, a Ray task).
"""

from __future__ import annotations

import types

import cv2 as _cv2

_configured = False


def configure() -> None:
    """OpenCV to its baseline code and one thread, once per process."""
    global _configured
    if not _configured:
        _cv2.setUseOptimized(False)
        _cv2.setNumThreads(1)
        _configured = True


class _ConfiguredOpenCV(types.ModuleType):
    """`cv2`, configured (`configure`) before the first of its names is looked up."""

    def __getattr__(self, name: str):
        configure()
        return getattr(_cv2, name)


cv2 = _ConfiguredOpenCV("cv2", _cv2.__doc__)

__all__ = ["configure", "cv2"]

"""OpenCV on its baseline code paths, so that every x86-64 CPU computes the same pixels.

At run time OpenCV picks SIMD code for the CPU it finds (SSE4, AVX, AVX2, AVX-512) and
Intel IPP, and their float rounding differs. The seeded generator (resizes, blurs,
remaps, anti-aliased drawing, JPEG) and ingest's preprocessing (face detection, crop
resize, the apex estimate's blur, optical flow) therefore gave a different index on a
machine with other CPU features: measured on the demo's release, OpenCV held to its
baseline on the same machine changed the frames of 49 of 471 clips and one face box, and
the index's content hash with them. `cv2.setUseOptimized(False)` sends every dispatched
function, and IPP, to the baseline code (SSE3 on x86-64), which is the same on every
x86-64 CPU. Other architectures (ARM NEON) have another baseline and may still differ.

OpenCV also runs one thread: its parallel loops (the Haar cascade over its scales) return
detections in the order their threads finish, and the face detector keeps the largest of
them, so two faces of equal size made the crop box depend on thread timing (seen: one
clip of 39 in two concurrent builds of one release, about one build in two).

Every module that computes pixels with OpenCV imports it from here.
"""

import cv2

cv2.setUseOptimized(False)
cv2.setNumThreads(1)

__all__ = ["cv2"]

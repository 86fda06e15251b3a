"""The seeded generator and ingest give the same index whatever SIMD code OpenCV finds.

Without tasks/cv.py (OpenCV held to its baseline code), an index of 40 generated
CASME II clips and 12 CK+ clips built with OpenCV's SSE4/AVX/AVX2 code turned off had
another content hash than one built with it on, on the same machine; the same happens
between machines with other CPU features (the demo's index hashed differently on a
machine without AVX-512 than on one with it).
"""

import os
import subprocess
import sys

import cv2

BUILD = """
import sys
from lightman.platform.generated import small_index
from lightman.platform.index import read_manifest
over = ["datasets=[casme2,ckplus]", "casme2.subjects=6", "casme2.clips=40",
        "ckplus.subjects=4", "ckplus.clips=12"]
print(read_manifest(small_index(sys.argv[1], over, 32, 8))["content_hash"])
"""


def test_opencv_runs_its_baseline_code_once_lightman_imports_it():
    import lightman.tasks.preprocess  # noqa: F401

    assert not cv2.useOptimized()


def test_generated_index_is_the_same_with_opencv_simd_off(tmp_path):
    runs = []
    for name, disable in (("simd", ""), ("baseline", "SSE4.1,SSE4.2,AVX,FP16,AVX2,POPCNT")):
        env = {**os.environ, "OPENCV_CPU_DISABLE": disable, "OMP_NUM_THREADS": "1"}
        cmd = [sys.executable, "-c", BUILD, str(tmp_path / name)]
        runs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True))
    hashes = [p.communicate(timeout=300)[0].strip() for p in runs]
    assert all(p.returncode == 0 for p in runs)
    assert hashes[0].startswith("sha256:") and hashes[0] == hashes[1]

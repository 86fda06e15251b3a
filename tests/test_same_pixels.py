"""The seeded generator and ingest give the same index whatever SIMD code OpenCV and NumPy
find.

Without tasks/cv.py (OpenCV held to its baseline code), an index of 40 generated
CASME II clips and 12 CK+ clips built with OpenCV's SSE4/AVX/AVX2 code turned off had
another content hash than one built with it on, on the same machine; the same happens
between machines with other CPU features (the demo's index hashed differently on a
machine without AVX-512 than on one with it). NumPy's AVX-512 power gave the same kind of
difference until tasks/portable.py (the tests below). The two builds run at the same time,
so this also catches a result that depends on thread timing: OpenCV's threaded face
detection chose between two equal faces by which thread finished first, about one build in
two, until tasks/cv.py held OpenCV to one thread.
"""

import os
import subprocess
import sys
from pathlib import Path

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


def _on_and_off(script: str, variable: str, off: str, folder: Path | None = None) -> list[str]:
    """stdout of `script` run twice at the same time, in two processes: with `variable`
    empty (the library's code for this CPU) and set to `off`; with `folder`, each run gets
    its own subfolder of it as its argument."""
    runs = []
    for name, value in (("on", ""), ("off", off)):
        env = {**os.environ, variable: value, "OMP_NUM_THREADS": "1"}
        args = [str(folder / name)] if folder else []
        cmd = [sys.executable, "-c", script, *args]
        runs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=300)[0].strip() for p in runs]
    assert all(p.returncode == 0 for p in runs)
    return outs


def test_generated_index_is_the_same_with_opencv_simd_off(tmp_path):
    disable = "SSE4.1,SSE4.2,AVX,FP16,AVX2,POPCNT"
    on, off = _on_and_off(BUILD, "OPENCV_CPU_DISABLE", disable, tmp_path)
    assert on.startswith("sha256:") and on == off


def _numpy_avx512() -> str:
    """NPY_DISABLE_CPU_FEATURES that switches NumPy's AVX-512 code off (its own names)."""
    from numpy._core._multiarray_umath import __cpu_dispatch__

    return " ".join(f for f in __cpu_dispatch__ if "AVX512" in f or f == "X86_V4")


FACES = """
import hashlib
import numpy as np
from lightman.tasks.synth import SynthConfig
from lightman.tasks.synth_face import draw_identity, neutral_face
spec = SynthConfig().spec
rng = np.random.default_rng(7)
digest = hashlib.sha256()
for _ in range(12):
    digest.update(neutral_face(draw_identity(rng), spec).tobytes())  # float32, before rounding
print(digest.hexdigest())
"""


def test_generated_faces_are_the_same_with_numpy_avx512_off():
    """NumPy's AVX-512 power rounded the faces' shading otherwise than the C library's
    (tasks/portable.py): on an AVX-512 machine these float faces differed, and the demo's
    index with them (one grey level in three sampled SMIC frames)."""
    on, off = _on_and_off(FACES, "NPY_DISABLE_CPU_FEATURES", _numpy_avx512())
    assert len(on) == 64 and on == off


POWER = """
import numpy as np
from lightman.tasks.portable import float32_power
# every 613th float32 in [0, 1] (1.7 million), and both ends
lo, hi = int(np.float32(0).view(np.uint32)), int(np.float32(1).view(np.uint32))
x = np.arange(lo, hi + 1, 613, dtype=np.uint32).view(np.float32)
x = np.concatenate([x, np.float32([0.0, 1.0])])
for chunk in np.array_split(x, 16):
    assert np.array_equal(float32_power(chunk, 1.5), np.power(chunk, np.float32(1.5))), "differ"
print("same")
"""


def test_float32_power_is_the_c_librarys():
    """Without AVX-512 NumPy's float32 power is the C library's powf, and float32_power gives
    its bits on a dense sample of the generator's bases in [0, 1] (every 61st float32 gave
    no difference either; the double pow rounded to float32 differed on 7,373 of those
    17.5 million)."""
    env = {**os.environ, "NPY_DISABLE_CPU_FEATURES": _numpy_avx512()}
    out = subprocess.run(
        [sys.executable, "-c", POWER], env=env, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "same"

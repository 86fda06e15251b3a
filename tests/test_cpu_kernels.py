"""PyTorch's CPU kernels are held to AVX2 by Lightman's runtime setup (models/cpu_kernels.py,
platform/runtime.py), in this process and in the Ray workers it starts, so an AVX-512
machine trains the bits an AVX2 one does (measured: docs/architecture.md). Importing
Lightman sets nothing. On a CPU without AVX-512 the capability checks pass whatever the pin
does; on one with it, they fail without it.
"""

import os
import subprocess
import sys

import pytest

from lightman.models.cpu_kernels import PINNED

CAPABILITY = """
import torch
from lightman.platform.runtime import setup
from lightman.models.provenance import versions
setup()  # after torch's import, before its first kernel: as in a Ray worker
torch.zeros(4) + 1  # a first kernel: ATen fixes its choice here
print(torch.backends.cpu.get_cpu_capability(), versions()["torch_cpu_kernels"])
"""
IMPORT_ONLY = """
import os
import cv2  # first: OpenCV's own import sets LD_LIBRARY_PATH
before = dict(os.environ)
import lightman.models, lightman.tasks.cv, lightman.tasks.synth, lightman.platform.cli
import lightman.platform.runtime, lightman.platform.train
changed = sorted(k for k in set(os.environ) | set(before) if os.environ.get(k) != before.get(k))
print(changed, cv2.useOptimized(), cv2.getNumThreads())
"""


def _capability(**env: str) -> list[str]:
    clean = {k: v for k, v in os.environ.items() if k != "ATEN_CPU_CAPABILITY"}
    out = subprocess.run(
        [sys.executable, "-c", CAPABILITY],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.split()


def _run(code: str, env: dict[str, str]) -> list[str]:
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.split()


def test_importing_lightman_changes_no_setting():
    settings = {*PINNED, "OMP_WAIT_POLICY"}
    clean = {k: v for k, v in os.environ.items() if k not in settings}
    threads = _run("import cv2; print(cv2.getNumThreads())", clean)  # OpenCV's own default
    assert _run(IMPORT_ONLY, clean) == ["[]", "True", *threads]


def test_opencv_is_configured_at_its_first_use_through_lightman():
    code = (
        "import cv2; from lightman.tasks.cv import cv2 as configured; "
        "configured.INTER_AREA; print(cv2.useOptimized(), cv2.getNumThreads())"
    )
    assert _run(code, dict(os.environ)) == ["False", "1"]


def test_runtime_setup_holds_torch_to_avx2_and_records_it():
    capability, recorded = _capability()
    assert capability in ("AVX2", "DEFAULT") and recorded == "avx2"


def test_a_value_the_user_set_is_kept():
    assert _capability(ATEN_CPU_CAPABILITY="default") == ["DEFAULT", "default"]


@pytest.mark.integration
def test_ray_workers_inherit_the_pin(ray_local):
    import ray

    @ray.remote
    def capability() -> tuple[str | None, str]:
        import torch  # the worker imports no Lightman module before its first kernel

        torch.zeros(4) + 1
        return os.environ.get("ONEDNN_MAX_CPU_ISA"), torch.backends.cpu.get_cpu_capability()

    isa, cap = ray.get(capability.remote())
    assert isa == "AVX2" and cap in ("AVX2", "DEFAULT")

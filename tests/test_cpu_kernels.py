"""PyTorch's CPU kernels are held to AVX2 once Lightman's models are imported
(models/cpu_kernels.py), in this process and in the Ray workers it starts, so an AVX-512
machine trains the bits an AVX2 one does (measured: the demo's table, README). On a CPU
without AVX-512 these tests pass whatever the pin does; on one with it, they fail without it.
"""

import os
import subprocess
import sys

import pytest

import lightman.models  # noqa: F401  (as every Lightman process does before it starts Ray)

CAPABILITY = """
import torch
import lightman.models  # noqa: F401  (pins the kernels)
from lightman.models.provenance import versions
torch.zeros(4) + 1  # a first kernel: ATen fixes its choice here
print(torch.backends.cpu.get_cpu_capability(), versions()["torch_cpu_kernels"])
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


def test_importing_lightman_holds_torch_to_avx2_and_records_it():
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

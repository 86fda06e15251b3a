"""PyTorch's CPU kernels held to AVX2, so that x86-64 CPUs with and without AVX-512 train
the same bits.

PyTorch picks its CPU kernels at run time from the CPU it finds: ATen's vectorised
kernels, oneDNN's convolutions and MKL's matrix products each have an AVX-512 path that
rounds and sums otherwise than the AVX2 one. On the same index the demo's table read
LightmanNet 34.50 / MAML 42.15 on an AVX-512 machine and 35.33 / 40.83 on an AVX2 one; with
the three held to AVX2 the AVX-512 machine printed 35.33 / 40.83, and trained as fast
(LightmanNet 69 s against 65 s, MAML 49 s against 50 s).

Each library reads its variable once, at its first kernel (ATen ATEN_CPU_CAPABILITY,
oneDNN ONEDNN_MAX_CPU_ISA, MKL MKL_CBWR), so they are set when Lightman's models are
imported (models/__init__.py), before any kernel of this process runs; Ray workers that
this process starts inherit them, and deploy/runtime_env.yaml sets them on a cluster. A
value the user has set is kept: ATEN_CPU_CAPABILITY=avx512 (with ONEDNN_MAX_CPU_ISA=ALL
and MKL_CBWR=AUTO) gives back the AVX-512 kernels, and their bits. A process that ran a
torch kernel before importing Lightman keeps the kernels it chose then.
"""

import os

PINNED = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2"}


def pin() -> None:
    """Set each of PINNED that the environment does not set already."""
    for name, value in PINNED.items():
        os.environ.setdefault(name, value)


def requested() -> str:
    """The ATen kernel level this process asked for ("avx2" unless the user chose another)."""
    return os.environ.get("ATEN_CPU_CAPABILITY", "auto")

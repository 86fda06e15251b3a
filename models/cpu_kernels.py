"""PyTorch's CPU kernels held to AVX2, so that x86-64 CPUs with and without AVX-512 train
the same bits.

PyTorch picks its CPU kernels at run time from the CPU it finds: ATen's vectorised
kernels, oneDNN's convolutions and MKL's matrix products each have an AVX-512 path that
rounds and sums otherwise than the AVX2 one, so the same run trained other bits on an
AVX-512 machine (docs/architecture.md has the measurement); held to AVX2, it trains the
same bits, as fast.

Each library reads its variable once, at its first kernel (ATen ATEN_CPU_CAPABILITY,
oneDNN ONEDNN_MAX_CPU_ISA, MKL MKL_CBWR), so `pin` must run before the first kernel of a
process: `lightman.platform.runtime.setup` calls it at every entry point and at the start
of every Ray worker that runs Lightman code; Ray workers a pinned process starts inherit
the variables, and deploy/runtime_env.yaml sets them on a cluster. A value the user has set
is kept: ATEN_CPU_CAPABILITY=avx512 (with ONEDNN_MAX_CPU_ISA=ALL and MKL_CBWR=AUTO) gives
back the AVX-512 kernels, and their bits. A process that ran a torch kernel before the pin
keeps the kernels it chose then.
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

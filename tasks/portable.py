"""Float functions that give the same bits on every x86-64 CPU.

On a CPU with AVX-512, NumPy computes power, exp, log and most other transcendental
functions (float32 and float64) with its own AVX-512 code; on every other x86-64 CPU it
calls the C library's function element by element. The two differ in the last bit for
some inputs. In the seeded generator that moved single pixels by one grey level (three
sampled SMIC frames of the demo's release), so the demo's index built on an AVX-512 machine
had another content hash than the one built without AVX-512 (measured with NumPy 2.4.6 on
one machine, switching its AVX-512 code off with NPY_DISABLE_CPU_FEATURES).

The functions here call the C library's function element by element, as NumPy does
without AVX-512, on every CPU. It must be the C library's float function itself: powf is
not the double pow rounded to float (they differ on 4 in 10,000 float32 bases in [0, 1]).
They are slow (about 0.5 µs an element): use them where the bits reach generated pixels,
not in the model.
"""

import ctypes
import ctypes.util

import numpy as np

_libm = ctypes.CDLL(ctypes.util.find_library("m"))
_powf = _libm.powf
_powf.restype = ctypes.c_float
_powf.argtypes = [ctypes.c_float, ctypes.c_float]


def float32_power(base: np.ndarray, exponent: float) -> np.ndarray:
    """base ** exponent for a float32 array, as the C library's powf computes it. Bases of 1
    are not passed to it: powf(1, y) is 1 for every y (C99, F.9.4.4)."""
    base = np.asarray(base, np.float32)
    out = np.ones_like(base)
    call = base != 1
    pow_ = np.frompyfunc(lambda b: _powf(b, exponent), 1, 1)
    out[call] = pow_(base[call]).astype(np.float32)
    return out

# Before any torch kernel runs: CPU kernels held to AVX2 (models/cpu_kernels.py).
from lightman.models.cpu_kernels import pin

pin()

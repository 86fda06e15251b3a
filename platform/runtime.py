"""Process-wide settings, applied by one explicit call: `setup()`.

Importing a Lightman module changes no environment variable, thread pool or library
setting; the entry points call `setup()` before they do any work: the `lightman` command
(`cli.main`), each Ray worker that runs Lightman code (a Ray Train worker, a scoring
actor, a Serve replica) at its start, the benchmarks and the test session. What it sets,
and why:

- OMP_WAIT_POLICY=PASSIVE: OpenMP threads that spin while they wait turn a busy machine
  (another job, Ray workers beside the driver) into a many-fold slowdown of the
  meta-step; waiting passively costs little on an idle one. libgomp reads it when torch
  loads it, so it takes effect in the processes started after `setup()` (Ray's workers
  on a local cluster inherit it; deploy/runtime_env.yaml sets it on a cluster).
- PyTorch's CPU kernels held to AVX2 (`lightman.models.cpu_kernels`): each kernel library
  reads its variable at its first kernel, so `setup()` before the first kernel suffices,
  also in a worker that imported torch already.
- OpenCV on its baseline code and one thread (`lightman.tasks.cv`): every pixel the same on
  every x86-64 CPU. OpenCV is also configured at its first use through `lightman.tasks.cv`,
  so a process that computes pixels without calling `setup()` (an ingest pool's worker)
  computes the same ones.

- RAY_AUTH_MODE=token: Ray's token authentication on for every cluster this process
  starts or joins (Ray 2.60 turns it on for new local clusters only, and says so with a
  warning that suggests turning it off; from 2.61 it is on for all). The token is Ray's:
  ~/.ray/auth_token (generated for a new local cluster when missing), RAY_AUTH_TOKEN or
  RAY_AUTH_TOKEN_PATH; `ray get-auth-token` prints it for `ray job submit`.

A value the user set in the environment is kept.
"""

from __future__ import annotations

import os

from lightman.models import cpu_kernels
from lightman.tasks import cv


def setup() -> None:
    """Apply Lightman's process-wide settings (module docstring); safe to call again."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    cpu_kernels.pin()
    cv.configure()

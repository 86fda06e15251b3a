"""GPU smoke check, run by hand on a machine with CUDA (never in tests or CI):

    python benchmarks/gpu_smoke.py [--steps 5]

1. Second-order LightmanNet meta-steps (5-way 1-shot, 8 frames of 64x64, Conv4-64, one
   inner step, meta-batch 2) on CUDA: the meta-gradient through Lightman's kernels
   (batchnorm.py, maxpool.py, input_conv.py) against the same model on PyTorch's own
   layers, on the GPU (relative L2 error, float32), and against the CPU.
2. Time per meta-step on CUDA against the CPU (the same tasks).
3. A 1-worker Ray Train run on CUDA (`device=cuda`, nccl) of a few steps on a seeded
   32-px stand-in index, through validation, checkpoint and the test evaluation.
Exits non-zero when a gradient disagrees or the training fails.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
sys.path.insert(0, str(Path(__file__).parent))  # the shared settings of meta_step.py

import torch  # noqa: E402
from meta_step import (  # noqa: E402
    GRAD_TOLERANCE,
    Setting,
    make_model,
    make_tasks,
    relative_error,
    use_torch_layers,
)

from lightman.models.learners import LearnerConfig, build_learner  # noqa: E402


def meta_grads(setting: Setting, device: str, steps: int) -> tuple[dict, float]:
    """(Σ_i outer gradient of the meta-batch, seconds per meta-step) on `device`."""
    model = make_model(setting).to(device)
    tasks = [
        dataclasses.replace(
            t, **{f.name: getattr(t, f.name).to(device) for f in dataclasses.fields(t)}
        )
        for t in make_tasks(setting)
    ]
    learner = build_learner(LearnerConfig())
    params, buffers = dict(model.named_parameters()), dict(model.named_buffers())
    grads, _ = learner.meta_grads(
        model, params, buffers, tasks
    )  # warm-up (CUDA kernels, allocator)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        grads, _ = learner.meta_grads(model, params, buffers, tasks)
    sync()
    return {n: g.detach().cpu() for n, g in grads.items()}, (time.perf_counter() - t0) / steps


def train_on_cuda(root: Path) -> str:
    from lightman.platform.config import load_config
    from lightman.platform.generated import small_index
    from lightman.platform.train import TrainConfig, run_training

    index = small_index(
        root,
        [
            "datasets=[casme2,ckplus]",
            "casme2.subjects=10",
            "casme2.clips=90",
            "ckplus.subjects=4",
            "ckplus.clips=20",
        ],
    )
    cfg = load_config(
        TrainConfig,
        None,
        [
            f"data.index={index}",
            "episode.ways=3",
            "episode.shots=1",
            "episode.query=2",
            "episode.aux_shots=1",
            "model.ways=3",
            "model.image_size=32",
            "model.hidden=32",
            "model.input_mode=delta",
            "meta_batch=2",
            "iterations=6",
            "eval_every=3",
            "checkpoint_every=3",
            "val_episodes=5",
            "test_episodes=20",
            "device=cuda",
            "backend=ray",
        ],
    )
    return run_training(cfg, root / "run").table


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--steps", type=int, default=5, help="timed meta-steps per device")
    a = p.parse_args()
    if not torch.cuda.is_available():
        print("gpu_smoke: no CUDA device here; run it on a GPU machine", file=sys.stderr)
        return 2
    setting = Setting(shots=1, steps=1, meta_batch=2)
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}; {setting.label}")
    cpu, cpu_s = meta_grads(setting, "cpu", a.steps)
    gpu, gpu_s = meta_grads(setting, "cuda", a.steps)
    use_torch_layers()  # from here on the model is built from PyTorch's own layers
    ref, ref_s = meta_grads(setting, "cuda", a.steps)
    errors = {
        "CUDA kernels vs PyTorch layers on CUDA": relative_error(gpu, ref),
        "CUDA kernels vs CPU kernels": relative_error(gpu, cpu),
    }
    for name, err in errors.items():
        print(f"{name}: relative L2 error {err:.2e} (tolerance {GRAD_TOLERANCE:.0e})")
    print(
        f"s per meta-step: CPU {cpu_s:.3f}, CUDA {gpu_s:.3f} ({cpu_s / gpu_s:.1f}x the CPU), "
        f"CUDA on PyTorch layers {ref_s:.3f} ({ref_s / gpu_s:.2f}x Lightman's kernels)"
    )
    with tempfile.TemporaryDirectory() as tmp:
        print(train_on_cuda(Path(tmp)))
    return 0 if all(e < GRAD_TOLERANCE for e in errors.values()) else 1


if __name__ == "__main__":
    sys.exit(main())

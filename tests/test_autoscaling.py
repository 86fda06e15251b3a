"""Placement that knows the autoscaler, on Ray's fake multi-node autoscaler.

Without a cluster (the rules, `placement.py`):
- a run the autoscaler's node types could serve is not refused although the cluster lacks
  the resource now (deploy/cluster.yaml's GPU workers start at 0); one that no node type
  could ever serve is refused naming the resource and what the node types can add;
- where no autoscaler runs, the present nodes decide, with the message of before;
- the cluster-wide caps (max_workers, the GCS config's max_resources) bound what is added.

On a real fake-provider autoscaling cluster (`tests/clusters.py`: a head with 0 CPUs, a
1-CPU worker type from 0 to 2 nodes), every command run as a user would, RAY_ADDRESS set:
- the driver reads the autoscaler's node types from the running cluster;
- `lightman train workers=2` scales the cluster up and finishes instead of being refused;
- workers=3, or one cuda worker, is refused naming the resource before any worker starts;
- a tiny `lightman tune` search scales the cluster up too.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import yaml
from ray.core.generated import autoscaler_pb2

from lightman.platform.cli import main
from lightman.platform.placement import (
    HEAD,
    Autoscaler,
    NodeType,
    from_cluster_config,
    from_launcher_config,
    max_units,
    monitor_config_path,
    placement_error,
)
from lightman.platform.tune import read_records

sys.path.insert(0, str(Path(__file__).parent))  # pytest runs with --import-mode=importlib
import clusters  # noqa: E402
import tiny  # noqa: E402

REPO = Path(__file__).parents[1]
HEAD_NODE = {"CPU": 8.0, "memory": 3e10, HEAD: 1.0}  # deploy/cluster.yaml's m5.2xlarge head


def deploy_autoscaler() -> Autoscaler:
    """deploy/cluster.yaml's node types, with the resources the AWS provider fills in for
    its instance types when `ray up` writes the head's bootstrap config (g5.xlarge: 4
    vCPUs, one A10G)."""
    config = yaml.safe_load((REPO / "deploy" / "cluster.yaml").read_text())
    config["available_node_types"]["gpu_worker"]["resources"] = {"CPU": 4, "GPU": 1}
    config["available_node_types"]["head"]["resources"] = {"CPU": 8}
    return from_launcher_config(config, "deploy/cluster.yaml")


def test_gpu_workers_the_autoscaler_can_add_are_not_refused_though_none_is_present():
    autoscaler = deploy_autoscaler()
    assert placement_error(8, "GPU", [HEAD_NODE], autoscaler, "cuda") is None
    assert placement_error(8, "GPU", [HEAD_NODE], None, "cuda") == (
        "workers=8: the Ray cluster has 0 GPU(s), one per worker is needed (device=cuda)"
    )  # without an autoscaler the present nodes are all there will be, as before


def test_a_run_no_node_type_could_serve_is_refused_naming_the_resource():
    error = placement_error(9, "GPU", [HEAD_NODE], deploy_autoscaler(), "cuda")
    assert error == (
        "workers=9 need 9 GPU(s), one per worker (device=cuda): the cluster has 0 now and its "
        "autoscaler's node types can add at most 8 (deploy/cluster.yaml)"
    )
    # with 3 GPU nodes up, the 5 more the type may run are what it can add
    up = [HEAD_NODE] + [{"CPU": 4.0, "GPU": 1.0}] * 3
    assert "has 3 now and its autoscaler's node types can add at most 5" in placement_error(
        9, "GPU", up, deploy_autoscaler(), "cuda"
    )
    cpu_only = Autoscaler((NodeType("cpu1", {"CPU": 1}, 2), NodeType("head", {}, 0, head=True)))
    assert "can add at most 0" in placement_error(1, "GPU", [{HEAD: 1.0}], cpu_only, "cuda")


def test_the_cluster_wide_caps_bound_what_the_autoscaler_adds():
    types = (NodeType("big", {"CPU": 4}, 3), NodeType("small", {"CPU": 1}, 10))
    # at most 4 worker nodes in all: the richest first, 3 x 4 + 1 x 1
    assert max_units("CPU", [{HEAD: 1.0}], Autoscaler(types, max_workers=4)) == 13
    assert max_units("CPU", [{HEAD: 1.0}], Autoscaler(types, max_resources={"CPU": 6})) == 6
    # nodes present beyond the autoscaler's (added by hand) still count
    assert max_units("CPU", [{HEAD: 1.0}] + [{"CPU": 8.0}] * 3, Autoscaler(types, 1)) == 24


def test_the_gcs_cluster_config_is_read_with_unlimited_groups():
    config = autoscaler_pb2.ClusterConfig(
        node_group_configs=[
            autoscaler_pb2.NodeGroupConfig(name="gpu", resources={"GPU": 1}, max_count=-1),
            autoscaler_pb2.NodeGroupConfig(name="cpu", resources={"CPU": 2}, max_count=3),
        ],
        max_resources={"CPU": 4},
    )
    autoscaler = from_cluster_config(config)
    assert math.isinf(max_units("GPU", [{HEAD: 1.0}], autoscaler))
    assert max_units("CPU", [{HEAD: 1.0}], autoscaler) == 4
    assert from_cluster_config(autoscaler_pb2.ClusterConfig()) is None  # none reported


def test_the_monitor_command_line_names_its_config():
    line = ["python", "monitor.py", "--logs-dir=/x", "--autoscaling-config=/tmp/a.json"]
    assert monitor_config_path(line) == "/tmp/a.json"
    assert monitor_config_path(["monitor.py", "--autoscaling-config", "b.yaml"]) == "b.yaml"
    assert monitor_config_path(["monitor.py", "--logs-dir=/x"]) is None  # a plain ray start


# --- on a real fake-provider autoscaling cluster ---------------------------------------

TINY = [
    *tiny.TASK,
    *tiny.MODEL_16,
    "meta_batch=2",
    "threads=1",
    "iterations=2",
    "eval_every=2",
    "checkpoint_every=2",
    "val_episodes=4",
    "test_episodes=6",
    "max_failures=0",
]
CPU1 = {"cpu1": {"resources": {"CPU": 1}, "max_workers": 2}}


@pytest.fixture(scope="module")
def index(tmp_path_factory) -> str:
    return tiny.shared_index(tmp_path_factory, size=16)


@pytest.fixture(scope="module")
def autoscaling():
    """The fake-provider cluster: a 0-CPU head, `cpu1` nodes added on demand (0 to 2)."""
    with clusters.autoscaling_cluster(CPU1) as cluster:
        yield cluster


@pytest.fixture
def on_cluster(autoscaling, monkeypatch):
    """Commands of this test join the autoscaling cluster, as `ray job submit`'s do."""
    for key, value in clusters.command_env(autoscaling.address).items():
        monkeypatch.setenv(key, value)
    # a worker group waits for the autoscaler's nodes; on a loaded 2-core machine a node
    # may take longer than Ray Train's default 60 s to start (inherited by the controller)
    monkeypatch.setenv("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "600")
    return autoscaling


def cluster_cpus(address: str) -> tuple[int, int]:
    """(live nodes, CPUs) of the cluster at `address`."""
    nodes = clusters.nodes_of(address)
    return len(nodes), int(sum(n["Resources"].get("CPU", 0) for n in nodes))


@pytest.mark.slow
@pytest.mark.integration
def test_the_driver_reads_the_autoscalers_node_types(on_cluster):
    import ray

    from lightman.platform.placement import cluster_capacity, read_autoscaler

    ray.init(address=on_cluster.address, log_to_driver=False, configure_logging=False)
    try:
        autoscaler = read_autoscaler()
        assert {(t.name, t.max_nodes, t.head) for t in autoscaler.node_types} == {
            ("cpu1", 2, False),
            (clusters.HEAD_TYPE, 0, True),
        }
        assert cluster_capacity("CPU") == 2 and cluster_capacity("GPU") == 0
    finally:
        ray.shutdown()


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.parametrize(
    "overrides, says",
    [
        (
            ["workers=3", "meta_batch=6"],
            "workers=3 need 3 CPU(s), one per worker (device=cpu): the cluster has",
        ),
        (
            ["workers=1", "device=cuda", "backend=ray"],
            "workers=1 need 1 GPU(s), one per worker (device=cuda): the cluster has 0 now and "
            "its autoscaler's node types can add at most 0",
        ),
    ],
)
def test_a_run_no_node_type_could_serve_is_refused_before_any_worker_starts(
    on_cluster, index, tmp_path, capsys, overrides, says
):
    out = tmp_path / "refused"
    assert main(["train", "--out", str(out), f"data.index={index}", *TINY, *overrides]) == 2
    err = capsys.readouterr().err
    assert says in err and "its autoscaler's node types can add at most" in err, err
    assert not (out / "ray" / "refused").exists()  # Ray Train never started a run
    assert not (out / "metrics.jsonl").exists()  # nor a worker its loop


@pytest.mark.slow
@pytest.mark.integration
def test_two_workers_scale_the_cluster_up_and_train(on_cluster, index, tmp_path):
    before = cluster_cpus(on_cluster.address)
    out = tmp_path / "w2"
    assert main(["train", "--out", str(out), f"data.index={index}", *TINY, "workers=2"]) == 0
    assert json.loads((out / "results.json").read_text())["metrics"]["workers"] == 2
    steps = [json.loads(line)["iteration"] for line in (out / "metrics.jsonl").open()]
    assert steps == [1, 2]
    nodes, cpus = cluster_cpus(on_cluster.address)
    assert before[1] < 2 and cpus == 2 and nodes == 3  # the head and two 1-CPU nodes added


@pytest.mark.slow
@pytest.mark.integration
def test_a_tune_search_runs_its_trials_on_nodes_the_autoscaler_adds(on_cluster, index, tmp_path):
    out = tmp_path / "search"
    space = REPO / "tune_spaces" / "tiny.yaml"
    args = ["tune", "--space", str(space), "--trials", "2", "--out", str(out)]
    assert main([*args, f"data.index={index}", *TINY]) == 0
    records = read_records(out)
    assert len(records) == 2 and all(r["status"] == "ok" for r in records), records
    head = [n["NodeID"] for n in clusters.nodes_of(on_cluster.address) if n["Resources"].get(HEAD)]
    used = {node for r in records for node in r["train_nodes"]}
    assert used and not used & set(head)  # on added 1-CPU nodes, never the 0-CPU head

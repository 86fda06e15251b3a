"""Can the Ray cluster ever place W training workers? Placement that knows the autoscaler.

A Ray Train run of W workers needs W bundles of one CPU (one GPU with `device=cuda`), each
on one node. Counting only the nodes present now refuses a run that an autoscaling
cluster would serve: `deploy/cluster.yaml`'s GPU workers start at `min_workers: 0`, so a
fresh cluster has no GPU until a run asks for one. So a run is refused only when no
node the cluster has or its autoscaler could add would ever hold it:

- `placement_error(workers, unit, nodes_now, autoscaler)`, a pure function: the reason a
  run cannot be placed, naming the resource, or None;
- `read_autoscaler()`, what the running cluster's autoscaler may add (None where no
  autoscaler runs: then the nodes present now are all there will be).

Where the autoscaler's node types come from (Ray 2.60 has no public API for them; in order):

1. The GCS's autoscaler cluster config (`ray._private.state.state.get_cluster_config()`,
   node groups with their resources and min/max counts). Ray Train V2 reads the same record
   for its own feasibility check (`get_max_resources_from_cluster_config`) and Ray Data for
   its autoscaling; it is filled where the autoscaler reports it (autoscaler v2).
2. The v1 autoscaler (the cluster launcher's `ray up`, and the fake multi-node provider
   tests use) reports no node types to the GCS: a real `AutoscalingCluster` run left (1)
   empty. Its monitor publishes its status, with its pid, under the GCS key `ray status`
   reads (`__autoscaling_status`), and reads its config from the file named by its
   `--autoscaling-config` argument (the cluster launcher's is ~/ray_bootstrap_config.yaml
   on the head, which Ray Tune and the dashboard also read). A zero-CPU task on the head
   node reads that argument from /proc and the file. A monitor without such a file (a
   plain `ray start --head`, whose monitor mirrors the present nodes) means no autoscaler.
3. Otherwise no autoscaler is assumed and the present nodes decide, as before.

An autoscaler whose node types cannot be read (e.g. a KubeRay-managed v1 autoscaler, whose
config lives in the RayCluster resource) is not detected: the present nodes decide.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from lightman.platform.config import ConfigError

HEAD = "node:__internal_head__"  # the resource Ray gives the head node only
STATUS_KEY = "__autoscaling_status"  # ray_constants.DEBUG_AUTOSCALING_STATUS


@dataclass(frozen=True)
class NodeType:
    """A node type of the autoscaler: the resources of one node and how many it may run."""

    name: str
    resources: Mapping[str, float]
    max_nodes: int | None  # None: no limit
    head: bool = False  # the head's type (never launched by the autoscaler)


@dataclass(frozen=True)
class Autoscaler:
    """What an autoscaler may add: its node types and the cluster-wide caps."""

    node_types: tuple[NodeType, ...]
    max_workers: int | None = None  # worker nodes in all (None: no cluster-wide cap)
    max_resources: Mapping[str, float] | None = None  # a cap per resource, cluster-wide
    source: str = ""  # where the node types were read (shown in messages)


def units_on(nodes: Sequence[Mapping[str, float]], unit: str) -> int:
    """Workers of one `unit` each that these nodes hold (a worker needs its unit on one node)."""
    return sum(int(math.floor(n.get(unit, 0) + 1e-9)) for n in nodes)


def autoscaled_units(autoscaler: Autoscaler, unit: str) -> float:
    """Workers of one `unit` the autoscaler's worker node types could hold at most, with the
    richest types first when the cluster caps the number of worker nodes (inf: no limit)."""
    offers = sorted(
        (
            (int(math.floor(t.resources.get(unit, 0) + 1e-9)), t.max_nodes)
            for t in autoscaler.node_types
            if not t.head
        ),
        reverse=True,
    )
    nodes_left = math.inf if autoscaler.max_workers is None else autoscaler.max_workers
    total = 0.0
    for per_node, max_nodes in offers:
        if per_node <= 0 or nodes_left <= 0:
            continue
        n = min(nodes_left, math.inf if max_nodes is None else max_nodes)
        total += per_node * n
        nodes_left -= n
    cap = (autoscaler.max_resources or {}).get(unit)
    return total if cap is None else min(total, cap)


def max_units(
    unit: str, nodes_now: Sequence[Mapping[str, float]], autoscaler: Autoscaler | None
) -> float:
    """The most workers of one `unit` each that the cluster could ever hold: the nodes
    present now, or the head and every worker node its autoscaler may run, whichever is more
    (the autoscaler's nodes present now are among those it may run)."""
    now = units_on(nodes_now, unit)
    if autoscaler is None:
        return now
    head = units_on([n for n in nodes_now if n.get(HEAD)], unit)
    return max(now, head + autoscaled_units(autoscaler, unit))


def placement_error(
    workers: int,
    unit: str,
    nodes_now: Sequence[Mapping[str, float]],
    autoscaler: Autoscaler | None,
    device: str = "cpu",
) -> str | None:
    """Why `workers` workers of one `unit` each can never be placed, naming the resource, or
    None when they can (now, or once the autoscaler has added nodes).

    `nodes_now`: each live node's total resources (the head holds `node:__internal_head__`);
    `autoscaler`: what it may add (`read_autoscaler`), None where no autoscaler runs."""
    have = units_on(nodes_now, unit)
    if workers <= have:
        return None
    if autoscaler is None:  # the present nodes are all there will be
        return (
            f"workers={workers}: the Ray cluster has {have} {unit}(s), one per worker "
            f"is needed (device={device})"
        )
    most = max_units(unit, nodes_now, autoscaler)
    if workers <= most:
        return None
    add = "an unlimited number" if math.isinf(most) else int(most - have)
    return (
        f"workers={workers} need {workers} {unit}(s), one per worker (device={device}): the "
        f"cluster has {have} now and its autoscaler's node types can add at most {add}"
        + (f" ({autoscaler.source})" if autoscaler.source else "")
    )


def from_cluster_config(config) -> Autoscaler | None:
    """An `Autoscaler` from the GCS's `autoscaler_pb2.ClusterConfig` (None when it is empty)."""
    if config is None or not config.node_group_configs:
        return None
    types = tuple(
        NodeType(
            name=g.name,
            resources=dict(g.resources),
            max_nodes=None if g.max_count < 0 else int(g.max_count),
        )
        for g in config.node_group_configs
    )
    caps = {k: float(v) for k, v in config.max_resources.items()} or None
    return Autoscaler(types, None, caps, "the GCS autoscaler cluster config")


def from_launcher_config(config: Mapping, source: str = "") -> Autoscaler | None:
    """An `Autoscaler` from a cluster-launcher config (`available_node_types`,
    `head_node_type`, `max_workers`), as the v1 autoscaler reads it; None without node types."""
    types = config.get("available_node_types") or {}
    if not types:
        return None
    head = config.get("head_node_type")
    node_types = tuple(
        NodeType(
            name=name,
            resources=dict(spec.get("resources") or {}),
            max_nodes=int(spec.get("max_workers", config.get("max_workers", 0)) or 0),
            head=name == head,
        )
        for name, spec in types.items()
    )
    cap = config.get("max_workers")
    return Autoscaler(node_types, None if cap is None else int(cap), None, source)


def monitor_config_path(cmdline: Sequence[str]) -> str | None:
    """The `--autoscaling-config` file of a v1 autoscaler monitor's command line, or None."""
    for i, arg in enumerate(cmdline):
        if arg.startswith("--autoscaling-config="):
            return arg.split("=", 1)[1]
        if arg == "--autoscaling-config" and i + 1 < len(cmdline):
            return cmdline[i + 1]
    return None


def _read_monitor_config(monitor_pid: int) -> dict | None:
    """On the head node: the config file of the autoscaler monitor `monitor_pid`, or None."""
    import yaml

    try:
        raw = Path(f"/proc/{monitor_pid}/cmdline").read_bytes()
        path = monitor_config_path([a.decode() for a in raw.split(b"\0") if a])
    except OSError:
        path = None
    for candidate in (path, "~/ray_bootstrap_config.yaml"):  # the launcher's fixed place
        if candidate and Path(os.path.expanduser(candidate)).is_file():
            config = yaml.safe_load(Path(os.path.expanduser(candidate)).read_text())
            return {"path": candidate, "config": config}
    return None


def read_autoscaler() -> Autoscaler | None:
    """What the connected cluster's autoscaler may add, or None where none runs (the module
    docstring says where it is read). Needs `ray.init` done."""
    import ray
    from ray._private.state import state
    from ray.experimental.internal_kv import _internal_kv_get
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    found = from_cluster_config(state.get_cluster_config())
    if found is not None:
        return found
    status = _internal_kv_get(STATUS_KEY)
    pid = json.loads(status).get("monitor_pid") if status else None
    heads = [n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get(HEAD)]
    if pid is None or not heads:
        return None
    task = ray.remote(num_cpus=0, max_retries=0)(_read_monitor_config).options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(heads[0], soft=False)
    )
    read = ray.get(task.remote(int(pid)))
    if read is None:
        return None
    return from_launcher_config(read["config"], f"autoscaling config {read['path']}")


def live_nodes() -> list[dict[str, float]]:
    """Each live node's total resources. Needs `ray.init` done."""
    import ray

    return [dict(n["Resources"]) for n in ray.nodes() if n["Alive"]]


def unit_of(cfg) -> str:
    """The resource one Ray Train worker of `cfg` (a TrainConfig) holds: a GPU or a CPU."""
    return "GPU" if cfg.device == "cuda" else "CPU"


def cluster_capacity(unit: str) -> float:
    """The most workers of one `unit` each the connected cluster could ever hold (now, or
    once its autoscaler has added nodes; inf: no limit). Needs `ray.init` done."""
    return max_units(unit, live_nodes(), read_autoscaler())


def check_placement(cfg) -> None:
    """Fail now, naming `workers` and the resource, when no node the cluster has or its
    autoscaler could add would ever place `cfg.workers` workers (1 CPU or 1 GPU each).
    Needs `ray.init` done. The autoscaler is asked only when the present nodes fall short."""
    unit, nodes = unit_of(cfg), live_nodes()
    if units_on(nodes, unit) >= cfg.workers:
        return
    error = placement_error(cfg.workers, unit, nodes, read_autoscaler(), cfg.device)
    if error:
        raise ConfigError(error)

"""Simulated multi-node Ray clusters for tests: several Ray nodes on this one machine.

Three kinds, all with Ray's token authentication on (every node inherits the test
process's RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH that conftest.py sets):

- `simulated_cluster(workers=2)`: `ray.cluster_utils.Cluster`, a head with 0 CPUs (it runs
  drivers and controllers, never a training worker) and `workers` nodes of 1 CPU each,
  started in this process; yields the `Cluster` (its `.address` for RAY_ADDRESS).
- `autoscaling_cluster(worker_types)`: Ray's fake multi-node autoscaler
  (`FakeAutoscalingCluster`, an `AutoscalingCluster`): a head with 0 CPUs and node types
  the autoscaler launches as Ray nodes on demand, from 0 up to their `max_workers`.
- `job_head(bin, env)`: a single `ray start --head` with its dashboard's job server, for
  `ray job submit` (deploy/submit.sh, the job test of a running cluster).

Each is private to the test that starts it, so that other Ray instances on the machine
(another pytest-xdist worker's, another user's) are never touched: every port is chosen
free, the Ray temp folder (sessions, logs and the `ray_current_cluster` address file that
a bare `ray.init()` would follow) lives in a fresh folder through RAY_TMPDIR, and shutdown
stops the processes this cluster started, by pid, never with `ray stop` (which stops
every Ray on the machine). A test process can hold one Ray only: call `stop_local_ray()`
before starting a cluster and leave none running (the context managers stop theirs).

All simulated nodes share this machine's disk: a test that storage is the only channel
between nodes must prove it by listing folders, not by a node failing to read a file.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import ray
from ray.cluster_utils import AutoscalingCluster, Cluster

BIN = Path(sys.executable).parent  # this virtualenv's `ray` and `lightman` commands
HEAD_TYPE = "ray.head.default"  # the fake provider's name for the head's node type


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_local_ray() -> None:
    """Disconnect this process from any Ray (a test process holds one at a time)."""
    if ray.is_initialized():
        ray.shutdown()


@contextlib.contextmanager
def private_ray_tmpdir() -> Iterator[str]:
    """A fresh, short Ray temp root (Ray's socket paths must fit 107 bytes) as RAY_TMPDIR
    for the block: sessions, logs and the `ray_current_cluster` address file go there."""
    root = tempfile.mkdtemp(prefix="lmr", dir="/tmp")
    saved = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = root
    try:
        yield root
    finally:
        if saved is None:
            os.environ.pop("RAY_TMPDIR", None)
        else:
            os.environ["RAY_TMPDIR"] = saved
        shutil.rmtree(root, ignore_errors=True)


def command_env(address: str, **extra: str) -> dict[str, str]:
    """The environment of a command run against the cluster at `address` (`lightman ...`):
    this virtualenv first on PATH, RAY_ADDRESS set, token auth inherited."""
    return {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "RAY_ADDRESS": address,
        **extra,
    }


@contextlib.contextmanager
def simulated_cluster(
    workers: int = 2, cpus: int = 1, connect: bool = True, **node_args
) -> Iterator[Cluster]:
    """A `ray.cluster_utils.Cluster`: a 0-CPU head and `workers` nodes of `cpus` CPUs each
    (`node_args`: more arguments of each worker node, e.g. `resources={"r0": 1}`). With
    `connect`, this process's driver is connected to it. Stopped (nodes and driver) on exit."""
    stop_local_ray()
    with private_ray_tmpdir():
        cluster = Cluster(
            initialize_head=True,
            connect=False,
            head_node_args={
                "num_cpus": 0,
                "include_dashboard": False,  # Ray still starts a minimal one: its port free too
                "dashboard_port": free_port(),
                "gcs_server_port": free_port(),
                "dashboard_agent_listen_port": free_port(),
                "runtime_env_agent_port": free_port(),
                "metrics_export_port": free_port(),
            },
        )
        try:
            for _ in range(workers):
                cluster.add_node(num_cpus=cpus, **node_args)
            cluster.wait_for_nodes()
            if connect:
                ray.init(
                    address=cluster.address,
                    include_dashboard=False,
                    configure_logging=False,
                    log_to_driver=False,
                )
            yield cluster
        finally:
            stop_local_ray()
            cluster.shutdown()


class FakeAutoscalingCluster(AutoscalingCluster):
    """Ray's `AutoscalingCluster` (the fake multi-node provider, autoscaler v1), made private.

    The wheel lacks the base config `_generate_config` reads
    (`autoscaler/_private/fake_multi_node/example.yaml`), so the config is built here; and
    `start`/`shutdown` never run `ray stop --force` (it would stop every Ray on the machine):
    the head runs as `ray start --head --block` in its own process group, on free ports, with
    its own temp folder, and the provider's worker nodes join it at its GCS address.
    """

    def __init__(self, worker_types: Mapping[str, dict], head_cpus: int = 0, **config) -> None:
        self.port = free_port()
        self.temp: str | None = None
        self.head: subprocess.Popen | None = None
        super().__init__({"CPU": head_cpus}, dict(worker_types), **config)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _generate_config(self, head_resources, worker_node_types, autoscaler_v2=False, **kw):
        types = {
            name: {"node_config": {}, "min_workers": 0, **spec}
            for name, spec in worker_node_types.items()
        }
        types[HEAD_TYPE] = {"resources": {}, "node_config": {}, "max_workers": 0}
        config = {
            "cluster_name": "fake_multinode",
            "max_workers": sum(t.get("max_workers", 0) for t in types.values()),
            "upscaling_speed": 1.0,
            "idle_timeout_minutes": 5,  # nodes stay for the test's later steps
            "provider": {
                "type": "fake_multinode",
                "use_node_id_as_ip": True,
                "disable_node_updaters": True,
                "disable_launch_config_check": True,
                "gcs_address": self.address,  # the provider's nodes join this head
            },
            "auth": {"ssh_user": "ray"},
            "available_node_types": types,
            "head_node_type": HEAD_TYPE,
            "file_mounts": {},
            "cluster_synced_files": [],
            "file_mounts_sync_continuously": False,
            "rsync_exclude": [],
            "rsync_filter": [],
            "initialization_commands": [],
            "setup_commands": [],
            "head_setup_commands": [],
            "worker_setup_commands": [],
            "head_start_ray_commands": [],
            "worker_start_ray_commands": [],
        }
        config.update(kw)
        return config

    def start(self, _system_config=None, override_env=None, timeout: float = 120) -> None:
        """Start the head (`ray start --head --block`) and wait until a driver can join it."""
        self.temp = tempfile.mkdtemp(prefix="lma", dir="/tmp")  # short: socket paths
        config = Path(self.temp) / "autoscaling.json"
        config.write_text(json.dumps(self._config))
        ports = {
            name: free_port()
            for name in (
                "node-manager",
                "object-manager",
                "ray-client-server",
                "dashboard-agent-listen",
                "dashboard-agent-grpc",
                "runtime-env-agent",
                "metrics-export",
            )
        }
        env = command_env(
            self.address,
            RAY_TMPDIR=self.temp,
            RAY_FAKE_CLUSTER="1",  # the fake provider refuses to run without it
            AUTOSCALER_UPDATE_INTERVAL_S="1",  # react within a second, as Ray's own tests do
            **(override_env or {}),
        )
        env.pop("RAY_ADDRESS")  # the head starts a cluster, it does not join one
        self.head = subprocess.Popen(
            [
                str(BIN / "ray"),
                "start",
                "--head",
                "--block",
                "--node-ip-address=127.0.0.1",
                f"--port={self.port}",
                f"--autoscaling-config={config}",
                f"--num-cpus={self._head_resources.get('CPU', 0)}",
                "--include-dashboard=false",
                f"--temp-dir={self.temp}",
                "--disable-usage-stats",
                *(f"--{name}-port={port}" for name, port in ports.items()),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: shutdown stops exactly it
        )
        deadline = time.monotonic() + timeout
        while not self._answers():
            if self.head.poll() is not None or time.monotonic() > deadline:
                self.shutdown()
                raise RuntimeError(
                    f"the fake autoscaling cluster's head did not start in {timeout} s"
                )
            time.sleep(1)

    def _answers(self) -> bool:
        check = subprocess.run(
            [str(BIN / "ray"), "status", f"--address={self.address}"],
            env=command_env(self.address),
            capture_output=True,
            text=True,
        )
        return check.returncode == 0 and "Node status" in check.stdout

    def shutdown(self) -> None:
        """Stop the head, the autoscaler and every node it launched (by pid; no `ray stop`)."""
        if self.head is None:
            return
        pids = descendants(self.head.pid) + processes_naming(self.temp or "")
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.head.pid, sig)
            for pid in reversed(pids):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            if sig == signal.SIGTERM:  # 3 s for a clean exit, as job_head: then SIGKILL
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.head.wait(timeout=3)
        self.head.wait(timeout=30)
        self.head = None
        shutil.rmtree(self.temp or "", ignore_errors=True)


@contextlib.contextmanager
def autoscaling_cluster(
    worker_types: Mapping[str, dict], head_cpus: int = 0
) -> Iterator[FakeAutoscalingCluster]:
    """A started `FakeAutoscalingCluster` with these worker node types (e.g.
    `{"cpu1": {"resources": {"CPU": 1}, "max_workers": 2}}`), stopped on exit. No driver is
    connected: join it with `ray.init(address=cluster.address)` or RAY_ADDRESS."""
    stop_local_ray()
    cluster = FakeAutoscalingCluster(worker_types, head_cpus)
    cluster.start()
    try:
        yield cluster
    finally:
        stop_local_ray()
        cluster.shutdown()


def live_node_ids() -> list[str]:
    """The ids of the connected cluster's live nodes."""
    return [n["NodeID"] for n in ray.nodes() if n["Alive"]]


def descendants(root: int) -> list[int]:
    """`root` and every process below it (from /proc), parents first."""
    children: dict[int, list[int]] = {}
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit():
                ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(proc.name))
        except (OSError, IndexError, ValueError):
            continue
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found


def processes_naming(text: str) -> list[int]:
    """Pids whose command line contains `text` (this cluster's private temp folder: its
    nodes' processes name it, whoever their parent is now)."""
    if not text:
        return []
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and text.encode() in (proc / "cmdline").read_bytes():
                found.append(int(proc.name))
        except OSError:
            continue
    return [pid for pid in found if pid != os.getpid()]


def nodes_of(address: str) -> list[dict]:
    """The live nodes of the cluster at `address` (`ray.nodes()` entries), from a
    short-lived driver of this process (which must hold no other Ray)."""
    stop_local_ray()
    ray.init(address=address, log_to_driver=False, configure_logging=False)
    try:
        return [n for n in ray.nodes() if n["Alive"]]
    finally:
        ray.shutdown()


@contextlib.contextmanager
def job_head(node_bin: Path, env: dict[str, str]):
    """`ray start --head` (2 CPUs, with its dashboard's job server) on 127.0.0.1 from
    `node_bin`, every port chosen free (other Ray clusters on this machine hold the
    defaults: a dashboard agent without its port cannot accept jobs); yields the dashboard's
    address, for `ray job submit`, and stops exactly this cluster (`ray stop` would stop
    every Ray on the machine)."""
    dashboard = free_port()
    ports = [
        f"--{name}-port={free_port()}"
        for name in (
            "dashboard-agent-listen",
            "dashboard-agent-grpc",
            "runtime-env-agent",
            "metrics-export",
            "ray-client-server",
            "node-manager",
            "object-manager",
        )
    ]
    temp = tempfile.mkdtemp(prefix="rd", dir="/tmp")  # short: Ray's socket paths must fit
    head = subprocess.Popen(
        [
            str(node_bin / "ray"),
            "start",
            "--head",
            "--block",
            "--node-ip-address=127.0.0.1",
            f"--port={free_port()}",
            "--num-cpus=2",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard}",
            *ports,
            f"--temp-dir={temp}",
            "--disable-usage-stats",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # its own process group: the finally stops exactly this cluster
    try:
        address = f"http://127.0.0.1:{dashboard}"
        deadline = time.monotonic() + 120
        while True:  # the job server answers once the dashboard is up
            ping = subprocess.run(
                [str(node_bin / "ray"), "job", "list", "--address", address],
                env=env,
                capture_output=True,
                text=True,
            )
            if ping.returncode == 0 or time.monotonic() > deadline or head.poll() is not None:
                break
            time.sleep(2)
        assert ping.returncode == 0, ping.stderr[-2000:]
        yield address
    finally:
        stray = descendants(head.pid)  # in case a process left the group
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(head.pid, sig)
            for pid in reversed(stray):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            if sig == signal.SIGTERM:  # up to 3 s for a clean exit, not 3 s always
                with contextlib.suppress(subprocess.TimeoutExpired):
                    head.wait(timeout=3)
        head.wait(timeout=30)
        shutil.rmtree(temp, ignore_errors=True)

"""Shared fixtures: a real S3 endpoint (moto_server), a local Ray, and tiny index rows.

`s3_endpoint` starts the `moto_server` console script from this virtualenv on a free
127.0.0.1 port and points the standard AWS variables at it for the whole session;
`ray_local` starts a 2-CPU local Ray. Tests using them are marked `integration`.
`make test` runs two pytest-xdist workers, a whole file each at a time (`--dist
loadfile`); `pytest_collection_modifyitems` puts the longest files first, so that the two
workers finish together. Each worker has its own moto_server and its own local Ray.
"""

from __future__ import annotations

import atexit
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from lightman.platform.runtime import setup
from lightman.tasks.schema import ClipRecord, Preprocessed, row_from_record

# Serve's HTTP proxy may take longer than its 3 readiness checks of 5 s to start on a
# loaded 2-core machine (then Serve kills it and a test's first request finds no proxy:
# seen at a load average of 4); set before any test starts Ray, which every Ray process inherits
os.environ.setdefault("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", "60")


def _token_auth_on() -> None:
    """Ray's token authentication stays on in every test, as it is on for local clusters by
    default from Ray 2.60: each test process gets its own token in a private file (the way
    Ray documents it: RAY_AUTH_MODE=token with RAY_AUTH_TOKEN_PATH), which every Ray
    process, `ray start` and `ray job submit` it starts inherits; the user's own
    ~/.ray/auth_token is never read or written."""
    folder = Path(tempfile.mkdtemp(prefix="lightman-ray-auth-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    token = folder / "auth_token"
    token.touch(mode=0o600)
    token.write_text(secrets.token_hex(32))  # 256 bits, as `ray get-auth-token --generate`
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ["RAY_AUTH_TOKEN_PATH"] = str(token)
    os.environ.pop("RAY_AUTH_TOKEN", None)


_token_auth_on()
setup()  # Lightman's process-wide settings, as every entry point applies them (runtime.py)

S3_BUCKET = "lightman-test"
# The files that take longest (seconds, one process on an idle 2-core machine): run first,
# a worker that picks one up late would finish alone. The rest keep their order.
LONGEST_FIRST = {
    # simulated multi-node clusters (tests/clusters.py) stop this process's local Ray: a
    # module after them that needs it starts it again (`ray_local` is module-scoped)
    "test_benchmarks_smoke.py": 420,
    "test_serve_hostile.py": 400,
    "test_cluster_train.py": 300,
    "test_reproduce.py": 296,
    "test_cluster_tune.py": 170,
    "test_autoscaling.py": 132,  # measured alone, load average 1 to 6
    "test_deploy.py": 150,
    "test_distributed.py": 184,
    "test_train.py": 176,
    "test_tune.py": 150,
    # not measured idle: about half its 306 s in a loaded two-worker run, the ratio of the files
    # above measured both ways (test_distributed 184/376, test_tune 150/266)
    "test_cli_examples.py": 150,
    "test_data.py": 31,
    "test_serve.py": 29,
    "test_demo.py": 23,
}


def pytest_collection_modifyitems(config, items):
    """Longest files first (stable: the order within a file is kept)."""
    items.sort(key=lambda item: -LONGEST_FIRST.get(item.path.name, 0))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"moto_server exited with code {proc.returncode} before answering {url}"
            )
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except urllib.error.HTTPError:
            return  # it answered, with an HTTP error status: up
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"moto_server did not answer {url} within {timeout} s")


@pytest.fixture(scope="session")
def s3_endpoint():
    """(endpoint_url, bucket) of a real moto_server with the AWS variables pointing at it."""
    import boto3

    server = Path(sys.executable).with_name("moto_server")
    if not server.exists():
        pytest.fail(f"{server} not found: install the test extras (pip install -e '.[test]')")
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [str(server), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    mp = pytest.MonkeyPatch()
    try:
        _wait_http(endpoint, proc)
        mp.setenv("AWS_ENDPOINT_URL", endpoint)
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        for var in ("AWS_REGION", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE"):
            mp.delenv(var, raising=False)
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(
            Bucket=S3_BUCKET
        )
        yield endpoint, S3_BUCKET
    finally:
        mp.undo()
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def _ray_until_session_end():
    """Stops this process's local Ray once, when the session ends."""
    yield
    import ray

    if ray.is_initialized():
        ray.shutdown()


@pytest.fixture(scope="module")
def ray_local(s3_endpoint, _ray_until_session_end):
    """A local 2-CPU Ray (token auth on, no dashboard, quiet Ray Data), started once and kept
    for the session; started again for a module when a simulated-cluster test of the same
    process has shut it down (tests/clusters.py: a process holds one Ray at a time).

    Started after `s3_endpoint`, so its worker processes inherit the AWS variables and
    Ray tasks can read s3:// URIs of the test endpoint.
    """
    import ray

    # two xdist workers each run a Ray on 2 cores: a Ray Train worker group may take
    # longer than Ray's default 60 s to start (inherited by the Train controller)
    os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "600")
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    else:  # a module before this one may have left a dead Ray Train controller's CPUs held
        from lightman.platform.distributed import free_orphaned_placement_groups

        free_orphaned_placement_groups()
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    return ray


def make_index_rows(
    dataset: str = "casme2",
    n: int = 6,
    *,
    expression: str = "micro",
    subjects: int = 2,
    classes: int = 3,
    frames: int = 3,
    size: int = 8,
    channels: int = 3,
    seed: int = 0,
    repairs_every: int = 0,
) -> list[dict]:
    """`n` index rows built with `row_from_record` from random uint8 frames (M, H, W, C)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        subject = f"{dataset}/s{i % subjects:02d}"
        rec = ClipRecord(
            dataset=dataset,
            subject=subject,
            filename=f"{expression}_{i:03d}",
            expression=expression,
            emotion=f"emotion{i % classes}",
            onset=10 * i,
            apex=10 * i + 4,
            offset=10 * i + 8,
            fps=200.0,
            source_uri=f"/data/{dataset}/{i}",
            repairs=(f"apex: missing, estimated for clip {i}",)
            if repairs_every and i % repairs_every == 0
            else (),
        )
        pre = Preprocessed(
            frames=rng.integers(0, 256, size=(frames, size, size, channels), dtype=np.uint8),
            apex=rec.apex,
            apex_source="annotated",
            offset=rec.offset,
            num_frames=9,
            sampled=tuple(np.linspace(rec.onset, rec.offset, frames).astype(int)),
            face_box=(0, 0, size, size),
        )
        rows.append(row_from_record(rec, pre, label=i % classes, flow=None))
    return rows


@pytest.fixture
def index_rows():
    """Factory of tiny index rows: `index_rows(dataset, n, expression=..., seed=...)`."""
    return make_index_rows


def entry_for(dataset: str, classes: int = 3, **extra) -> dict:
    """A minimal dataset entry for `write_index` matching `make_index_rows`."""
    return {
        "dataset": dataset,
        "label_scheme": {"name": "native", "class_names": [f"emotion{i}" for i in range(classes)]},
        **extra,
    }


@pytest.fixture
def dataset_entry():
    """Factory of minimal dataset entries: `dataset_entry(dataset, classes=3, **extra)`."""
    return entry_for

"""A soak of normal clients with one hostile client among them (issue 28).

    .venv/bin/python benchmarks/serve_hostile.py            # 8 clients, 60 s per phase
    .venv/bin/python benchmarks/serve_hostile.py --smoke    # 2 clients, 2 s per phase

One replica of the tests' tiny ProtoNet (tests/serve_fixtures.py; npz clips of M frames,
face_crop=none, as benchmarks/serve.py), with the shipped limits. Two phases on the same
replica: the normal clients alone, then the same clients with one hostile client that
sends, back to back, the most expensive clip the limits allow (a zip of black PNG frames
whose pixels summed over frames are just under `limits.max_total_pixels`: each is read,
unpacked and searched for its apex), a `Content-Length` of 2 GiB and a chunked body that
never ends. Prints p50 / p99 of the normal requests in each phase and their ratio, what
the hostile client got, and the peak resident memory of the replica and its
preprocessing workers, with the load average.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import io
import os
import socket
import tempfile
import threading
import time
import zipfile
from pathlib import Path

from lightman.platform.runtime import setup  # noqa: E402

setup()  # an entry point: process-wide settings before torch loads (runtime.py)

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import requests  # noqa: E402
from serve import clips_of, start  # noqa: E402  benchmarks/serve.py: the same set-up

from lightman.platform.config import load_config  # noqa: E402
from lightman.platform.serve import ServeConfig, build_app  # noqa: E402


def _stalling_zip(frames: int, height: int, width: int) -> bytes:
    """A zip of `frames` black PNGs: small on the wire, costly to unpack and read."""
    png = cv2.imencode(".png", np.zeros((height, width, 3), np.uint8))[1].tobytes()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for i in range(frames):
            z.writestr(f"img{i + 1}.png", png)
    return buf.getvalue()


def _rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _replica_tree() -> list[int]:
    """The Serve replica's pid and its children's (the preprocessing workers)."""
    parents: dict[int, int] = {}
    replica = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read()
            with open(f"/proc/{entry}/stat") as f:
                parents[int(entry)] = int(f.read().rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if b"ServeReplica:lightman" in cmd:
            replica.append(int(entry))
    return replica + [pid for pid, ppid in parents.items() if ppid in replica]


class MemoryWatch(threading.Thread):
    """Samples the summed RSS of the replica and its workers; keeps the peak."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak_kb, self.stop = 0, threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.1):
            self.peak_kb = max(self.peak_kb, sum(_rss_kb(p) for p in _replica_tree()))


def normal_load(url: str, clips: list[bytes], clients: int, seconds: float) -> dict:
    """`clients` threads predicting for `seconds`: latencies (ms) and statuses."""
    deadline = time.monotonic() + seconds
    ms: list[float] = []
    codes: list[int] = []

    def client(k: int) -> None:
        session, i = requests.Session(), k
        while time.monotonic() < deadline:
            started = time.perf_counter()
            r = session.post(
                f"{url}/v1/predict",
                files={"clip": ("c.npz", clips[i % len(clips)])},
                data={"face_crop": "none"},
                timeout=600,
            )
            ms.append(1000 * (time.perf_counter() - started))
            codes.append(r.status_code)
            i += clients

    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    a = np.array(ms)
    return {
        "n": len(ms),
        "p50": float(np.percentile(a, 50)),
        "p99": float(np.percentile(a, 99)),
        "not_200": sum(c != 200 for c in codes),
        "5xx": sum(c >= 500 for c in codes),
    }


def _chunked_forever(port: int, limit: int) -> str:
    """A chunked body that would never end: the status line the server answers with."""
    with socket.create_connection(("127.0.0.1", port), timeout=120) as s:
        s.sendall(
            b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Type: multipart/form-data; boundary=abc\r\n\r\n"
        )
        head = b'--abc\r\nContent-Disposition: form-data; name="clip"; filename="c"\r\n\r\n'
        s.sendall(b"%x\r\n%s\r\n" % (len(head), head))
        chunk, sent = b"\0" * 65536, 0
        stop = threading.Event()

        def feed() -> None:
            nonlocal sent
            try:
                while not stop.is_set() and sent < 64 * limit:
                    s.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    sent += len(chunk)
            except OSError:
                pass

        t = threading.Thread(target=feed, daemon=True)
        t.start()
        answer = s.recv(200)
        stop.set()
    t.join(timeout=30)
    return answer.split(b"\r\n")[0].decode(errors="replace")


def hostile(url: str, port: int, stall: bytes, limit: int, stop: threading.Event) -> dict:
    """The hostile client: the costliest clip, a lying Content-Length, an endless body."""
    got: dict[str, int] = {}
    while not stop.is_set():
        r = requests.post(
            f"{url}/v1/predict",
            files={"clip": ("stall.zip", stall)},
            data={"face_crop": "none"},
            timeout=600,
        )
        got[f"stalling zip -> {r.status_code}"] = got.get(f"stalling zip -> {r.status_code}", 0) + 1
        with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
            s.sendall(
                f"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Length: {2**31}\r\n"
                "Content-Type: multipart/form-data; boundary=abc\r\n\r\n".encode()
            )
            status = s.recv(200).split(b"\r\n")[0].decode(errors="replace")
        key = f"Content-Length 2 GiB -> {status.split(' ')[1] if ' ' in status else status}"
        got[key] = got.get(key, 0) + 1
        status = _chunked_forever(port, limit)
        key = f"endless chunked body -> {status.split(' ')[1] if ' ' in status else status}"
        got[key] = got.get(key, 0) + 1
    return got


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true", help="2 clients, 2 s per phase, small clips")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--seconds", type=float, default=60.0, help="length of each phase")
    a = p.parse_args()
    clients, seconds = (2, 2.0) if a.smoke else (a.clients, a.seconds)
    import ray
    from ray import serve

    root = Path(tempfile.mkdtemp(prefix="lightman-bench-hostile-"))
    _, checkpoint, port = start(root, range(6), 3)
    url = f"http://127.0.0.1:{port}"
    over = [f"predictor.checkpoint={checkpoint}", f"predictor.store={root / 'adapted'}"]
    if a.smoke:
        over += ["limits.max_total_pixels=12000000"]
    cfg = load_config(ServeConfig, None, over)
    serve.run(build_app(cfg), name="lightman", route_prefix="/", blocking=False)
    requests.get(f"{url}/healthz", timeout=120).raise_for_status()

    clips = clips_of(32)
    h, w = (480, 640) if a.smoke else (1080, 1920)
    frames = min(cfg.limits.max_frames, cfg.limits.max_total_pixels // (h * w))
    stall = _stalling_zip(frames, h, w)
    normal_load(url, clips, clients, 1.0 if a.smoke else 2.0)  # warm-up: first passes, connections

    watch = MemoryWatch()
    watch.start()
    alone = normal_load(url, clips, clients, seconds)
    alone_peak = watch.peak_kb
    stop = threading.Event()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        bad = pool.submit(hostile, url, port, stall, cfg.limits.max_bytes, stop)
        mixed = normal_load(url, clips, clients, seconds)
        stop.set()
        got = bad.result()
    watch.stop.set()
    watch.join()
    serve.shutdown()
    ray.shutdown()

    print(
        f"load average {os.getloadavg()[0]:.1f}, {os.cpu_count()} CPUs, {clients} normal "
        f"clients, {seconds:g} s per phase, prep_workers {cfg.prep_workers}"
    )
    print(
        f"hostile clip: zip of {frames} black {w}x{h} PNGs, {len(stall) / 2**20:.2f} MiB "
        f"({frames * h * w / 1e6:.0f} Mpx of limits.max_total_pixels "
        f"{cfg.limits.max_total_pixels / 1e6:.0f} Mpx)"
    )
    print("| normal requests | n | p50 ms | p99 ms | not 200 | 5xx |")
    print("|---|---|---|---|---|---|")
    for name, r in (("alone", alone), ("with the hostile client", mixed)):
        print(
            f"| {name} | {r['n']} | {r['p50']:.0f} | {r['p99']:.0f} | {r['not_200']} | {r['5xx']} |"
        )
    print(f"p99 with / p99 alone: {mixed['p99'] / alone['p99']:.2f}")
    print("hostile client got: " + ", ".join(f"{k}: {v}" for k, v in sorted(got.items())))
    print(
        f"peak RSS of the replica and its workers: alone {alone_peak / 1024:.0f} MiB, "
        f"with the hostile client {watch.peak_kb / 1024:.0f} MiB"
    )


if __name__ == "__main__":
    main()

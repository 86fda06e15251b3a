"""Serving and batch-scoring throughput, with ratios measured in the same run.

    .venv/bin/python benchmarks/serve.py              # minutes on a laptop-class CPU
    .venv/bin/python benchmarks/serve.py --quick      # fewer requests and clips
    .venv/bin/python benchmarks/serve.py --smoke      # toy sizes: only that it runs (tests)

1. the Serve app over real HTTP (one replica): clips/s and p50 / p99 latency with 1 and 8
   concurrent clients, batching on (max_batch_size 8) and off (1, the same replica
   reconfigured in place); the ratio batched / unbatched at 8 clients;
2. a soak of 1,000 requests at 8 clients, batching on: the count of 5xx answers and of
   anything but 200;
3. `lightman score` (Ray Data, a pool of 2 model actors) against a plain loop in one
   process (read the index with pyarrow, predict batch after batch) over the same index:
   clips/s of each and their ratio, Ray's start-up of the actors included.

The model is the tests' untrained ProtoNet over their generated clips (tests/
serve_fixtures.py: 32 px, M = 8; `--hidden` widens the encoder): the weights do not
change the cost of a forward pass, and generating the data takes a second where
ingesting `lightman synth` output takes minutes. Requests carry npz clips of M frames
with face_crop=none, so the server's time is the upload checks, preprocessing, batching
and the model. Prints a markdown table for docs/benchmarks.md, with the load average.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import os
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

from lightman.platform.runtime import setup  # noqa: E402

setup()  # an entry point: process-wide settings before torch loads (runtime.py)
sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))  # the generated clips

import numpy as np  # noqa: E402
import requests  # noqa: E402
import serve_fixtures as sf  # noqa: E402

from lightman.platform.config import load_config  # noqa: E402
from lightman.platform.index import read_table  # noqa: E402
from lightman.platform.predictor import Predictor, PredictorConfig  # noqa: E402
from lightman.platform.score import ScoreConfig, score  # noqa: E402
from lightman.platform.serve import ServeConfig, build_app  # noqa: E402
from lightman.tasks.preprocess import sample_indices  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clips_of(n: int) -> list[bytes]:
    """`n` npz request bodies: generated clips of M frames (tests/serve_fixtures.py)."""
    sampled = sample_indices(0, sf.LENGTH - 1, sf.M)
    return [sf.npz_bytes(sf.clip_frames(i % 3, 0.3, seed=i)[sampled]) for i in range(n)]


def start(
    root: Path, subjects: range, clips_per_class: int, overrides=(), gpus: int = 0
) -> tuple[str, str, int]:
    """The tests' tiny index and untrained checkpoint (model `overrides`) under `root`, Ray
    on this machine and Serve's HTTP proxy on a free local port: (index, checkpoint, port).
    Also benchmarks/serve_hostile.py's set-up."""
    import ray
    from ray import serve

    index = sf.write_tiny_index(
        str(root / "index"), subjects=subjects, clips_per_class=clips_per_class
    )
    checkpoint = sf.untrained_checkpoint(str(root / "best.pt"), index, overrides=tuple(overrides))
    ray.init(
        num_cpus=os.cpu_count(),
        num_gpus=gpus,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    return index, checkpoint, port


def load(url: str, clips: list[bytes], clients: int, requests_n: int) -> dict:
    """`requests_n` predictions from `clients` threads: clips/s, p50/p99 ms, statuses."""
    local = threading.local()

    def one(i: int) -> tuple[float, int, dict]:
        session = getattr(local, "session", None) or requests.Session()
        local.session = session
        started = time.perf_counter()
        r = session.post(
            f"{url}/v1/predict",
            files={"clip": ("c.npz", clips[i % len(clips)])},
            data={"face_crop": "none"},
            timeout=300,
        )
        answer = r.json() if r.status_code == 200 else {}
        return 1000 * (time.perf_counter() - started), r.status_code, answer

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(one, range(requests_n)))
    wall = time.perf_counter() - started
    ms = np.array([m for m, _, _ in results])
    codes = [c for _, c, _ in results]
    answers = [a for _, _, a in results if a]

    def mean_of(key: str) -> float:  # the server's own per-request figures
        return float(np.mean([a["timings_ms"][key] for a in answers])) if answers else np.nan

    return {
        "clips_s": requests_n / wall,
        "p50": float(np.percentile(ms, 50)),
        "p99": float(np.percentile(ms, 99)),
        "5xx": sum(c >= 500 for c in codes),
        "not_200": sum(c != 200 for c in codes),
        "n": requests_n,
        # where a request's time goes: server preprocessing, the forward pass of its batch
        # (shared by the batch), and what the client saw beyond the server's total (HTTP,
        # the proxy, multipart parsing)
        "prep_ms": mean_of("preprocess"),
        "model_ms": mean_of("model"),
        "outside_ms": float(np.mean(ms)) - mean_of("total") if answers else np.nan,
        "batch": float(np.mean([a["batch_size"] for a in answers])) if answers else np.nan,
    }


def deploy(cfg: ServeConfig, batch: int) -> None:
    """(Re)deploy with `max_batch_size=batch`: a user_config change reconfigures in place."""
    from ray import serve

    gpus = 0.0 if cfg.predictor.device == "cpu" else 1.0
    app = build_app(dataclasses.replace(cfg, max_batch_size=batch), gpus=gpus)
    serve.run(app, name="lightman", route_prefix="/", blocking=False)


def plain_loop(checkpoint: str, index: str, batch_size: int) -> float:
    """clips/s of one process: load the model, read the index, predict batch by batch."""
    started = time.perf_counter()
    predictor = Predictor(PredictorConfig(checkpoint=checkpoint))
    table = read_table(index, expression="micro", columns=["frames", "frames_shape"])
    frames = [
        np.frombuffer(b.as_py(), np.uint8).reshape(s.as_py())
        for b, s in zip(table.column("frames"), table.column("frames_shape"))
    ]
    for i in range(0, len(frames), batch_size):
        predictor.probabilities(predictor.base, np.stack(frames[i : i + batch_size]))
    return len(frames) / (time.perf_counter() - started)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer requests and clips")
    p.add_argument(
        "--smoke", action="store_true", help="toy sizes, seconds: only that the benchmark runs"
    )
    p.add_argument("--hidden", type=int, default=16, help="encoder width (64: the paper's)")
    p.add_argument("--soak", type=int, default=1000, help="requests of the soak")
    p.add_argument(
        "--device", default="cpu", help="cuda: the replica on one GPU (scoring stays on CPU)"
    )
    a = p.parse_args()
    warm_up = 16  # requests before each measured pair: the first forward passes, connections
    if a.smoke:  # every step of the full run, with the fewest clips and requests
        a.hidden, a.soak, warm_up = 8, 8, 4
    import ray
    from ray import serve

    root = Path(tempfile.mkdtemp(prefix="lightman-bench-serve-"))
    subjects = range(4 if a.smoke else 20 if a.quick else 60)
    index, checkpoint, port = start(
        root, subjects, 4, [f"model.hidden={a.hidden}"], gpus=0 if a.device == "cpu" else 1
    )
    url = f"http://127.0.0.1:{port}"
    base = load_config(
        ServeConfig,
        None,
        [
            f"predictor.checkpoint={checkpoint}",
            f"predictor.store={root / 'adapted'}",
            "batch_wait_timeout_s=0.01",
            f"predictor.device={a.device}",
        ],
    )
    clips = clips_of(16 if a.smoke else 64)
    one, eight = (4, 8) if a.smoke else (20, 80) if a.quick else (60, 240)
    rows = {}
    for batch in (8, 1):
        deploy(base, batch)
        load(url, clips, 4, warm_up)
        rows[(batch, 1)] = load(url, clips, 1, one)
        rows[(batch, 8)] = load(url, clips, 8, eight)
    deploy(base, 8)
    soak = load(url, clips, 8, a.soak)
    serve.shutdown()

    # batch scoring stays on the CPU: its actors reserve CPUs, not GPUs
    scfg = load_config(
        ScoreConfig, None, [f"predictor.checkpoint={checkpoint}", "actors=2", "batch_size=16"]
    )
    result = score(scfg, index, str(root / "scores"))
    ray_cps = result.clips / result.seconds
    loop_cps = plain_loop(checkpoint, index, 16)
    ray.shutdown()

    if a.smoke:
        print("smoke run: toy sizes, only that the benchmark runs; its figures mean nothing")
    print(
        f"load average {os.getloadavg()[0]:.1f}, {os.cpu_count()} CPUs, hidden {a.hidden}, "
        f"device {a.device}"
    )
    print(
        "| measurement | clips/s | p50 ms | p99 ms | ratio | mean batch | preprocess ms "
        "| model ms per batch | outside the server ms |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    dash = "| – | – | – | – |"
    for clients in (1, 8):
        for batch in (8, 1):
            r = rows[(batch, clients)]
            ratio = r["clips_s"] / rows[(1, clients)]["clips_s"]
            name = f"predict, {clients} client(s), batching {'on' if batch > 1 else 'off'}"
            print(
                f"| {name} | {r['clips_s']:.1f} | {r['p50']:.0f} | {r['p99']:.0f} | {ratio:.2f} "
                f"| {r['batch']:.1f} | {r['prep_ms']:.1f} | {r['model_ms']:.1f} "
                f"| {r['outside_ms']:.1f} |"
            )
    print(
        f"| soak: {soak['n']} requests at 8 clients, batching on | {soak['clips_s']:.1f} | "
        f"{soak['p50']:.0f} | {soak['p99']:.0f} | 5xx: {soak['5xx']}, "
        f"not 200: {soak['not_200']} {dash}"
    )
    print(
        f"| score {result.clips} clips, Ray Data, 2 actors | {ray_cps:.1f} | – | – "
        f"| {ray_cps / loop_cps:.2f} {dash}"
    )
    print(
        f"| score {result.clips} clips, plain loop, 1 process | {loop_cps:.1f} | – | – "
        f"| 1.00 {dash}"
    )


if __name__ == "__main__":
    main()

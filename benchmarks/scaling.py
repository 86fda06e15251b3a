"""Data-parallel scaling of meta-training on this machine: 1 against 2 Ray Train workers.

    python benchmarks/scaling.py [--steps 24] [--meta-batch 4]
    python benchmarks/scaling.py --smoke    # toy sizes: that it runs (figures mean nothing)

In one run, each worker with one torch thread, on a seeded 32-px CASME II + CK+
stand-in (LightmanNet, 5-way 1-shot, Conv4 with 32 channels): the same training in
process (W = 1, no Ray), through Ray Train with W = 1 and with W = 2. It prints, as
ratios measured in this run: episodes/s (median over steps after the first two), the
share of step time spent in the all-reduce of the flat gradient buffer and, apart from
it, the share spent waiting for the slower worker (the ranks first meet in a one-number
all-reduce), and the time from the call to the first finished step (Ray's start-up
included). The machine is shared and
noisy: compare the ratios, not the absolute figures, and run it on an idle machine.
--smoke (tests/test_benchmarks_smoke.py) runs the three runs at toy size (SMOKE), so the
script cannot rot between the runs it is meant for; its figures mean nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from lightman.platform.runtime import setup  # noqa: E402

setup()  # an entry point: process-wide settings before torch loads (runtime.py)

from lightman.platform.config import load_config  # noqa: E402
from lightman.platform.generated import small_index  # noqa: E402
from lightman.platform.run_log import read_metrics  # noqa: E402
from lightman.platform.train import TrainConfig, run_training  # noqa: E402

MODEL = [
    "episode.ways=5",
    "episode.shots=1",
    "episode.query=2",
    "episode.aux_shots=1",
    "model.ways=5",
    "model.image_size=32",
    "model.hidden=32",
    "model.aux_dim=32",
    "model.input_mode=delta",
    "threads=1",
    "val_episodes=4",
    "test_episodes=4",
    "data.val_fraction=0.25",
    "data.test_fraction=0.3",
]


# --smoke: a smaller index at 16 px, 6 frames (generating and ingesting clips is most of a
# smoke run), 3-way episodes that it can split, a narrow model and 3 steps of 2 tasks (the
# first two steps are warm-up, so 3 is the fewest that leave a measured one)
SMOKE_SYNTH = ["casme2.subjects=8", "casme2.clips=64", "ckplus.subjects=4", "ckplus.clips=16"]
SMOKE_MODEL = ["model.image_size=16", "model.frames=6", "model.hidden=8", "model.aux_dim=8"]
SMOKE_MODEL += ["episode.ways=3", "model.ways=3", "val_episodes=2", "test_episodes=2"]
SMOKE_LINE = "smoke run: toy sizes, only that the benchmark runs; its figures mean nothing"


def make_index(root: Path, smoke: bool = False) -> str:
    synth = [
        "datasets=[casme2,ckplus]",
        "seed=0",
        "casme2.subjects=16",
        "casme2.clips=160",
        "ckplus.subjects=6",
        "ckplus.clips=40",
    ]
    if smoke:
        return small_index(root, [*synth, *SMOKE_SYNTH], size=16, frames=6)
    return small_index(root, synth)


def measure(index: str, out: Path, steps: int, meta_batch: int, extra: list[str]) -> dict:
    cfg = load_config(
        TrainConfig,
        None,
        [
            f"data.index={index}",
            *MODEL,
            f"iterations={steps}",
            f"eval_every={steps}",
            f"checkpoint_every={steps}",
            f"meta_batch={meta_batch}",
            *extra,
        ],
    )
    t0 = time.time()
    run_training(cfg, out)
    rows = read_metrics(out)[2:]  # the first steps warm up allocators and caches
    return {
        "episodes_per_s": statistics.median(r["episodes_per_s"] for r in rows),
        "reduce_share": sum(r["reduce_seconds"] for r in rows)
        / sum(r["step_seconds"] for r in rows),
        "wait_share": sum(r["wait_seconds"] for r in rows) / sum(r["step_seconds"] for r in rows),
        "first_step_s": read_metrics(out)[0]["time"] - t0,
    }


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--steps", type=int, default=24, help="outer steps per measured run")
    p.add_argument("--meta-batch", type=int, default=4, help="global tasks per step (even)")
    p.add_argument(
        "--smoke",
        action="store_true",
        help="3 steps of 2 tasks, 16 px, hidden 8: that it runs (its figures mean nothing)",
    )
    a = p.parse_args()
    extra = SMOKE_MODEL if a.smoke else []
    if a.smoke:
        a.steps, a.meta_batch = 3, 2
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        index = make_index(root, a.smoke)
        if a.smoke:  # one local Ray for both Ray Train runs (each would start and stop its own)
            import ray

            ray.init(include_dashboard=False, configure_logging=False)
        runs = {
            name: measure(index, root / folder, a.steps, a.meta_batch, [*extra, *more])
            for name, folder, more in (
                ("in process, W=1", "local", []),
                ("Ray Train, W=1", "ray1", ["backend=ray"]),
                ("Ray Train, W=2", "ray2", ["workers=2"]),
            )
        }
    base = runs["Ray Train, W=1"]["episodes_per_s"]
    print(
        f"scaling, {a.steps} steps of {a.meta_batch} tasks, one thread per worker, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}"
    )
    if a.smoke:
        print(SMOKE_LINE)
    print(
        "| run | episodes/s | x Ray W=1 | all-reduce share | waiting for the slower worker "
        "| time to first step s |"
    )
    print("|---|---|---|---|---|---|")
    for name, r in runs.items():
        print(
            f"| {name} | {r['episodes_per_s']:.2f} | {r['episodes_per_s'] / base:.2f} | "
            f"{100 * r['reduce_share']:.1f}% | {100 * r['wait_share']:.1f}% "
            f"| {r['first_step_s']:.1f} |"
        )
    sys.stdout.flush()


if __name__ == "__main__":
    main()

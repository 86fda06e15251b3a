"""Meta-training end to end: the real CLI on a generated index, and every learner learns.

One small CASME II + CK+ stand-in is generated, ingested at 32 px and shared by the
tests of this file (session fixture).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from lightman.models.checkpoint import load_checkpoint
from lightman.platform import generated
from lightman.platform.cli import main
from lightman.platform.config import load_config
from lightman.platform.loop import outer_step
from lightman.platform.train import TrainConfig, prepare, run_training

sys.path.insert(0, str(Path(__file__).parent))  # pytest runs with --import-mode=importlib
import tiny  # noqa: E402

TINY = [
    *tiny.TASK,
    *tiny.MODEL_32,
    "meta_batch=2",
    "threads=1",
    *tiny.SPLIT,
]


@pytest.fixture(scope="session")
def small_index(tmp_path_factory) -> str:
    return generated.small_index(
        tmp_path_factory.mktemp("train-data"),
        [
            "datasets=[casme2,ckplus]",
            "seed=5",
            "casme2.subjects=12",
            "casme2.clips=140",
            "ckplus.subjects=8",
            "ckplus.clips=40",
        ],
    )


def test_outer_step_applies_the_mean_gradient():
    p = {"w": torch.nn.Parameter(torch.zeros(3))}
    opt = torch.optim.SGD(p.values(), lr=0.5)
    outer_step(opt, p, {"w": torch.tensor([2.0, 4.0, 6.0])}, total_tasks=2)
    assert torch.allclose(p["w"].detach(), torch.tensor([-0.5, -1.0, -1.5]))
    assert p["w"].grad is None


def test_train_and_eval_cli(small_index, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(
        [
            "train",
            "--out",
            str(out),
            f"data.index={small_index}",
            *TINY,
            "iterations=3",
            "eval_every=2",
            "val_episodes=5",
            "test_episodes=10",
        ]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert "| lightman | 3-way 1-shot |" in printed
    assert "[train] training in process (backend=auto, workers=1)" in printed
    result = json.loads((out / "results.json").read_text())
    assert result["metrics"]["backend"] == "local"  # backend=auto resolved, recorded
    assert result["config"]["learner"]["name"] == "lightman" and result["versions"]["torch"]
    split = result["split"]
    assert not set(split["train"]) & set(split["test"]) and not set(split["val"]) & set(
        split["test"]
    )
    assert not set(split["train"]) & set(split["val"])
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 3
    model, cfg, meta = load_checkpoint(out / "best.pt")  # weights_only=True inside
    assert cfg.ways == 3 and list(meta["extra"]["split"]["test"]) == split["test"]

    rc = main(
        [
            "eval",
            "--checkpoint",
            str(out / "best.pt"),
            "--index",
            small_index,
            "--protocol",
            "fewshot",
            "--out",
            str(tmp_path / "eval"),
            "episodes=10",
        ]
    )
    assert rc == 0
    evaluated = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert evaluated["metrics"]["test_subjects"] == split["test"]
    assert "| lightman | 3-way 1-shot |" in capsys.readouterr().out

    rc = main(
        [
            "eval",
            "--checkpoint",
            str(out / "best.pt"),
            "--index",
            small_index,
            "--out",
            str(tmp_path / "noisy"),
            "episodes=10",
            "corrupt=mask",
            "corrupt_fraction=0.5",
        ]
    )
    assert rc == 0
    noisy = json.loads((tmp_path / "noisy" / "results.json").read_text())["metrics"]
    assert noisy["corrupt"] == "mask" and noisy["corrupted_clips"]
    test_subjects = {s.split("/")[1] for s in split["test"]}  # clip ids are dataset/subject/clip
    assert {c.split("/")[1] for c in noisy["corrupted_clips"]} <= test_subjects


def test_only_backend_and_workers_place_a_run_on_ray():
    """storage_path is Ray Train's storage; it does not move an in-process run onto Ray."""
    with pytest.raises(ValueError, match="storage_path='s3://b/runs' is Ray Train's") as e:
        TrainConfig(storage_path="s3://b/runs")
    assert "in process (backend=auto, workers=1)" in str(e.value) and "backend=ray" in str(e.value)
    with pytest.raises(ValueError, match="storage_path="):
        TrainConfig(storage_path="s3://b/runs", backend="local")
    on_ray = TrainConfig(storage_path="s3://b/runs", backend="ray")
    assert on_ray.uses_ray and on_ray.placement == "on Ray Train, 1 worker(s) (backend=ray)"
    two = TrainConfig(workers=2, storage_path="s3://b/runs")
    assert two.uses_ray and two.placement == "on Ray Train, 2 worker(s) (backend=auto, workers=2)"
    assert not TrainConfig().uses_ray and TrainConfig().placement.startswith("in process")
    with pytest.raises(ValueError, match="workers=2 needs backend=ray"):
        TrainConfig(workers=2, backend="local")


def test_train_rejects_mismatched_ways(small_index, tmp_path):
    assert (
        main(
            [
                "train",
                "--out",
                str(tmp_path),
                f"data.index={small_index}",
                "episode.ways=4",
                "model.ways=3",
            ]
        )
        == 2
    )


def test_split_seed_fixes_the_subjects_across_training_seeds(small_index):
    def split(*overrides):
        cfg = load_config(TrainConfig, None, [*TINY, f"data.index={small_index}", *overrides])
        s = prepare(cfg).split
        return s.train, s.val, s.test

    seeds = (1, 2, 3, 4, 5)
    assert len({split(f"seed={s}") for s in seeds}) > 1  # without it the run's seed draws it
    assert {split(f"seed={s}", "data.split_seed=1") for s in seeds} == {split("seed=1")}


# Measured spread behind the bound below (small_index, 60 steps, 3-way 1-shot, 150 test
# episodes; 600 only narrow it). At the test's seed 1, 4 model initialisations with 1 thread
# and one run with 2 (another CPU's float rounding gives another trajectory of the same
# seed, which a new initialisation samples); lowest / mean / standard deviation of the
# test accuracy:
#   lightman 0.444 / 0.523 / 0.060   maml 0.519 / 0.534 / 0.016   anil 0.441 / 0.539 / 0.060
#   reptile 0.482 / 0.498 / 0.015    protonet 0.552 / 0.574 / 0.014
#   supervised 0.473 / 0.555 / 0.057 (4 initialisations, 1 thread)
# Over seeds 1-5 (other splits too) the lowest accuracy was 0.416 (reptile, seed 5).
# The old bound, 1/3 + 0.03 on acc − CI with 150 episodes (acc > 0.40), sat 2 standard
# deviations below lightman's mean, and the old supervised baseline (per-episode labels,
# mean 0.41) failed it on another machine. acc − CI > 1/3 with 300 episodes (CI about
# 0.024) asks for acc > 0.36: 2.8 standard deviations below lightman's mean, 3.0 below
# anil's and 3.5 below supervised's (the widest spreads, measured at 150 episodes, so wider
# than at 300), 9 or more below the others', and 0.06 below the lowest accuracy seen anywhere.
CHANCE_MARGIN_RUNS = {
    "lightman": [],
    "maml": [],
    "anil": ["learner.inner_lr=0.4", "learner.inner_steps=3", "learner.test_inner_steps=3"],
    "reptile": ["learner.inner_lr=0.05"],
    "protonet": [],
    "supervised": ["model.ways=5"],  # h_pri over the five global classes of the pool
}


@pytest.mark.slow
@pytest.mark.parametrize("learner", list(CHANCE_MARGIN_RUNS))
def test_every_learner_beats_chance_on_unseen_subjects(small_index, tmp_path, learner):
    """3-way 1-shot on test subjects never seen in training: the 95% CI of the test accuracy
    lies above chance (1/3), by the margin measured above, within a CPU-minute per learner.
    ANIL adapts only h_pri, so its cheap inner loop takes more, larger steps."""
    overrides = [
        f"data.index={small_index}",
        *TINY,
        f"learner.name={learner}",
        "seed=1",
        "iterations=60",
        "eval_every=20",
        "val_episodes=30",
        "test_episodes=300",
        *CHANCE_MARGIN_RUNS[learner],
    ]
    result = run_training(load_config(TrainConfig, None, overrides), tmp_path / learner)
    acc, ci = result.metrics["test"]["acc"]
    assert acc - ci > 1 / 3, f"{learner}: test acc {acc:.3f} ± {ci:.3f} is not above chance"

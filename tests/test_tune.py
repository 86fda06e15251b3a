"""Hyper-parameter search on a real local Ray (2 CPUs): Ray Tune + Optuna, trials on Ray Train.

One search of 4 tiny trials (16-px clips, 4 outer steps) is shared by the tests of this
file; its space adds `model.image_size` 16 | 24 to tune_spaces/tiny.yaml, and a 24-px model
cannot take the index's 16-px clips, so those trials fail (in the trial's check of the
data, before its Ray Train worker group starts):
- the search finishes, records every trial once, the failed ones with their error, and
  writes best.yaml, the tables and the plots; best.yaml then trains with `lightman train`;
- re-running with --trials 6 adds 2 trials to the same stored study (6, none repeated);
- no trial receives a test subject (each trial writes the subjects its workers got);
- every file in tune_spaces/ loads; an unknown or a fixed key is rejected with the list.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from pathlib import Path

import optuna
import pytest
import ray
import yaml

from lightman.platform import tune
from lightman.platform.cli import main
from lightman.platform.config import ConfigError, load_config
from lightman.platform.train import TrainConfig, prepare, run_training
from lightman.platform.tune import (
    SearchConfig,
    check_finite,
    error_message,
    read_records,
    run_search,
)
from lightman.platform.tune_space import load_space, parse_space
from lightman.tasks import storage

sys.path.insert(0, str(Path(__file__).parent))  # pytest runs with --import-mode=importlib
import tiny  # noqa: E402

REPO = Path(__file__).parents[1]
SPACES = sorted(REPO.joinpath("tune_spaces").glob("*.yaml"))
TINY = [
    *tiny.TASK,
    *tiny.MODEL_16,
    "meta_batch=2",
    "threads=1",
    "iterations=4",
    "eval_every=2",
    "val_episodes=4",
    "test_episodes=6",
    "max_failures=0",  # a failing trial fails at once, without Ray Train's restarts
    "seed=3",  # its first 4 TPE draws take both image sizes (asserted below)
]


@pytest.fixture(scope="module")
def index(tmp_path_factory) -> str:
    """tiny.SYNTH at 16 px and 6 frames (the 5-class CASME II scheme, CK+ native), the one
    the cluster tests read too: built once per session."""
    return tiny.shared_index(tmp_path_factory, size=16)


def base_config(index: str) -> TrainConfig:
    return load_config(TrainConfig, None, [f"data.index={index}", *TINY])


def tiny_space():
    data = yaml.safe_load(Path("tune_spaces/tiny.yaml").read_text())
    return parse_space({**data, "model.image_size": {"choice": [16, 24]}}, where="tiny+size")


@pytest.fixture(scope="module")
def search(ray_local, index, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("search") / "s"
    run_search(base_config(index), tiny_space(), out, SearchConfig(trials=4, concurrent=2))
    return out


def test_a_search_of_four_trials_records_each_once_and_writes_the_best_config(search):
    records = read_records(search)
    assert len(records) == 4
    failed = [r for r in records if r["params"]["model.image_size"] == 24]
    finished = [r for r in records if r["params"]["model.image_size"] == 16]
    assert failed and finished  # seed=3 draws both sizes
    for r in failed:  # recorded with the worker's error, and the search went on
        assert r["status"] == "error" and "16" in r["error"] and "24" in r["error"], r
    for r in finished:
        assert r["status"] in ("ok", "stopped") and 0 <= r["val_uar"] <= 1, r
    best = max(finished, key=lambda r: r["val_uar"])
    text = (search / "best.yaml").read_text()
    assert text.startswith("# lightman train --config")
    cfg = yaml.safe_load(text)
    assert cfg["learner"]["lambda_pri"] == best["params"]["learner.lambda_pri"]
    assert cfg["model"]["image_size"] == 16 and cfg["backend"] == "auto"
    for name in ("trials.csv", "trials.md", "history.png", "importances.png", "lambda_pri.png"):
        assert (search / name).stat().st_size > 0, name
    assert len((search / "trials.csv").read_text().splitlines()) == 1 + 4
    study = optuna.load_study(study_name="lightman", storage=f"sqlite:///{search / 'study.db'}")
    states = sorted(t.state.name for t in study.trials)
    assert states.count("FAIL") == len(failed) and len(states) == 4


def test_the_best_config_trains_with_lightman_train(search, tmp_path):
    out = tmp_path / "best"
    assert main(["train", "--config", str(search / "best.yaml"), "--out", str(out)]) == 0
    assert (out / "best.pt").exists()
    assert json.loads((out / "results.json").read_text())["metrics"]["learner"] == "lightman"


def test_no_trial_receives_a_test_subject(search, index):
    split = prepare(base_config(index)).split  # the same seed, data and episodes: the same split
    seen = [json.loads(p.read_text()) for p in (search / "trials").glob("*/seen.json")]
    assert len(seen) >= 4
    for s in seen:
        assert not s["test_pool"]
        assert set(s["train_subjects"]) == set(split.train)
        assert set(s["val_subjects"]) == set(split.val)
        assert not (set(s["train_subjects"]) | set(s["val_subjects"])) & set(split.test)


def test_a_rerun_with_more_trials_extends_the_stored_study(search, index):
    run_search(base_config(index), tiny_space(), search, SearchConfig(trials=6, concurrent=2))
    records = read_records(search)
    assert len(records) == 6
    draws = [tuple(sorted(r["params"].items())) for r in records]
    assert len(set(draws)) == 6  # no trial repeated
    study = optuna.load_study(study_name="lightman", storage=f"sqlite:///{search / 'study.db'}")
    assert len(study.trials) == 6 and all(t.state.is_finished() for t in study.trials)
    searches = json.loads((search / "searches.json").read_text())
    assert [s["trials"] for s in searches] == [4, 2] and all(s["finished"] for s in searches)


@pytest.mark.parametrize("path", SPACES, ids=[p.name for p in SPACES])
def test_every_space_file_loads(path):
    space = load_space(path)
    assert space.params and all(p.key.startswith(("learner.", "model.")) for p in space.params)


def test_an_unknown_or_fixed_space_key_is_rejected_with_the_valid_list():
    with pytest.raises(ConfigError, match=r"unknown TrainConfig key\(s\) \['learner.lambda'\]"):
        parse_space({"learner.lambda": {"uniform": [0.3, 0.7]}})
    try:
        parse_space({"learner.lambda": {"uniform": [0.3, 0.7]}})
    except ConfigError as e:
        assert "'learner.lambda_pri'" in str(e) and "'episode.shots'" in str(e)
    with pytest.raises(ConfigError, match=r"\['episode.shots'\] are fixed .*'learner.inner_lr'"):
        parse_space({"episode.shots": {"choice": [1, 5]}})
    with pytest.raises(ConfigError, match="learner.aux_norm='both' is not a valid value"):
        parse_space({"learner.aux_norm": {"choice": ["joint", "both"]}})


def test_the_cli_rejects_a_bad_space_before_starting_ray(tmp_path, capsys):
    space = tmp_path / "bad.yaml"
    space.write_text("learner.sigmaa: {loguniform: [0.1, 10]}\n")
    rc = main(["tune", "--space", str(space), "--trials", "2", "--out", str(tmp_path / "s")])
    err = capsys.readouterr().err
    assert rc == 2 and "learner.sigmaa" in err and "'learner.sigma'" in err


def test_a_diverging_run_fails_its_trial_at_the_first_non_finite_loss(index, tmp_path):
    """A real run at an absurd learning rate. Rank 0 reports its metrics record to Ray Train
    every `checkpoint_every` steps, and a trial's report callback (`TrialReport`) runs
    `check_finite` on each: it passes the finite records and fails the trial, naming the
    step, at the first non-finite loss; the search then records it as `error`, as it does
    the failing trials above. (Once the weights are NaN every later loss is NaN too.)"""
    cfg = load_config(
        TrainConfig,
        None,
        [f"data.index={index}", *TINY, "learner.inner_lr=1e6", "learner.outer_lr=1e6"],
    )
    run_training(cfg, tmp_path / "diverged")  # in process: the loop itself goes on
    log = (tmp_path / "diverged" / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in log]
    first_bad = next(r["iteration"] for r in records if not math.isfinite(r["outer_loss"]))
    for r in records[: first_bad - 1]:
        check_finite(r)  # finite: the trial goes on
    with pytest.raises(FloatingPointError, match=rf"diverged at step {first_bad}: .*outer_loss"):
        check_finite(records[first_bad - 1])


@pytest.mark.parametrize(
    "url, says",
    [
        ("postgresql://me:secret@127.0.0.1:9/optuna", "its database driver is not installed"),
        ("sqlite:////no/such/folder/study.db", "unable to open database file"),
        ("nosuch://me:secret@host/db", "Can't load plugin"),
    ],
)
def test_a_storage_that_cannot_open_is_named_before_ray_starts(
    url, says, tmp_path, capsys, monkeypatch
):
    """A missing driver, an unreachable database, an unknown dialect: exit 2 and one line
    naming the URL, its password hidden (a real PostgreSQL server was checked by hand: the
    docs/commands.md says how), before the data are read and Ray is started."""

    def reached(*args, **kwargs):
        raise AssertionError("the search went past its storage")

    monkeypatch.setattr(tune, "prepare", reached)
    monkeypatch.setattr(ray, "init", reached)
    space = tmp_path / "s.yaml"
    space.write_text("learner.inner_lr: {loguniform: [0.01, 1]}\n")
    args = ["tune", "--space", str(space), "--out", str(tmp_path / "s"), "--storage", url]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert says in err and "secret" not in err and "internal error" not in err


def test_a_trial_error_keeps_the_cause_ray_train_puts_after_its_own_line():
    """The shape of a real diverged trial's error.txt (a search whose trials ran at
    α = β = 10⁶): Ray Train's line ends with a colon and the cause follows it."""
    text = (
        "Failure # 1 (occurred at 2026-12-07_05-04-30)\n"
        "Traceback (most recent call last):\n"
        '  File "ray/tune/trainable.py", line 331, in train\n'
        "    raise skipped from exception_cause(skipped)\n"
        "ray.train.ControllerError: Training failed due to controller error:\n"
        "diverged at step 2: {'outer_loss': nan}\n"
    )
    assert error_message(text) == (
        "ray.train.ControllerError: Training failed due to controller error: "
        "diverged at step 2: {'outer_loss': nan}"
    )
    assert error_message("ValueError: a 24-px model cannot take 16-px clips\n") == (
        "ValueError: a 24-px model cannot take 16-px clips"
    )
    assert error_message("") == "failed (empty error file)"


def test_every_search_setting_is_reachable_from_the_command_line(tmp_path, monkeypatch):
    """Each SearchConfig field, set to a value other than its default on the command line,
    reaches the search (run_search stubbed: only the parsing is under test)."""
    got = []

    def fake_search(cfg, space, out, scfg):
        got.append(scfg)
        return tune.SearchResult(str(out), {}, "", None)

    monkeypatch.setattr(tune, "run_search", fake_search)
    space = Path("tune_spaces/tiny.yaml")
    values = {
        "trials": 3,
        "concurrent": 1,
        "metric": "val_acc",
        "storage": f"sqlite:///{tmp_path / 'shared.db'}",
        "study": "other",
        "startup_trials": 2,
        "grace_steps": 4,
        "reduction_factor": 3,
        "driver_memory_mb": 128,
        "final": True,
    }
    assert set(values) == {f.name for f in dataclasses.fields(SearchConfig)}  # none left out
    default = SearchConfig()
    assert all(getattr(default, k) != v for k, v in values.items())
    flags = [f"--{k.replace('_', '-')}" + ("" if v is True else f"={v}") for k, v in values.items()]
    assert main(["tune", "--space", str(space), "--out", str(tmp_path / "s"), *flags]) == 0
    assert got == [SearchConfig(**values)]


def test_two_searches_share_one_optuna_database_under_their_study_names(ray_local, index, tmp_path):
    """Two searches, each its own folder, one --storage SQLite file, --study a and b: the
    database holds both studies, each with only its own search's trials."""
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    space = str(Path("tune_spaces/tiny.yaml"))
    for study, trials in (("a", 1), ("b", 2)):
        out = tmp_path / study
        args = ["tune", "--space", space, "--out", str(out), "--trials", str(trials)]
        args += ["--storage", storage, "--study", study, "--concurrent", "2"]
        assert main([*args, f"data.index={index}", *TINY]) == 0
        assert len(read_records(out)) == trials and not (out / "study.db").exists()
    assert sorted(optuna.get_all_study_names(storage)) == ["a", "b"]
    for study, trials in (("a", 1), ("b", 2)):
        held = optuna.load_study(study_name=study, storage=storage).trials
        assert len(held) == trials and all(t.state.name == "COMPLETE" for t in held)
        mine = {r["params"]["learner.lambda_pri"] for r in read_records(tmp_path / study)}
        assert {t.params["learner.lambda_pri"] for t in held} == mine


def test_a_search_to_s3_keeps_everything_in_the_bucket_and_finishes_its_best_config(
    s3_endpoint, ray_local, index, tmp_path, monkeypatch
):
    """`lightman tune --out s3://...`: trials, their Ray Train runs, Tune's state, the records,
    best.yaml, the plots and the final run land in the bucket; the study's SQLite file is
    where --storage names it (SQLite cannot live on S3, so an s3:// --out requires it);
    nothing lands in the working folder."""
    _, bucket = s3_endpoint
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    out = f"s3://{bucket}/tune/search"
    space = load_space(REPO / "tune_spaces" / "tiny.yaml")
    with pytest.raises(ConfigError, match="SQLite cannot live on S3: pass --storage"):
        run_search(base_config(index), space, out, SearchConfig(trials=1))
    study = f"sqlite:///{tmp_path / 'study.db'}"
    scfg = SearchConfig(trials=2, concurrent=2, storage=study, final=True)
    result = run_search(base_config(index), space, out, scfg)
    assert result.out == out and result.final is not None
    files = storage.list_files(storage.resolve(out))
    written = {i.path.split("/tune/search/", 1)[1] for i in files}
    assert {"trials.jsonl", "trials.csv", "trials.md", "best.yaml", "history.png"} <= written
    assert {"final/best.pt", "final/results.json", "final/metrics.jsonl"} <= written
    trials = {w.split("/")[1] for w in written if w.startswith("trials/")}
    assert len(trials) == 2 and all(f"trials/{t}/seen.json" in written for t in trials)
    assert any(w.startswith(f"trials/{t}/ray/") for t in trials for w in written)  # Train runs
    assert any(w.startswith("ray/search-001/") for w in written)  # Tune's experiment state
    assert len(read_records(out)) == 2
    assert list(cwd.iterdir()) == []

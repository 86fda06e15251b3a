"""The `lightman` console script: help with examples; synth → ingest → inspect, as users run it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lightman.platform.cli import COMMANDS, main

LIGHTMAN = str(Path(sys.executable).with_name("lightman"))


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([LIGHTMAN, *args], capture_output=True, text=True, timeout=600)


def test_help_shows_examples_for_every_command():
    top = run("--help")
    assert top.returncode == 0 and "examples:" in top.stdout
    for command in COMMANDS:
        out = run(command, "--help")
        assert out.returncode == 0, out.stderr
        assert "example:" in out.stdout and f"lightman {command}" in out.stdout


def test_synth_ingest_inspect(tmp_path):
    synth = run(
        "synth",
        "--out",
        str(tmp_path / "synth"),
        "datasets=[casme2]",
        "casme2.subjects=3",
        "casme2.clips=10",
        "seed=2",
    )
    assert synth.returncode == 0, synth.stderr
    assert (
        "casme2" in synth.stdout
        and (tmp_path / "synth" / "CASME2" / "CASME2-coding-20140508.xlsx").exists()
    )

    index = str(tmp_path / "index")
    ingest = run(
        "ingest",
        "casme2",
        str(tmp_path / "synth" / "CASME2"),
        "--out",
        index,
        "preprocess.size=32",
        "preprocess.frames=6",
        "label_scheme=native",
    )
    assert ingest.returncode == 0, ingest.stderr
    assert "ingested 10 casme2 clips" in ingest.stdout
    manifest = json.loads((Path(index) / "manifest.json").read_text())
    entry = manifest["datasets"]["casme2"]
    assert entry["preprocess"]["size"] == 32 and entry["preprocess"]["frames"] == 6

    png = tmp_path / "contact.png"
    inspect = run("inspect", "--index", index, "--png", str(png))
    assert inspect.returncode == 0, inspect.stderr
    assert "casme2: 10 clips" in inspect.stdout and png.stat().st_size > 10_000


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["ingest", "samm", "{tmp}", "--out", "{tmp}/index"],
            "SAMM",
        ),  # an empty folder is not a SAMM release
        (["synth", "--out", "{tmp}/s", "casme2.subject=3"], "valid keys"),
        (["ingest", "casme2", "{tmp}", "--out", "{tmp}/index", "preprocess.size=0"], "size"),
    ],
)
def test_errors_exit_2_with_a_specific_message(tmp_path, capsys, argv, message):
    assert main([a.replace("{tmp}", str(tmp_path)) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lightman ") and message in err
    assert not (tmp_path / "index" / "manifest.json").exists()


def test_version_is_one_line_with_lightman_torch_and_ray():
    from importlib.metadata import version

    out = run("--version")
    assert out.returncode == 0
    assert out.stdout.strip().splitlines() == [
        f"lightman {version('lightman')} (torch {version('torch')}, ray {version('ray')}, "
        f"python {'.'.join(map(str, sys.version_info[:3]))})"
    ]


# Each experiment command with its required arguments; --cfg must print and do nothing else.
EXPERIMENTS = {
    "synth": ["--out", "{tmp}/out"],
    "ingest": ["casme2", "{tmp}/no-release", "--out", "{tmp}/out"],
    "train": ["--out", "{tmp}/out"],
    "pretrain": ["--out", "{tmp}/out"],
    "tune": ["--space", "tune_spaces/lightman.yaml", "--out", "{tmp}/out"],
    "eval": ["--checkpoint", "{tmp}/no.pt", "--index", "{tmp}/no-index", "--out", "{tmp}/out"],
    "serve": ["--checkpoint", "{tmp}/no.pt"],
    "score": ["--checkpoint", "{tmp}/no.pt", "--index", "{tmp}/no-index", "--out", "{tmp}/out"],
    "demo": ["--out", "{tmp}/out"],
}
REPO = Path(__file__).resolve().parents[1]


def test_every_experiment_command_takes_a_config_and_cfg():
    assert set(COMMANDS) - set(EXPERIMENTS) == {"inspect", "report", "reproduce"}
    for command in EXPERIMENTS:
        out = run(command, "--help").stdout
        assert "--config CONFIG" in out and "--cfg" in out, command
    reproduce = run("reproduce", "--help").stdout  # its config is the --study file
    assert "--study" in reproduce and "--cfg" in reproduce


# A key each command's config has, to see an override reach the printed config.
A_KEY = {"ingest": "limit", "serve": "threads", "score": "batch_size"}


@pytest.mark.parametrize("command", sorted(EXPERIMENTS))
def test_cfg_prints_every_key_with_its_meaning_and_does_no_work(
    command, tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(REPO)  # tune's --space is a repo path
    argv = [a.replace("{tmp}", str(tmp_path)) for a in EXPERIMENTS[command]]
    key = A_KEY.get(command, "seed")
    assert main([command, *argv, f"{key}=7", "--cfg"]) == 0
    out = capsys.readouterr().out
    header, source, *body = out.splitlines()
    assert header.startswith(f"# lightman {command}: ") and "nothing was run" in source
    assert f"\n{key}: 7  # " in out  # the override, with the field's meaning
    assert all(": " in line or line.endswith(":") for line in body if not line.startswith("#"))
    assert not (tmp_path / "out").exists()
    config = tmp_path / "printed.yaml"  # what --cfg prints is a config for the same run
    config.write_text(out)
    assert main([command, *argv, "--config", str(config), "--cfg"]) == 0
    assert capsys.readouterr().out.splitlines()[2:] == body


def test_the_search_and_the_service_resources_are_shown_as_flags(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    argv = ["tune", "--space", "tune_spaces/lightman.yaml", "--out", str(tmp_path), "--cfg"]
    assert main([*argv, "--study", "mine", "--trials", "3"]) == 0
    out = capsys.readouterr().out
    assert "# the search (its flags):" in out and "#   study: mine" in out
    assert "#   trials: 3" in out
    serve = ["serve", "--checkpoint", "x.pt", "--replicas", "2", "--cpus", "0.5", "--cfg"]
    assert main(serve) == 0
    assert "# resources (flags): --replicas 2 --cpus 0.5 --gpus 0" in capsys.readouterr().out


def test_score_takes_its_resources_as_flags_like_serve(capsys, tmp_path):
    base = ["score", "--checkpoint", "x.pt", "--index", "i", "--out", str(tmp_path / "o")]
    assert main([*base, "--actors", "3", "--cpus", "2", "--gpus", "1", "--cfg"]) == 0
    out = capsys.readouterr().out
    assert "actors: 3  #" in out and "cpus_per_actor: 2.0  #" in out
    assert "  device: cuda  #" in out  # --gpus 1: each actor's model on its GPU
    assert main([*base, "actors=4", "--cfg"]) == 0  # the config key still works
    assert "actors: 4  #" in capsys.readouterr().out
    assert main([*base, "--gpus", "0", "predictor.device=cuda", "--cfg"]) == 2
    err = capsys.readouterr().err
    assert "predictor.device=cuda with --gpus 0: no GPU is reserved for the actors" in err
    with pytest.raises(SystemExit) as e:
        main([*base, "--gpus", "2"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: lightman score") and "0 or 1" in err


def test_a_usage_error_shows_the_subcommands_usage_not_the_top_levels():
    out = run("train", "--out", "x", "--bogus", "seed=1")
    assert out.returncode == 2
    assert out.stderr.startswith("usage: lightman train ")
    assert "lightman train: error: unrecognized arguments: --bogus" in out.stderr


def test_a_flag_that_became_a_key_names_the_key(capsys):
    with pytest.raises(SystemExit):
        main(["ingest", "casme2", "src", "--out", "x", "--size", "32", "--flow"])
    err = capsys.readouterr().err
    assert err.startswith("usage: lightman ingest ")
    assert "--size is the key preprocess.size=N" in err and "preprocess.flow=true" in err


def test_inspect_and_report_take_their_input_as_a_flag_or_as_before_positionally(tmp_path, capsys):
    missing = str(tmp_path / "nothere")
    for argv in (["inspect", "--index", missing], ["inspect", missing]):
        assert main(argv) == 2 and missing in capsys.readouterr().err
    for argv in (["report", "--run", missing], ["report", missing]):
        assert main(argv) == 2 and missing in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["report", missing, "--run", missing])
    assert "give the run once, as --run URI (given twice" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["inspect"])
    assert "usage: lightman inspect" in capsys.readouterr().err


def test_casme_sq_is_explained_where_a_user_meets_it():
    for command in ("ingest", "synth"):
        assert 'casme_sq (CAS(ME)^2, read "CASME squared"' in run(command, "--help").stdout

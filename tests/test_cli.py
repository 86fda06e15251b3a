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
        "--size",
        "32",
        "--frames",
        "6",
        "--label-scheme",
        "native",
    )
    assert ingest.returncode == 0, ingest.stderr
    assert "ingested 10 casme2 clips" in ingest.stdout
    manifest = json.loads((Path(index) / "manifest.json").read_text())
    entry = manifest["datasets"]["casme2"]
    assert entry["preprocess"]["size"] == 32 and entry["preprocess"]["frames"] == 6

    png = tmp_path / "contact.png"
    inspect = run("inspect", index, "--png", str(png))
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

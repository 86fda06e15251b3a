"""Bad inputs through the real command line: one clear line and exit 2, never a traceback.

Each case runs `lightman` as a user would (in-process `main`, or the console script where
exit codes, signals and stderr of child processes matter) on generated data, and checks
the exit code, that the message names the offending file, row or field, that no
traceback is printed, and that an index that was there before is byte for byte unchanged.
docs/bad-inputs.md lists the same cases.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lightman.platform import cli
from lightman.platform.cli import main
from lightman.platform.ingest import IngestConfig, ingest
from lightman.tasks.preprocess import PreprocessConfig
from lightman.tasks.synth import SetSize, SynthConfig, synthesize

LIGHTMAN = str(Path(sys.executable).with_name("lightman"))
TINY = ["preprocess.size=16", "preprocess.frames=4"]


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory) -> Path:
    """A seeded CASME II release of 8 clips (2 subjects) and a generic video folder."""
    out = tmp_path_factory.mktemp("synth")
    synthesize(out, SynthConfig(seed=3, datasets=("casme2", "video"), casme2=SetSize(2, 8, 200.0)))
    return out


@pytest.fixture(scope="module")
def base_index(synth_root, tmp_path_factory) -> Path:
    """The 8 CASME II clips, as `ingest casme2 SRC --out X preprocess.size=16 preprocess.frames=4`
    writes them."""
    out = tmp_path_factory.mktemp("base") / "index"
    cfg = IngestConfig(preprocess=PreprocessConfig(frames=4, size=16))
    ingest("casme2", str(synth_root / "CASME2"), str(out), cfg)
    return out


@pytest.fixture
def index(base_index, tmp_path) -> Path:
    """A private copy of the base index (tests damage it)."""
    return Path(shutil.copytree(base_index, tmp_path / "index"))


@pytest.fixture
def src(synth_root, tmp_path) -> Path:
    """A private copy of the CASME II release."""
    return Path(shutil.copytree(synth_root / "CASME2", tmp_path / "CASME2"))


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under an index root, by relative path (manifest, hashes and data alike)."""
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root)): p.read_bytes() for p in files}


def fails_cleanly(capsys, argv: list[str], code: int = 2):
    """Run `lightman argv`, expect `code` and one stderr line without a traceback; the output."""
    assert main([str(a) for a in argv]) == code
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    assert len(captured.err.strip().splitlines()) == 1, captured.err
    return captured


def test_unknown_dataset_name(capsys, src, index):
    before = snapshot(index)
    err = fails_cleanly(capsys, ["ingest", "nosuch", src, "--out", index]).err
    assert "unknown dataset 'nosuch'" in err and "casme2" in err
    assert snapshot(index) == before


@pytest.mark.parametrize(
    "damage, field",
    [
        (
            lambda m: m["datasets"]["casme2"]["counts"].pop("per_class"),
            "datasets.casme2.counts.per_class is missing",
        ),
        (
            lambda m: m["datasets"]["casme2"]["files"][0].update(rows="many"),
            'datasets.casme2.files[0].rows must be an integer, got "many"',
        ),
    ],
)
def test_manifest_valid_json_but_damaged(capsys, src, index, damage, field):
    manifest = json.loads((index / "manifest.json").read_text())
    damage(manifest)
    (index / "manifest.json").write_text(json.dumps(manifest))
    before = snapshot(index)
    assert field in fails_cleanly(capsys, ["inspect", "--index", index]).err
    # ingest refuses before the scan: a source that does not exist is never looked at
    argv = ["ingest", "casme2", src / "gone", "--out", index, *TINY]
    assert field in fails_cleanly(capsys, argv).err
    assert snapshot(index) == before


def test_out_is_an_existing_file(capsys, src, tmp_path):
    out = tmp_path / "notes.txt"
    out.write_text("mine")
    err = fails_cleanly(capsys, ["ingest", "casme2", src / "gone", "--out", out, *TINY]).err
    assert f"{out} is a file, not a folder" in err
    assert out.read_text() == "mine"


def _unwritable_folder(tmp_path: Path) -> Path:
    """A folder this user cannot write: a read-only one, or (as root) a kernel folder."""
    ro = tmp_path / "read-only"
    ro.mkdir()
    ro.chmod(0o555)
    for folder in (ro, Path("/sys/kernel"), Path("/proc/sys")):
        try:
            (folder / "lightman-probe").mkdir()
        except OSError:
            return folder
        (folder / "lightman-probe").rmdir()
    pytest.skip("no folder here is unwritable to this user")


def test_out_in_an_unwritable_folder(capsys, src, tmp_path):
    folder = _unwritable_folder(tmp_path)
    argv = ["ingest", "casme2", src / "gone", "--out", folder / "index", *TINY]
    err = fails_cleanly(capsys, argv).err
    assert f"cannot write the index at {folder / 'index'}" in err
    assert not (folder / "index").exists()


def test_limit_does_not_replace_a_dataset_with_far_fewer_clips(capsys, src, index):
    before = snapshot(index)
    argv = ["ingest", "casme2", src, "--out", index, "limit=3", *TINY]
    err = fails_cleanly(capsys, argv).err
    assert "refusing to replace the 8 casme2 clips" in err
    assert "at least 5 clips would be lost" in err
    assert "narrowed by limit=3" in err and "--replace" in err
    assert snapshot(index) == before
    assert main([str(a) for a in argv] + ["--replace"]) == 0
    assert "ingested 3 casme2 clips" in capsys.readouterr().out


def test_a_frame_missing_inside_a_clip_is_a_recorded_repair(capsys, synth_root, src, tmp_path):
    truth = json.loads((synth_root / "synth_manifest.json").read_text())["clips"]
    clip = next(
        c
        for c in truth
        if c["dataset"] == "casme2" and not c["quirks"] and c["offset"] - c["onset"] > 4
    )
    gone = next(n for n in range(clip["onset"] + 1, clip["offset"]) if n != clip["apex"])
    (src.parent / clip["path"] / f"img{gone}.jpg").unlink()
    out = tmp_path / "index"
    assert main(["ingest", "casme2", str(src), "--out", str(out), *TINY]) == 0
    assert "repairs: " in capsys.readouterr().out
    entry = json.loads((out / "manifest.json").read_text())["datasets"]["casme2"]
    notes = entry["repairs"][f"casme2/{clip['subject']}/{clip['clip']}"]
    assert (
        f"frames missing on disk between onset {clip['onset']} and offset {clip['offset']}: "
        f"{gone}; sampled over the {clip['offset'] - clip['onset']} frames present"
    ) in notes
    assert entry["counts"]["repairs_by_kind"]["frames"] == 1


def _data_file(index: Path) -> Path:
    return index / json.loads((index / "manifest.json").read_text())["files"][0]


@pytest.mark.parametrize(
    "damage, problem",
    [
        (lambda f: f.unlink(), "missing"),
        (lambda f: f.write_bytes(f.read_bytes()[:1000]), "unreadable"),
    ],
)
def test_inspect_checks_every_data_file(capsys, src, index, damage, problem):
    path = _data_file(index)
    damage(path)
    result = fails_cleanly(capsys, ["inspect", "--index", index], code=1)
    assert "is damaged" in result.err and "re-run `lightman ingest` for casme2" in result.err
    assert f"{path}: {problem}" in result.out  # the report lists the file
    # re-running the same ingest rewrites the dataset (its unchanged hash is no reason to keep it)
    assert main(["ingest", "casme2", str(src), "--out", str(index), *TINY]) == 0
    assert main(["inspect", "--index", str(index), "--verify"]) == 0
    assert "every dataset's rows match its hash" in capsys.readouterr().out


def test_inspect_verify_rehashes_the_rows(capsys, index):
    path = _data_file(index)
    table = pq.read_table(path)
    field = table.schema.field("label")
    swapped = pa.array([(v + 1) % 2 for v in table.column("label").to_pylist()], type=field.type)
    pq.write_table(table.set_column(table.schema.get_field_index("label"), field, swapped), path)
    assert (
        main(["inspect", "--index", str(index)]) == 0
    )  # the file opens with its rows: a re-hash notices
    capsys.readouterr()
    result = fails_cleanly(capsys, ["inspect", "--index", index, "--verify"], code=1)
    assert "casme2: rows hash to sha256:" in result.out and "for casme2" in result.err


def test_decoder_log_stays_off_the_terminal_and_in_the_manifest(capfd, synth_root, tmp_path):
    videos = Path(shutil.copytree(synth_root / "video", tmp_path / "video"))
    broken = sorted((videos / "clips").iterdir())[0]
    broken.write_bytes(broken.read_bytes()[:2000])  # cut before the moov atom
    out = tmp_path / "index"
    assert main(["ingest", "video", str(videos), "--out", str(out), *TINY]) == 0
    err = capfd.readouterr().err
    assert "moov" not in err and ".cc:" not in err and "Traceback" not in err
    skipped = json.loads((out / "manifest.json").read_text())["datasets"]["video"]["skipped"]
    reason = next(s["reason"] for s in skipped if s["clip"].endswith(broken.stem))
    assert str(broken) in reason and "moov atom not found" in reason and ".cc:" not in reason


def test_ingest_and_inspect_name_their_two_hashes_apart(capsys, index):
    assert main(["inspect", "--index", str(index)]) == 0
    out = capsys.readouterr().out
    manifest = json.loads((index / "manifest.json").read_text())
    assert f"index hash (all datasets): {manifest['content_hash']}" in out
    assert f"casme2 dataset hash: {manifest['datasets']['casme2']['content_hash']}" in out


@pytest.mark.parametrize(
    "argv, names",
    [
        (["synth", "--out", "{tmp}/file"], "{tmp}/file"),
        (["ingest", "casme2", "{tmp}/nothere", "--out", "{tmp}/index"], "{tmp}/nothere"),
        (["inspect", "--index", "{tmp}/nothere"], "{tmp}/nothere"),
        (["train", "--config", "{tmp}/nothere.yaml", "--out", "{tmp}/run"], "{tmp}/nothere.yaml"),
        (
            ["eval", "--checkpoint", "{tmp}/nothere.pt", "--index", "{tmp}/index"],
            "{tmp}/nothere.pt",
        ),
    ],
)
def test_every_command_reports_a_bad_path_in_one_line(capsys, tmp_path, argv, names):
    (tmp_path / "file").write_text("a file where a folder should be")
    err = fails_cleanly(capsys, [a.replace("{tmp}", str(tmp_path)) for a in argv]).err
    assert err.startswith(f"lightman {argv[0]}: error: ")
    assert names.replace("{tmp}", str(tmp_path)) in err


@pytest.mark.parametrize("content", [b"not a checkpoint at all", b"PK\x03\x04garbage"])
def test_a_garbage_checkpoint_is_one_line(capsys, tmp_path, content):
    (tmp_path / "bad.pt").write_bytes(content)
    argv = ["eval", "--checkpoint", tmp_path / "bad.pt", "--index", tmp_path / "index"]
    err = fails_cleanly(capsys, argv).err
    assert f"{tmp_path / 'bad.pt'}: not a loadable Lightman checkpoint" in err


def test_a_bug_shows_its_traceback_and_says_so(capsys, monkeypatch, tmp_path):
    def broken(args):
        raise RuntimeError("an invariant broke")

    monkeypatch.setitem(cli.COMMANDS, "synth", broken)
    assert main(["synth", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "RuntimeError: an invariant broke" in err
    assert (
        err.strip()
        .splitlines()[-1]
        .startswith("lightman synth: internal error (RuntimeError): this is a bug in Lightman")
    )


# ---------------------------------------------------------------- signals and worker processes


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, state) of every process, from /proc."""
    found = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                stat = Path(f"/proc/{name}/stat").read_text()
            except OSError:  # ended meanwhile
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            found[int(name)] = (int(fields[1]), fields[0])
    return found


def _descendants(pid: int) -> set[int]:
    table, found, todo = _processes(), set(), [pid]
    while todo:
        parent = todo.pop()
        children = [p for p, (pp, _) in table.items() if pp == parent]
        found.update(children)
        todo += children
    return found


def _alive(pids: set[int]) -> set[int]:
    table = _processes()
    return {p for p in pids if p in table and table[p][1] != "Z"}  # a zombie has ended


@pytest.fixture(scope="module")
def slow_src(tmp_path_factory) -> Path:
    """A CASME II release big enough that a 2-worker ingest runs for a while."""
    out = tmp_path_factory.mktemp("slow")
    synthesize(out, SynthConfig(seed=4, datasets=("casme2",), casme2=SetSize(3, 20, 200.0)))
    return out / "CASME2"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize(
    "sig, code, message",
    [
        (
            signal.SIGTERM,
            143,
            "lightman ingest: terminated (SIGTERM); the index was left as it was",
        ),
        # to the process group, as Ctrl-C in a terminal: the workers receive it too
        (signal.SIGINT, 130, "lightman ingest: interrupted (Ctrl-C); the index was left as it was"),
        (signal.SIGKILL, -signal.SIGKILL, None),
    ],
)
def test_a_signal_ends_a_two_worker_ingest_with_its_workers(
    slow_src,
    index,
    tmp_path,
    sig,
    code,
    message,
):
    manifest = (index / "manifest.json").read_bytes()
    before = snapshot(index)
    # files, not pipes: a process that outlived the ingest would hold a pipe open
    # a terminal's process has Ctrl-C's default action, but a test run started in the
    # background of a script inherits SIGINT ignored, and so would the ingest: a Python
    # handler here becomes the default action in the child
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    with open(tmp_path / "out", "w") as out, open(tmp_path / "err", "w") as err:
        argv = ["ingest", "casme2", slow_src, "--out", index, "--workers", "2"]
        proc = subprocess.Popen(
            [LIGHTMAN, *map(str, argv), "preprocess.flow=true", "preprocess.size=32"],
            stdout=out,
            stderr=err,
            start_new_session=True,
        )  # a process group of its own, as in a shell
    signal.signal(signal.SIGINT, inherited)
    seen: set[int] = set()
    deadline = time.monotonic() + 120
    while proc.poll() is None:
        seen |= _descendants(proc.pid)
        table = _processes()
        if any(table.get(p, (0, ""))[0] in seen for p in seen):  # grandchildren: the workers
            break
        assert time.monotonic() < deadline, "no worker processes appeared"
        time.sleep(0.05)
    assert proc.poll() is None, "the ingest ended before the signal"
    seen |= _descendants(proc.pid)
    if sig == signal.SIGINT:
        os.killpg(proc.pid, sig)
    else:
        proc.send_signal(sig)
    assert proc.wait(timeout=60) == code
    deadline = time.monotonic() + 15
    while _alive(seen) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(seen), f"processes of the ingest still running: {_alive(seen)}"
    assert (index / "manifest.json").read_bytes() == manifest
    if message is not None:
        assert (tmp_path / "err").read_text().strip() == message
        assert snapshot(index) == before  # the uncommitted version folder is gone too
    else:  # a SIGKILL leaves its uncommitted folder for the next commit to collect
        assert all(snapshot(index)[path] == data for path, data in before.items())

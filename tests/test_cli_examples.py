"""Every `lightman ...` line of every command's `--help` examples runs, so that a documented
example cannot rot.

The examples (`cli.EXAMPLES`) are written to run in order from one working folder: the
synth examples write data/synth, the ingest examples index it, `demo` writes runs/demo
(whose index configs/train/demo.yaml trains on), training writes runs/lightman, and so on.
This test runs them in that order, in-process through `cli.main`, in a temporary folder
holding the repo's configs/ and tune_spaces/, each with the tiny overrides of its command
(TINY) put before the example's own key=value words, so that what an example sets wins.
What cannot run here as written is in REDUCED, each with its reason; s3://bucket/ is the
test S3 endpoint's bucket.
"""

from __future__ import annotations

import os
import shlex
import socket
import urllib.request
from pathlib import Path

import pytest

from lightman.platform.cli import COMMANDS, EXAMPLES, main

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
# The order the examples build on each other (demo writes the index the trainings read).
ORDER = (
    "synth",
    "ingest",
    "inspect",
    "demo",
    "train",
    "pretrain",
    "tune",
    "report",
    "eval",
    "reproduce",
    "serve",
    "score",
)
MODEL = ["model.image_size=16", "model.hidden=8", "model.aux_dim=8"]
TRAIN = [
    *MODEL,
    "episode.shots=1",
    "episode.query=2",
    "episode.aux_shots=1",
    "meta_batch=2",
    "workers=1",  # in process; the examples that set workers keep theirs
    "iterations=2",
    "eval_every=2",
    "checkpoint_every=2",
    "val_episodes=2",
    "test_episodes=4",
]
TINY = {
    "synth": [
        "datasets=[casme2,ckplus,casme_sq,video]",
        "casme2.subjects=3",
        "casme2.clips=6",
        "ckplus.subjects=2",
        "ckplus.clips=4",
        "casme_sq.subjects=2",
        "casme_sq.clips=2",
        "casme_sq.macro_clips=2",
    ],
    "ingest": ["preprocess.size=16"],  # 8 frames, as the models read (score on s3://bucket/index)
    "demo": [
        "synth.datasets=[casme2,ckplus]",
        "synth.casme2.subjects=10",
        "synth.casme2.clips=100",
        "synth.ckplus.subjects=4",
        "synth.ckplus.clips=12",
        "ingest_primary.preprocess.size=16",
        "ingest_other.preprocess.size=16",
        "learners=[lightman]",
        "serve=false",  # serve's own examples start the service
        *[f"train.{o}" for o in TRAIN],
    ],
    "train": TRAIN,
    "tune": TRAIN,
    "pretrain": [*MODEL, "datasets=[ckplus]", "steps=2", "batch_size=4"],
    "eval": [
        "episodes=4",
        "seed=0",
        "repeats=1",
        "batch_size=8",
        "megc.epochs=1",
        "megc.batch_size=4",
    ],
    "reproduce": [f"train.{o}" for o in MODEL],  # the study's trainings, on the 16-px index
    "serve": [],
    "score": ["actors=1", "batch_size=8"],
}
# Example lines that do not run here as written: (command, a substring of the line) -> (what
# replaces what in its words, why).
REDUCED = {
    ("train", "iterations=120 --resume"): (
        {"iterations=120": "iterations=4"},
        "the same resume, 2 steps more instead of 60",
    ),
    ("eval", "episodes=1000"): ({"episodes=1000": "episodes=8"}, "8 episodes show it"),
    ("eval", "data.labels=composite3"): (
        {"data.labels=composite3": "data.labels=composite3 data.test_fraction=0.5"},
        "the tiny index's test subjects hold every composite class only at half of them",
    ),
    ("reproduce", "--out runs/table2\n"): (
        {"runs/table2": "runs/table2 --plan"},
        "a study runs minutes of Ray Tune trainings (tests/test_reproduce.py): its plan",
    ),
    ("reproduce", "maml_step"): (
        {"10": "10 --plan"},
        "the same: its plan, with the study's overrides and the S3 output",
    ),
    ("tune", "--trials 6"): (
        {"6": "1"},
        "one trial runs the example end to end (--final too); searches of several trials, "
        "their resume and extension are tests/test_tune.py's and test_cluster_tune.py's",
    ),
    ("score", "--gpus 1"): ({"--gpus": "--cfg --gpus"}, "needs a GPU: its config only"),
    ("demo", "runs/demo-defaults"): (
        {"seed=1": "seed=1 --cfg"},
        "a second demo: the first ran it all",
    ),
}


def examples() -> list[tuple[str, str]]:
    """(command, the example as one line) for every `lightman` line of every epilog, a line
    ending in `\\` joined with the next, an end-of-line comment dropped."""
    found = []
    for command in ORDER:
        lines = []
        for line in EXAMPLES[command].splitlines():
            line = line.strip()
            if lines and lines[-1].endswith("\\"):
                lines[-1] = lines[-1][:-1].rstrip() + " " + line
            else:
                lines.append(line)
        for line in lines:
            if line.startswith("lightman "):
                found.append((command, line.split(" #")[0].strip()))
    return found


def test_every_command_has_examples_and_every_continuation_is_a_real_one():
    assert sorted(ORDER) == sorted(COMMANDS)
    assert {c for c, _ in examples()} == set(COMMANDS)
    for command, text in EXAMPLES.items():
        lines = text.splitlines()
        for above, line in zip(lines, lines[1:], strict=False):
            # an indented line under an example continues it, so the one above ends in `\`
            if line.startswith(" " * 14) and above.strip().startswith("lightman "):
                assert above.endswith("\\"), f"{command}: {above.strip()!r} wraps without a \\"
    for (command, part), _ in REDUCED.items():
        assert any(c == command and part in line + "\n" for c, line in examples()), part


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, s3_endpoint, _ray_until_session_end):
    """An empty working folder with the repo's configs/ and tune_spaces/ (read only), and a
    local Ray started there: as for a user, whose commands start Ray where they run, Ray's
    workers (scoring actors, Serve replicas) find the examples' relative paths from it."""
    import ray
    from ray.data import DataContext

    root = tmp_path_factory.mktemp("examples")
    for folder in ("configs", "tune_spaces"):
        (root / folder).symlink_to(REPO / folder)
    before = os.getcwd()
    if ray.is_initialized():  # started in another folder by an earlier module (ray_local)
        ray.shutdown()
    os.chdir(root)
    os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "600")  # as ray_local
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    yield root
    ray.shutdown()  # a later module's ray_local starts its own, in its folder
    os.chdir(before)


def _upload(folder: Path, prefix: str, bucket: str) -> None:
    """A local folder to s3://bucket/prefix (what an S3 example reads that no example wrote)."""
    from lightman.tasks import storage

    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        uri = f"s3://{bucket}/{prefix}/{path.relative_to(folder)}"
        storage.write_bytes(storage.resolve(uri), path.read_bytes())


def _prepare(command: str, line: str, root: Path, bucket: str) -> None:
    if "s3://bucket/CASME2" in line:
        _upload(root / "data/synth/CASME2", "CASME2", bucket)
    if "s3://bucket/runs/lightman/best.pt" in line:
        _upload(root / "runs/lightman", "runs/lightman", bucket)
    if command == "tune":  # configs/tune/demo.yaml's index: its first lines make it
        target = root / "runs/tune-demo/index"
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(root / "runs/demo/index")


def _argv(command: str, line: str, bucket: str) -> list[str]:
    words = shlex.split(line.replace("s3://bucket/", f"s3://{bucket}/"))[1:]
    for (c, part), (replace, _why) in REDUCED.items():
        if c == command and part in line + "\n":  # "\n": at its end
            words = [w2 for w in words for w2 in replace.get(w, w).split()]
    # the command's tiny overrides first, so that the example's own key=value words win
    options = [w for w in words if "=" not in w or w.startswith("-")]
    overrides = [w for w in words if "=" in w and not w.startswith("-")]
    return [*options, *TINY.get(options[0], []), *overrides]


def _serve(argv: list[str], monkeypatch) -> int:
    """`lightman serve` started, asked for its health over HTTP, and stopped."""
    from ray import serve

    from lightman.platform import serve as service

    started = {}

    def run_and_return(*args, **kwargs):
        started["url"] = service_run(*args, **{**kwargs, "wait": False})
        return started["url"]

    service_run = service.run_service
    monkeypatch.setattr(service, "run_service", run_and_return)
    port = _free_port()
    try:
        code = main([*argv, "--port", str(port)])
        if code == 0:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/model", timeout=60) as r:
                assert r.status == 200
        return code
    finally:
        serve.shutdown()


@pytest.mark.parametrize(
    "command, line", examples(), ids=[f"{c}-{i}" for i, (c, _) in enumerate(examples())]
)
def test_the_example_runs(command, line, workspace, s3_endpoint, monkeypatch, capsys):
    _, bucket = s3_endpoint
    _prepare(command, line, workspace, bucket)
    argv = _argv(command, line, bucket)
    if argv[0] == "serve":
        code = _serve(argv, monkeypatch)
    else:
        code = main(argv)
    out, err = capsys.readouterr()
    assert code == 0, f"lightman {shlex.join(argv)}\n{err[-3000:]}"
    # (Serve's own loggers may write to the stream capsys has replaced: a logging error)
    assert "Traceback" not in err or command == "serve"


def test_the_examples_left_what_the_next_ones_read(workspace):
    """The chain holds: each example's outputs are there (a skipped link would show here)."""
    for path in (
        "data/synth/CASME2",
        "data/index/manifest.json",
        "data/index-contact.png",
        "runs/demo/index/manifest.json",
        "runs/lightman/best.pt",
        "runs/lightman/curves.png",
        "runs/ma2mi/encoder.pt",
        "runs/scores",
        "runs/own",
    ):
        assert (workspace / path).exists(), path

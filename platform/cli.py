"""The `lightman` command line: one subcommand per user entry point.

Its conventions, the same for every command:

- What a command reads is a flag named by what it is: `--index` (a clip index), `--run` (a
  run folder), `--checkpoint` (a run's best.pt), `--space` (a search space). The one
  exception is `ingest DATASET SRC`: the kind of release and its folder, read together.
  (`inspect INDEX` and `report RUN`, the earlier spelling, still work.)
- What it writes is `--out` (a folder, local or s3://) or `--png` (a picture).
- Settings: every experiment command takes `--config FILE.yaml` (configs/<command>/) plus
  `key=value` overrides, dotted for nested fields (`preprocess.size=32`,
  `learner.name=maml`); an unknown key fails with the valid list. A setting of the
  experiment has no flag: key=value is the one way to set it on the command line.
- Flags are for the rest: permission to overwrite or continue (`--replace`, `--resume`,
  `--final`), the search's own settings (tune: its --config is the trials' TrainConfig),
  and the resources a command spreads over, which do not change its results: `serve
  --replicas N` and `score --actors N` (copies of the model), each with `--cpus C` and
  `--gpus G` per copy; `ingest --workers N`. Where such a flag has a config field
  (score's actors and cpus_per_actor, ingest's workers), the flag sets it and is the
  documented spelling; the field still loads from a config file.
- `--cfg` prints the resolved config, every key with its value and its meaning, as YAML
  that `--config` reads back, and exits 0 without doing any work.
- `lightman --version` prints Lightman's, torch's and Ray's versions.

Every example in a command's `--help` runs as written (tests/test_cli_examples.py runs
them at a tiny size). Heavy modules are imported inside each command so `lightman
--help` is instant.

Exit codes, the same for every command: 0 done; 2 a usage or environment error (bad
option or config, missing or unreadable input, unwritable output: one line on stderr
naming what is wrong, or the command's usage for a bad option); 1 the command ran and found a
problem (`inspect` of a damaged index), or a bug in Lightman (the only case that prints a
traceback, with a line saying so); 130 Ctrl-C (SIGINT) and 143 SIGTERM, with a one-line
message.
"""

from __future__ import annotations

import argparse
import signal
import sys
import textwrap
import threading
import traceback

# The datasets synth writes and ingest reads, where a user meets their names.
DATASETS = """\
datasets: casme2 (CASME II), samm (SAMM), smic (SMIC-HS), casme (CASME),
  casme_sq (CAS(ME)^2, read "CASME squared": micro- and macro-expressions of the same
  people; _sq for the ^2 a name cannot hold), ckplus (CK+, macro), video (a folder of
  videos with an optional annotations.csv)"""

# Every line starting with `lightman ` runs as written from a working folder where the lines
# before it have run (a `\` at a line's end continues it); tests/test_cli_examples.py runs
# them all. Paths: data/ for releases and indexes, runs/ for what runs write, s3://bucket/
# for any S3 location.
EXAMPLES = {
    "synth": """
        example:
          lightman synth --out data/synth                      # the embedded default data set
          lightman synth --out data/small casme2.subjects=6 seed=3   # smaller, another seed
          lightman synth --config configs/synth/default.yaml --out data/synth --cfg
    """,
    "ingest": """
        example:
          lightman ingest casme2 data/synth/CASME2 --out data/index label_scheme=five
          lightman ingest ckplus data/synth/CK+ --out data/index      # adds CK+ beside CASME II
          lightman ingest casme_sq data/synth/CASME_sq --out data/index expression=macro
          lightman ingest casme2 s3://bucket/CASME2 --out s3://bucket/index label_scheme=five
          lightman ingest video data/synth/video --out data/videos --workers 2 \\
              preprocess.face_crop=haar preprocess.size=112   # own videos: find the face
          lightman ingest casme2 data/synth/CASME2 --out data/quick limit=10   # a quick look
    """,
    "inspect": """
        example:
          lightman inspect --index data/index --png data/index-contact.png
          lightman inspect --index data/index --verify   # also re-hash every row
    """,
    "demo": """
        example:
          lightman demo --config configs/demo/demo.yaml --out runs/demo   # what make demo runs
          lightman demo --out runs/demo-defaults seed=1   # the built-in defaults, another seed
          lightman demo --config configs/demo/demo.yaml --cfg   # its settings and their meaning
    """,
    "train": """
        example:
          # configs/train/demo.yaml trains on runs/demo/index (`lightman demo` writes it)
          lightman train --config configs/train/demo.yaml --out runs/lightman
          lightman train --config configs/train/demo.yaml --out runs/maml learner.name=maml
          lightman train --config configs/train/demo.yaml --out runs/w1 workers=1  # no Ray
          lightman train --config configs/train/demo.yaml --out runs/lightman \\
              iterations=120 --resume                     # 60 more steps
          lightman train --config configs/train/demo.yaml --out runs/x --cfg
    """,
    "pretrain": """
        example:
          lightman pretrain --config configs/pretrain/ma2mi.yaml --out runs/ma2mi
          lightman train --config configs/train/demo.yaml --out runs/mia model.backbone=miacnet \\
              model.input_mode=frames model.init=runs/ma2mi/encoder.pt
    """,
    "tune": """
        example:
          lightman tune --config configs/tune/demo.yaml --space tune_spaces/lightman.yaml \\
              --trials 6 --out runs/tune-lightman   # --trials 12 later: extends it
          lightman tune --config configs/tune/demo.yaml --space tune_spaces/maml.yaml \\
              --trials 6 --out runs/tune-maml --final   # + train and test the best
        configs/tune/demo.yaml's first lines make its index (runs/tune-demo/index).
        --storage postgresql://host/db: any Optuna storage URL (default OUT/study.db)
    """,
    "report": """
        example:
          lightman report --run runs/lightman        # writes runs/lightman/curves.png
    """,
    "eval": """
        example:
          lightman eval --checkpoint runs/lightman/best.pt --index runs/demo/index
          lightman eval --checkpoint runs/lightman/best.pt --index runs/demo/index \\
              episodes=1000 seed=1                 # other episodes, more of them
          lightman eval --checkpoint runs/lightman/best.pt --index runs/demo/index \\
              --protocol loso repeats=10 --out runs/lightman/loso
          # MEGC 2019 LOSO: the checkpoint's config retrained once per subject (supervised)
          lightman train --config configs/train/demo.yaml --out runs/sup \\
              learner.name=supervised model.ways=5
          lightman eval --checkpoint runs/sup/best.pt --index runs/demo/index --protocol megc-loso
          # loso on the negative/positive/surprise labels (support: other test subjects)
          lightman train --config configs/train/demo.yaml --out runs/comp \\
              data.labels=composite3 episode.ways=3 model.ways=3
          lightman eval --checkpoint runs/comp/best.pt --index runs/demo/index \\
              --protocol loso-composite3
    """,
    "reproduce": """
        example:
          lightman reproduce --study table2 --index runs/demo/index --out runs/table2 \\
              --budget full --plan      # its cells and expected CPU hours; runs nothing
          lightman reproduce --study table2 --index runs/demo/index --out runs/table2
          lightman reproduce --study configs/studies/aux_branch.yaml --index runs/demo/index \\
              --out s3://bucket/aux "learners=[lightman,maml_step]" --seed 10
        quick (the default budget) is a smoke run that decides nothing; run it again and
        only the cells not kept in OUT/cells/ run. Studies: configs/studies/.
    """,
    "serve": """
        example:
          lightman serve --checkpoint runs/lightman/best.pt          # http://127.0.0.1:8000
          lightman serve --checkpoint s3://bucket/runs/lightman/best.pt --replicas 2 --cpus 1 \\
              max_batch_size=16
          curl -F clip=@my_face.mp4 http://127.0.0.1:8000/v1/predict
    """,
    "score": """
        example:
          lightman score --checkpoint runs/lightman/best.pt --index runs/demo/index \\
              --out runs/scores
          lightman score --checkpoint runs/lightman/best.pt --index s3://bucket/index \\
              --out s3://bucket/scores --actors 2 --cpus 1
          lightman score --checkpoint runs/lightman/best.pt --index data/synth/video \\
              --out runs/own       # a folder of videos: the face crop as the training index's
          lightman score --checkpoint runs/lightman/best.pt --index runs/demo/index \\
              --out runs/scores-gpu --gpus 1        # one GPU per actor
    """,
}

# Flags replaced by a config key (one way to set each thing): what to write instead.
RETIRED = {
    "ingest": {
        "--frames": "preprocess.frames=N",
        "--size": "preprocess.size=N",
        "--face-crop": "preprocess.face_crop=haar|none",
        "--flow": "preprocess.flow=true",
        "--label-scheme": "label_scheme=native|five|composite3",
        "--limit": "limit=N",
        "--subjects": "subjects=[sub01,sub02]",
        "--expression": "expression=micro|macro",
    },
    "pretrain": {"--method": "method=ma2mi"},
}


def version() -> str:
    """`lightman --version`: read from the installed packages' metadata, without importing
    torch or Ray (seconds each)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    def of(name: str) -> str:
        try:
            return installed(name)
        except PackageNotFoundError:
            return "not installed"

    python = ".".join(map(str, sys.version_info[:3]))
    return f"lightman {of('lightman')} (torch {of('torch')}, ray {of('ray')}, python {python})"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lightman",
        description="Few-shot micro-expression recognition with LightmanNet on Ray.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=textwrap.dedent("""
            examples:
              lightman demo --out runs/demo
              lightman synth --out data/synth
              lightman ingest casme2 data/synth/CASME2 --out data/index
              lightman <command> --help      # every command shows examples
        """),
    )
    p.add_argument("--version", action="version", version=version())
    sub = p.add_subparsers(dest="command", required=True, metavar="command")

    def add(name: str, help_: str) -> argparse.ArgumentParser:
        return sub.add_parser(
            name,
            help=help_,
            description=help_,
            epilog=textwrap.dedent(EXAMPLES[name])
            + (DATASETS if name in ("synth", "ingest") else ""),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    def settings(q: argparse.ArgumentParser, config: str, overrides: str) -> None:
        """--config, --cfg and the key=value overrides, alike in every experiment command."""
        q.add_argument("--config", help=config)
        q.add_argument(
            "--cfg",
            action="store_true",
            help="print the resolved config (every key, its value and meaning) and exit",
        )
        q.add_argument("overrides", nargs="*", help=f"key=value overrides, e.g. {overrides}")

    s = add("synth", "Write the seeded stand-in data set in the real dataset layouts.")
    s.add_argument("--out", required=True, help="output folder")
    settings(s, "YAML SynthConfig (default: configs/synth/default.yaml's)", "seed=1")

    i = add("ingest", "Ingest a dataset release (local or s3://) into the Parquet clip index.")
    i.add_argument(
        "dataset", help="casme2 | samm | smic | casme | casme_sq | ckplus | video (see below)"
    )
    i.add_argument("src", help="release folder (local path or s3://bucket/prefix)")
    i.add_argument("--out", required=True, help="index URI (local path or s3://bucket/prefix)")
    i.add_argument(
        "--workers", type=int, help="processes preprocessing clips (the key workers; default 1)"
    )
    i.add_argument(
        "--replace",
        action="store_true",
        help="replace the dataset's rows in the index even with fewer than half as many",
    )
    settings(
        i,
        "YAML IngestConfig",
        "preprocess.size=32 preprocess.frames=8 label_scheme=five limit=10",
    )

    n = add(
        "inspect", "Print counts, skipped clips and repairs of an index; write a contact sheet PNG."
    )
    n.add_argument("--index", help="index URI (local path or s3://)")
    n.add_argument("uri", nargs="?", help=argparse.SUPPRESS)  # the earlier spelling
    n.add_argument("--png", help="contact sheet output path (default: none)")
    n.add_argument(
        "--verify",
        action="store_true",
        help="also re-hash every row against the manifest (reads the whole index)",
    )

    t = add("train", "Meta-train a learner (LightmanNet by default) on an index.")
    t.add_argument(
        "--out", required=True, help="run folder, local or s3:// (checkpoints, metrics, best.pt)"
    )
    t.add_argument(
        "--resume",
        action="store_true",
        help="continue from the last checkpoint (a finished run too, given more iterations)",
    )
    t.add_argument(
        "--verbose", action="store_true", help="show Ray's own log lines unfiltered (workers > 1)"
    )
    settings(t, "YAML TrainConfig (e.g. configs/train/demo.yaml)", "learner.name=maml")

    pt = add("pretrain", "Pre-train the encoder self-supervised on macro-expression clips (MA2MI).")
    pt.add_argument("--out", required=True, help="run folder (encoder.pt, metrics, pretrain.json)")
    settings(pt, "YAML PretrainConfig (e.g. configs/pretrain/ma2mi.yaml)", "seed=1 steps=100")

    u = add(
        "tune",
        "Search hyper-parameters with Ray Tune + Optuna (TPE, ASHA), each trial a Ray Train run.",
    )
    u.add_argument("--space", required=True, help="search space (e.g. tune_spaces/lightman.yaml)")
    u.add_argument("--trials", type=int, default=8, help="trials of the study in total (default 8)")
    u.add_argument("--out", required=True, help="search folder (study, trials, best.yaml, plots)")
    u.add_argument("--storage", default="", help="Optuna storage URL (default: OUT/study.db)")
    # every SearchConfig field has an option (None: SearchConfig's default, named in help)
    u.add_argument(
        "--study",
        help="the study's name in the storage: searches sharing one "
        "--storage keep apart by it (default lightman)",
    )
    u.add_argument(
        "--concurrent",
        type=int,
        default=0,
        help="trials at once (default: the CPUs (GPUs) the cluster could place // workers)",
    )
    u.add_argument(
        "--metric",
        choices=("val_uar", "val_acc"),
        help="validation metric maximised (default val_uar)",
    )
    u.add_argument("--startup-trials", type=int, help="random trials before TPE (default 4)")
    u.add_argument(
        "--grace-steps",
        type=int,
        help="ASHA: steps every trial trains before it may stop (default eval_every)",
    )
    u.add_argument(
        "--reduction-factor", type=int, help="ASHA: keep the best 1/N at each rung (default 2)"
    )
    u.add_argument(
        "--driver-memory-mb", type=int, help="Ray memory each trial's driver reserves (default 256)"
    )
    u.add_argument(
        "--final", action="store_true", help="train the best config, test it on test subjects"
    )
    settings(
        u, "YAML TrainConfig of the experiment (data, episodes, budget)", "seed=1 (the TrainConfig)"
    )

    r = add(
        "report", "Draw a run's learning curves (loss, accuracies, MMD term, episodes/s) to a PNG."
    )
    r.add_argument("--run", help="run folder (holds metrics.jsonl), local or s3://")
    r.add_argument("run_", nargs="?", metavar="RUN", help=argparse.SUPPRESS)  # earlier spelling
    r.add_argument("--png", help="output path (default: RUN/curves.png)")

    e = add("eval", "Evaluate a checkpoint on held-out subjects and print a results table.")
    e.add_argument("--checkpoint", required=True, help="checkpoint URI (best.pt of a run)")
    e.add_argument("--index", required=True, help="index URI")
    e.add_argument(
        "--protocol",
        default="fewshot",
        choices=("fewshot", "loso", "loso-composite3", "megc-loso"),
        help="fewshot: N-way K-shot episodes; loso: leave-one-subject-out over the test "
        "subjects, each adapted on a support set of the other test subjects; loso-composite3: "
        "loso on the negative/positive/surprise labels (not MEGC 2019's protocol); megc-loso: "
        "MEGC 2019 LOSO, the checkpoint's config retrained once per subject of the primary data",
    )
    e.add_argument(
        "--out", help="where to write results.json / results.csv (default: next to the checkpoint)"
    )
    settings(e, "YAML EvalConfig (episodes, shots, repeats, device)", "shots=5 episodes=600")

    r = add(
        "reproduce",
        "Rerun a study of the paper (arms x seeds) on an index as a Ray Tune grid and write "
        "its report (report.md, report.html): CIs, paired contrasts, Holm, claims' verdicts.",
    )
    r.add_argument("--index", required=True, help="index URI (local path or s3://)")
    r.add_argument("--out", required=True, help="output folder (local or s3://): cells, report")
    r.add_argument(
        "--study", default="table2", help="a study YAML, or a name of configs/studies/ (table2)"
    )
    r.add_argument("--budget", default="quick", choices=("quick", "full"), help="default quick")
    r.add_argument("--seed", type=int, default=0, help="the first seed (seeds N, N+1, ...)")
    r.add_argument(
        "--plan", action="store_true", help="print the cells and the expected CPU hours; run none"
    )
    r.add_argument(
        "--cfg",
        action="store_true",
        help="print the resolved study (every key, its value and meaning) and exit",
    )
    r.add_argument(
        "overrides", nargs="*", help="key=value overrides of the study, e.g. quick.seeds=3"
    )

    def resources(q: argparse.ArgumentParser, copies: str, flag: str, default: str) -> None:
        q.add_argument(flag, type=int, help=f"{copies} of the model ({default})")
        q.add_argument("--cpus", type=float, help=f"CPUs per {copies[:-1]} (default 1)")
        q.add_argument(
            "--gpus",
            type=float,
            help=f"GPUs per {copies[:-1]} (default 0); > 0 runs the model on cuda",
        )

    v = add("serve", "Serve a checkpoint over HTTP with Ray Serve: score clips, adapt to a person.")
    v.add_argument("--checkpoint", required=True, help="checkpoint URI (local path or s3://)")
    resources(v, "replicas", "--replicas", "default 1")
    v.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    v.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    settings(v, "YAML ServeConfig (limits, batching, store of adapted models)", "max_batch_size=1")

    c = add("score", "Score every clip of an index, or a folder of videos, with Ray Data.")
    c.add_argument("--checkpoint", required=True, help="checkpoint URI (local path or s3://)")
    c.add_argument(
        "--index",
        required=True,
        help="index URI, or a folder of videos (local or s3://) with no annotation",
    )
    c.add_argument("--out", required=True, help="output folder URI (predictions.parquet, metrics)")
    resources(c, "actors", "--actors", "the key actors; default 2")
    settings(c, "YAML ScoreConfig", "batch_size=32")

    d = add(
        "demo", "The main job on the embedded default data: synth, ingest, inspect, train, table."
    )
    d.add_argument("--out", default="runs/demo", help="demo folder (default runs/demo)")
    settings(d, "YAML DemoConfig (e.g. configs/demo/demo.yaml)", "seed=1")
    return p


def _print_cfg(a: argparse.Namespace, cfg, notes: tuple[str, ...] = ()) -> None:
    """`--cfg`: the config the command would run, as YAML that --config reads back; `notes`
    (settings that are flags, not config keys) follow as comments."""
    from lightman.platform.config import class_meaning, describe_config

    meaning = class_meaning(type(cfg))
    print(f"# lightman {a.command}: {type(cfg).__name__}{f': {meaning}' if meaning else ''}")
    print(f"# resolved from {a.config or 'the defaults'} and the overrides; nothing was run")
    print(describe_config(cfg))
    for note in notes:
        print(f"# {note}")


def _cmd_synth(a: argparse.Namespace) -> None:
    from lightman.platform.config import load_config
    from lightman.tasks.synth import SynthConfig, synthesize

    cfg = load_config(SynthConfig, a.config, a.overrides)
    if a.cfg:
        return _print_cfg(a, cfg)
    report = synthesize(a.out, cfg)
    print(report.summary())


def _cmd_ingest(a: argparse.Namespace) -> None:
    from lightman.platform.config import load_config
    from lightman.platform.ingest import IngestConfig, format_summary, ingest

    workers = [] if a.workers is None else [f"workers={a.workers}"]
    cfg = load_config(IngestConfig, a.config, [*a.overrides, *workers])
    if a.cfg:
        return _print_cfg(a, cfg)
    summary = ingest(a.dataset, a.src, a.out, cfg, replace=a.replace)
    print(format_summary(summary))


def _input(a: argparse.Namespace, flag: str, old: str) -> str:
    """The one input of inspect/report: `--index X` / `--run X`, or the earlier positional."""
    given = [v for v in (getattr(a, flag), getattr(a, old)) if v is not None]
    if len(given) != 1:
        what = "twice: drop the positional" if given else "none"
        _usage(a.command).error(f"give the {flag} once, as --{flag} URI (given {what})")
    return given[0]


def _cmd_inspect(a: argparse.Namespace) -> int:
    from lightman.platform.inspect import DamagedIndex, inspect_index

    uri = _input(a, "index", "uri")
    try:
        print(inspect_index(uri, a.png, verify=a.verify))
    except DamagedIndex as e:
        print(e.report)
        print(f"lightman inspect: {e}", file=sys.stderr)
        return 1
    return 0


def _cmd_train(a: argparse.Namespace) -> None:
    from lightman.platform.config import load_config
    from lightman.platform.train import TrainConfig, run_training

    cfg = load_config(TrainConfig, a.config, a.overrides)
    if a.cfg:
        return _print_cfg(a, cfg)
    result = run_training(cfg, a.out, resume=a.resume, verbose=a.verbose)
    print(result.table)


def _cmd_pretrain(a: argparse.Namespace) -> None:
    from lightman.platform.config import load_config
    from lightman.platform.pretrain import PretrainConfig, run_pretraining

    cfg = load_config(PretrainConfig, a.config, a.overrides)
    if a.cfg:
        return _print_cfg(a, cfg)
    print(run_pretraining(cfg, a.out).table())


def _cmd_tune(a: argparse.Namespace) -> None:
    import dataclasses

    from lightman.platform.config import describe_config, load_config
    from lightman.platform.train import TrainConfig
    from lightman.platform.tune import SearchConfig, run_search
    from lightman.platform.tune_space import load_space

    cfg = load_config(TrainConfig, a.config, a.overrides)
    space = load_space(a.space)
    given = {f.name: getattr(a, f.name) for f in dataclasses.fields(SearchConfig)}
    search = SearchConfig(**{k: v for k, v in given.items() if v is not None})
    if a.cfg:  # the search's settings are flags, shown as comments: --config takes the trials'
        searched = describe_config(search).splitlines()
        return _print_cfg(a, cfg, ("the search (its flags):", *(f"  {x}" for x in searched)))
    result = run_search(cfg, space, a.out, search)
    print(result.table)
    print(f"best config: {result.out}/best.yaml")


def _cmd_report(a: argparse.Namespace) -> None:
    from lightman.platform.report import draw_curves

    print(draw_curves(_input(a, "run", "run_"), a.png))


def _cmd_eval(a: argparse.Namespace) -> None:
    from lightman.platform.config import load_config
    from lightman.platform.evaluate import EvalConfig, evaluate_checkpoint

    cfg = load_config(EvalConfig, a.config, a.overrides)
    if a.cfg:
        return _print_cfg(a, cfg)
    result = evaluate_checkpoint(a.checkpoint, a.index, a.protocol, cfg, a.out)
    print(result.table)


def _cmd_reproduce(a: argparse.Namespace) -> None:
    from lightman.platform import reproduce

    if a.cfg:
        a.config = str(reproduce.study_path(a.study))
        return _print_cfg(a, reproduce.load_study(a.study, a.overrides))
    reproduce.reproduce(a.study, a.index, a.out, a.budget, a.seed, a.overrides, a.plan)


def _cmd_demo(a: argparse.Namespace) -> None:
    from lightman.platform.config import load_config
    from lightman.platform.demo import DemoConfig, run_demo

    cfg = load_config(DemoConfig, a.config, a.overrides)
    if a.cfg:
        return _print_cfg(a, cfg)
    run_demo(cfg, a.out)


def _cmd_serve(a: argparse.Namespace) -> None:
    from lightman.platform.config import load_config
    from lightman.platform.serve import ServeConfig, run_service

    cfg = load_config(ServeConfig, a.config, [*a.overrides, f"predictor.checkpoint={a.checkpoint}"])
    replicas = 1 if a.replicas is None else a.replicas
    cpus = 1.0 if a.cpus is None else a.cpus
    gpus = 0.0 if a.gpus is None else a.gpus
    if a.cfg:
        note = f"resources (flags): --replicas {replicas} --cpus {cpus:g} --gpus {gpus:g}"
        return _print_cfg(a, cfg, (note,))
    run_service(cfg, replicas, cpus, gpus, a.host, a.port)


def _score_resources(a: argparse.Namespace) -> list[str]:
    """score's --actors/--cpus/--gpus as the ScoreConfig keys they set. An actor holds a
    whole GPU or none (Ray Data gives it one of its own, seen as cuda): --gpus 1 puts the
    model on cuda, --gpus 0 on the config's device, which must then not be cuda."""
    over = [] if a.actors is None else [f"actors={a.actors}"]
    over += [] if a.cpus is None else [f"cpus_per_actor={a.cpus:g}"]
    if a.gpus is not None:
        if a.gpus not in (0, 1):
            _usage("score").error(
                f"--gpus {a.gpus:g}: a scoring actor holds one whole GPU or none: 0 or 1"
            )
        over += ["predictor.device=cuda"] if a.gpus == 1 else []
    return over


def _cmd_score(a: argparse.Namespace) -> None:
    from lightman.platform.config import ConfigError, load_config
    from lightman.platform.devices import is_cuda
    from lightman.platform.score import ScoreConfig, score

    over = [*a.overrides, f"predictor.checkpoint={a.checkpoint}", *_score_resources(a)]
    cfg = load_config(ScoreConfig, a.config, over)
    if a.gpus == 0 and is_cuda(cfg.predictor.device):
        raise ConfigError(
            f"predictor.device={cfg.predictor.device} with --gpus 0: no GPU is reserved for the "
            "actors; pass --gpus 1 (one GPU per actor), or leave predictor.device=cpu"
        )
    if a.cfg:
        return _print_cfg(a, cfg)
    print(score(cfg, a.index, a.out).summary)


COMMANDS = {
    "synth": _cmd_synth,
    "ingest": _cmd_ingest,
    "inspect": _cmd_inspect,
    "train": _cmd_train,
    "tune": _cmd_tune,
    "pretrain": _cmd_pretrain,
    "report": _cmd_report,
    "eval": _cmd_eval,
    "reproduce": _cmd_reproduce,
    "demo": _cmd_demo,
    "serve": _cmd_serve,
    "score": _cmd_score,
}


# Each subcommand's parser, for its own usage in an error (filled by main, or on first use).
_USAGE: dict[str, argparse.ArgumentParser] = {}


def _usage(command: str) -> argparse.ArgumentParser:
    if not _USAGE:
        _USAGE.update(_subparsers(_parser()))
    return _USAGE[command]


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:  # argparse keeps the subcommands only there
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def main(argv: list[str] | None = None) -> int:
    # process-wide settings before any command imports torch (platform/runtime.py)
    from lightman.platform.runtime import setup

    setup()
    parser = _parser()
    _USAGE.update(_subparsers(parser))  # the same parser that parsed: its usage
    # key=value overrides may follow options (`ingest casme2 SRC --out X preprocess.size=32`),
    # which argparse cannot assign to a positional after the options: collect them here.
    args, extra = parser.parse_known_args(argv)
    stray = [a for a in extra if "=" not in a or a.startswith("-")]
    if stray or (extra and not hasattr(args, "overrides")):
        # the subcommand's usage, not the top level's: the error is in its arguments
        usage = _usage(args.command)
        retired = RETIRED.get(args.command, {})
        hints = [
            f"{f} is the key {retired[f.split('=')[0]]}"
            for f in stray
            if f.split("=")[0] in retired
        ]
        hint = f" ({'; '.join(hints)})" if hints else ""
        usage.error(f"unrecognized arguments: {' '.join(stray or extra)}{hint}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    return run_command(args)


class Terminated(BaseException):
    """SIGTERM, raised in the main thread like KeyboardInterrupt, so that every `finally` and
    cleanup runs (an ingest's uncommitted version folder is removed, its workers stopped)."""


def _terminate(signum: int, frame) -> None:
    raise Terminated()


# What an interrupted command leaves behind, where that is guaranteed.
_INTERRUPTED = {"ingest": "; the index was left as it was"}


def _environment_error(e: BaseException) -> str | None:
    """The one-line message for an error of the user's input or environment, None for a bug."""
    if isinstance(e, ValueError):  # ConfigError, LayoutError, BadIndexError, IngestError, ...
        return str(e)
    if isinstance(e, OSError):  # missing/unreadable files, permissions, full disk, S3 access
        return f"{e.strerror}: {e.filename}" if e.strerror and e.filename else str(e)
    if isinstance(e, ImportError) and e.name and not e.name.startswith("lightman"):
        return f"{e}; install Lightman with its dependencies (pip install -e .)"
    return None


def run_command(args: argparse.Namespace) -> int:
    """Run the parsed command; its exit code (see the module docstring)."""
    name = f"lightman {args.command}"
    in_main = threading.current_thread() is threading.main_thread()  # signal.signal needs it
    previous = signal.signal(signal.SIGTERM, _terminate) if in_main else None
    try:
        return COMMANDS[args.command](args) or 0
    except KeyboardInterrupt:
        print(f"{name}: interrupted (Ctrl-C){_INTERRUPTED.get(args.command, '')}", file=sys.stderr)
        return 130
    except Terminated:
        print(f"{name}: terminated (SIGTERM){_INTERRUPTED.get(args.command, '')}", file=sys.stderr)
        return 143
    except Exception as e:
        message = _environment_error(e)
        if message is None:
            traceback.print_exc()
            print(
                f"{name}: internal error ({type(e).__name__}): this is a bug in Lightman; please "
                f"report it with the traceback above",
                file=sys.stderr,
            )
            return 1
        print(f"{name}: error: {message}", file=sys.stderr)
        return 2
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())

"""The `lightman` command line: one subcommand per user entry point.

Every subcommand that runs an experiment takes `--config FILE.yaml` plus `key=value`
overrides (dotted keys for nested fields); unknown keys fail with the valid list.
Heavy modules are imported inside each command so `lightman --help` is instant.

Exit codes, the same for every command: 0 done; 2 a usage or environment error (bad
option or config, missing or unreadable input, unwritable output: one line on stderr
naming what is wrong); 1 the command ran and found a problem (`inspect` of a damaged
index), or a bug in Lightman (the only case that prints a traceback, with a line saying
so); 130 Ctrl-C (SIGINT) and 143 SIGTERM, with a one-line message.
"""

from __future__ import annotations

import argparse
import signal
import sys
import textwrap
import threading
import traceback

EXAMPLES = {
    "synth": """
        example:
          lightman synth --out data/synth                      # the embedded default data set
          lightman synth --out data/small casme2.subjects=6 seed=3   # smaller, another seed
    """,
    "ingest": """
        example:
          lightman ingest casme2 data/synth/CASME2 --out data/index
          lightman ingest ckplus data/synth/CK+ --out data/index      # adds CK+ beside CASME II
          lightman ingest samm s3://bucket/SAMM --out s3://bucket/index --label-scheme five
          lightman ingest video clips/ --out data/index --face-crop haar --frames 8 --size 64
        datasets: casme2, samm, smic, casme, casme_sq, ckplus, video
    """,
    "inspect": """
        example:
          lightman inspect data/index --png data/index-contact.png
    """,
    "train": """
        example:
          lightman train --config configs/train/demo.yaml --out runs/lightman
          lightman train --config configs/train/demo.yaml --out runs/maml learner.name=maml
          lightman train --config configs/train/demo.yaml --out runs/x learner.lambda_pri=0.7
          lightman train --config configs/train/demo.yaml --out runs/w2 workers=2   # Ray Train
          lightman train --config configs/train/demo.yaml --out runs/w2 workers=2 \\
              iterations=200 --resume
    """,
    "pretrain": """
        example:
          lightman pretrain --method ma2mi --config configs/pretrain/ma2mi.yaml --out runs/ma2mi
          lightman train --config configs/train/demo.yaml --out runs/mia model.backbone=miacnet \
              model.input_mode=frames model.init=runs/ma2mi/encoder.pt
    """,
    "tune": """
        example:
          lightman tune --config configs/tune/demo.yaml --space tune_spaces/lightman.yaml
                        --trials 8 --out runs/tune-lightman   # --trials 12 later: extends it
          lightman tune --config configs/tune/demo.yaml --space tune_spaces/maml.yaml
                        --trials 8 --out runs/tune-maml --final   # + train and test the best
          --storage postgresql://host/db: any Optuna storage URL (default OUT/study.db)
    """,
    "report": """
        example:
          lightman report runs/lightman             # writes runs/lightman/curves.png
    """,
    "eval": """
        example:
          lightman eval --checkpoint runs/lightman/best.pt --index data/index --protocol fewshot
          lightman eval --checkpoint runs/lm/best.pt --index data/index --protocol fewshot shots=5
          lightman eval --checkpoint runs/lm/best.pt --index data/index --protocol loso repeats=10
          # MEGC 2019 LOSO: retrain the checkpoint's config once per subject (supervised)
          lightman eval --checkpoint runs/sup/best.pt --index data/index --protocol megc-loso
          # a checkpoint trained with data.labels=composite3:
          lightman eval --checkpoint runs/comp/best.pt --index data/index --protocol composite
    """,
    "serve": """
        example:
          lightman serve --checkpoint runs/lightman/best.pt                 # http://127.0.0.1:8000
          lightman serve --checkpoint s3://bucket/runs/lm/best.pt --replicas 2 max_batch_size=16
          curl -F clip=@my_face.mp4 http://127.0.0.1:8000/v1/predict
    """,
    "score": """
        example:
          lightman score --checkpoint runs/lightman/best.pt --index data/index --out runs/scores
          lightman score --checkpoint runs/lm/best.pt --index s3://bucket/index --out s3://bucket/s
          lightman score --checkpoint runs/lm/best.pt --index my_videos/ --out runs/own
    """,
    "demo": """
        example:
          lightman demo --out runs/demo   # synth, ingest, inspect, train LightmanNet + MAML, table
          lightman demo --out runs/demo seed=1
    """,
}


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
              lightman <command> --help      # every command shows an example
        """),
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="command")

    def add(name: str, help_: str) -> argparse.ArgumentParser:
        return sub.add_parser(
            name,
            help=help_,
            description=help_,
            epilog=textwrap.dedent(EXAMPLES[name]),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    s = add("synth", "Write the seeded stand-in data set in the real dataset layouts.")
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--config", help="YAML SynthConfig (default: built-in defaults)")
    s.add_argument("overrides", nargs="*", help="key=value overrides")

    i = add("ingest", "Ingest a dataset release (local or s3://) into the Parquet clip index.")
    i.add_argument("dataset", help="casme2 | samm | smic | casme | casme_sq | ckplus | video")
    i.add_argument("src", help="release folder (local path or s3://bucket/prefix)")
    i.add_argument("--out", required=True, help="index URI (local path or s3://bucket/prefix)")
    i.add_argument("--config", help="YAML IngestConfig")
    i.add_argument("--frames", type=int, help="frames sampled onset→offset (default 8)")
    i.add_argument("--size", type=int, help="output size in pixels (default 64)")
    i.add_argument(
        "--face-crop",
        choices=("haar", "none"),
        help="face box on the onset frame, or none for pre-cropped releases",
    )
    i.add_argument(
        "--flow", action="store_true", help="also store onset→apex optical flow (u, v, magnitude)"
    )
    i.add_argument(
        "--label-scheme",
        choices=("native", "five", "composite3"),
        help="label scheme (default native)",
    )
    i.add_argument("--workers", type=int, help="parallel preprocessing workers")
    i.add_argument(
        "--limit",
        type=int,
        help="ingest at most N clips (quick looks; into a new --out, since fewer than "
        "half a dataset's clips do not replace it without --replace)",
    )
    i.add_argument(
        "--replace",
        action="store_true",
        help="replace the dataset's rows in the index even with fewer than half as many",
    )
    i.add_argument("--subjects", help="comma-separated subject ids to keep")
    i.add_argument(
        "--expression", choices=("micro", "macro"), help="keep only micro or macro clips"
    )
    i.add_argument("overrides", nargs="*", help="key=value overrides")

    n = add(
        "inspect", "Print counts, skipped clips and repairs of an index; write a contact sheet PNG."
    )
    n.add_argument("uri", help="index URI")
    n.add_argument("--png", help="contact sheet output path (default: none)")
    n.add_argument(
        "--verify",
        action="store_true",
        help="also re-hash every row against the manifest (reads the whole index)",
    )

    t = add("train", "Meta-train a learner (LightmanNet by default) on an index.")
    t.add_argument("--config", help="YAML TrainConfig (e.g. configs/train/demo.yaml)")
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
    t.add_argument("overrides", nargs="*", help="key=value overrides, e.g. learner.name=maml")

    pt = add("pretrain", "Pre-train the encoder self-supervised on macro-expression clips (MA2MI).")
    pt.add_argument("--method", default="ma2mi", choices=("ma2mi",), help="pre-training method")
    pt.add_argument("--config", help="YAML PretrainConfig (e.g. configs/pretrain/ma2mi.yaml)")
    pt.add_argument("--out", required=True, help="run folder (encoder.pt, metrics, pretrain.json)")
    pt.add_argument("overrides", nargs="*", help="key=value overrides, e.g. seed=1 steps=100")

    u = add(
        "tune",
        "Search hyper-parameters with Ray Tune + Optuna (TPE, ASHA), each trial a Ray Train run.",
    )
    u.add_argument("--config", help="YAML TrainConfig of the experiment (data, episodes, budget)")
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
    u.add_argument(
        "overrides", nargs="*", help="key=value overrides of the TrainConfig, e.g. seed=1"
    )

    r = add(
        "report", "Draw a run's learning curves (loss, accuracies, MMD term, episodes/s) to a PNG."
    )
    r.add_argument("run", help="run folder (holds metrics.jsonl)")
    r.add_argument("--png", help="output path (default: RUN/curves.png)")

    e = add("eval", "Evaluate a checkpoint on held-out subjects and print a results table.")
    e.add_argument("--checkpoint", required=True, help="checkpoint URI (best.pt of a run)")
    e.add_argument("--index", required=True, help="index URI")
    e.add_argument(
        "--protocol",
        default="fewshot",
        choices=("fewshot", "loso", "composite", "megc-loso"),
        help="fewshot: N-way K-shot episodes; loso: leave-one-subject-out over the test subjects; "
        "composite: LOSO on the MEGC 2019 negative/positive/surprise labels; megc-loso: "
        "MEGC 2019 LOSO, the checkpoint's config retrained once per subject of the primary data",
    )
    e.add_argument(
        "--out", help="where to write results.json / results.csv (default: next to the checkpoint)"
    )
    e.add_argument(
        "overrides",
        nargs="*",
        help="key=value overrides of the evaluation, e.g. shots=5 episodes=600",
    )

    v = add("serve", "Serve a checkpoint over HTTP with Ray Serve: score clips, adapt to a person.")
    v.add_argument("--checkpoint", required=True, help="checkpoint URI (local path or s3://)")
    v.add_argument("--config", help="YAML ServeConfig (limits, batching, store of adapted models)")
    v.add_argument("--replicas", type=int, default=1, help="replicas of the service (default 1)")
    v.add_argument("--cpus", type=float, default=1.0, help="CPUs per replica (default 1)")
    v.add_argument(
        "--gpus",
        type=float,
        default=0.0,
        help="GPUs per replica (default 0); > 0 runs each replica's model on cuda",
    )
    v.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    v.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    v.add_argument("overrides", nargs="*", help="key=value overrides, e.g. max_batch_size=1")

    c = add("score", "Score every clip of an index, or a folder of videos, with Ray Data.")
    c.add_argument("--checkpoint", required=True, help="checkpoint URI (local path or s3://)")
    c.add_argument(
        "--index",
        required=True,
        help="index URI, or a folder of videos (local or s3://) with no annotation",
    )
    c.add_argument("--out", required=True, help="output folder URI (predictions.parquet, metrics)")
    c.add_argument("--config", help="YAML ScoreConfig")
    c.add_argument("overrides", nargs="*", help="key=value overrides, e.g. actors=4 batch_size=32")

    d = add(
        "demo", "The main job on the embedded default data: synth, ingest, inspect, train, table."
    )
    d.add_argument("--out", default="runs/demo", help="demo folder")
    d.add_argument("--config", default=None, help="YAML DemoConfig")
    d.add_argument("overrides", nargs="*", help="key=value overrides, e.g. seed=1")
    return p


def _cmd_synth(a: argparse.Namespace) -> None:
    from lightman.platform.config import load_config
    from lightman.tasks.synth import SynthConfig, synthesize

    cfg = load_config(SynthConfig, a.config, a.overrides)
    report = synthesize(a.out, cfg)
    print(report.summary())


def _cmd_ingest(a: argparse.Namespace) -> None:
    from lightman.platform.ingest import IngestConfig, format_summary, ingest

    over = list(a.overrides)
    flags = {
        "preprocess.frames": a.frames,
        "preprocess.size": a.size,
        "preprocess.face_crop": a.face_crop,
        "label_scheme": a.label_scheme,
        "workers": a.workers,
        "limit": a.limit,
        "subjects": a.subjects,
        "expression": a.expression,
    }
    over += [f"{k}={v}" for k, v in flags.items() if v is not None]
    if a.flow:
        over.append("preprocess.flow=true")
    from lightman.platform.config import load_config

    cfg = load_config(IngestConfig, a.config, over)
    summary = ingest(a.dataset, a.src, a.out, cfg, replace=a.replace)
    print(format_summary(summary))


def _cmd_inspect(a: argparse.Namespace) -> int:
    from lightman.platform.inspect import DamagedIndex, inspect_index

    try:
        print(inspect_index(a.uri, a.png, verify=a.verify))
    except DamagedIndex as e:
        print(e.report)
        print(f"lightman inspect: {e}", file=sys.stderr)
        return 1
    return 0


def _cmd_train(a: argparse.Namespace) -> None:
    from lightman.platform.config import load_config
    from lightman.platform.train import TrainConfig, run_training

    cfg = load_config(TrainConfig, a.config, a.overrides)
    result = run_training(cfg, a.out, resume=a.resume, verbose=a.verbose)
    print(result.table)


def _cmd_pretrain(a: argparse.Namespace) -> None:
    from lightman.platform.config import load_config
    from lightman.platform.pretrain import PretrainConfig, run_pretraining

    cfg = load_config(PretrainConfig, a.config, [*a.overrides, f"method={a.method}"])
    print(run_pretraining(cfg, a.out).table())


def _cmd_tune(a: argparse.Namespace) -> None:
    import dataclasses

    from lightman.platform.config import load_config
    from lightman.platform.train import TrainConfig
    from lightman.platform.tune import SearchConfig, run_search
    from lightman.platform.tune_space import load_space

    cfg = load_config(TrainConfig, a.config, a.overrides)
    space = load_space(a.space)
    given = {f.name: getattr(a, f.name) for f in dataclasses.fields(SearchConfig)}
    search = SearchConfig(**{k: v for k, v in given.items() if v is not None})
    result = run_search(cfg, space, a.out, search)
    print(result.table)
    print(f"best config: {result.out}/best.yaml")


def _cmd_report(a: argparse.Namespace) -> None:
    from lightman.platform.report import draw_curves

    print(draw_curves(a.run, a.png))


def _cmd_eval(a: argparse.Namespace) -> None:
    from lightman.platform.config import load_config
    from lightman.platform.evaluate import EvalConfig, evaluate_checkpoint

    cfg = load_config(EvalConfig, None, a.overrides)
    result = evaluate_checkpoint(a.checkpoint, a.index, a.protocol, cfg, a.out)
    print(result.table)


def _cmd_demo(a: argparse.Namespace) -> None:
    from lightman.platform.config import load_config
    from lightman.platform.demo import DemoConfig, run_demo

    cfg = load_config(DemoConfig, a.config, a.overrides)
    run_demo(cfg, a.out)


def _cmd_serve(a: argparse.Namespace) -> None:
    from lightman.platform.config import load_config
    from lightman.platform.serve import ServeConfig, run_service

    cfg = load_config(ServeConfig, a.config, [*a.overrides, f"predictor.checkpoint={a.checkpoint}"])
    run_service(cfg, a.replicas, a.cpus, a.gpus, a.host, a.port)


def _cmd_score(a: argparse.Namespace) -> None:
    from lightman.platform.config import load_config
    from lightman.platform.score import ScoreConfig, score

    cfg = load_config(ScoreConfig, a.config, [*a.overrides, f"predictor.checkpoint={a.checkpoint}"])
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
    "demo": _cmd_demo,
    "serve": _cmd_serve,
    "score": _cmd_score,
}


def main(argv: list[str] | None = None) -> int:
    # process-wide settings before any command imports torch (platform/runtime.py)
    from lightman.platform.runtime import setup

    setup()
    parser = _parser()
    # key=value overrides may follow options (`ingest casme2 SRC --out X preprocess.size=32`),
    # which argparse cannot assign to a positional after the options: collect them here.
    args, extra = parser.parse_known_args(argv)
    stray = [a for a in extra if "=" not in a or a.startswith("-")]
    if stray or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
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

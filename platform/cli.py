"""The `lightman` command line: one subcommand per user entry point.

Every subcommand that runs an experiment takes `--config FILE.yaml` plus `key=value`
overrides (dotted keys for nested fields); unknown keys fail with the valid list.
Heavy modules are imported inside each command so `lightman --help` is instant.
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap

# OpenMP threads that spin while waiting turn a busy machine (another job, Ray workers)
# into a 5-10x slowdown of the meta-step; passive waiting costs little when the machine is
# idle. Must be set before torch loads libgomp, i.e. before the commands import torch.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from lightman.platform.config import ConfigError

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
          lightman train --config configs/demo.yaml --out runs/lightman
          lightman train --config configs/demo.yaml --out runs/maml learner.name=maml
          lightman train --config configs/demo.yaml --out runs/x learner.lambda_pri=0.7 iterations=50
          lightman train --config configs/demo.yaml --out runs/w2 workers=2      # Ray Train, 2 workers
          lightman train --config configs/demo.yaml --out runs/w2 workers=2 iterations=200 --resume
    """,
    "report": """
        example:
          lightman report runs/lightman             # writes runs/lightman/curves.png
    """,
    "eval": """
        example:
          lightman eval --checkpoint runs/lightman/best.pt --index data/index --protocol fewshot
          lightman eval --checkpoint runs/lightman/best.pt --index data/index --protocol fewshot shots=5 episodes=600
          lightman eval --checkpoint runs/lightman/best.pt --index data/index --protocol loso shots=1 repeats=10
          lightman eval --checkpoint runs/comp/best.pt --index data/index --protocol composite   # trained with data.labels=composite3
    """,
    "demo": """
        example:
          lightman demo --out runs/demo            # synth -> ingest -> inspect -> train LightmanNet + MAML -> table
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
              lightman synth --out data/synth && lightman ingest casme2 data/synth/CASME2 --out data/index
              lightman <command> --help      # every command shows an example
        """),
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="command")

    def add(name: str, help_: str) -> argparse.ArgumentParser:
        return sub.add_parser(
            name, help=help_, description=help_,
            epilog=textwrap.dedent(EXAMPLES[name]), formatter_class=argparse.RawDescriptionHelpFormatter,
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
    i.add_argument("--face-crop", choices=("haar", "none"), help="face box on the onset frame, or none for pre-cropped releases")
    i.add_argument("--flow", action="store_true", help="also store onset→apex optical flow (u, v, magnitude)")
    i.add_argument("--label-scheme", choices=("native", "five", "composite3"), help="label scheme (default native)")
    i.add_argument("--workers", type=int, help="parallel preprocessing workers")
    i.add_argument("--limit", type=int, help="ingest at most N clips (quick looks)")
    i.add_argument("--subjects", help="comma-separated subject ids to keep")
    i.add_argument("--expression", choices=("micro", "macro"), help="keep only micro or macro clips")
    i.add_argument("overrides", nargs="*", help="key=value overrides")

    n = add("inspect", "Print counts, skipped clips and repairs of an index; write a contact sheet PNG.")
    n.add_argument("uri", help="index URI")
    n.add_argument("--png", help="contact sheet output path (default: none)")

    t = add("train", "Meta-train a learner (LightmanNet by default) on an index.")
    t.add_argument("--config", help="YAML TrainConfig (e.g. configs/demo.yaml)")
    t.add_argument("--out", required=True, help="run folder (checkpoints, metrics, report)")
    t.add_argument("--resume", action="store_true",
                   help="continue the run from its last checkpoint (also a finished run, with more iterations)")
    t.add_argument("overrides", nargs="*", help="key=value overrides, e.g. learner.name=maml")

    r = add("report", "Draw a run's learning curves (loss, accuracies, MMD term, episodes/s) to a PNG.")
    r.add_argument("run", help="run folder (holds metrics.jsonl)")
    r.add_argument("--png", help="output path (default: RUN/curves.png)")

    e = add("eval", "Evaluate a checkpoint on held-out subjects and print a results table.")
    e.add_argument("--checkpoint", required=True, help="checkpoint URI (best.pt of a run)")
    e.add_argument("--index", required=True, help="index URI")
    e.add_argument("--protocol", default="fewshot", choices=("fewshot", "loso", "composite"),
                   help="fewshot: N-way K-shot episodes; loso: leave-one-subject-out over the test subjects; "
                        "composite: LOSO on the MEGC 2019 negative/positive/surprise labels")
    e.add_argument("--out", help="where to write results.json / results.csv (default: next to the checkpoint)")
    e.add_argument("overrides", nargs="*", help="key=value overrides of the evaluation, e.g. shots=5 episodes=600")

    d = add("demo", "The main job on the embedded default data: synth, ingest, inspect, train, table.")
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
        "preprocess.frames": a.frames, "preprocess.size": a.size, "preprocess.face_crop": a.face_crop,
        "label_scheme": a.label_scheme, "workers": a.workers, "limit": a.limit,
        "subjects": a.subjects, "expression": a.expression,
    }
    over += [f"{k}={v}" for k, v in flags.items() if v is not None]
    if a.flow:
        over.append("preprocess.flow=true")
    from lightman.platform.config import load_config

    cfg = load_config(IngestConfig, a.config, over)
    summary = ingest(a.dataset, a.src, a.out, cfg)
    print(format_summary(summary))


def _cmd_inspect(a: argparse.Namespace) -> None:
    from lightman.platform.inspect import inspect_index

    print(inspect_index(a.uri, a.png))


def _cmd_train(a: argparse.Namespace) -> None:
    from lightman.platform.config import load_config
    from lightman.platform.train import TrainConfig, run_training

    cfg = load_config(TrainConfig, a.config, a.overrides)
    result = run_training(cfg, a.out, resume=a.resume)
    print(result.table)


def _cmd_report(a: argparse.Namespace) -> None:
    from lightman.platform.report import draw_curves

    print(draw_curves(a.run, a.png))


def _cmd_eval(a: argparse.Namespace) -> None:
    from lightman.platform.evaluate import EvalConfig, evaluate_checkpoint
    from lightman.platform.config import load_config

    cfg = load_config(EvalConfig, None, a.overrides)
    result = evaluate_checkpoint(a.checkpoint, a.index, a.protocol, cfg, a.out)
    print(result.table)


def _cmd_demo(a: argparse.Namespace) -> None:
    from lightman.platform.config import load_config
    from lightman.platform.demo import DemoConfig, run_demo

    cfg = load_config(DemoConfig, a.config, a.overrides)
    run_demo(cfg, a.out)


COMMANDS = {
    "synth": _cmd_synth, "ingest": _cmd_ingest, "inspect": _cmd_inspect,
    "train": _cmd_train, "report": _cmd_report, "eval": _cmd_eval, "demo": _cmd_demo,
}


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    # key=value overrides may follow options (`ingest casme2 SRC --out X preprocess.size=32`),
    # which argparse cannot assign to a positional after the options: collect them here.
    args, extra = parser.parse_known_args(argv)
    stray = [a for a in extra if "=" not in a or a.startswith("-")]
    if stray or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    try:
        COMMANDS[args.command](args)
    except (ConfigError, FileNotFoundError, ValueError) as e:
        print(f"lightman {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""LightmanNet against MAML once both are tuned: the same search budget each, then the best
config of each trained on 5 seeds and tested on subjects no trial ever saw.

    python benchmarks/tuned.py --index runs/demo/index --phase search --trials 12
    python benchmarks/tuned.py --index runs/demo/index --phase final --seeds 0 1 2 &
    python benchmarks/tuned.py --index runs/demo/index --phase final --seeds 3 4
    python benchmarks/tuned.py --results benchmarks/results/tuned   # the table, from kept rows
    python benchmarks/tuned.py --smoke      # both phases at toy size (figures mean nothing)

search: for each learner, `lightman tune` (platform/tune.py) on `configs/tune/tuned.yaml` with its
  own space (tune_spaces/<learner>.yaml): Optuna TPE (seeded), ASHA on the validation UAR,
  `--trials` trials, `--concurrent` at a time. The two searches share the experiment: the
  same subject split (drawn once, from the config's seed), the same validation episodes, the
  same trial budget. With --results the search's best.yaml, trials table, plots and a
  summary (search.json) are kept in DIR/<learner>/.
final: each learner's best.yaml (kept, else the search folder's) trained in process once per
  --seeds value k: seed=k draws the initialisation and the training episodes, while
  data.split_seed stays the search's seed, so the test subjects are the ones no trial saw
  and the validation subjects the best config was chosen on stay out of every test. Each
  seed's test (the run's fixed test episodes, the same for both learners at one seed) is a
  kept row DIR/<learner>/seed<k>.json (platform/kept.py: measured once, resumable).
table: per learner, the best validation UAR and its step, then test ACC and UF1 (UAR and
  macro-F1 equal them on class-balanced episodes; all four are kept) as the mean over
  seeds ± 95% CI across seeds (Student t, n − 1 dof), the per-seed values, and lightman −
  maml paired by seed. Printed by the final phase, and by a call with only
  --results (no index needed: every row must be kept, and one table's rows must all have
  been measured on one index).

--smoke (tests/test_benchmarks_smoke.py; --tiny is its old name) runs both phases at toy
size, so the script cannot rot between the runs it is meant for: a generated 16-px index,
the TINY schedule, 2 trials per search (2 at a time), seeds 0 1; --out and --results
default to a temporary folder (the committed rows and searches are never written), and
the table is printed from what was kept there, read back as a call with --results alone
reads it. Its figures mean nothing.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

from lightman.platform.runtime import setup  # noqa: E402

setup()  # an entry point: process-wide settings before torch loads (runtime.py)

from lightman.models.provenance import to_dict  # noqa: E402
from lightman.platform.config import load_config  # noqa: E402
from lightman.platform.generated import small_index  # noqa: E402
from lightman.platform.index import read_manifest  # noqa: E402
from lightman.platform.kept import KeptRowError, measure_once, read_grid  # noqa: E402
from lightman.platform.train import TrainConfig, run_training  # noqa: E402
from lightman.platform.tune import SearchConfig, run_search  # noqa: E402
from lightman.platform.tune_space import load_space  # noqa: E402
from lightman.tasks.metrics import mean_ci  # noqa: E402

LEARNERS = ("lightman", "maml")
METRICS = ("acc", "macro_f1", "uar", "uf1")
KEPT_SEARCH = ("best.yaml", "trials.csv", "trials.md", "history.png", "importances.png")
TINY = ["iterations=4", "eval_every=2", "val_episodes=4", "test_episodes=8", "model.hidden=8"]
TINY += ["model.image_size=16", "model.frames=6", "model.aux_dim=8"]
TINY_SYNTH = ["datasets=[casme2,ckplus]", "casme2.subjects=12", "casme2.clips=120"]
TINY_SYNTH += ["ckplus.subjects=6", "ckplus.clips=40"]
SMOKE_LINE = "smoke run: toy sizes, only that the benchmark runs; its figures mean nothing"


def search(learner: str, base: TrainConfig, out: Path, a: argparse.Namespace) -> dict:
    """Run (resume) one learner's search; its summary, kept with its results if asked."""
    scfg = SearchConfig(trials=a.trials, concurrent=a.concurrent, study=learner)
    # the study's SQLite file goes in `out`: run_search opens it before it makes the folder
    out.mkdir(parents=True, exist_ok=True)
    result = run_search(base, load_space(Path("tune_spaces") / f"{learner}.yaml"), out, scfg)
    best = result.best
    summary = {
        "trials": a.trials,
        "best_trial": best["trial"],
        "best_val_uar": best["val_uar"],
        "best_step": best["iteration"],
        "best_params": best["params"],
        "index": read_manifest(base.data.index)["content_hash"],
    }
    (out / "search.json").write_text(json.dumps(summary, indent=1))
    if a.results:
        kept = Path(a.results, learner)
        kept.mkdir(parents=True, exist_ok=True)
        for name in (*KEPT_SEARCH, "lambda_pri.png", "search.json"):
            if (out / name).is_file():
                shutil.copy(out / name, kept / name)
    return summary


def search_dir(learner: str, a: argparse.Namespace) -> Path:
    """Where a learner's best.yaml and search.json are read: kept first, else --out."""
    kept = Path(a.results, learner) if a.results else None
    return kept if kept and (kept / "search.json").is_file() else Path(a.out, learner)


def final_config(learner: str, base: TrainConfig, seed: int, a: argparse.Namespace):
    """The learner's best config at training seed `seed`, on the search's split, in process."""
    best = load_config(TrainConfig, search_dir(learner, a) / "best.yaml", [])
    return replace(
        best,
        seed=seed,
        data=replace(best.data, index=base.data.index, split_seed=base.seed),
        workers=1,
        backend="local",
        storage_path="",
        run_name="",
    )


def path_free(cfg: TrainConfig, index_hash: str) -> dict:
    config = to_dict(cfg)
    config["data"]["index"] = index_hash
    return config


def tested(cfg: TrainConfig, run: Path) -> dict:
    test = run_training(cfg, run).metrics["test"]
    return {m: test[m][0] for m in METRICS}


def kept_rows(a: argparse.Namespace) -> dict[str, dict[int, dict]]:
    """Every learner's kept rows for --seeds, read without the index (kept.read_grid)."""
    return read_grid(a.results, LEARNERS, a.seeds)


def pct(mean: float, half: float) -> str:
    return f"{100 * mean:.1f} ± {100 * half:.1f}"


def table(rows: dict[str, dict[int, dict]], seeds: list[int], a: argparse.Namespace) -> str:
    lines = [
        f"| learner | best val UAR (step) | test ACC = UAR ({len(seeds)} seeds) | UF1 "
        "| ACC per seed | lightman − maml, ACC (paired) | UF1 (paired) |",
        "|---|---|---|---|---|---|---|",
    ]
    summaries = {
        learner: json.loads((search_dir(learner, a) / "search.json").read_text())
        for learner in LEARNERS
    }
    for learner, summary in summaries.items():
        per = [rows[learner][s] for s in seeds]
        cells = [pct(*mean_ci([r[m] for r in per])) for m in ("acc", "uf1")]
        paired = ["-", "-"]
        if learner != "maml":
            paired = [
                pct(*mean_ci([rows[learner][s][m] - rows["maml"][s][m] for s in seeds]))
                for m in ("acc", "uf1")
            ]
        best = f"{100 * summary['best_val_uar']:.1f} (step {summary['best_step']})"
        each = " ".join(f"{100 * r['acc']:.1f}" for r in per)
        lines.append(
            f"| {learner} | {best} | {' | '.join(cells)} | {each} | {' | '.join(paired)} |"
        )
    params = []
    for learner, summary in summaries.items():
        values = ", ".join(
            f"{k.split('.')[-1]}={v:.4g}" if isinstance(v, float) else f"{k.split('.')[-1]}={v}"
            for k, v in summary["best_params"].items()
        )
        params.append(f"- {learner} (best of {summary['trials']} trials): {values}")
    return "\n".join([*lines, "", *params])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--index", help="the index to search and test on (e.g. runs/demo/index)")
    p.add_argument("--config", default="configs/tune/tuned.yaml")
    p.add_argument("--phase", choices=["search", "final"], help="omit: print the kept table")
    p.add_argument("--trials", type=int, default=12, help="trials per learner's search")
    p.add_argument("--concurrent", type=int, default=2, help="trials at once")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--learners", nargs="+", choices=LEARNERS, default=list(LEARNERS))
    p.add_argument("--out", help="the searches' and runs' folder (default runs/tuned)")
    p.add_argument("--results", help="a folder of kept searches and rows, read and written")
    p.add_argument(
        "--smoke",
        "--tiny",
        dest="smoke",
        action="store_true",
        help="a toy index and schedule, both phases: that it runs (module docstring)",
    )
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        index, extra = a.index, []
        if a.smoke:
            index, extra = small_index(Path(tmp, "data"), TINY_SYNTH, 16, 6), TINY
            a.trials, a.concurrent, a.seeds = min(a.trials, 2), 2, a.seeds[:2]
            a.results = a.results or str(Path(tmp, "results"))  # never the committed rows
        a.out = a.out or (str(Path(tmp, "runs")) if a.smoke else "runs/tuned")
        if a.phase is None and not a.smoke:
            if not a.results:
                p.error("--results is needed to print the kept table (or give --phase)")
            try:
                print(table(kept_rows(a), a.seeds, a))
            except KeptRowError as e:
                p.error(str(e))
            return
        if not index:
            p.error("--index is required with --phase (or --smoke)")
        base = load_config(TrainConfig, a.config, [f"data.index={index}", *extra])
        index_hash = read_manifest(index)["content_hash"]
        phases = ["search", "final"] if a.smoke else [a.phase]
        if "search" in phases:
            if a.smoke:  # one local Ray for both searches (each would start and stop its own)
                import ray

                ray.init(include_dashboard=False, configure_logging=False, log_to_driver=False)
            try:
                for learner in a.learners:
                    print(f"[tuned] {learner}: {search(learner, base, Path(a.out, learner), a)}")
            finally:
                if a.smoke:
                    ray.shutdown()
        if "final" in phases:
            rows: dict[str, dict[int, dict]] = {}
            for learner in a.learners:
                for seed in a.seeds:
                    cfg = final_config(learner, base, seed, a)
                    run = Path(a.out, learner, f"final-s{seed}")
                    kept = Path(a.results, learner, f"seed{seed}.json") if a.results else None
                    try:
                        row = measure_once(
                            kept,
                            run / "row.json",
                            index_hash,
                            path_free(cfg, index_hash),
                            lambda cfg=cfg, run=run: tested(cfg, run),
                        )
                    except KeptRowError as e:
                        p.error(str(e))
                    rows.setdefault(learner, {})[seed] = row
                    print(f"[tuned] {learner} seed {seed}: {[row[m] for m in METRICS]}", flush=True)
            if a.smoke:  # the table from what was just kept, as --results alone prints it
                print(SMOKE_LINE + "\n")
                rows = kept_rows(a)
            if set(rows) == set(LEARNERS):
                print(table(rows, a.seeds, a))


if __name__ == "__main__":
    main()

"""Does LightmanNet's auxiliary branch help? Learners and variants x training seeds, paired.

    python benchmarks/aux_branch.py --index runs/demo/index --seeds 0 1 2 3 4 --shots 1 5
    python benchmarks/aux_branch.py --smoke         # toy sizes: that it runs (figures mean nothing)

Each variant is the training run of `configs/demo/aux_branch.yaml` (its `train:` section: the
demo's schedule with the learner's old auxiliary defaults pinned) on an existing index
(`make demo` leaves one in runs/demo/index) with a few overrides, trained once per seed
(the seed draws the subject split, the episodes and the initialisation):

    maml              learner.name=maml
    maml_step         MAML at α·λ1: learner.name=maml learner.inner_lr=α·λ1, the CE step
                      LightmanNet takes (the step-size control of its λ1)
    lightman          LightmanNet with the old defaults, pinned (aux_norm=separate,
                      bandwidth=fixed σ = 1, aux_align=marginal); the variants below
                      change one thing of these (or, lightman_all, three)
    lightman_step     LightmanNet at α/λ1: learner.inner_lr=α/λ1, so its CE step is α, MAML's
    lightman_joint    learner.aux_norm=joint (the CE's support logits normalised jointly too)
    lightman_auxjoint learner.aux_norm=aux_joint (CE on the support pass alone, L_aux joint)
    lightman_median   learner.bandwidth=median learner.sigma=[1.0]
    lightman_multi    learner.bandwidth=median learner.sigma=[0.5,1.0,2.0]
    lightman_class    learner.aux_align=class
    lightman_all      joint + median + class together
    supervised        learner.name=supervised model.ways=<the pool's class count>: global
                      classes, one joint update per batch, a fresh head per test task

(α and λ1 are read from the base config, e.g. α = 0.2, λ1 = 0.55: maml_step at 0.11,
lightman_step at 0.3636.) After training, each run's best weights predict the same fixed
test episodes (subjects never seen in training or model selection; the same episodes for
every variant of a seed). Printed, per shot setting: each variant's test accuracy, the
mean over seeds with the 95% CI across seeds (Student t, n − 1 dof) and the per-seed
values; the paired difference against maml and against lightman, per seed the mean over
the same episodes of acc_variant − acc_reference, then mean ± 95% CI across seeds; and,
for the lightman variants, the gradient ratio ‖∇θ λ2·L_aux‖ / ‖∇θ λ1·CE‖ of the first
inner step (LearnerConfig.log_grad_ratio) and L_aux, at initialisation and at the trained
weights, each the mean over 8 training episodes and then over seeds. Everything also goes
to <out>/aux_branch.json. Run on an idle machine: ~10 variants x seeds x shots demo runs.
Each finished run leaves <run>/row.json and is read back instead of re-run, so an
interrupted table resumes, and processes given disjoint --variants can share one --out
(a last call with every variant then prints the whole table). With --results DIR each
finished run's row (its accuracies per test episode, the ratios, its training config,
the package versions and the machine's CPUs) is also kept as DIR/<shots>shot/<variant>/
seed<k>.json and read back from there first: the repository's benchmarks/results/aux_branch
holds the rows behind docs/results.md's tables. With --results and no --index the table is
printed from the kept rows alone (every row kept, one table's rows from one index: no data
needed); with an index whose content hash is the rows', a table left unfinished continues
where it stopped.

--smoke (tests/test_benchmarks_smoke.py; --tiny is its old name) runs the whole path at toy
size, so the script cannot rot between the runs it is meant for: a generated 16-px index,
the TINY schedule, seeds 0 1, 1-shot, the variants maml, lightman and supervised (each
learner's code path), 4 test episodes; --out and --results default to a temporary folder
(the committed rows are never written), and the table is printed from the rows kept there,
read back as a call with --results alone reads them. Its figures mean nothing.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import replace
from pathlib import Path

from lightman.platform.runtime import setup  # noqa: E402

setup()  # an entry point: process-wide settings before torch loads (runtime.py)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from lightman.models.checkpoint import load_checkpoint  # noqa: E402
from lightman.models.learners import build_learner  # noqa: E402
from lightman.models.modes import eval_mode  # noqa: E402
from lightman.models.net import build_model  # noqa: E402
from lightman.models.provenance import to_dict  # noqa: E402
from lightman.platform.config import load_config  # noqa: E402
from lightman.platform.demo import DemoConfig  # noqa: E402
from lightman.platform.generated import small_index  # noqa: E402
from lightman.platform.index import read_manifest  # noqa: E402
from lightman.platform.kept import KeptRowError, measure_once, read_grid  # noqa: E402
from lightman.platform.train import TrainConfig, prepare, run_training  # noqa: E402
from lightman.tasks.episodes import seeded_episodes  # noqa: E402
from lightman.tasks.metrics import mean_ci  # noqa: E402

RATIO_EPISODES = 8  # training episodes the gradient ratio is averaged over

# The smoke run's training: tiny data, model and schedule (only shows that the table runs).
TINY = [
    "data.val_fraction=0.25",
    "data.test_fraction=0.3",
    "episode.query=1",
    "model.image_size=16",
    "model.frames=6",
    "model.hidden=8",
    "model.aux_dim=8",
    "meta_batch=2",
    "iterations=4",
    "eval_every=2",
    "val_episodes=3",
    "threads=1",
]


# --smoke: the fewest runs that take every path (module docstring)
SMOKE = {"seeds": [0, 1], "shots": [1], "variants": ["maml", "lightman", "supervised"]}
SMOKE_LINE = "smoke run: toy sizes, only that the benchmark runs; its figures mean nothing"


def variants(base: TrainConfig, classes: int) -> dict[str, list[str]]:
    """Variant name -> its overrides of the base training config (module docstring). The
    lightman variants start from the old defaults, pinned (`old`), and change one thing;
    the maml variants unset the base's auxiliary keys (`no_aux`: maml reads none of them)."""
    alpha, lam = base.learner.inner_lr, base.learner.lambda_pri
    old = [
        "learner.name=lightman",
        "learner.aux_norm=separate",
        "learner.bandwidth=fixed",
        "learner.sigma=[1.0]",
        "learner.aux_align=marginal",
    ]
    joint, median = "learner.aux_norm=joint", "learner.bandwidth=median"
    cls = "learner.aux_align=class"
    aux_keys = ("lambda_pri", "sigma", "aux_loss", "aux_norm", "bandwidth", "aux_align")
    no_aux = ["learner.name=maml", *(f"learner.{k}=null" for k in aux_keys)]
    return {
        "maml": no_aux,
        "maml_step": [*no_aux, f"learner.inner_lr={alpha * lam!r}"],
        "lightman": old,
        "lightman_step": [*old, f"learner.inner_lr={alpha / lam!r}"],
        "lightman_joint": [*old, joint],
        "lightman_auxjoint": [*old, "learner.aux_norm=aux_joint"],
        "lightman_median": [*old, median],
        "lightman_multi": [*old, median, "learner.sigma=[0.5,1.0,2.0]"],
        "lightman_class": [*old, cls],
        "lightman_all": [*old, joint, median, cls],
        "supervised": ["learner.name=supervised", f"model.ways={classes}"],
    }


def tiny_index(root: Path) -> str:
    """A small CASME II (5-class) + CK+ stand-in at 16 px."""
    return small_index(
        root,
        [
            "datasets=[casme2,ckplus]",
            "seed=0",
            "casme2.subjects=12",
            "casme2.clips=120",
            "ckplus.subjects=6",
            "ckplus.clips=40",
        ],
        size=16,
        frames=6,
    )


def train_config(
    config: str, index: str, seed: int, shots: int, overrides: list[str]
) -> TrainConfig:
    demo = load_config(DemoConfig, config, [f"train.{o}" for o in overrides])
    cfg = demo.train
    return replace(
        cfg,
        seed=seed,
        data=replace(cfg.data, index=index),
        episode=replace(cfg.episode, shots=shots),
    )


def mean_grad_ratio(cfg: TrainConfig, model, data, seed: int) -> dict[str, float]:
    """Mean gradient ratio and L_aux over RATIO_EPISODES training episodes at the model's θ."""
    learner = build_learner(replace(cfg.learner, log_grad_ratio=True))
    eps = seeded_episodes(
        data.train, cfg.episode, RATIO_EPISODES, seed=(seed, 10**6), aux_pool=data.aux
    )
    params, buffers = dict(model.named_parameters()), dict(model.named_buffers())
    _, m = learner.meta_grads(model, params, buffers, list(eps))
    return {
        "grad_ratio": m["aux_ce_grad_ratio"] / m["tasks"],
        "aux_loss": m["aux_loss"] / m["tasks"],
    }


def episode_accuracies(cfg: TrainConfig, checkpoint: Path, data, n: int) -> np.ndarray:
    """(n,) query accuracy of the run's best weights on the seed's fixed test episodes."""
    model, _, _ = load_checkpoint(checkpoint)
    learner = build_learner(cfg.learner)
    eps = seeded_episodes(data.test, cfg.episode, n, seed=cfg.seed + 2, aux_pool=data.aux)
    params, buffers = dict(model.named_parameters()), dict(model.named_buffers())
    out = []
    with eval_mode(model):
        for ep in eps:
            with torch.enable_grad():  # test-time adaptation takes gradient steps
                logits = learner.predict(model, params, buffers, ep)
            out.append(float((logits.argmax(-1) == ep.query_y).float().mean()))
    return np.asarray(out)


def run_one(cfg: TrainConfig, out: Path, test_episodes: int) -> dict:
    data = prepare(cfg)
    row: dict = {}
    if cfg.learner.name == "lightman":
        torch.manual_seed(cfg.seed)  # the trainer's initialisation
        row["init"] = mean_grad_ratio(cfg, build_model(cfg.model).train(), data, cfg.seed)
    if not (out / "results.json").exists():  # a finished training is not repeated
        run_training(replace(cfg, test_episodes=1), out)  # the test below is per episode
    acc = episode_accuracies(cfg, out / "best.pt", data, test_episodes)
    row["acc"] = acc.tolist()
    if cfg.learner.name == "lightman":
        model, _, _ = load_checkpoint(out / "best.pt")
        row["trained"] = mean_grad_ratio(cfg, model.train(), data, cfg.seed)
    return row


def path_free(cfg: TrainConfig, index_hash: str) -> dict:
    """The training config of a kept row, the index named by its content hash, not by a
    path of this machine."""
    config = to_dict(cfg)
    config["data"]["index"] = index_hash
    return config


def ci(values) -> str:
    mean, half = mean_ci(np.asarray(values, dtype=np.float64))
    return f"{100 * mean:.1f} ± {100 * half:.1f}" if np.isfinite(half) else f"{100 * mean:.1f}"


def table(results: dict, seeds: list[int], shots: int) -> str:
    """The markdown table of one shot setting (module docstring)."""
    rows = results[shots]
    lines = [
        f"### 5-way {shots}-shot, {len(seeds)} seeds (mean ± 95% CI across seeds, %)",
        "",
        "| variant | ACC | per seed | vs maml (paired) | vs lightman (paired) "
        "| ratio init | ratio trained | L_aux init | L_aux trained |",
        "|" + "---|" * 9,
    ]
    for name, per_seed in rows.items():
        accs = [np.mean(per_seed[s]["acc"]) for s in seeds]
        paired = []
        for ref in ("maml", "lightman"):
            if ref in rows and ref != name:
                diffs = [
                    np.mean(np.subtract(per_seed[s]["acc"], rows[ref][s]["acc"])) for s in seeds
                ]
                paired.append(ci(diffs))
            else:
                paired.append("-")
        extra = []
        for key in ("grad_ratio", "aux_loss"):
            for when in ("init", "trained"):
                got = [per_seed[s][when][key] for s in seeds if when in per_seed[s]]
                extra.append(f"{np.mean(got):.3g}" if got else "-")
        lines.append(
            f"| {name} | {ci(accs)} | {' '.join(f'{100 * a:.1f}' for a in accs)} | "
            + " | ".join(paired)
            + " | "
            + " | ".join(extra)
            + " |"
        )
    return "\n".join(lines)


def measured(a, index: str, names: list[str], chosen: dict, extra: list[str], out: Path):
    """{shots: {variant: {seed: row}}}: each row kept, else measured on `index` (and kept)."""
    index_hash = read_manifest(index)["content_hash"]
    results: dict = {}
    for shots in a.shots:
        results[shots] = {}
        for name in names:
            results[shots][name] = {}
            for seed in a.seeds:
                cfg = train_config(a.config, index, seed, shots, [*extra, *chosen[name]])
                run = out / f"{shots}shot" / name / f"seed{seed}"
                kept = (
                    Path(a.results, f"{shots}shot", name, f"seed{seed}.json") if a.results else None
                )

                def train(cfg=cfg, run=run, shots=shots, name=name, seed=seed) -> dict:
                    print(f"[aux_branch] {shots}-shot {name} seed {seed} ...", flush=True)
                    return run_one(cfg, run, a.test_episodes)

                config = path_free(cfg, index_hash)
                results[shots][name][seed] = measure_once(
                    kept, run / "row.json", index_hash, config, train
                )
    return results


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--index", help="an index with the config's datasets (e.g. runs/demo/index)")
    p.add_argument(
        "--config",
        default="configs/demo/aux_branch.yaml",
        help="a demo config; its train: section",
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--shots", type=int, nargs="+", default=[1, 5])
    p.add_argument("--variants", nargs="+", help="a subset of the variants (default: all)")
    p.add_argument("--test-episodes", type=int, default=500)
    p.add_argument("--set", nargs="*", default=[], help="more train overrides, key=value")
    p.add_argument("--out", help="the runs' folder (default runs/aux_branch; --smoke: a temp one)")
    p.add_argument("--results", help="a folder of finished rows, read back and written (above)")
    p.add_argument(
        "--smoke",
        "--tiny",
        dest="smoke",
        action="store_true",
        help="toy index, schedule, seeds and variants: that it runs (module docstring)",
    )
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        index, extra = a.index, list(a.set)
        if a.smoke:
            index = tiny_index(Path(tmp))
            extra = [*TINY, *extra]
            a.seeds, a.shots, a.test_episodes = SMOKE["seeds"], SMOKE["shots"], 4
            a.variants = a.variants or SMOKE["variants"]
            a.results = a.results or str(Path(tmp, "results"))  # never the committed rows
        out = Path(a.out or (Path(tmp, "runs") if a.smoke else "runs/aux_branch"))
        if not index and not a.results:
            p.error("--index is required (or --smoke, or --results alone to print kept rows)")
        base = train_config(a.config, index or "", a.seeds[0], a.shots[0], extra)
        chosen = variants(base, len(prepare(base).train.class_names) if index else 0)
        names = a.variants or list(chosen)
        try:
            if index:
                results = measured(a, index, names, chosen, extra, out)
            if not index or a.smoke:  # the kept rows alone, each table measured on one index
                results = {
                    k: read_grid(Path(a.results, f"{k}shot"), names, a.seeds) for k in a.shots
                }
        except KeptRowError as e:
            p.error(str(e))
        out.mkdir(parents=True, exist_ok=True)
        (out / "aux_branch.json").write_text(
            json.dumps(
                {"args": vars(a), "variants": {n: chosen[n] for n in names}, "results": results},
                indent=1,
            )
        )
    if a.smoke:
        print(SMOKE_LINE, "\n")
    for shots in a.shots:
        print(table(results, a.seeds, shots), "\n")


if __name__ == "__main__":
    main()

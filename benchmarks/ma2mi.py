"""Which way of using macro-expression data serves MER: MA2MI pre-training, LightmanNet's
auxiliary alignment, or both? Variants x seeds on one generated index (docs/ma2mi.md).

    python benchmarks/ma2mi.py --index runs/demo/index --seeds 0 1 2 3 4 --out runs/bench-ma2mi
    python benchmarks/ma2mi.py --smoke     # the whole table at toy size (figures mean nothing)

Per seed s: two MA2MI pre-trainings (configs/pretrain/ma2mi.yaml on the index's macro clips, seed s;
one of MIACNet, one of its action branch alone), then each variant below with the demo's
`train:` section (configs/demo/demo.yaml, in process: workers=1) and its overrides; s draws the
subject split, the episodes and the initialisation.

    fewshot: 5-way few-shot test accuracy of a meta-trained run on its test subjects
      conv4_lightman        Conv4 + LightmanNet (the demo's run)
      miacnet_maml          MIACNet from scratch, MAML
      miacnet_maml_pre      MIACNet + MA2MI encoder, MAML              (pre-training on/off)
      miacnet_lightman_pre  MIACNet + MA2MI encoder + LightmanNet      (both uses of macro data)
      action_maml_pre       action branch + its MA2MI encoder, MAML    (one branch vs two)
    megc: MEGC 2019 LOSO UF1 / UAR of supervised training, every primary subject a fold
      miacnet_sup           MIACNet from scratch
      miacnet_sup_pre       MIACNet + MA2MI encoder
      action_sup_pre        action branch + its MA2MI encoder

Printed: per variant and metric the mean over seeds with the 95% CI across seeds (Student
t, n - 1 dof), the per-seed values and the paired difference against the kind's
reference (Conv4 + LightmanNet; MIACNet from scratch), per seed, then mean ± CI; all of
it also goes to <out>/ma2mi.json. Nothing here decides the question for real data: the
index is generated.

Each finished run leaves <out>/<variant>-s<seed>/row.json, read back instead of re-run.
With --results DIR its figures are also kept as DIR/<kind>/<variant>/seed<k>.json with
their configs (training, pre-training, LOSO; the index by content hash), the versions and
the CPUs (platform/kept.py), and read back from there first, before any pre-training:
benchmarks/results/ma2mi holds the rows behind docs/results.md's table, so the table prints
without training and an unfinished one continues on any machine, a seed at a time.

--smoke (tests/test_benchmarks_smoke.py; --tiny is its old name) runs every variant, both
kinds and both pre-trainings at toy size, so the script cannot rot between the runs it is
meant for: a generated 16-px index of 6-frame clips, a narrow model, 2 training steps, 3
pre-training steps, 1 LOSO epoch, seeds 0 1; --out and --results default to a temporary
folder (the committed rows are never written), and the table is printed from the rows
kept there, read back as a call with --results alone reads them. Its figures mean nothing.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from functools import partial
from pathlib import Path

from lightman.platform.runtime import setup  # noqa: E402

setup()  # an entry point: process-wide settings before torch loads (runtime.py)

import yaml  # noqa: E402

from lightman.models.provenance import to_dict, versions  # noqa: E402
from lightman.platform.config import load_config  # noqa: E402
from lightman.platform.demo import DemoConfig  # noqa: E402
from lightman.platform.index import read_manifest  # noqa: E402
from lightman.platform.kept import KeptRowError, measure_once, read_grid  # noqa: E402
from lightman.platform.megc import MegcConfig, evaluate_megc  # noqa: E402
from lightman.platform.pretrain import PretrainConfig, run_pretraining  # noqa: E402
from lightman.platform.train import TrainConfig, run_training  # noqa: E402
from lightman.tasks.metrics import mean_ci  # noqa: E402

MIA = ["model.backbone=miacnet", "model.input_mode=frames"]
ACTION = ["model.backbone=miacnet_action", "model.input_mode=frames"]
# name -> (overrides, which pre-trained encoder: None | "miacnet" | "miacnet_action")
FEWSHOT = {
    "conv4_lightman": ([], None),
    "miacnet_maml": ([*MIA, "learner.name=maml"], None),
    "miacnet_maml_pre": ([*MIA, "learner.name=maml"], "miacnet"),
    "miacnet_lightman_pre": (MIA, "miacnet"),
    "action_maml_pre": ([*ACTION, "learner.name=maml"], "miacnet_action"),
}
MEGC = {
    "miacnet_sup": (MIA, None),
    "miacnet_sup_pre": (MIA, "miacnet"),
    "action_sup_pre": (ACTION, "miacnet_action"),
}
METRICS = {"fewshot": ("acc", "uf1"), "megc": ("uf1", "uar", "acc")}
# each kind's reference: the paired column is, per seed, variant - reference, then mean ± CI
REFERENCE = {"fewshot": "fewshot/conv4_lightman", "megc": "megc/miacnet_sup"}
# the ablations of the MA2MI abstract and the question of the table: (variant, reference)
CONTRASTS = {
    "pre-training on - off (MIACNet, MAML)": ("fewshot/miacnet_maml_pre", "fewshot/miacnet_maml"),
    "one branch - two (pre-trained, MAML)": ("fewshot/action_maml_pre", "fewshot/miacnet_maml_pre"),
    "+ LightmanNet alignment (pre-trained MIACNet)": (
        "fewshot/miacnet_lightman_pre",
        "fewshot/miacnet_maml_pre",
    ),
    "pre-training on - off (MIACNet, MEGC)": ("megc/miacnet_sup_pre", "megc/miacnet_sup"),
    "one branch - two (pre-trained, MEGC)": ("megc/action_sup_pre", "megc/miacnet_sup_pre"),
}
# --smoke (module docstring): the model's fields are the same in training and pre-training
# (model.init checks them)
TINY_MODEL = ["model.image_size=16", "model.frames=6", "model.hidden=8", "model.aux_dim=8"]
TINY_TRAIN = ["iterations=2", "val_episodes=2", "test_episodes=4", "eval_every=1", *TINY_MODEL]
TINY_PRETRAIN = ["steps=3", "log_every=1", "datasets=[ckplus]", "holdout_fraction=0.5"]
TINY_PRETRAIN += TINY_MODEL
TINY_SYNTH = ["datasets=[casme2,ckplus]", "casme2.subjects=10", "casme2.clips=100"]
TINY_SYNTH += ["ckplus.subjects=6", "ckplus.clips=40"]
SMOKE_LINE = "smoke run: toy sizes, only that the benchmark runs; its figures mean nothing"


def base_yaml(tmp: Path) -> str:
    """The demo's train section, in process, as a YAML file that load_config reads."""
    train = load_config(DemoConfig, "configs/demo/demo.yaml", []).train
    path = tmp / "train.yaml"
    body = {**to_dict(train), "workers": 1, "backend": "local"}
    path.write_text(yaml.safe_dump(body))
    return str(path)


def pretrain_config(index: str, backbone: str, seed: int, extra: list[str]) -> PretrainConfig:
    over = [f"index={index}", f"seed={seed}", f"model.backbone={backbone}", *extra]
    return load_config(PretrainConfig, "configs/pretrain/ma2mi.yaml", over)


def encoder_path(cfg: PretrainConfig, out: Path) -> Path:
    """Where `cfg`'s pre-trained encoder lives under --out (one per backbone and seed)."""
    return out / f"pre-{cfg.model.backbone}-s{cfg.seed}" / "encoder.pt"


def pretrained(cfg: PretrainConfig, out: Path) -> None:
    """Pre-train `cfg`'s encoder, once per --out."""
    path = encoder_path(cfg, out)
    if not path.is_file():
        run_pretraining(cfg, path.parent)


def path_free(train: TrainConfig, pre: PretrainConfig | None, megc: MegcConfig | None, index_hash):
    """A kept row's config: the training run's, the pre-training's that made its encoder
    (model.init names it) and the LOSO's, the index named by its content hash."""
    config = {"train": to_dict(train), "pretrain": to_dict(pre) if pre else None}
    config["train"]["data"]["index"] = index_hash
    if pre:
        config["train"]["model"]["init"] = "pretrain"
        config["pretrain"]["index"] = index_hash
    config["megc"] = to_dict(megc) if megc else None
    return config


def variant_config(kind, overrides, pre, base, index, seed, extra, epochs, out):
    """A variant's training config and, for MEGC, its LOSO config."""
    over = [f"data.index={index}", f"seed={seed}", *overrides, *extra]
    if pre:
        over.append(f"model.init={encoder_path(pre, out)}")
    if kind == "megc":
        cfg = load_config(TrainConfig, base, [*over, "learner.name=supervised"])
        return cfg, MegcConfig(epochs=epochs)
    return load_config(TrainConfig, base, over), None


def run_variant(cfg, megc, pre, index, seed, run_dir, out) -> dict:
    """One variant's figures: a few-shot run's test ACC / UF1, or MEGC LOSO UF1 / UAR / ACC."""
    if pre:
        pretrained(pre, out)  # the encoder cfg.model.init names
    if megc:
        metrics, _ = evaluate_megc(to_dict(cfg), index, megc, seed, run_dir, {})
        return {k: metrics["metrics"]["all"][k] for k in ("uf1", "uar", "acc")}
    metrics = run_training(cfg, run_dir).metrics
    return {"acc": metrics["test"]["acc"][0], "uf1": metrics["test"]["uf1"][0]}


def paired_mean_ci(rows: list[dict], ref: list[dict], metric: str) -> tuple[float, float]:
    """Mean ± 95% CI across seeds of the per-seed difference rows - ref (same seeds)."""
    return mean_ci([r[metric] - q[metric] for r, q in zip(rows, ref, strict=True)])


def measured_table(a, p, index, index_hash, out, train_extra, pre_extra, epochs):
    """Each variant's rows over --seeds: kept, else measured on `index` (and kept)."""
    with tempfile.TemporaryDirectory() as tmp:
        base = base_yaml(Path(tmp))
        table: dict[str, list[dict]] = {}
        for seed in a.seeds:
            for kind in a.kinds:
                variants = FEWSHOT if kind == "fewshot" else MEGC
                for name, (over, which) in variants.items():
                    pre = pretrain_config(index, which, seed, pre_extra) if which else None
                    run_dir = out / f"{name}-s{seed}"
                    kept = Path(a.results, kind, name, f"seed{seed}.json") if a.results else None
                    cfg, megc = variant_config(
                        kind, over, pre, base, index, seed, train_extra, epochs, out
                    )
                    try:  # a finished run is read back: an interrupted table resumes
                        row = measure_once(
                            kept,
                            run_dir / "row.json",
                            index_hash,
                            path_free(cfg, pre, megc, index_hash),
                            partial(run_variant, cfg, megc, pre, index, seed, run_dir, out),
                        )
                    except KeptRowError as e:
                        p.error(str(e))
                    row = {m: row[m] for m in METRICS[kind]}
                    table.setdefault(f"{kind}/{name}", []).append(row)
                    print(f"[ma2mi] seed {seed} {kind}/{name}: {row}", flush=True)
    return table


def kept_table(results: str, kinds: list[str], seeds: list[int]) -> dict[str, list[dict]]:
    """Each variant's kept rows over `seeds`, read without the index: one index per kind."""
    table: dict[str, list[dict]] = {}
    for kind in kinds:
        grid = read_grid(Path(results, kind), list(FEWSHOT if kind == "fewshot" else MEGC), seeds)
        for name, rows in grid.items():
            table[f"{kind}/{name}"] = [{m: rows[s][m] for m in METRICS[kind]} for s in seeds]
    return table


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--index", help="the index to measure on (omit with --results: print kept rows)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--out", help="the runs' folder (default runs/bench-ma2mi; --smoke: a temp one)")
    p.add_argument("--epochs", type=int, default=30, help="MEGC LOSO epochs per fold")
    kinds = ["fewshot", "megc"]
    p.add_argument("--kinds", nargs="+", choices=kinds, default=kinds, help="which halves to run")
    p.add_argument("--results", help="a folder of kept rows, read back first and written")
    p.add_argument(
        "--smoke",
        "--tiny",
        dest="smoke",
        action="store_true",
        help="every variant at toy size on a generated index: that it runs (module docstring)",
    )
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if a.smoke:
            a.results = a.results or str(Path(tmp, "results"))  # never the committed rows
        run(a, p, Path(a.out or (Path(tmp, "runs") if a.smoke else "runs/bench-ma2mi")))


def run(a: argparse.Namespace, p: argparse.ArgumentParser, out: Path) -> None:
    """Measure (or read) the table into `out` and print it (module docstring)."""
    out.mkdir(parents=True, exist_ok=True)
    train_extra, pre_extra, index, epochs = [], [], a.index, a.epochs
    if a.smoke:
        from lightman.platform.generated import small_index

        index = (
            str(out / "index") if (out / "index").exists() else small_index(out, TINY_SYNTH, 16, 6)
        )
        pre_extra, train_extra, epochs = TINY_PRETRAIN, TINY_TRAIN, 1
        a.seeds = a.seeds[:2]
    index_hash = None  # the kept rows' own, checked one index per kind, if no index is given
    if index is None:  # the kept rows alone, no data needed
        if not a.results:
            p.error("--index is required (or --tiny, or --results alone to print kept rows)")
        try:
            table = kept_table(a.results, a.kinds, a.seeds)
        except KeptRowError as e:
            p.error(str(e))
    else:
        index_hash = read_manifest(index)["content_hash"]  # what kept rows were measured on
        table = measured_table(a, p, index, index_hash, out, train_extra, pre_extra, epochs)
        if a.smoke:  # the table from the rows just kept, as --results alone prints it
            table = kept_table(a.results, a.kinds, a.seeds)
    summary = {
        v: {
            m: {
                "mean_ci": mean_ci([r[m] for r in rows]),
                "seeds": [r[m] for r in rows],
                "paired": paired_mean_ci(rows, table[REFERENCE[v.split("/")[0]]], m),
            }
            for m in rows[0]
        }
        for v, rows in table.items()
    }
    lines = ["| variant | metric | mean ± 95% CI (seeds) | per seed | paired vs reference |"]
    lines.append("|---|---|---|---|---|")
    for v, ms in summary.items():
        for m, s in ms.items():
            mean, ci = s["mean_ci"]
            per = ", ".join(f"{100 * x:.1f}" for x in s["seeds"])
            d, dci = s["paired"]
            vs = (
                "-"
                if v.endswith(REFERENCE[v.split("/")[0]])
                else f"{100 * d:+.1f} ± {100 * dci:.1f}"
            )
            lines.append(f"| {v} | {m} | {100 * mean:.1f} ± {100 * ci:.1f} | {per} | {vs} |")
    lines += ["", "| contrast (paired by seed) | metric | mean ± 95% CI |", "|---|---|---|"]
    for label, (v, ref) in CONTRASTS.items():
        if v in table and ref in table:
            for m in table[v][0]:
                d, dci = paired_mean_ci(table[v], table[ref], m)
                lines.append(f"| {label} | {m} | {100 * d:+.1f} ± {100 * dci:.1f} |")
    if a.smoke:
        print(SMOKE_LINE + "\n")
    print("\n".join(lines))
    record = {"seeds": a.seeds, "index": index_hash, "summary": summary, "versions": versions()}
    (out / "ma2mi.json").write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()

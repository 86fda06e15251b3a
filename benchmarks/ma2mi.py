"""Which way of using macro-expression data serves MER: MA2MI pre-training, LightmanNet's
auxiliary alignment, or both? Variants x seeds on one generated index (docs/ma2mi.md).

    python benchmarks/ma2mi.py --index runs/demo/index --seeds 0 1 2 3 4 --out runs/bench-ma2mi
    python benchmarks/ma2mi.py --tiny      # smoke run of the whole table at toy size

Per seed s: two MA2MI pre-trainings (configs/ma2mi.yaml on the index's macro clips, seed s;
one of MIACNet, one of its action branch alone), then each variant below with the demo's
`train:` section (configs/demo.yaml, in process: workers=1) and its overrides; s draws the
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
t, n - 1 dof) and the per-seed values; all of it also goes to <out>/ma2mi.json. Nothing
here decides the question for real data: the index is generated.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import yaml  # noqa: E402

from lightman.models.provenance import to_dict, versions  # noqa: E402
from lightman.platform.config import load_config  # noqa: E402
from lightman.platform.demo import DemoConfig  # noqa: E402
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
TINY_TRAIN = ["iterations=2", "val_episodes=2", "test_episodes=4", "eval_every=1"]
TINY_PRETRAIN = ["steps=3", "log_every=1"]


def base_yaml(tmp: Path) -> str:
    """The demo's train section, in process, as a YAML file that load_config reads."""
    train = load_config(DemoConfig, "configs/demo.yaml", []).train
    path = tmp / "train.yaml"
    body = {**to_dict(train), "workers": 1, "backend": "local"}
    path.write_text(yaml.safe_dump(body))
    return str(path)


def pretrain(index: str, backbone: str, seed: int, out: Path, extra: list[str]) -> str:
    path = out / f"pre-{backbone}-s{seed}" / "encoder.pt"
    if not path.is_file():
        over = [f"index={index}", f"seed={seed}", f"model.backbone={backbone}", *extra]
        run_pretraining(load_config(PretrainConfig, "configs/ma2mi.yaml", over), path.parent)
    return str(path)


def run_variant(name, kind, overrides, encoder, base, index, seed, out, extra, epochs):
    row_path = out / f"{name}-s{seed}" / "row.json"
    if row_path.is_file():  # a finished run is read back: an interrupted table resumes
        return json.loads(row_path.read_text())
    over = [f"data.index={index}", f"seed={seed}", *overrides, *extra]
    if encoder:
        over.append(f"model.init={encoder}")
    if kind == "megc":
        over += ["learner.name=supervised"]
        cfg = load_config(TrainConfig, base, over)
        metrics, _ = evaluate_megc(
            to_dict(cfg), index, MegcConfig(epochs=epochs), seed, row_path.parent, {}
        )
        row = {k: metrics["metrics"]["all"][k] for k in ("uf1", "uar", "acc")}
    else:
        cfg = load_config(TrainConfig, base, over)
        metrics = run_training(cfg, row_path.parent).metrics
        row = {"acc": metrics["test"]["acc"][0], "uf1": metrics["test"]["uf1"][0]}
    row_path.parent.mkdir(parents=True, exist_ok=True)
    row_path.write_text(json.dumps(row))
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--index", default="runs/demo/index")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--out", default="runs/bench-ma2mi")
    p.add_argument("--epochs", type=int, default=30, help="MEGC LOSO epochs per fold")
    p.add_argument("--tiny", action="store_true", help="a smoke run on a small generated index")
    a = p.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    train_extra, pre_extra, index, epochs = [], [], a.index, a.epochs
    if a.tiny:
        from lightman.platform.generated import small_index

        synth = ["datasets=[casme2,ckplus]", "casme2.subjects=10", "casme2.clips=100"]
        synth += ["ckplus.subjects=6", "ckplus.clips=40"]
        index = str(out / "index") if (out / "index").exists() else small_index(out, synth, 32, 8)
        pre_extra = [*TINY_PRETRAIN, "datasets=[ckplus]", "holdout_fraction=0.5"]
        train_extra, epochs = TINY_TRAIN, 1
        a.seeds = a.seeds[:2]
    with tempfile.TemporaryDirectory() as tmp:
        base = base_yaml(Path(tmp))
        table: dict[str, list[dict]] = {}
        for seed in a.seeds:
            enc = {
                b: pretrain(index, b, seed, out, pre_extra) for b in ("miacnet", "miacnet_action")
            }
            for kind, variants in (("fewshot", FEWSHOT), ("megc", MEGC)):
                for name, (over, which) in variants.items():
                    row = run_variant(
                        name,
                        kind,
                        over,
                        enc.get(which),
                        base,
                        index,
                        seed,
                        out,
                        train_extra,
                        epochs,
                    )
                    table.setdefault(f"{kind}/{name}", []).append(row)
                    print(f"[ma2mi] seed {seed} {kind}/{name}: {row}", flush=True)
    summary = {
        v: {
            m: {"mean_ci": mean_ci([r[m] for r in rows]), "seeds": [r[m] for r in rows]}
            for m in rows[0]
        }
        for v, rows in table.items()
    }
    lines = ["| variant | metric | mean ± 95% CI (seeds) | per seed |", "|---|---|---|---|"]
    for v, ms in summary.items():
        for m, s in ms.items():
            mean, ci = s["mean_ci"]
            per = ", ".join(f"{100 * x:.1f}" for x in s["seeds"])
            lines.append(f"| {v} | {m} | {100 * mean:.2f} ± {100 * ci:.2f} | {per} |")
    print("\n".join(lines))
    record = {"seeds": a.seeds, "index": index, "summary": summary, "versions": versions()}
    (out / "ma2mi.json").write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()

"""Few-shot evaluation on held-out subjects: adapt on each episode's support set, predict its
query set, and summarise ACC / macro-F1 / UAR / UF1 as mean ± 95% CI over episodes."""

from __future__ import annotations

import csv
import io
import json
import posixpath
from dataclasses import dataclass, field

import numpy as np
import torch

from lightman.models.checkpoint import load_checkpoint
from lightman.models.learners import LearnerConfig, build_learner
from lightman.models.learners.config import record_keys
from lightman.models.modes import eval_mode
from lightman.models.provenance import versions
from lightman.platform.config import from_dict
from lightman.platform.devices import check_device_name, resolve_device
from lightman.platform.megc import PROTOCOL as MEGC_LOSO
from lightman.platform.megc import MegcConfig, evaluate_megc
from lightman.platform.protocols import (
    PROTOCOLS,
    RENAMED,
    LosoConfig,
    evaluate_protocol,
    format_protocol_table,
    protocol_metrics,
    write_protocol_results,
)
from lightman.platform.selection import DataSelection, auxiliary_pool, primary_pool
from lightman.tasks import storage
from lightman.tasks.corrupt import KINDS, corrupt_pool
from lightman.tasks.episodes import EpisodeConfig, seeded_episodes
from lightman.tasks.metrics import episode_summary

METRICS = ("acc", "macro_f1", "uar", "uf1")  # the report's columns, in order


@dataclass(frozen=True)
class EvalConfig:
    """Evaluation of a checkpoint; ways must match the checkpoint's classifier."""

    shots: int = 0  # K; 0 = the shots the model was trained with
    query: int = 0  # query clips per class; 0 = as trained (fewshot)
    episodes: int = 600  # fixed evaluation episodes (fewshot; paper: >= 600)
    seed: int = 0  # seeds the evaluation episodes / support draws
    test_inner_steps: int = 0  # adaptation steps; 0 = the learner's own setting
    repeats: int = 10  # support draws of loso / composite (mean ± 95% CI over draws)
    batch_size: int = 64  # clips of a left-out subject per forward pass (loso / composite)
    corrupt: str = "none"  # robustness study (paper 5.3): none | mask (P1) | noise (P2) | grey (P3)
    corrupt_fraction: float = 0.0  # share of the test clips corrupted (paper: 0.1, 0.3, 0.5)
    megc: MegcConfig = field(default_factory=MegcConfig)  # megc-loso: training of each fold
    device: str = "cpu"  # cpu, cuda or cuda:N: where the checkpoint adapts and predicts

    def __post_init__(self) -> None:
        check_device_name(self.device, "device")
        if self.corrupt not in ("none", *KINDS) or not 0 <= self.corrupt_fraction <= 1:
            raise ValueError(
                f"corrupt must be one of {['none', *KINDS]} and corrupt_fraction in [0, 1]"
            )
        if self.episodes < 1 or min(self.shots, self.query, self.test_inner_steps) < 0:
            raise ValueError("episodes >= 1 and shots, query, test_inner_steps >= 0 are required")
        if self.repeats < 1 or self.batch_size < 1:
            raise ValueError("repeats >= 1 and batch_size >= 1 are required")


@dataclass(frozen=True)
class EvalResult:
    metrics: dict
    table: str


def evaluate_episodes(learner, model, params, buffers, episodes) -> dict:
    """Adapt on each support set and predict its query set (`Learner.predict`: adapt, then
    `logits`), the model in eval mode for the call and back in the caller's mode after;
    metric -> (mean, 95% CI half-width). Labels and predictions go to the summary as the
    pool's global classes (`Episode.classes[way]`), so that uf1_pooled / uar_pooled pool
    the counts of each real class, not of way j, which is another class in every episode;
    the per-episode metrics do not depend on the labelling."""
    pairs = []
    # the episodes go where the model is (a model without parameters takes them as they are)
    device = next((p.device for p in params.values()), None)
    with eval_mode(model):
        for ep in episodes:
            ep = ep if device is None else ep.to(device)
            with torch.enable_grad():  # test-time adaptation takes gradient steps
                logits = learner.predict(model, params, buffers, ep)
            classes = np.asarray(ep.classes)  # (N,): way j -> global class
            pred = logits.argmax(-1).detach().cpu().numpy()
            pairs.append((classes[ep.query_y.cpu().numpy()], classes[pred]))
    return episode_summary(pairs)


def format_table(rows: list[dict]) -> str:
    """Markdown table: one row per run, mean ± 95% CI in percent."""
    head = "| learner | task | ACC | macro-F1 | UAR | UF1 | train s | BN |"
    lines = [head, "|" + "---|" * 8]
    for r in rows:
        cells = [f"{100 * r['test'][m][0]:.2f} ± {100 * r['test'][m][1]:.2f}" for m in METRICS]
        task = f"{r['ways']}-way {r['shots']}-shot"
        lines.append(
            f"| {r['learner']} | {task} | "
            + " | ".join(cells)
            + f" | {r.get('train_seconds', '-')} | {r.get('bn_mode', '-')} |"
        )
    return "\n".join(lines)


def write_results(out: str, result: dict) -> None:
    """results.json (everything, with config and versions) and results.csv (the table), under
    `out` (a local folder or s3://)."""
    root = storage.resolve(out)
    storage.write_text(root.join("results.json"), json.dumps(result, indent=2, default=str))
    m = result["metrics"]
    text = io.StringIO()
    w = csv.writer(text)
    w.writerow(
        ["learner", "ways", "shots", *[f"{k}_{s}" for k in METRICS for s in ("mean", "ci95")]]
    )
    w.writerow([m["learner"], m["ways"], m["shots"], *[v for k in METRICS for v in m["test"][k]]])
    storage.write_text(root.join("results.csv"), text.getvalue())


def _default_out(checkpoint: str, name: str) -> str:
    """`eval-...` beside the checkpoint (local or s3://) when no --out is given."""
    loc = storage.resolve(checkpoint)
    return storage.uri_of(loc, posixpath.join(posixpath.dirname(loc.path), name))


def evaluate_checkpoint(
    checkpoint: str, index: str, protocol: str, cfg: EvalConfig, out: str | None
) -> EvalResult:
    """Evaluate a training run's checkpoint on the test subjects it recorded: few-shot
    episodes (fewshot), or LOSO over those subjects (loso, loso-composite3:
    platform/protocols.py), or MEGC 2019's LOSO of its config (megc-loso: platform/megc.py)."""
    known = ["fewshot", *PROTOCOLS, MEGC_LOSO]
    if protocol in RENAMED:
        raise ValueError(RENAMED[protocol])
    if protocol not in known:
        raise ValueError(f"protocol {protocol!r} is unknown; use one of {known}")
    device = resolve_device(cfg.device, "device")  # before any work
    model, model_cfg, ckpt = load_checkpoint(io.BytesIO(storage.read_bytes(checkpoint)), checkpoint)
    model.to(device)
    meta = ckpt["extra"]  # what train.py recorded: config, split, learner, versions
    train_cfg = meta["config"]
    if protocol == MEGC_LOSO:  # retrains the run's config per subject (platform/megc.py)
        out_dir = out or _default_out(checkpoint, f"eval-{MEGC_LOSO}")
        record = {"checkpoint": checkpoint, "train_meta": meta}
        metrics, table = evaluate_megc(
            train_cfg,
            index,
            cfg.megc,
            cfg.seed,
            out_dir,
            record,
            device,
            corrupt=(cfg.corrupt, cfg.corrupt_fraction),
        )
        return EvalResult(metrics, table)
    learner_dict = record_keys(meta["learner"])
    if cfg.test_inner_steps:
        learner_dict["test_inner_steps"] = cfg.test_inner_steps
    learner = build_learner(from_dict(LearnerConfig, learner_dict))
    ep = dict(train_cfg["episode"])
    ep["shots"] = cfg.shots or ep["shots"]
    ep["query"] = cfg.query or ep["query"]
    ep_cfg = from_dict(EpisodeConfig, ep)
    data = from_dict(DataSelection, {**train_cfg["data"], "index": index})
    test_subjects = tuple(meta["split"]["test"])
    out_dir = out or _default_out(checkpoint, f"eval-{protocol}-{ep_cfg.ways}w{ep_cfg.shots}s")
    if protocol in PROTOCOLS:
        loso = LosoConfig(
            shots=ep_cfg.shots,
            repeats=cfg.repeats,
            seed=cfg.seed,
            batch_size=cfg.batch_size,
            aux_shots=ep_cfg.aux_shots if data.auxiliary else 0,
            aux_pairing=ep_cfg.aux_pairing,
        )
        result = evaluate_protocol(
            protocol, learner, model, data, test_subjects, loso, cfg.corrupt, cfg.corrupt_fraction
        )
        metrics = {
            **protocol_metrics(result),
            "learner": learner.cfg.name,
            "ways": model_cfg.ways,
            "shots": loso.shots,
            "bn_mode": model_cfg.bn_mode,
            "checkpoint": checkpoint,
            "corrupt": cfg.corrupt,
        }
        write_protocol_results(
            out_dir,
            result,
            {
                "metrics": metrics,
                "eval_config": cfg.__dict__,
                "protocol_config": loso.__dict__,
                "train_meta": meta,
                "checkpoint_versions": ckpt["versions"],
                "versions": versions(),
            },
        )
        return EvalResult(
            metrics, format_protocol_table(result, learner.cfg.name, loso.shots, model_cfg.bn_mode)
        )
    pool = primary_pool(data).by_subjects(test_subjects, name="test")
    corrupted: list[str] = []
    if cfg.corrupt != "none":
        pool, corrupted = corrupt_pool(pool, cfg.corrupt, cfg.corrupt_fraction, seed=cfg.seed)
    aux = auxiliary_pool(data)
    episodes = seeded_episodes(pool, ep_cfg, cfg.episodes, seed=cfg.seed, aux_pool=aux)
    summary = evaluate_episodes(
        learner, model, dict(model.named_parameters()), dict(model.named_buffers()), episodes
    )
    metrics = {
        "learner": learner.cfg.name,
        "ways": ep_cfg.ways,
        "shots": ep_cfg.shots,
        "bn_mode": model_cfg.bn_mode,
        "test": summary,
        "test_episodes": cfg.episodes,
        "test_subjects": list(test_subjects),
        "checkpoint": checkpoint,
        "corrupt": cfg.corrupt,
        "corrupted_clips": list(corrupted),
    }
    write_results(out_dir, {"metrics": metrics, "eval_config": cfg.__dict__, "train_meta": meta})
    return EvalResult(metrics, format_table([metrics]))

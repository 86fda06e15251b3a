"""MEGC 2019 leave-one-subject-out for supervised models (`lightman eval --protocol megc-loso`).

This is the field's LOSO, and not Lightman's few-shot `loso` protocol (protocols.py):

- `loso` / `loso-composite3` evaluate ONE meta-trained checkpoint on the run's held-out test
  subjects: each fold adapts the checkpoint on a K-shot support set drawn from the other
  test subjects, then predicts the left-out one.
- `megc-loso` TRAINS one model per subject of the whole primary pool: fold s trains a
  fresh model (the checkpoint's model config, with its `model.init` pre-trained encoder if
  it has one, else random) on every clip of every other subject, for a fixed number of
  epochs (`epochs`; never the best epoch per subject, which would select on the test
  subject), then predicts every clip of s. The checkpoint supplies the config only, not
  its weights.

Predictions of all folds are joined by clip id (each clip exactly once) and scored once on
the pooled counts: UF1 and UAR as MEGC 2019 computes them (tasks/metrics.py), with ACC and
macro-F1 beside them, for all clips and per dataset.

Training per fold: Adam (the run's learner.outer_lr and weight_decay unless `lr` is set),
cross-entropy of h_pri on the pool's classes (model.ways = the class count), minibatches
of `batch_size` clips reshuffled every epoch from the seed (seed, fold number). Batch
statistics: under bn_mode task the left-out subject's clips are normalised together, as
in `loso` (transductive per subject); clip and running are not.

Folds are independent: with `workers > 1` they run as Ray tasks (one CPU each, `workers`
at a time); Ray is imported only then, so the default path never loads it. A fold's result
does not depend on where it runs (its seed is its own).

Device: the caller resolves it (`lightman eval ... device=cuda`, platform/devices.py) and
passes the torch.device; folds train and predict there. As Ray tasks on CUDA each fold
reserves one GPU (`num_gpus=1`) and sees it as cuda, so folds share a GPU one at a time.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from lightman.models.net import ModelConfig
from lightman.models.provenance import to_dict, versions
from lightman.platform.config import from_dict
from lightman.platform.encoder import build_run_model
from lightman.platform.runtime import setup
from lightman.platform.selection import DataSelection, primary_pool
from lightman.tasks import storage
from lightman.tasks.corrupt import corrupt_pool
from lightman.tasks.episodes import ClipPool, to_tensor
from lightman.tasks.metrics import SCORES
from lightman.tasks.splits import loso_folds, pool_predictions

PROTOCOL = "megc-loso"
CPU = torch.device("cpu")  # the folds' device unless the caller passes another


@dataclass(frozen=True)
class MegcConfig:
    """Training of each MEGC LOSO fold (`lightman eval ... megc.epochs=30`)."""

    epochs: int = 30  # fixed for every fold
    batch_size: int = 16  # training clips per Adam step
    lr: float = 0.0  # 0: the checkpoint run's learner.outer_lr
    workers: int = 1  # > 1: folds run as Ray tasks, this many at once
    threads: int = 1  # torch threads per fold
    # a meta-learner's fold (`learner_fold`, lightman reproduce): support clips per class,
    # drawn from the fold's training subjects, that it adapts on before predicting
    shots: int = 5

    def __post_init__(self) -> None:
        checks = (("epochs", 1), ("batch_size", 2), ("workers", 1), ("threads", 1), ("shots", 1))
        for name, low in checks:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"megc.{name} must be an integer >= {low}, got {value!r}")
        if self.lr < 0:
            raise ValueError(f"megc.lr must be >= 0, got {self.lr!r}")


@dataclass(frozen=True, eq=False)
class FoldResult:
    fold: str  # the left-out subject
    clip_ids: tuple[str, ...]
    y_true: np.ndarray  # (n,) int64
    y_pred: np.ndarray  # (n,) int64
    seconds: float


def run_fold(
    model_cfg: ModelConfig,
    pool: ClipPool,
    subject: str,
    number: int,
    cfg: MegcConfig,
    lr: float,
    weight_decay: float,
    seed: int,
    device: torch.device = CPU,
    tested: ClipPool | None = None,
) -> FoldResult:
    """Train on every subject but `subject` for cfg.epochs on `device`, predict `subject`'s
    clips; their frames from `tested` (the same clips, some corrupted: `corrupt=`) when it
    is given, so that a corrupted clip is only ever a test clip, never a training one."""
    t0 = time.perf_counter()
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(seed * 100_003 + number)
    rng = np.random.default_rng((seed, number))
    own = pool.subjects == subject
    train, test = np.flatnonzero(~own), np.flatnonzero(own)
    model = build_run_model(model_cfg).to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in range(cfg.epochs):
        order = rng.permutation(train)
        # a last batch of one clip cannot be batch-normalised: it joins the previous one
        starts = list(range(0, order.size, cfg.batch_size))
        if len(starts) > 1 and order.size - starts[-1] < 2:
            starts.pop()
        for i, s in enumerate(starts):
            end = starts[i + 1] if i + 1 < len(starts) else order.size
            rows = order[s:end]
            x = to_tensor(pool.frames[rows]).to(device)  # (batch, M, C, H, W)
            y = torch.from_numpy(pool.labels[rows]).to(device)  # (batch,)
            loss = F.cross_entropy(model(x, head="pri", update_stats=True), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        frames = (pool if tested is None else tested).frames[test]
        x = to_tensor(frames).to(device)  # (n, M, C, H, W): one subject's clips
        pred = model(x, head="pri").argmax(-1).cpu().numpy()
    return FoldResult(
        subject,
        tuple(pool.clip_ids[test].tolist()),
        pool.labels[test].copy(),
        pred.astype(np.int64),
        round(time.perf_counter() - t0, 2),
    )


def _fold_task(*args) -> FoldResult:
    """`run_fold` as a Ray task: the worker's process-wide settings first (runtime.py)."""
    setup()
    return run_fold(*args)


def run_folds(
    model_cfg: ModelConfig,
    pool: ClipPool,
    cfg: MegcConfig,
    lr: float,
    weight_decay: float,
    seed: int,
    device: torch.device = CPU,
    tested: ClipPool | None = None,
) -> list[FoldResult]:
    """Every fold, in process (workers=1) or as Ray tasks (workers>1), in subject order;
    `tested`: the test clips' frames (run_fold)."""
    subjects = [f.test_subject for f in loso_folds(pool.subjects)]
    args = (cfg, lr, weight_decay, seed)
    if cfg.workers == 1:
        return [
            run_fold(model_cfg, pool, s, k, *args, device, tested) for k, s in enumerate(subjects)
        ]
    import ray  # only when asked: the single-process path never loads Ray

    if not ray.is_initialized():
        ray.init(num_cpus=cfg.workers, include_dashboard=False, log_to_driver=False)
    cuda = device.type == "cuda"
    # a CUDA fold gets a GPU of its own, which it sees as cuda (its CUDA_VISIBLE_DEVICES)
    remote = ray.remote(num_cpus=1, num_gpus=1 if cuda else 0)(_fold_task)
    on = torch.device("cuda") if cuda else device
    pool_ref = ray.put(pool)
    tested_ref = None if tested is None else ray.put(tested)
    pending = [
        remote.remote(model_cfg, pool_ref, s, k, *args, on, tested_ref)
        for k, s in enumerate(subjects)
    ]
    return list(ray.get(pending))


def check_classes(model_cfg: ModelConfig, pool: ClipPool) -> None:
    n = len(pool.class_names)
    if model_cfg.ways != n:
        raise ValueError(
            f"{PROTOCOL}: every clip is classified among all {n} classes "
            f"{list(pool.class_names)}, but the checkpoint's model has ways={model_cfg.ways}; "
            f"train it with learner.name=supervised episode.ways<={n} model.ways={n}"
        )


def megc_loso(
    model_cfg: ModelConfig,
    pool: ClipPool,
    cfg: MegcConfig,
    lr: float,
    weight_decay: float,
    seed: int,
    device: torch.device = CPU,
    corrupt: tuple[str, float] = ("none", 0.0),
) -> dict:
    """Run every fold on `device`, pool by clip id, score: the plain-data result.

    `corrupt` (kind, fraction; tasks/corrupt.py): that fraction of the pool's clips is
    corrupted once (seeded by `seed`); a fold trains on the clean clips of the other
    subjects and predicts its subject's clips as corrupted: every clip is corrupted only
    where it is a test clip, as the fewshot protocol corrupts only its test pool."""
    check_classes(model_cfg, pool)
    kind, fraction = corrupt
    tested, corrupted = None, ()
    if kind != "none":
        tested, corrupted = corrupt_pool(pool, kind, fraction, seed=seed)
    folds = run_folds(model_cfg, pool, cfg, lr, weight_decay, seed, device, tested)
    expected = dict(zip(pool.clip_ids.tolist(), pool.labels.tolist()))
    pooled = pool_predictions(
        [dict(zip(f.clip_ids, zip(f.y_true.tolist(), f.y_pred.tolist()))) for f in folds],
        expected,
    )
    dataset_of = dict(zip(pool.clip_ids.tolist(), pool.datasets.tolist()))
    datasets = np.array([dataset_of[c] for c in pooled.clip_ids])
    groups = {"all": np.ones(datasets.size, dtype=bool)}
    groups |= {d: datasets == d for d in sorted(set(datasets.tolist()))}
    metrics = {
        g: {k: fn(pooled.y_true[m], pooled.y_pred[m]) for k, fn in SCORES.items()}
        for g, m in groups.items()
    }
    return {
        "protocol": PROTOCOL,
        "classes": list(pool.class_names),
        "folds": len(folds),
        "epochs": cfg.epochs,
        "metrics": metrics,
        "clips": {g: int(m.sum()) for g, m in groups.items()},
        "fold_seconds": {f.fold: f.seconds for f in folds},
        "corrupt": kind,
        "corrupted_clips": list(corrupted),
        "predictions": [
            (f.fold, c, int(t), int(p))
            for f in folds
            for c, t, p in zip(f.clip_ids, f.y_true.tolist(), f.y_pred.tolist())
        ],
    }


def format_megc_table(result: dict, backbone: str, init: str) -> str:
    lines = [
        "| protocol | model | init | data | clips | folds | epochs | ACC | macro-F1 | UAR | UF1 |",
        "|" + "---|" * 11,
    ]
    for group, m in result["metrics"].items():
        cells = " | ".join(f"{100 * m[k]:.2f}" for k in SCORES)
        lines.append(
            f"| {PROTOCOL} | {backbone} | {init or 'random'} | {group} | "
            f"{result['clips'][group]} | {result['folds']} | {result['epochs']} | {cells} |"
        )
    return "\n".join(lines)


def write_megc_results(out: str, result: dict, record: dict) -> None:
    """results.json (metrics + `record`), results.csv (one row per group) and
    predictions.csv (fold, clip_id, y_true, y_pred), from which every number recomputes;
    under `out`, a local folder or s3://."""
    root = storage.resolve(out)
    body = {k: v for k, v in result.items() if k != "predictions"}
    storage.write_text(root.join("results.json"), json.dumps({**record, "metrics": body}, indent=2))
    storage.write_csv(
        root.join("results.csv"),
        [
            ["protocol", "data", "clips", "folds", "epochs", *SCORES],
            *(
                [PROTOCOL, g, result["clips"][g], result["folds"], result["epochs"]]
                + [m[k] for k in SCORES]
                for g, m in result["metrics"].items()
            ),
        ],
    )
    storage.write_csv(
        root.join("predictions.csv"),
        [["fold", "clip_id", "y_true", "y_pred"], *result["predictions"]],
    )


def evaluate_megc(
    train_cfg: dict,
    index: str,
    cfg: MegcConfig,
    seed: int,
    out: str,
    record: dict,
    device: torch.device = CPU,
    corrupt: tuple[str, float] = ("none", 0.0),
) -> tuple[dict, str]:
    """MEGC LOSO of a run's config (its recorded `config`) on the primary pool of `index`,
    every fold trained on `device` (resolved by the caller, before this reads the index);
    writes the results to `out` -> (metrics, table)."""
    data = from_dict(DataSelection, {**train_cfg["data"], "index": index})
    model_cfg = from_dict(ModelConfig, train_cfg["model"])
    learner = train_cfg["learner"]
    if learner["name"] != "supervised":
        # Training a meta-learner's config with cross-entropy would report a supervised
        # model under the run's learner name; its LOSO meta-trains each fold (learner_fold).
        raise ValueError(
            f"--protocol {PROTOCOL} trains each fold with cross-entropy for megc.epochs, as "
            f"MEGC 2019's baseline is trained, but the checkpoint is a "
            f"learner.name={learner['name']} run. Its leave-one-subject-out meta-trains every "
            "fold: `lightman reproduce --study table1` (or a study file with this run's "
            "config), or evaluate a learner.name=supervised checkpoint here"
        )
    lr = cfg.lr or learner["outer_lr"]
    pool = primary_pool(data)
    result = megc_loso(model_cfg, pool, cfg, lr, learner["weight_decay"], seed, device, corrupt)
    meta = {
        "megc_config": to_dict(cfg),
        "device": str(device),
        "seed": seed,
        "lr": lr,
        "model": to_dict(model_cfg),
        "data": to_dict(data),
        "versions": versions(),
    }
    write_megc_results(out, result, {**record, **meta})
    metrics = {k: v for k, v in result.items() if k != "predictions"}
    return metrics, format_megc_table(result, model_cfg.backbone, model_cfg.init)


# --- held-out folds of any learner (Table 1, the cross-dataset study) ----------------------

HOLDOUTS = {
    "megc-loso": "subject",
    "lodo": "dataset",
}  # a study's protocol -> what a fold holds out


def fold_names(pool: ClipPool, protocol: str) -> list[str]:
    """The folds of `protocol`: every subject (megc-loso) or every dataset (lodo), sorted."""
    if protocol not in HOLDOUTS:
        raise ValueError(f"protocol must be one of {list(HOLDOUTS)}, got {protocol!r}")
    names = sorted(set(pool.subjects if HOLDOUTS[protocol] == "subject" else pool.datasets))
    if len(names) < 2:
        raise ValueError(f"{protocol}: needs at least 2 {HOLDOUTS[protocol]}s, got {names}")
    return [str(n) for n in names]


def held_rows(pool: ClipPool, protocol: str, fold: str) -> np.ndarray:
    """(n,) bool: the clips fold `fold` holds out (its subject's, or its dataset's)."""
    column = pool.subjects if HOLDOUTS[protocol] == "subject" else pool.datasets
    return column == fold


def holdout_split(
    pool: ClipPool,
    held: np.ndarray,
    val_fraction: float,
    seed: int,
    ways: int,
    min_clips: int,
    attempts: int = 500,
):
    """A `SubjectSplit` whose test part is the held-out clips' subjects and whose validation
    subjects (`val_fraction` of the others, at least one) are drawn from the others only,
    the first draw (seed, seed + 1, ...) in which meta-train and validation can each serve
    `ways`-way episodes of `min_clips` clips per class; -> (split, attempt)."""
    from lightman.tasks.splits import SplitError, SubjectSplit, assert_disjoint

    test = tuple(sorted(set(pool.subjects[held].tolist())))
    others = sorted(set(pool.subjects[~held].tolist()))
    n_val = max(int(np.floor(val_fraction * len(others) + 0.5)), 1)
    if n_val >= len(others):
        raise SplitError(f"{len(others)} training subjects cannot spare {n_val} for validation")

    def ready(subjects) -> bool:
        counts = pool.by_subjects(subjects).class_counts()
        return int((counts >= min_clips).sum()) >= ways

    for attempt in range(attempts):
        val = sorted(np.random.default_rng(seed + attempt).permutation(others)[:n_val].tolist())
        train = tuple(s for s in others if s not in set(val))
        if ready(train) and ready(val):
            split = SubjectSplit(train, tuple(val), test)
            assert_disjoint(split, pool.subjects.tolist())
            return split, attempt
    raise SplitError(
        f"no validation draw of the {len(others)} training subjects in {attempts} gives "
        f"meta-train and validation {ways} classes with >= {min_clips} clips each"
    )


def learner_fold(
    cfg,
    pool: ClipPool,
    aux: ClipPool | None,
    held: np.ndarray,
    fold: str,
    out: str,
    shots: int,
    batch_size: int = 64,
    resume: bool = False,
    device: torch.device = CPU,
) -> dict:
    """One held-out fold of a meta-learner (`cfg`: its TrainConfig): meta-train on the clips
    not `held` (model selection on validation subjects drawn from them, as `lightman train`
    selects), then adapt the chosen weights on a support set of `shots` clips per class drawn
    from the meta-training subjects (with the macro clips its episodes had), as the served
    model adapts, and predict every held-out clip. The run's files go under `out`.

    -> {"fold", "clip_ids", "y_true", "y_pred" (held-out clips), "train_clips" (every clip
    of the meta-training and validation subjects), "split", "train_seconds"}."""
    import dataclasses

    from lightman.models.learners import build_learner
    from lightman.models.modes import eval_mode
    from lightman.models.net import build_model
    from lightman.platform.loop import RunData
    from lightman.platform.protocols import check_ways, predict_fold
    from lightman.platform.train import _local_run
    from lightman.tasks.episodes import draw_aux, pair_aux
    from lightman.tasks.splits import draw_support

    check_ways(PROTOCOL, cfg.model.ways, pool.class_names)
    ep = cfg.episode
    split, attempt = holdout_split(
        pool, held, cfg.data.val_fraction, cfg.seed, ep.ways, ep.shots + ep.query
    )
    train_pool = pool.by_subjects(split.train, name="train")
    val_pool = pool.by_subjects(split.val, name="val")
    t0 = time.perf_counter()
    state = _local_run(
        cfg, out, resume, RunData(train_pool, val_pool, None, aux, split, attempt), device
    )
    seconds = round(time.perf_counter() - t0, 1)
    best = state["best"]
    model = build_model(dataclasses.replace(cfg.model, init="")).to(device)
    model.load_state_dict(best["model"] if best["model"] is not None else state["model"])
    learner = build_learner(cfg.learner)
    rng = np.random.default_rng((cfg.seed, 2))
    train_rows = np.flatnonzero(np.isin(pool.subjects, split.train))
    support = draw_support(pool, train_rows, shots, rng, fold)
    aux_rows = aux_ways = None
    if aux is not None and ep.aux_shots:
        paired = pair_aux(pool, aux, ep.aux_pairing)
        aux_rows, aux_ways = draw_aux(paired, len(aux), ep.aux_shots, rng)
    target = np.flatnonzero(held)
    with eval_mode(model):
        y_pred = predict_fold(
            learner, model, pool, support, target, batch_size, aux, aux_rows, aux_ways
        )
    return {
        "fold": fold,
        "clip_ids": pool.clip_ids[target].tolist(),
        "y_true": pool.labels[target].tolist(),
        "y_pred": y_pred.tolist(),
        "support": pool.clip_ids[support].tolist(),
        "train_clips": sorted(pool.by_subjects([*split.train, *split.val]).clip_ids.tolist()),
        "split": {"train": list(split.train), "val": list(split.val), "test": list(split.test)},
        "train_seconds": seconds,
    }


def supervised_fold(
    cfg, pool: ClipPool, held: np.ndarray, fold: str, megc: MegcConfig, device: torch.device = CPU
) -> dict:
    """One held-out fold of the supervised baseline as `megc-loso` trains it (`run_fold`:
    cross-entropy on every clip not `held`, fixed `megc.epochs`, no selection), then every
    held-out clip predicted; the dict of `learner_fold`."""
    check_classes(cfg.model, pool)
    lr = megc.lr or cfg.learner.outer_lr
    marked = _held_as_subject(pool, held, fold)
    r = run_fold(cfg.model, marked, fold, 0, megc, lr, cfg.learner.weight_decay, cfg.seed, device)
    return {
        "fold": fold,
        "clip_ids": list(r.clip_ids),
        "y_true": r.y_true.tolist(),
        "y_pred": r.y_pred.tolist(),
        "support": [],
        "train_clips": sorted(pool.clip_ids[~held].tolist()),
        "split": {"test": sorted(set(pool.subjects[held].tolist()))},
        "train_seconds": r.seconds,
    }


def _held_as_subject(pool: ClipPool, held: np.ndarray, fold: str) -> ClipPool:
    """The pool with every held-out clip's subject named `fold` (run_fold holds out one
    subject: a held-out dataset becomes one)."""
    import dataclasses

    subjects = pool.subjects.copy().astype(object)
    subjects[held] = fold
    return dataclasses.replace(pool, subjects=subjects)

"""Meta-training runs: the config, the data a run needs, the in-process driver, the result.

`run_training` loads the pools and draws the subject split once (`prepare`), runs the one
loop (`loop.train_loop`) either in this process (`train.workers=1`, no Ray) or on W Ray
Train workers (`distributed.fit`), then `finish`es on the driver: best.pt from the
weights validation chose, the one evaluation on test subjects, the results and logs.

Every artifact goes through the storage layer under `--out`, a local folder or an s3://
URI: config.yaml, run-state checkpoints (`checkpoints/` in process, `ray/` on Ray Train
or under `storage_path`), best.pt, results.json/.csv, metrics.jsonl, the
TensorBoard events and curves.png. Nothing of a run lives only on one node's disk.
"""

from __future__ import annotations

import dataclasses
import io
import os
import time
from dataclasses import dataclass, field
from typing import Literal, get_args

import torch
import yaml

from lightman.models.checkpoint import save_checkpoint
from lightman.models.learners import LearnerConfig, build_learner
from lightman.models.learners.config import LightmanConfig, SupervisedConfig
from lightman.models.net import ModelConfig, build_model
from lightman.models.provenance import to_dict, versions
from lightman.platform.config import ConfigError
from lightman.platform.devices import resolve_device
from lightman.platform.evaluate import evaluate_episodes, format_table, write_results
from lightman.platform.loop import (
    LoopContext,
    RunData,
    check_resumable,
    shard_subjects,
    train_loop,
)
from lightman.platform.report import draw_curves
from lightman.platform.run_log import write_logs
from lightman.platform.run_state import latest_checkpoint, load_state, write_checkpoint
from lightman.platform.selection import (
    DataSelection,
    auxiliary_pool,
    check_clip_shapes,
    primary_pool,
)
from lightman.tasks import storage
from lightman.tasks.episodes import EpisodeConfig, EpisodeSampler, seeded_episodes
from lightman.tasks.splits import episode_ready_split, split_pools

Backend = Literal["auto", "local", "ray"]
Device = Literal["cpu", "cuda"]
DataMode = Literal["replicate", "shard"]
CONFIG_FILE = "config.yaml"  # the run's resolved config (`lightman train --config` runs it)
BEST_FILE = "best.pt"
CHECKPOINTS_DIR = "checkpoints"  # in-process run-state checkpoints


@dataclass(frozen=True)
class TrainConfig:
    """A meta-training run; every field is settable from YAML or key=value."""

    seed: int = 0  # seeds episodes, splits and initialisation
    data: DataSelection = field(default_factory=DataSelection)
    episode: EpisodeConfig = field(default_factory=EpisodeConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    # learner.name picks the algorithm and with it the other learner.* keys
    learner: LearnerConfig = field(default_factory=LightmanConfig)
    meta_batch: int = 4  # T, tasks per outer step (global, over all workers)
    iterations: int = 300  # outer steps
    eval_every: int = 50  # validate every N outer steps (rank 0)
    val_episodes: int = 100  # fixed validation episodes (same for every learner)
    test_episodes: int = 600  # fixed test episodes (paper: mean ± 95% CI over >= 600)
    threads: int = 0  # torch CPU threads per worker (0: torch's default)
    workers: int = 1  # W data-parallel workers; W > 1 runs through Ray Train
    # where the run trains: local, in this process, no Ray; ray, on Ray Train workers; auto,
    # ray when workers > 1 (the only way to run several) else local. Nothing else moves a
    # run onto Ray: storage_path needs backend=ray (or workers > 1). The choice is printed
    # at the start and recorded in results.json (metrics.backend).
    backend: Backend = "auto"
    device: Device = "cpu"  # cpu: gloo all-reduce; cuda: one GPU per worker, nccl
    # replicate: every worker holds the whole training pool and computes its share of the
    # step's global task list (W workers = 1 worker up to float32 summation order);
    # shard: worker r holds only its training subjects (sorted subjects r, r + W, ...,
    # read through Ray Data) and draws its tasks from them: for pools too large for one
    # worker, deterministic for a fixed W but not equal across W.
    data_mode: DataMode = "replicate"
    checkpoint_every: int = 50  # write the run state every N steps (and after the last)
    keep_checkpoints: int = 2  # newest run-state checkpoints kept
    storage_path: str = ""  # Ray Train's storage, local or s3:// ("" = <out>/ray); Ray runs only
    run_name: str = ""  # the run's name under storage_path ("" = the --out folder's name)
    max_failures: int = 2  # worker failures Ray Train recovers from (from the last checkpoint)
    debug_checksum: bool = False  # all-reduce a parameter checksum every step; fail if ranks differ

    def __post_init__(self) -> None:
        # supervised trains h_pri on the pool's global classes, learner.classes of them:
        # model.ways (h_pri's outputs) equals that count, which 0 takes from model.ways
        supervised = isinstance(self.learner, SupervisedConfig)
        if supervised and self.learner.classes == 0:
            object.__setattr__(
                self, "learner", dataclasses.replace(self.learner, classes=self.model.ways)
            )
        if supervised and self.learner.classes != self.model.ways:
            raise ValueError(
                f"learner.classes ({self.learner.classes}) is the class count supervised "
                f"trains h_pri on: set model.ways={self.learner.classes} (h_pri's outputs)"
            )
        if self.model.ways != self.episode.ways and not (
            supervised and self.model.ways > self.episode.ways
        ):
            raise ValueError(
                f"model.ways ({self.model.ways}) must equal episode.ways ({self.episode.ways})"
                + (" or, for supervised, exceed it" if supervised else "")
            )
        if self.meta_batch < 1 or self.iterations < 0 or self.eval_every < 1:
            raise ValueError("meta_batch >= 1, iterations >= 0 and eval_every >= 1 are required")
        for name, options in (("backend", Backend), ("device", Device), ("data_mode", DataMode)):
            if getattr(self, name) not in get_args(options):
                raise ValueError(
                    f"{name} must be one of {list(get_args(options))}, got {getattr(self, name)!r}"
                )
        if self.workers < 1 or self.meta_batch % self.workers:
            raise ValueError(
                f"workers ({self.workers}) must be >= 1 and divide meta_batch ({self.meta_batch}): "
                "every worker computes meta_batch / workers tasks per step"
            )
        if self.backend == "local" and self.workers > 1:
            raise ValueError(
                f"backend=local runs one in-process worker: workers={self.workers} needs "
                "backend=ray (or auto)"
            )
        if self.storage_path and not self.uses_ray:
            raise ValueError(
                f"storage_path={self.storage_path!r} is Ray Train's checkpoint storage, and "
                f"this run trains in process ({self.placement}): set backend=ray to train on "
                "Ray Train with that storage, or drop storage_path (an in-process run keeps "
                "its checkpoints under --out)"
            )
        if self.workers > 1 and self.model.bn_mode == "running":
            raise ValueError(
                "model.bn_mode=running updates running statistics task by task, which does "
                "not all-reduce into the one-worker values: use workers=1 or bn_mode=task|clip"
            )
        if self.data_mode == "shard" and self.workers < 2:
            raise ValueError("data_mode=shard splits the training subjects over workers >= 2")
        if self.checkpoint_every < 1 or self.keep_checkpoints < 1 or self.max_failures < 0:
            raise ValueError(
                "checkpoint_every >= 1, keep_checkpoints >= 1 and max_failures >= 0 are required"
            )

    @property
    def uses_ray(self) -> bool:
        """Whether the run goes through Ray Train (see `backend`): backend=ray, or auto with
        workers > 1. No other setting decides it."""
        return self.backend == "ray" or (self.backend == "auto" and self.workers > 1)

    @property
    def placement(self) -> str:
        """Where the run trains and why, as printed at its start: `backend` resolved."""
        where = f"on Ray Train, {self.workers} worker(s)" if self.uses_ray else "in process"
        if self.backend != "auto":
            return f"{where} (backend={self.backend})"
        return f"{where} (backend=auto, workers={self.workers})"


@dataclass(frozen=True)
class TrainResult:
    out: str
    metrics: dict
    table: str


def prepare(cfg: TrainConfig) -> RunData:
    """Load the pools and draw the subject split; a config the data cannot serve fails here,
    naming the field, before any worker starts. In shard mode the driver reads no frame of
    a training subject: the split is drawn from the clips' labels and subjects, the frames
    of the validation and test subjects are read after it, and each worker reads its own."""
    shard = cfg.data_mode == "shard"
    pool = primary_pool(cfg.data, frames=not shard)
    aux_pool = auxiliary_pool(cfg.data)
    check_clip_shapes(cfg.model, {"primary": pool, "auxiliary": aux_pool})
    ep = cfg.episode
    present = [c for c, n in zip(pool.class_names, pool.class_counts()) if n]
    if ep.ways > len(present):
        raise ConfigError(
            f"episode.ways={ep.ways}: the primary pool {list(cfg.data.primary)} has "
            f"{len(present)} classes with clips: {present}"
        )
    need = ep.shots + ep.query
    enough = [c for c, n in zip(pool.class_names, pool.class_counts()) if n >= need]
    if len(enough) < ep.ways:
        counts = dict(zip(pool.class_names, pool.class_counts().tolist()))
        raise ConfigError(
            f"episode.shots + episode.query = {need} clips per class, but only {len(enough)} "
            f"classes have that many (episode.ways={ep.ways} needed): {counts}"
        )
    split, attempt = episode_ready_split(
        pool,
        eval_fraction=cfg.data.test_fraction,
        val_fraction=cfg.data.val_fraction,
        seed=cfg.seed if cfg.data.split_seed is None else cfg.data.split_seed,
        ways=ep.ways,
        min_clips=need,
    )
    train_pool, val_pool, test_pool = split_pools(pool, split)
    EpisodeSampler(train_pool, ep, seed=cfg.seed, aux_pool=aux_pool)  # raises if it cannot serve
    if shard:
        for rank in range(cfg.workers):
            mine = shard_subjects(split.train, rank, cfg.workers)
            try:
                EpisodeSampler(train_pool.by_subjects(mine), ep, seed=cfg.seed)
            except ValueError as e:
                raise ConfigError(
                    f"data_mode=shard with workers={cfg.workers}: worker {rank}'s "
                    f"{len(mine)} training subjects cannot serve its episodes ({e}); use "
                    "fewer workers or data_mode=replicate"
                ) from e
        held = primary_pool(cfg.data, subjects=[*split.val, *split.test])
        if held.class_names != pool.class_names:  # a primary dataset absent from val + test
            raise ConfigError(
                f"data_mode=shard: the validation and test subjects give the classes "
                f"{held.class_names}, the run's are {pool.class_names}; use data_mode=replicate"
            )
        val_pool = held.by_subjects(split.val, name="val")
        test_pool = held.by_subjects(split.test, name="test")
    return RunData(train_pool, val_pool, test_pool, aux_pool, split, attempt)


def _local_run(
    cfg: TrainConfig, out: str, resume: bool, data: RunData, device: torch.device
) -> dict:
    """The in-process driver: one worker, run-state checkpoints under <out>/checkpoints."""
    root = storage.resolve(out).join(CHECKPOINTS_DIR)
    state = None
    if resume:
        latest = latest_checkpoint(root)
        if latest is None:
            raise ConfigError(f"--resume: {root.uri} holds no complete checkpoint to resume from")
        state = load_state(latest)
        check_resumable(cfg, state)
    else:
        storage.delete_dir(root)  # a fresh run in this folder starts over
    final: list[dict] = []

    def report(metrics: dict, payload: dict | None) -> None:
        write_checkpoint(root, payload, cfg.keep_checkpoints)
        final[:] = [payload]

    train_loop(cfg, LoopContext(device=device, report=report, resume=state, log_to=out), data)
    return final[0]


def finish(cfg: TrainConfig, out: str, state: dict, data: RunData) -> TrainResult:
    """On the driver: the logs from the final run state, best.pt from the weights validation
    chose, then the one evaluation on test subjects; every file written under `out`."""
    root = storage.resolve(out)
    write_logs(out, state["log"])
    if state["log"]:
        draw_curves(out)  # curves.png beside the logs
    best = state["best"]
    model = build_model(dataclasses.replace(cfg.model, init=""))  # the weights come next
    model.load_state_dict(best["model"] if best["model"] is not None else state["model"])
    meta = {
        "config": to_dict(cfg),
        "versions": versions(),
        "split": dataclasses.asdict(data.split),
        "split_attempt": data.split_attempt,
        "learner": to_dict(cfg.learner),
    }
    extra = {**meta, "iteration": max(best["iteration"], 0)}
    if best["val"] is not None:
        extra["val"] = best["val"]
    buf = io.BytesIO()
    save_checkpoint(buf, model, model.cfg, extra)
    storage.write_bytes(root.join(BEST_FILE), buf.getvalue())
    learner = build_learner(cfg.learner)
    test_eps = seeded_episodes(
        data.test, cfg.episode, cfg.test_episodes, seed=cfg.seed + 2, aux_pool=data.aux
    )
    test = evaluate_episodes(
        learner, model.eval(), dict(model.named_parameters()), dict(model.named_buffers()), test_eps
    )
    metrics = {
        "learner": cfg.learner.name,
        "ways": cfg.episode.ways,
        "shots": cfg.episode.shots,
        "bn_mode": cfg.model.bn_mode,
        "best_iteration": best["iteration"],
        "val_acc": best["acc"],
        "train_seconds": state.get("train_seconds"),
        "test": test,
        "test_episodes": cfg.test_episodes,
        "test_subjects": list(data.split.test),
        "workers": cfg.workers,
        "backend": "ray" if cfg.uses_ray else "local",  # backend=auto resolved
        "outer_optimizer": cfg.learner.outer_optimizer_name,  # learner.optimizer=auto resolved
    }
    write_results(out, {**{k: v for k, v in meta.items() if k != "learner"}, "metrics": metrics})
    optimizer = (
        f"outer optimiser: {metrics['outer_optimizer']} (learner.optimizer={cfg.learner.optimizer})"
    )
    return TrainResult(root.uri, metrics, f"{format_table([metrics])}\n{optimizer}")


def run_training(
    cfg: TrainConfig, out: str | os.PathLike, resume: bool = False, verbose: bool = False
) -> TrainResult:
    """Train (in process, or through Ray Train when `cfg.uses_ray`), then test the best weights.

    `out`: the run's folder, local or s3://. `resume` continues the run there (or under
    `storage_path`/`run_name`) from its last checkpoint, also a finished one (with more
    `iterations`). `verbose`: Ray's own log lines are shown unfiltered.
    """
    # in process, this machine trains: no CUDA for device=cuda fails before any work; on Ray
    # the workers' nodes hold the GPUs and the placement check names what is missing
    device = torch.device("cpu") if cfg.uses_ray else resolve_device(cfg.device, "device")
    print(f"[train] training {cfg.placement}", flush=True)
    root = storage.resolve(out)  # absolute: Ray Train workers run in their own folders
    if cfg.threads and not cfg.uses_ray:  # Ray Train workers set their own; the driver
        torch.set_num_threads(cfg.threads)  # keeps its cores for the final test
    data = prepare(cfg)  # bad data config fails here, before any worker starts
    storage.make_dirs(root)
    storage.write_text(root.join(CONFIG_FILE), yaml.safe_dump(to_dict(cfg), sort_keys=False))
    t0 = time.perf_counter()
    if cfg.uses_ray:
        from lightman.platform.distributed import fit

        state = fit(cfg, root.uri, resume, data, verbose=verbose)
    else:
        state = _local_run(cfg, root.uri, resume, data, device)
    state["train_seconds"] = round(time.perf_counter() - t0, 1)
    return finish(cfg, root.uri, state, data)

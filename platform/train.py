"""Meta-training: one explicit loop, run by one of two drivers (docs/architecture.md).

The loop (`train_loop`) is what every worker runs, read top to bottom: draw the step's
global meta-batch of T tasks from a seed derived from (seed, step) → take this rank's
share (tasks rank, rank + W, ...) → learner.meta_grads (the SUM of the per-task outer
gradients) → all-reduce the sums and the metric sums as one flat buffer → divide by T →
Adam step → log → validate → checkpoint. The loop takes a `LoopContext` (rank, world
size, device, all-reduce, report, the state to resume from): in-process training
passes the trivial one (`train.workers=1`, no Ray), the Ray Train driver
(`distributed.py`) passes one per worker. Because the task list of a step does not
depend on W and every worker applies the same Adam step to the same summed gradient,
W workers give the parameters of one worker up to float32 summation order.

Rank-0 side effects (logging, validation, the checkpoint payload) are guarded by the
one flag `ctx.is_main`. Model selection only ever sees validation subjects; test
subjects are touched once, after training, by the weights that validation chose.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

import torch

from lightman.models.checkpoint import save_checkpoint
from lightman.models.learners import LearnerConfig, build_learner
from lightman.models.learners.base import outer_optimizer
from lightman.models.net import ModelConfig, build_model
from lightman.models.provenance import to_dict, versions
from lightman.platform.config import ConfigError
from lightman.platform.evaluate import evaluate_episodes, format_table, write_results
from lightman.platform.run_log import RunLog
from lightman.platform.run_state import latest_checkpoint, load_state, write_checkpoint
from lightman.platform.selection import (
    DataSelection,
    auxiliary_pool,
    check_clip_shapes,
    primary_pool,
)
from lightman.tasks.episodes import ClipPool, EpisodeConfig, EpisodeSampler, fixed_episodes
from lightman.tasks.splits import SubjectSplit, episode_ready_split, split_pools

Backend = Literal["auto", "local", "ray"]
Device = Literal["cpu", "cuda"]
DataMode = Literal["replicate", "shard"]


@dataclass(frozen=True)
class TrainConfig:
    """A meta-training run; every field is settable from YAML or key=value."""

    seed: int = 0  # seeds episodes, splits and initialisation
    data: DataSelection = field(default_factory=DataSelection)
    episode: EpisodeConfig = field(default_factory=EpisodeConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    meta_batch: int = 4  # T, tasks per outer step (global, over all workers)
    iterations: int = 300  # outer steps
    eval_every: int = 50  # validate every N outer steps (rank 0)
    val_episodes: int = 100  # fixed validation episodes (same for every learner)
    test_episodes: int = 600  # fixed test episodes (paper: mean ± 95% CI over >= 600)
    threads: int = 0  # torch CPU threads per worker (0: torch's default)
    workers: int = 1  # W data-parallel workers; W > 1 runs through Ray Train
    backend: Backend = "auto"  # auto: ray when workers > 1 or storage_path is set; local: no Ray
    device: Device = "cpu"  # cpu: gloo all-reduce; cuda: one GPU per worker, nccl
    # replicate: every worker holds the whole training pool and computes its share of the
    # step's global task list (W workers = 1 worker up to float32 summation order);
    # shard: worker r holds only its training subjects (sorted subjects r, r + W, ...,
    # read through Ray Data) and draws its tasks from them: for pools too large for one
    # worker, deterministic for a fixed W but not equal across W.
    data_mode: DataMode = "replicate"
    checkpoint_every: int = 50  # write the run state every N steps (and after the last)
    keep_checkpoints: int = 2  # newest run-state checkpoints kept
    storage_path: str = ""  # Ray Train storage, local or s3:// ("" = <out>/ray)
    run_name: str = ""  # the run's name under storage_path ("" = the --out folder's name)
    max_failures: int = 2  # worker failures Ray Train recovers from (from the last checkpoint)
    debug_checksum: bool = False  # all-reduce a parameter checksum every step; fail if ranks differ

    def __post_init__(self) -> None:
        # supervised trains h_pri on the pool's global classes: model.ways = their count
        supervised = self.learner.name == "supervised"
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
        if self.backend == "local" and (self.workers > 1 or self.storage_path):
            raise ValueError(
                "backend=local runs one in-process worker with local checkpoints: "
                "workers > 1 and storage_path need backend=ray (or auto)"
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
        """Whether the run goes through Ray Train (see `backend`)."""
        return self.backend == "ray" or (
            self.backend == "auto" and (self.workers > 1 or bool(self.storage_path))
        )


@dataclass(frozen=True)
class TrainResult:
    out: str
    metrics: dict
    table: str


def _no_reduce(tensor: torch.Tensor, op: str) -> torch.Tensor:
    return tensor


@dataclass(frozen=True)
class LoopContext:
    """What the loop knows of its place in a run; `LoopContext()` is one in-process worker."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    # all_reduce(tensor, "sum" | "max") -> the tensor reduced over the workers (in place)
    all_reduce: Callable[[torch.Tensor, str], torch.Tensor] = _no_reduce
    # report(metrics, payload): persist a run-state checkpoint; every rank calls it at the
    # same steps, only rank 0 passes a payload (the others pass None)
    report: Callable[[dict, dict | None], None] = lambda metrics, payload: None
    resume: dict | None = None  # the run state to continue from (None: a fresh run)
    train_pool: ClipPool | None = None  # data_mode=shard: this worker's training subjects

    @property
    def is_main(self) -> bool:
        return self.rank == 0


@dataclass(frozen=True)
class RunData:
    """The pools and split of a run, loaded once by the driver and handed to the workers."""

    train: ClipPool | None  # None on data_mode=shard workers (theirs is ctx.train_pool)
    val: ClipPool
    test: ClipPool | None  # None on the workers: only the driver evaluates test subjects
    aux: ClipPool | None
    split: SubjectSplit
    split_attempt: int


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


def shard_subjects(subjects: Sequence[str], rank: int, world_size: int) -> list[str]:
    """Worker `rank`'s training subjects in shard mode: sorted subjects rank, rank + W, ...
    (disjoint over the ranks, together all of them)."""
    return sorted(subjects)[rank::world_size]


def outer_step(
    optimizer: torch.optim.Optimizer,
    params: dict[str, torch.Tensor],
    grad_sums: dict[str, torch.Tensor],
    total_tasks: int,
) -> None:
    """θ ← Adam(θ, Σ_i ∇θ L_i / T): the paper's outer update (Eq. 4, second level)."""
    for name, p in params.items():
        p.grad = grad_sums[name] / total_tasks
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def all_reduce_sums(
    ctx: LoopContext, grad_sums: dict[str, torch.Tensor], stats: dict[str, float]
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """The gradient and metric sums of every worker, summed with ONE all-reduce: one flat
    buffer per step, not one call per parameter (DDP's hooks do not fire for the learners'
    `functional_call`, so the reduction is explicit)."""
    names, keys = list(grad_sums), sorted(stats)
    ref = grad_sums[names[0]]
    metric_values = torch.tensor([stats[k] for k in keys], dtype=ref.dtype, device=ref.device)
    flat = torch.cat([grad_sums[n].reshape(-1) for n in names] + [metric_values])  # (P + metrics,)
    flat = ctx.all_reduce(flat, "sum")
    out, at = {}, 0
    for n in names:
        size = grad_sums[n].numel()
        out[n] = flat[at : at + size].view_as(grad_sums[n])
        at += size
    return out, dict(zip(keys, flat[at:].tolist()))


def params_checksum(ctx: LoopContext, params: dict[str, torch.Tensor], step: int) -> int:
    """A checksum of the parameters' bits, checked equal on every rank (debug_checksum)."""
    bits = (
        torch.cat([p.detach().reshape(-1) for p in params.values()])
        .view(torch.int32)
        .to(torch.int64)
    )
    weights = torch.arange(bits.numel(), device=bits.device) % 1009 + 1  # order-sensitive
    mine = (bits * weights).sum()
    spread = ctx.all_reduce(torch.stack([mine, -mine]), "max")  # (max over ranks, -min over ranks)
    if spread[0] != -spread[1]:
        raise RuntimeError(
            f"step {step}: the workers' parameters differ (checksums {int(-spread[1])} .. "
            f"{int(spread[0])}); replicas must stay bit-identical"
        )
    return int(mine)


def _cpu_copy(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}


def train_loop(cfg: TrainConfig, out: Path, ctx: LoopContext, data: RunData) -> None:
    """The per-worker loop (module docstring). Rank 0 logs to `out` and reports checkpoints."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    val_eps = fixed_episodes(
        data.val, cfg.episode, cfg.val_episodes, seed=cfg.seed + 1, aux_pool=data.aux
    )
    model = build_model(cfg.model).to(ctx.device)
    learner = build_learner(cfg.learner)
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    optimizer = outer_optimizer(params.values(), cfg.learner)  # learner.optimizer: adam | adamw
    start, best = 0, {"acc": -1.0, "iteration": -1, "model": None, "val": None}
    if ctx.resume is not None:
        model.load_state_dict(ctx.resume["model"])
        optimizer.load_state_dict(ctx.resume["optimizer"])
        torch.set_rng_state(ctx.resume["torch_rng"])
        start, best = ctx.resume["step"], ctx.resume["best"]
    # tasks of this rank per step (TrainConfig.__post_init__: workers divides meta_batch)
    share = cfg.meta_batch // ctx.world_size

    def payload(step: int) -> dict:
        """The run state after `step` (rank 0; see run_state.py)."""
        return {
            "step": step,
            "model": _cpu_copy(model.state_dict()),
            "optimizer": optimizer.state_dict(),
            "best": best,
            "sampler": {"seed": cfg.seed, "next_step": step + 1},
            "torch_rng": torch.get_rng_state(),
            "config": to_dict(cfg),
            "versions": versions(),
        }

    t_start = time.perf_counter()
    last_val: dict = {}  # the latest validation, also in the final report (Ray Tune's metric)
    with RunLog(out, start, cfg.iterations, enabled=ctx.is_main) as log:
        for it in range(start + 1, cfg.iterations + 1):
            t0 = time.perf_counter()
            if ctx.train_pool is None:
                # replicate: the step's global task list depends on (seed, step) only, never
                # on W or on what ran before; this rank takes tasks rank, rank + W, ...
                tasks = fixed_episodes(
                    data.train, cfg.episode, cfg.meta_batch, seed=(cfg.seed, it), aux_pool=data.aux
                )[ctx.rank :: ctx.world_size]
            else:  # shard: this rank's own subjects and seed (seed, step, rank)
                tasks = fixed_episodes(
                    ctx.train_pool,
                    cfg.episode,
                    share,
                    seed=(cfg.seed, it, ctx.rank),
                    aux_pool=data.aux,
                )[:]
            mine = [ep.to(ctx.device) for ep in tasks]
            assert len(mine) == share
            grad_sums, stats = learner.meta_grads(model, params, buffers, mine)
            t1 = time.perf_counter()
            if ctx.world_size > 1:  # meet first: reduce_seconds is then the all-reduce alone
                ctx.all_reduce(torch.zeros(1, device=ctx.device), "sum")
            t2 = time.perf_counter()
            grad_sums, stats = all_reduce_sums(ctx, grad_sums, stats)
            t3 = time.perf_counter()
            outer_step(optimizer, params, grad_sums, cfg.meta_batch)
            step_s = time.perf_counter() - t0
            record = {
                "iteration": it,
                "time": round(time.time(), 3),
                "seconds": round(time.perf_counter() - t_start, 3),
                "step_seconds": round(step_s, 4),
                "wait_seconds": round(t2 - t1, 5),  # for the slowest worker's tasks
                "reduce_seconds": round(t3 - t2, 5),
                "episodes_per_s": round(cfg.meta_batch / step_s, 3),
                **{k: v / stats["tasks"] for k, v in stats.items() if k != "tasks"},
            }
            if cfg.debug_checksum:
                record["params_checksum"] = params_checksum(ctx, params, it)
            if ctx.is_main and (it % cfg.eval_every == 0 or it == cfg.iterations):
                val = evaluate_episodes(
                    learner, model, params, buffers, (e.to(ctx.device) for e in val_eps)
                )
                record["val_acc"] = val["acc"][0]
                record["val_uar"] = val["uar"][0]
                last_val = {"val_acc": record["val_acc"], "val_uar": record["val_uar"]}
                if val["acc"][0] > best["acc"]:
                    best = {
                        "acc": val["acc"][0],
                        "iteration": it,
                        "model": _cpu_copy(model.state_dict()),
                        "val": val,
                    }
            log.write(record)
            if it % cfg.checkpoint_every == 0 and it < cfg.iterations:
                ctx.report(record, payload(it) if ctx.is_main else None)
        # The final state is always reported, also when nothing was left to run (a
        # finished run resumed), so the driver reads the result from one place.
        final = {
            "iteration": cfg.iterations,
            "train_seconds": round(time.perf_counter() - t_start, 2),
            **last_val,
        }
        ctx.report(final, payload(cfg.iterations) if ctx.is_main else None)


def _local_run(cfg: TrainConfig, out: Path, resume: bool, data: RunData) -> dict:
    """The in-process driver: one worker, run-state checkpoints under <out>/checkpoints."""
    root = out / "checkpoints"
    state = None
    if resume:
        latest = latest_checkpoint(root)
        if latest is None:
            raise ConfigError(f"--resume: {root} holds no complete checkpoint to resume from")
        state = load_state(latest)
        _check_resumable(cfg, state)
    else:
        shutil.rmtree(root, ignore_errors=True)  # a fresh run in this folder starts over
    final: list[dict] = []

    def report(metrics: dict, payload: dict | None) -> None:
        write_checkpoint(root, payload, cfg.keep_checkpoints)
        final[:] = [payload]

    train_loop(cfg, out, LoopContext(report=report, resume=state), data)
    return final[0]


def _check_resumable(cfg: TrainConfig, state: dict) -> None:
    """A run resumes under its own config; only `iterations` (to train on) and the fields
    of how it is run may change (not `workers` in shard mode: the shards depend on it)."""
    free = {"iterations", "workers", "backend", "device", "threads", "max_failures"}
    free |= {"checkpoint_every", "keep_checkpoints", "debug_checksum"}
    if cfg.data_mode == "shard":
        free.discard("workers")
    stored, now = state["config"], to_dict(cfg)
    changed = sorted(k for k in now if k not in free and stored.get(k) != now[k])
    if changed:
        raise ConfigError(
            f"--resume: the run was made with other values of {changed}; "
            "resume with its config (only iterations and how it runs may change)"
        )
    if cfg.iterations < state["step"]:
        raise ConfigError(
            f"iterations={cfg.iterations}: the run to resume is already at step {state['step']}"
        )


def finish(cfg: TrainConfig, out: Path, state: dict, data: RunData) -> TrainResult:
    """best.pt from the weights validation chose, then the one evaluation on test subjects."""
    best = state["best"]
    model = build_model(cfg.model)
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
    save_checkpoint(out / "best.pt", model, cfg.model, extra)
    learner = build_learner(cfg.learner)
    test_eps = fixed_episodes(
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
    }
    write_results(out, {**{k: v for k, v in meta.items() if k != "learner"}, "metrics": metrics})
    return TrainResult(str(out), metrics, format_table([metrics]))


def run_training(cfg: TrainConfig, out: str | Path, resume: bool = False) -> TrainResult:
    """Train (in process, or through Ray Train when `cfg.uses_ray`), then test the best weights.

    `resume` continues the run in `out` (or under `storage_path`/`run_name`) from its last
    checkpoint, also a finished one (with more `iterations`).
    """
    out = Path(os.path.abspath(out))  # Ray Train workers run in their own working folders
    out.mkdir(parents=True, exist_ok=True)
    if cfg.threads and not cfg.uses_ray:  # Ray Train workers set their own; the driver
        torch.set_num_threads(cfg.threads)  # keeps its cores for the final test
    data = prepare(cfg)  # bad data config fails here, before any worker starts
    t0 = time.perf_counter()
    if cfg.uses_ray:
        from lightman.platform.distributed import fit

        state = fit(cfg, out, resume, data)
    else:
        state = _local_run(cfg, out, resume, data)
    state["train_seconds"] = round(time.perf_counter() - t0, 1)
    return finish(cfg, out, state, data)

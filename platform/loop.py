"""The meta-training loop and its context: what every worker runs, in process or on Ray.

Read top to bottom (`train_loop`): draw the step's global meta-batch of T tasks from a
seed derived from (seed, step) → take this rank's share (tasks rank, rank + W, ...) →
learner.meta_grads (the SUM of the per-task outer gradients) → all-reduce the sums and
the metric sums as one flat buffer → divide by T → Adam step → log → validate →
checkpoint. The loop takes a `LoopContext` (rank, world size, device, all-reduce,
report, the state to resume from): in-process training (`train.py`) passes the trivial
one, the Ray Train driver (`distributed.py`) one per worker; both import this module and
neither imports the other's loop. Because the task list of a step does not depend on W
and every worker applies the same Adam step to the same summed gradient, W workers give
the parameters of one worker up to float32 summation order.

Rank-0 side effects (the log, validation, the checkpoint payload) are guarded by the one
flag `ctx.is_main`. Model selection only ever sees validation subjects; test subjects
are touched once, after training, by the driver (`train.finish`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from lightman.models.learners import build_learner, outer_optimizer
from lightman.models.provenance import to_dict, versions
from lightman.platform.config import ConfigError
from lightman.platform.encoder import build_run_model
from lightman.platform.evaluate import evaluate_episodes
from lightman.platform.run_log import RunLog, write_logs
from lightman.tasks.episodes import ClipPool, seeded_episodes
from lightman.tasks.splits import SubjectSplit

if TYPE_CHECKING:  # the config is only read here; train.py defines it and imports this module
    from lightman.platform.train import TrainConfig


@dataclass(frozen=True)
class RunData:
    """The pools and split of a run, loaded once by the driver and handed to the workers."""

    train: ClipPool | None  # None on data_mode=shard workers (theirs is ctx.train_pool)
    val: ClipPool
    test: ClipPool | None  # None on the workers: only the driver evaluates test subjects
    aux: ClipPool | None
    split: SubjectSplit
    split_attempt: int


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
    # where rank 0 rewrites metrics.jsonl and the TensorBoard events at every checkpoint,
    # so a person can follow the run (None: only the driver writes them, at the end)
    log_to: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


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


def check_resumable(cfg: TrainConfig, state: dict) -> None:
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


def _cpu_copy(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}


def train_loop(cfg: TrainConfig, ctx: LoopContext, data: RunData) -> None:
    """The per-worker loop (module docstring). Rank 0 keeps the log and reports checkpoints."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    val_eps = seeded_episodes(
        data.val, cfg.episode, cfg.val_episodes, seed=cfg.seed + 1, aux_pool=data.aux
    )
    model = build_run_model(cfg.model).to(ctx.device)
    learner = build_learner(cfg.learner)
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    optimizer = outer_optimizer(params.values(), cfg.learner)  # learner.optimizer: adam | adamw
    start, best = 0, {"acc": -1.0, "iteration": -1, "model": None, "val": None}
    records: list[dict] = []
    if ctx.resume is not None:
        model.load_state_dict(ctx.resume["model"])
        optimizer.load_state_dict(ctx.resume["optimizer"])
        torch.set_rng_state(ctx.resume["torch_rng"])
        start, best = ctx.resume["step"], ctx.resume["best"]
        records = ctx.resume["log"]
    # tasks of this rank per step (TrainConfig.__post_init__: workers divides meta_batch)
    share = cfg.meta_batch // ctx.world_size

    def payload(step: int, log: RunLog) -> dict:
        """The run state after `step` (rank 0; see run_state.py)."""
        return {
            "step": step,
            "model": _cpu_copy(model.state_dict()),
            "optimizer": optimizer.state_dict(),
            "best": best,
            "sampler": {"seed": cfg.seed, "next_step": step + 1},
            "torch_rng": torch.get_rng_state(),
            "log": log.records,
            "config": to_dict(cfg),
            "versions": versions(),
        }

    t_start = time.perf_counter()
    last_val: dict = {}  # the latest validation, also in the final report (Ray Tune's metric)
    with RunLog(records, cfg.iterations, enabled=ctx.is_main) as log:
        for it in range(start + 1, cfg.iterations + 1):
            t0 = time.perf_counter()
            if ctx.train_pool is None:
                # replicate: the step's global task list depends on (seed, step) only, never
                # on W or on what ran before; this rank takes tasks rank, rank + W, ...
                tasks = seeded_episodes(
                    data.train, cfg.episode, cfg.meta_batch, seed=(cfg.seed, it), aux_pool=data.aux
                )[ctx.rank :: ctx.world_size]
            else:  # shard: this rank's own subjects and seed (seed, step, rank)
                tasks = seeded_episodes(
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
                if ctx.is_main and ctx.log_to:
                    write_logs(ctx.log_to, log.records)
                ctx.report(record, payload(it, log) if ctx.is_main else None)
        # The final state is always reported, also when nothing was left to run (a
        # finished run resumed), so the driver reads the result (and the log) from one place.
        final = {
            "iteration": cfg.iterations,
            "train_seconds": round(time.perf_counter() - t_start, 2),
            **last_val,
        }
        ctx.report(final, payload(cfg.iterations, log) if ctx.is_main else None)

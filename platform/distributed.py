"""The Ray Train driver: the same `train_loop` on W workers (the only module of training
that imports Ray; in-process training never loads it).

Driver (`fit`): check the storage and the cluster → `TorchTrainer(worker_loop,
ScalingConfig(num_workers=W, use_gpu=device == "cuda"), TorchConfig(gloo | nccl),
RunConfig(name, storage, FailureConfig(max_failures)))` → the final run state.
Worker (`worker_loop`): rank, world size and device come from Ray Train; the context
all-reduces through torch.distributed and reports checkpoints with `ray.train.report`.

Data: in replicate mode the driver's pools (loaded once, checked before any worker
starts) reach every worker through the object store. In shard mode the driver builds one
Ray Dataset per rank over that rank's training subjects (`read_dataset`, the subject
filter pushed into the Parquet read; held in the object store, not on the driver) and
rank r reads only "train_r"; the validation pool still comes from the driver (rank 0
validates).

Faults: a failed worker group is restarted up to `max_failures` times; every restarted
worker receives the last reported checkpoint (`ray.train.get_checkpoint`) and continues
from its step. Since a step's tasks depend on (seed, step) only (shard: and the rank),
no step is lost or repeated and the final parameters equal an uninterrupted run's.
Resume: `fit` again with the same `RunConfig(name, storage_path)` continues from the
latest checkpoint. Ray Train persists a reported checkpoint folder to storage before it
records it, so a restart never reads a half-written one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import posixpath
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.fs as pafs
import ray
import ray.train
import torch
import torch.distributed as dist
from ray.train import (
    Checkpoint,
    CheckpointConfig,
    FailureConfig,
    LoggingConfig,
    RunConfig,
    ScalingConfig,
)
from ray.train.torch import TorchConfig, TorchTrainer

from lightman.platform.config import ConfigError
from lightman.platform.data import ExactlyOnceDataConfig, read_dataset
from lightman.platform.index import read_manifest
from lightman.platform.loop import (
    LoopContext,
    RunData,
    check_resumable,
    shard_subjects,
    train_loop,
)
from lightman.platform.placement import check_placement  # knows the autoscaler
from lightman.platform.run_state import STATE_FILE, load_state, save_state
from lightman.platform.runtime import setup
from lightman.platform.selection import unified_labels
from lightman.tasks import storage
from lightman.tasks.episodes import ClipPool
from lightman.tasks.splits import composite_pool

if TYPE_CHECKING:  # read only; train.py defines it and calls `fit` lazily
    from lightman.platform.train import TrainConfig

_OPS = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}
# What Ray forwards from the workers and the controller that a person does not need beside
# Lightman's progress bar and summary (`lightman train --verbose` shows it): Ray Train's
# per-report dump of every metric (one line per report and rank, from a logger that its
# LoggingConfig does not reach), and the placement-group cleaner's polling of the state
# API, which a cluster without a dashboard does not serve (a warning every second), and
# the core worker's error-level notice, at every start, that Ray Train's own preemption
# watcher actor has its constructor arguments in the object store.
_NOISE = (
    "Reporting training result",
    "Failed to query Ray Train Controller actor state",
    "'PreemptionWatcher' and ID",
)


def _all_reduce(tensor: torch.Tensor, op: str) -> torch.Tensor:
    dist.all_reduce(tensor, op=_OPS[op])
    return tensor


def _report(metrics: dict, payload: dict | None) -> None:
    if payload is None:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as tmp:  # Ray copies it to storage before returning
        save_state(Path(tmp), payload)
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(tmp))


def _shard_pool(cfg: TrainConfig, rank: int, class_names: tuple[str, ...]) -> ClipPool:
    """This worker's training subjects (data_mode=shard), read from its Ray Data shard."""
    it = ray.train.get_dataset_shard(f"train_{rank}")
    table = pa.concat_tables(list(it.iter_batches(batch_size=None, batch_format="pyarrow")))
    table, names = unified_labels(table, read_manifest(cfg.data.index))
    pool = ClipPool.from_table(table, names, name=f"train shard {rank}")
    if cfg.data.labels == "composite3":
        pool, _ = composite_pool(pool, name=pool.name)
    if pool.class_names != class_names:  # a shard lacking one of several primary datasets
        raise ConfigError(
            f"data_mode=shard: worker {rank}'s subjects give the classes {pool.class_names}, "
            f"the run's are {class_names}; use data_mode=replicate for these datasets"
        )
    return pool


def worker_loop(config: dict) -> None:
    """Ray Train's `train_loop_per_worker`: `train_loop` with this worker's context."""
    setup()  # this worker's process-wide settings, before its first kernel
    cfg, data = config["cfg"], config["data"]
    checkpoint = ray.train.get_checkpoint()  # after a restart, or a resume Ray recorded
    state = None
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state = load_state(folder)
    elif config["resume_from"]:  # --resume of a run whose driver died before Ray recorded it
        state = load_state(storage.resolve(config["resume_from"]))
    context = ray.train.get_context()
    rank = context.get_world_rank()
    shard = _shard_pool(cfg, rank, data.val.class_names) if data.train is None else None
    out = config["out"]
    # rank 0 keeps the live logs under --out when every node reaches it (s3://) or it runs
    # beside the driver; elsewhere a local --out would be another node's disk, and the
    # driver writes the logs from the final run state alone
    here = ray.get_runtime_context().get_node_id() == config["driver_node"]
    live = out.startswith("s3://") or here
    ctx = LoopContext(
        rank=rank,
        world_size=context.get_world_size(),
        device=ray.train.torch.get_device(),
        all_reduce=_all_reduce,
        report=_report,
        resume=state,
        train_pool=shard,
        log_to=out if live else None,
    )
    train_loop(cfg, ctx, data)


def storage_of(cfg: TrainConfig, out: str) -> tuple[str, pafs.FileSystem | None]:
    """(storage_path, storage_filesystem) for RunConfig: `storage_path`, else <out>/ray. An
    s3:// URI gets a filesystem built from the standard AWS variables (endpoint included)
    and a path without the scheme: Ray refuses an s3:// path together with a filesystem."""
    loc = storage.resolve(cfg.storage_path or posixpath.join(out, "ray"))
    return (loc.path, loc.fs) if loc.is_s3 else (loc.path, None)


def check_storage(cfg: TrainConfig, path: str, fs: pafs.FileSystem | None) -> None:
    """Fail now, naming `storage_path`, when the checkpoint storage cannot be written."""
    try:
        if fs is None:
            Path(path).mkdir(parents=True, exist_ok=True)
            if not os.access(path, os.W_OK):
                raise PermissionError(f"{path} is not writable")
        else:
            bucket = path.split("/", 1)[0]
            if fs.get_file_info(bucket).type == pafs.FileType.NotFound:
                raise FileNotFoundError(f"bucket {bucket!r} does not exist")
    except OSError as e:
        raise ConfigError(f"storage_path={cfg.storage_path or path!r} is unreachable: {e}") from e


def _newest_saved(run: storage.Location) -> storage.Location | None:
    """The newest checkpoint folder Ray Train persisted under the run folder whose state.pt
    is complete (folder names sort by time). Read from storage alone: a driver killed
    mid-run may leave a checkpoint its own bookkeeping never recorded."""
    if not storage.exists(run):
        return None
    names = sorted(
        i.base_name
        for i in storage.list_dir(run)
        if i.type == pafs.FileType.Directory and i.base_name.startswith("checkpoint_")
    )
    for name in reversed(names):
        if storage.exists(run.join(name, STATE_FILE)):
            return run.join(name)
    return None


def free_orphaned_placement_groups() -> int:
    """Remove the placement groups whose creating actor is dead; how many were removed.

    A Ray Train controller reserves its workers' CPUs (GPUs) in a placement group, which
    Ray keeps until the job ends, not until the controller dies. When a run ends (it
    finished, Tune stopped its trial, or it failed) the controller dies, and Ray Train's
    own cleaner frees the group only through the state API, which a cluster without its
    dashboard lacks: the reserved CPUs would stall whatever runs next in the same job (the
    next trial, a study's next cell, a Serve replica). The GCS records each group's
    creator, so orphans are found without the dashboard; `fit` calls this before and
    after each run.
    """
    from ray._private.state import state
    from ray._raylet import PlacementGroupID
    from ray.core.generated import gcs_pb2
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    table = gcs_pb2.PlacementGroupTableData
    removed = 0
    for raw in state._connect_and_get_accessor().get_placement_group_table():
        pg = table.FromString(raw)
        live = pg.state in (table.PENDING, table.PREPARED, table.CREATED, table.RESCHEDULING)
        by_actor = pg.creator_actor_id.strip(b"\xff") != b""  # a driver's has the nil id
        if live and by_actor and pg.creator_actor_dead and not pg.is_detached:
            remove_placement_group(PlacementGroup(PlacementGroupID(pg.placement_group_id)))
            removed += 1
    return removed


def _prepare_run_dir(cfg: TrainConfig, name: str, out: str, resume: bool) -> str | None:
    """A fresh run starts in an empty run folder; --resume needs one with a checkpoint, whose
    URI it returns (the workers start from it when Ray Train has none to hand them)."""
    run = storage.resolve(cfg.storage_path or posixpath.join(out, "ray")).join(name)
    if resume:
        latest = _newest_saved(run)
        if latest is None:
            raise ConfigError(f"--resume: no checkpoint of run {name!r} under {run.uri} to resume")
        check_resumable(cfg, load_state(latest))
        return latest.uri
    if storage.exists(run):
        if cfg.storage_path:  # a user's storage is never deleted implicitly
            raise ConfigError(
                f"run_name={name!r} already exists under storage_path={cfg.storage_path!r}: "
                "pass --resume to continue it, or choose another run_name"
            )
        storage.delete_dir(run)  # the default storage lives in the run's own --out folder
    return None


class _QuietStream(io.TextIOBase):
    """A text stream that drops the lines holding one of `_NOISE` (and their newline)."""

    def __init__(self, stream) -> None:
        self._stream, self._dropped = stream, False

    def write(self, text: str) -> int:
        if any(n in text for n in _NOISE):
            self._dropped = True
            return len(text)
        if self._dropped and text == "\n":  # print() writes the line and its newline apart
            self._dropped = False
            return len(text)
        self._dropped = False
        return self._stream.write(text)

    def flush(self) -> None:
        self._stream.flush()

    def isatty(self) -> bool:
        return self._stream.isatty()


@contextlib.contextmanager
def _quiet_ray_logs(enabled: bool = True):
    """Ray forwards worker logs to the driver's current sys.stdout/stderr: filter both."""
    if not enabled:
        yield
        return
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _QuietStream(saved[0]), _QuietStream(saved[1])
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved


def _shard_datasets(cfg: TrainConfig, data: RunData) -> dict:
    """One Ray Dataset per rank, of that rank's training subjects (data_mode=shard),
    materialised in the object store before the workers start: every CPU of a small
    cluster goes to a worker, and Ray Data's read tasks would then wait for one forever."""
    return {
        f"train_{rank}": read_dataset(
            cfg.data.index,
            datasets=cfg.data.primary,
            expression="micro",
            subjects=shard_subjects(data.split.train, rank, cfg.workers),
        ).materialize()
        for rank in range(cfg.workers)
    }


def fit(
    cfg: TrainConfig, out: str, resume: bool, data: RunData, callbacks=(), verbose: bool = False
) -> dict:
    """Run `train_loop` on `cfg.workers` Ray Train workers; the final run state (rank 0's).
    `out`: the run's URI (local or s3://). `callbacks`: Ray Train `UserCallback`s (a Ray
    Tune trial passes its report callback). `verbose`: Ray's forwarded logs unfiltered."""
    out = storage.resolve(out).uri
    path, fs = storage_of(cfg, out)
    check_storage(cfg, path, fs)
    name = cfg.run_name or posixpath.basename(out)
    started = not ray.is_initialized()
    if started:  # RAY_ADDRESS (e.g. inside `ray job submit`) joins a cluster, else a local one
        ray.init(include_dashboard=False, configure_logging=False)
    with _quiet_ray_logs(enabled=not verbose):
        try:
            if not started:  # an earlier run's controller may have died holding its CPUs
                free_orphaned_placement_groups()
            check_placement(cfg)
            resume_from = _prepare_run_dir(cfg, name, out, resume)
            shard = cfg.data_mode == "shard"
            datasets = _shard_datasets(cfg, data) if shard else {}
            # the workers never see the test subjects: the driver evaluates them at the end
            worker_data = dataclasses.replace(data, train=None if shard else data.train, test=None)
            trainer = TorchTrainer(
                worker_loop,
                # replicate: the driver's pools reach every worker through the object
                # store; shard: each worker reads only its own subjects' rows
                train_loop_config={
                    "cfg": cfg,
                    "out": out,
                    "data": worker_data,
                    "resume_from": resume_from,
                    "driver_node": ray.get_runtime_context().get_node_id(),
                },
                datasets=datasets or None,
                # every rank gets each dataset whole; rank r reads only "train_r"
                dataset_config=ExactlyOnceDataConfig(datasets_to_split=[]),
                torch_config=TorchConfig(backend="nccl" if cfg.device == "cuda" else "gloo"),
                scaling_config=ScalingConfig(num_workers=cfg.workers, use_gpu=cfg.device == "cuda"),
                run_config=RunConfig(
                    name=name,
                    storage_path=path,
                    storage_filesystem=fs,
                    failure_config=FailureConfig(max_failures=cfg.max_failures),
                    callbacks=list(callbacks),
                    checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
                    # Ray Train's per-report INFO lines would bury the progress bar
                    logging_config=LoggingConfig(log_level="WARNING"),
                ),
            )
            result = trainer.fit()
            with result.checkpoint.as_directory() as folder:
                return load_state(folder)
        finally:
            if started:
                ray.shutdown()
            else:  # the job goes on: free what this run's controller reserved
                free_orphaned_placement_groups()

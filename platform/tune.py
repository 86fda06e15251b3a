"""`lightman tune`: hyper-parameter search with Ray Tune + Optuna, each trial a Ray Train run.

Driver (`run_search`): load the experiment config and the space (tune_space.py) → load
the pools and draw the subject split once (`train.prepare`) → hand the trials the
training, validation and auxiliary pools only (the test pool never leaves the driver) →
`Tuner(trial, OptunaSearch(TPE, seeded, Optuna RDB storage), ASHAScheduler)` → one line
per finished trial → results in the search folder: trials.csv / trials.md, best.yaml (a
TrainConfig `lightman train --config` runs), history.png, importances.png, lambda_pri.png;
with `final`, the best config trained once and tested on the test subjects.

Trial (`trial`): the experiment config with the sampled values → `distributed.fit`, the same
Ray Train driver as `lightman train workers=W`, with a report callback that forwards each
validation (val_uar, val_acc at `iteration`) to Tune, with the nodes its Ray Train workers
run on (`train_nodes`, kept in the trial's record). The space cannot change the data,
the episodes, the seed or the budget (tune_space.py), so every trial trains on the same
subjects and is scored on the same validation subjects and episodes.

Storage: everything a search writes lies under its folder: the study (by default), Tune's
experiment state (`ray/`), and per trial `trials/<trial id>/` (what its workers saw, its
metrics, and its Ray Train run state and checkpoints in `trials/<trial id>/ray/<trial id>`,
named by `trial_storage`, the one place that decides it). A trial's Ray Train storage is
set explicitly, never left to Tune's trial folder, which lives in the Ray session's temp
folder of whichever node runs the trial.

Cluster: trials run on the cluster `ray.init` joins (RAY_ADDRESS, else a local one).
`concurrent=0` runs as many trials at once as the cluster could ever place
(`placement.cluster_capacity`: the nodes present, or those its autoscaler may add).

Persistence: the Optuna study lives in `storage` (SQLite file in the search folder by
default). `trials` is the study's total: a re-run with the same folder first finishes an
interrupted search (`Tuner.restore`: its unfinished trials continue from their Ray Train
checkpoints, so none is lost or run twice; one Tune restores as running although it
had finished, since Tune saves its state every 10 s or more, reports its recorded result
again instead of training), then adds trials until the study holds `trials` (a fresh TPE
seed per extension, derived from seed and the trial count).

Failures: a trial whose config is invalid, whose training raises, or whose training loss
becomes NaN or infinite is recorded as `error` with its message (Optuna state FAIL) and
the search goes on.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import ray
import ray.train
import ray.tune
import yaml
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.search.optuna import OptunaSearch
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from lightman.models.learners.config import set_keys
from lightman.models.provenance import to_dict
from lightman.platform.config import ConfigError
from lightman.platform.distributed import fit, free_orphaned_placement_groups
from lightman.platform.placement import cluster_capacity, unit_of
from lightman.platform.selection import check_clip_shapes
from lightman.platform.train import RunData, TrainConfig, prepare, run_training
from lightman.platform.tune_space import Space, apply_params, check_values, optuna_space
from lightman.tasks import storage


@dataclass(frozen=True)
class SearchConfig:
    """How a search runs (the CLI's options of `lightman tune`)."""

    trials: int = 8  # trials the study should hold in total (a larger number extends it)
    concurrent: int = 0  # trials at once; 0 = the CPUs (GPUs) the cluster could place // workers
    metric: str = "val_uar"  # validation metric maximised (val_uar | val_acc)
    storage: str = ""  # Optuna storage URL ("" = sqlite:///<out>/study.db)
    study: str = "lightman"  # the study's name in the storage
    startup_trials: int = 4  # random trials before TPE models the results
    grace_steps: int = 0  # ASHA: steps every trial trains before it may stop (0 = eval_every)
    reduction_factor: int = 2  # ASHA: keep the best 1/reduction_factor at each rung
    driver_memory_mb: int = 256  # the Ray memory each trial's driver reserves (it holds no CPU)
    final: bool = False  # train the best config once and test it on the test subjects

    def __post_init__(self) -> None:
        if self.trials < 1 or self.concurrent < 0 or self.startup_trials < 0:
            raise ConfigError("--trials >= 1, --concurrent >= 0 and startup_trials >= 0")
        if self.metric not in ("val_uar", "val_acc"):
            raise ConfigError(f"metric must be val_uar or val_acc, got {self.metric!r}")
        if self.reduction_factor < 2 or self.grace_steps < 0 or self.driver_memory_mb < 1:
            raise ConfigError("reduction_factor >= 2, grace_steps >= 0, driver_memory_mb >= 1")


@dataclass(frozen=True)
class SearchResult:
    out: str
    best: dict  # the best trial's record
    table: str  # Markdown table of every trial
    final: dict | None  # test metrics of the best config (with `final`)


def trial_storage(root: str, trial_id: str) -> str:
    """The Ray Train storage of a trial of the search in `root`: `<root>/trials/<id>/ray`
    (its run is `<that>/<trial id>`). The one place that names it, so that a search folder
    given as a URI gives its trials storage under that URI."""
    return f"{str(root).rstrip('/')}/trials/{trial_id}/ray"


def trial_config(base: dict, params: dict, root: str = "", trial_id: str = "") -> TrainConfig:
    """A trial's TrainConfig: the experiment's with `params`, run through Ray Train, with a
    checkpoint (= a report to Tune) at every validation and its storage under the search's
    (`trial_storage`; without `root`, the check of the experiment, in no trial)."""
    cfg = apply_params(base, params)
    storage = trial_storage(root, trial_id) if root else ""
    return dataclasses.replace(
        cfg, backend="ray", checkpoint_every=cfg.eval_every, storage_path=storage, run_name=trial_id
    )


WORKER_START_TIMEOUT_S = 900
TRIALS_FILE = "trials.jsonl"  # one record per finished trial, appended by the driver


class FreeOrphans(ray.tune.Callback):
    """Frees the placement groups of dead trials' Train controllers every few seconds."""

    def __init__(self, every_s: float = 5.0) -> None:
        self.every_s, self._last = every_s, 0.0

    def on_step_end(self, iteration, trials, **info) -> None:
        if time.monotonic() - self._last >= self.every_s:
            self._last = time.monotonic()
            free_orphaned_placement_groups()


def check_finite(record: dict) -> None:
    """Raise FloatingPointError, naming the step and the losses, when a metrics record of a
    training run holds a loss that is NaN or infinite (the run has diverged)."""
    bad = {k: v for k, v in record.items() if "loss" in k and not math.isfinite(v)}
    if bad:
        raise FloatingPointError(f"diverged at step {record.get('iteration')}: {bad}")


def train_worker_nodes() -> list[str]:
    """The ids of the nodes the live Ray Train workers owned by this process run on (called
    in a Train controller, which owns its workers). The GCS actor table records each
    actor's owner and node, and needs no dashboard."""
    from ray._private.state import state
    from ray.core.generated import gcs_pb2

    context = ray.get_runtime_context()
    me = bytes.fromhex(context.get_worker_id())
    job = ray.JobID.from_hex(context.get_job_id())
    table = state._connect_and_get_accessor().get_actor_table(job, "ALIVE")
    actors = (gcs_pb2.ActorTableData.FromString(raw) for raw in table)
    return sorted(
        {
            a.address.node_id.hex()
            for a in actors
            if a.owner_address.worker_id == me and a.class_name.endswith("RayTrainWorker")
        }
    )


class TrialReport(TuneReportCallback):
    """Forwards rank 0's reports that carry a validation to Tune, with the nodes of the
    trial's workers (`train_nodes`); fails the trial when the training loss is not finite
    (`check_finite`). Runs in the trial's Ray Train controller."""

    def __init__(self, metric: str) -> None:
        super().__init__()
        self.metric = metric

    def after_report(self, run_context, metrics, checkpoint) -> None:
        first = metrics[0]
        check_finite(first)
        if self.metric in first:
            # one string: Tune's TensorBoard logger refuses lists
            first = {**first, "train_nodes": ",".join(train_worker_nodes())}
            super().after_report(run_context, [first, *metrics[1:]], checkpoint)


def _checkpointed(run: str):
    """The Ray Train result of the run at `run` when it holds a checkpoint, else None."""
    try:
        result = ray.train.Result.from_path(run)
    except (RuntimeError, FileNotFoundError, ValueError):
        return None
    return result if result.checkpoint is not None else None


def _start_over(run: str) -> None:
    """Delete a trial's Ray Train run folder that holds no checkpoint (a trial stopped before
    its first one, restarted by a resumed search), so that its run starts afresh."""
    storage.delete_dir(storage.resolve(run))


def trial(params: dict, *, base: dict, data: RunData, root: str, metric: str) -> None:
    """Ray Tune's function trainable: one Ray Train run of the experiment with `params`."""
    trial_id = ray.tune.get_context().get_trial_id()
    done = next((r for r in read_records(root) if r["trial"] == trial_id), None)
    if done is not None:  # recorded finished before its search's driver was interrupted
        _report_again(done, metric)
        return
    out = storage.resolve(root).join("trials", trial_id)
    # what this trial's workers receive; the leakage test reads it (the test pool is None)
    seen = {
        "params": params,
        "train_subjects": sorted(set(data.train.subjects.tolist())),
        "val_subjects": sorted(set(data.val.subjects.tolist())),
        "test_pool": data.test is not None,
    }
    storage.write_text(out.join("seen.json"), json.dumps(seen, indent=1))
    cfg = trial_config(base, params, root, trial_id)  # an invalid combination fails here
    check_clip_shapes(cfg.model, {"primary": data.val, "auxiliary": data.aux})  # and this
    # Ray Train gives up on a worker that has not started in 60 s and retries with a new
    # placement group while the old one still holds the CPUs: on a loaded machine that
    # stalls the search. Propagated to the Train controller and its workers.
    os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", str(WORKER_START_TIMEOUT_S))
    run = f"{cfg.storage_path}/{cfg.run_name}"
    latest = _checkpointed(run)  # a restored search continues its trials' runs
    if latest is None:
        _start_over(run)
    elif (latest.metrics or {}).get("iteration") == cfg.iterations:
        # trained to the end before the driver was killed, but not yet reported to it
        _report_again({"status": "ok", **latest.metrics}, metric)
        return
    resume = latest is not None
    fit(cfg, out.uri, resume, data, callbacks=[TrialReport(metric)])


def _report_again(record: dict, metric: str) -> None:
    """Hand Tune a finished trial's recorded result again, without training. Tune saves its
    experiment state every 10 s or more, so a search whose driver is killed may be restored
    with trials that had already finished (and were recorded, and told to Optuna) marked as
    running: such a trial ends with its recorded result (or error), not a second run."""
    if record["status"] == "error":
        raise RuntimeError(f"failed before the search was interrupted: {record['error']}")
    again = {k: record.get(k) for k in (metric, "val_acc", "iteration")}
    ray.tune.report({**again, "train_nodes": ",".join(record.get("train_nodes") or [])})


class StudySearch(OptunaSearch):
    """OptunaSearch that lets a trial restored after an interrupted driver report a result
    its Optuna trial already holds (`_report_again`): Optuna refuses to update a finished
    trial, and Ray's searcher would end the whole search on that refusal."""

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        import optuna

        try:
            super().on_trial_result(trial_id, result)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # told to the study before the interruption; nothing to add


class Progress(ray.tune.Callback):
    """One line per finished trial, and its record appended to <out>/trials.jsonl."""

    def __init__(self, out: str, total: int, metric: str, max_steps: int) -> None:
        self.out, self.total, self.metric, self.max_steps = out, total, metric, max_steps

    def _record(self, trial, error: str | None) -> None:
        if any(r["trial"] == trial.trial_id for r in read_records(self.out)):
            return  # recorded before an interruption: its restored trial only reported it again
        last = trial.last_result or {}
        step = last.get("iteration")
        status = "error" if error else ("ok" if step == self.max_steps else "stopped")
        record = {
            "trial": trial.trial_id,
            "status": status,
            "iteration": step,
            self.metric: last.get(self.metric),
            "val_acc": last.get("val_acc"),
            "seconds": round(last.get("time_total_s", 0.0), 1),
            "params": trial.config,
            # the nodes its Ray Train workers ran on
            "train_nodes": [n for n in (last.get("train_nodes") or "").split(",") if n],
            "error": error,
        }
        log = storage.resolve(self.out).join(TRIALS_FILE)  # the driver is its one writer
        before = storage.read_bytes(log).decode() if storage.exists(log) else ""
        storage.write_text(log, before + json.dumps(record) + "\n")
        done = len(read_records(self.out))
        value = record[self.metric]
        shown = f"{self.metric}={value:.3f} at step {step}" if value is not None else "no result"
        params = " ".join(f"{k.split('.')[-1]}={_short(v)}" for k, v in trial.config.items())
        print(
            f"[tune] trial {done}/{self.total} {trial.trial_id} {status}: {shown} | {params}"
            + (f" | {error}" if error else ""),
            flush=True,
        )

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._record(trial, None)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._record(trial, _error_line(trial))


def _short(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _error_line(trial) -> str:
    """The message of the trial's error.txt (see error_message)."""
    path = Path(trial.local_path or "") / "error.txt"
    try:
        return error_message(path.read_text())
    except OSError:
        return "failed (no error file)"


def error_message(text: str) -> str:
    """The last exception's line of a trial's error text (Tune wraps it in tracebacks) and
    the lines after it: Ray Train's ControllerError puts its cause there ("Training failed
    due to controller error:" / "diverged at step 2: ..."). At most 300 characters."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines:
        return "failed (empty error file)"
    errors = [i for i, ln in enumerate(lines) if "Error:" in ln or "Exception:" in ln]
    return " ".join(lines[errors[-1] if errors else -1 :])[:300]


def read_records(out: str | Path) -> list[dict]:
    """Every finished trial of the search folder (local or s3://), once (the last record of
    a trial wins)."""
    log = storage.resolve(out).join(TRIALS_FILE)
    if not storage.exists(log):
        return []
    by_id = {}
    for line in storage.read_bytes(log).decode().splitlines():
        if line.strip():
            r = json.loads(line)
            by_id[r["trial"]] = r
    return list(by_id.values())


def _storage(root: storage.Location, scfg: SearchConfig):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the Progress lines say enough
    if root.is_s3 and not scfg.storage:
        raise ConfigError(
            f"--out {root.uri}: the Optuna study needs a database, and SQLite cannot live on "
            "S3: pass --storage with a database URL every run of the search reaches "
            "(postgresql://..., or sqlite:////path/on/this/machine/study.db)"
        )
    url = scfg.storage or f"sqlite:///{root.path}/study.db"
    try:
        return optuna.storages.RDBStorage(url)
    except ImportError as e:  # the URL's SQLAlchemy dialect needs a driver not installed
        raise ConfigError(
            f"--storage {_shown(url)}: its database driver is not installed ({e.__cause__ or e}); "
            "install it, or name the one you have (e.g. postgresql+psycopg2://)"
        ) from e
    except SQLAlchemyError as e:  # a malformed URL, a server that does not answer, ...
        reason = str(e.orig if getattr(e, "orig", None) else e).strip().splitlines()[0]
        raise ConfigError(f"--storage {_shown(url)}: {reason}") from e


def _shown(url: str) -> str:
    """The storage URL with its password hidden (it goes into error messages)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except SQLAlchemyError:
        return url.split("@")[-1]


def _searches(root: storage.Location) -> list[dict]:
    loc = root.join("searches.json")
    return json.loads(storage.read_bytes(loc)) if storage.exists(loc) else []


def _save_searches(root: storage.Location, searches: list[dict]) -> None:
    storage.write_text(root.join("searches.json"), json.dumps(searches, indent=1))


def _finished_trials(storage, study: str) -> int:
    """Finished trials of the study; trials left RUNNING by a driver that cannot be
    restored are marked FAIL (interrupted) and not counted, so their budget is re-run."""
    import optuna

    try:
        s = optuna.load_study(study_name=study, storage=storage)
    except KeyError:  # no such study yet
        return 0
    n = 0
    for t in s.get_trials(deepcopy=False):
        if t.state.is_finished():
            n += t.user_attrs.get("interrupted") is None
        else:
            s._storage.set_trial_user_attr(t._trial_id, "interrupted", True)
            s._storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
    return n


def searched_base(base_cfg: TrainConfig) -> dict:
    """The experiment config as a search's trials and its best config start from: the
    learner's keys the config sets, not every default of its learner (a space may switch
    learner.name, and another learner refuses the keys it does not read)."""
    base = to_dict(base_cfg)
    base["learner"] = set_keys(base_cfg.learner)
    return base


def run_search(
    base_cfg: TrainConfig, space: Space, out: str | Path, scfg: SearchConfig
) -> SearchResult:
    """Run (resume, extend) the search in `out` and write its results (module docstring)."""
    from optuna.samplers import TPESampler
    from ray.tune.schedulers import ASHAScheduler

    root = storage.resolve(out)  # local or s3://: everything of the search lives under it
    base = searched_base(base_cfg)
    check_values(space, base, space.name)  # every bound and choice fits this experiment
    trial_config(base, {})  # and the experiment runs as a trial
    storage.make_dirs(root)  # the default SQLite study lives in it
    study = _storage(root, scfg)  # a bad URL or a missing driver fails before Ray starts
    data = prepare(base_cfg)  # the one split; a config the data cannot serve fails here
    trial_data = dataclasses.replace(data, test=None)  # no trial receives test subjects
    # Tune's own tables and hints would bury the one line per trial (Progress)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    started = not ray.is_initialized()
    if started:  # RAY_ADDRESS joins a cluster, else a local one
        ray.init(include_dashboard=False, configure_logging=False, log_to_driver=False)
    try:
        # what the cluster could ever place, the nodes its autoscaler may add included
        fits = cluster_capacity(unit_of(base_cfg)) // base_cfg.workers
        concurrent = scfg.concurrent or int(max(1, min(fits, scfg.trials)))
        trainable = ray.tune.with_resources(
            ray.tune.with_parameters(
                trial, base=base, data=trial_data, root=root.uri, metric=scfg.metric
            ),
            # the trial function only drives its Ray Train workers (1 CPU/GPU each)
            {"cpu": 0, "memory": scfg.driver_memory_mb * 2**20},
        )
        searches = _searches(root)
        # Tune's experiment state under <out>/ray (a path and a filesystem: Ray refuses an
        # s3:// path beside a filesystem, and builds a bare S3 one, without the endpoint)
        tune_dir = root.join("ray")
        tune_fs = tune_dir.fs if tune_dir.is_s3 else None
        t0 = time.perf_counter()
        if searches and not searches[-1]["finished"]:
            path = tune_dir.join(searches[-1]["name"]).path
            if ray.tune.Tuner.can_restore(path, storage_filesystem=tune_fs):
                print(f"[tune] resuming the interrupted search {searches[-1]['name']}", flush=True)
                ray.tune.Tuner.restore(
                    path,
                    trainable,
                    resume_unfinished=True,
                    resume_errored=False,
                    storage_filesystem=tune_fs,
                ).fit()
            searches[-1]["finished"] = True
            _save_searches(root, searches)
        have = _finished_trials(study, scfg.study)
        if have < scfg.trials:
            name = f"search-{len(searches) + 1:03d}"
            searches.append({"name": name, "trials": scfg.trials - have, "finished": False})
            _save_searches(root, searches)
            print(
                f"[tune] {name}: {scfg.trials - have} trial(s) to reach {scfg.trials} "
                f"({have} done), {concurrent} at a time, {base_cfg.workers} worker(s) each",
                flush=True,
            )
            searcher = StudySearch(
                space=optuna_space(space),
                metric=scfg.metric,
                mode="max",
                sampler=TPESampler(
                    seed=base_cfg.seed * 100_000 + have, n_startup_trials=scfg.startup_trials
                ),
                study_name=scfg.study,
                storage=study,
            )
            scheduler = ASHAScheduler(
                time_attr="iteration",
                metric=scfg.metric,
                mode="max",
                max_t=base_cfg.iterations,
                grace_period=scfg.grace_steps or base_cfg.eval_every,
                reduction_factor=scfg.reduction_factor,
            )
            ray.tune.Tuner(
                trainable,
                tune_config=ray.tune.TuneConfig(
                    search_alg=searcher,
                    scheduler=scheduler,
                    num_samples=scfg.trials - have,
                    max_concurrent_trials=concurrent,
                ),
                run_config=ray.tune.RunConfig(
                    name=name,
                    storage_path=tune_dir.path,
                    storage_filesystem=tune_fs,
                    callbacks=[
                        Progress(root.uri, scfg.trials, scfg.metric, base_cfg.iterations),
                        FreeOrphans(),
                    ],
                    verbose=0,
                ),
            ).fit()
            searches[-1]["finished"] = True
            _save_searches(root, searches)
        print(f"[tune] search done in {time.perf_counter() - t0:.0f} s", flush=True)
    finally:
        if started:
            ray.shutdown()
    return finish_search(base_cfg, space, root, scfg, study)


def _from_here(loc: storage.Location) -> str:
    """A local path relative to the working directory when it lies below it (a command
    written into a file names no folder of this machine), else the URI as it is."""
    try:
        return loc.uri if loc.is_s3 else str(Path(loc.path).relative_to(Path.cwd()))
    except ValueError:
        return loc.uri


def finish_search(
    base_cfg: TrainConfig, space: Space, root: storage.Location, scfg: SearchConfig, study
) -> SearchResult:
    """trials.csv / trials.md, best.yaml, the plots and, with `final`, the test of the best."""
    records = sorted(read_records(root.uri), key=lambda r: r["trial"])
    scored = [r for r in records if r["status"] != "error" and r[scfg.metric] is not None]
    if not scored:
        raise RuntimeError(f"no trial of {root.uri} finished with a {scfg.metric}: see trials.md")
    table = write_table(root, records, space, scfg.metric)
    best = max(scored, key=lambda r: r[scfg.metric])
    best_cfg = apply_params(searched_base(base_cfg), best["params"])
    header = (
        f"# lightman train --config {_from_here(root.join('best.yaml'))} --out runs/best\n"
        f"# best of {len(records)} trials ({space.name}): {scfg.metric}={best[scfg.metric]:.4f} "
        f"(trial {best['trial']}, step {best['iteration']}) on the validation subjects\n"
    )
    best_yaml = header + yaml.safe_dump(to_dict(best_cfg), sort_keys=False)
    storage.write_text(root.join("best.yaml"), best_yaml)
    plot_results(root, records, space, scfg, study)
    final = None
    if scfg.final:
        result = run_training(best_cfg, root.join("final").uri)
        print(result.table)
        final = result.metrics
    return SearchResult(root.uri, best, table, final)


def write_table(root: storage.Location, records: list[dict], space: Space, metric: str) -> str:
    """trials.csv and trials.md: one row per trial, the searched values and the result."""
    head = ["trial", "status", "iteration", metric, "val_acc", "seconds", *space.keys, "error"]
    rows = [
        [
            r["trial"],
            r["status"],
            r["iteration"],
            r[metric],
            r["val_acc"],
            r["seconds"],
            *[r["params"].get(k) for k in space.keys],
            r["error"] or "",
        ]
        for r in records
    ]
    storage.write_csv(root.join("trials.csv"), [head, *rows])

    def cell(v) -> str:
        return "" if v is None else _short(v).replace("|", "/")

    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    table = "\n".join(lines)
    storage.write_text(root.join("trials.md"), table + "\n")
    return table


def plot_results(
    root: storage.Location, records: list[dict], space: Space, scfg: SearchConfig, study_storage
):
    """history.png and importances.png (Optuna's matplotlib module, over the whole study),
    lambda_pri.png (the metric against λ1, the paper's Figure 7) when λ1 is searched."""
    import matplotlib

    matplotlib.use("Agg")
    import optuna

    with warnings.catch_warnings():  # Optuna marks its matplotlib plots experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study = optuna.load_study(study_name=scfg.study, storage=study_storage)
        _draw(root, records, space, scfg, study)


def _save_png(fig, loc: storage.Location) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    storage.write_bytes(loc, buf.getvalue())


def _draw(
    root: storage.Location, records: list[dict], space: Space, scfg: SearchConfig, study
) -> None:
    import matplotlib.pyplot as plt
    import optuna
    from optuna.importance import PedAnovaImportanceEvaluator
    from optuna.visualization import matplotlib as ovm

    ax = ovm.plot_optimization_history(study, target_name=scfg.metric)
    _save_png(ax.figure, root.join("history.png"))
    plt.close(ax.figure)
    varying = [p.key for p in space.params if len(set(p.values())) > 1]
    complete = study.get_trials(deepcopy=False, states=[optuna.trial.TrialState.COMPLETE])
    if len(complete) >= 2 and varying:
        # PED-ANOVA: Optuna's own evaluator (fANOVA would need scikit-learn)
        ax = ovm.plot_param_importances(
            study, evaluator=PedAnovaImportanceEvaluator(), params=varying
        )
        _save_png(ax.figure, root.join("importances.png"))
        plt.close(ax.figure)
    if "learner.lambda_pri" in space.keys:
        pts = sorted(
            (r["params"]["learner.lambda_pri"], r[scfg.metric], r["status"])
            for r in records
            if r[scfg.metric] is not None
        )
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for status, marker in (("ok", "o"), ("stopped", "x"), ("error", "s")):
            sel = [(x, y) for x, y, s in pts if s == status]
            if sel:
                ax.scatter(*zip(*sel), marker=marker, label=status)
        ax.set_xlabel("λ1 (learner.lambda_pri)")
        ax.set_ylabel(f"{scfg.metric} (validation subjects)")
        ax.set_title("λ1 sensitivity (paper Fig. 7: best 0.55)")
        ax.legend()
        _save_png(fig, root.join("lambda_pri.png"))
        plt.close(fig)

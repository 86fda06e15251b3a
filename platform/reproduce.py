"""`lightman reproduce`: a study of the paper rerun on any index, as a Ray Tune grid of
cells, decided by statistics (platform/stats.py), written as report.md / report.html.

A study is a YAML file (configs/studies/<name>.yaml, `StudyConfig`): the training config
its cells start from (`base` + `train`), the arms (`learners`: each a name and its
overrides of that config; a bare learner name sets `learner.name`), the `primary` arm,
the contrasts (primary − every other arm on each of `contrast_metrics`), the
`primary_contrast` and the paper's `claims`, named before anything runs, the paper's
published numbers (`paper`), and two budgets: `quick` (a smoke run of the machinery that
fits 15 minutes on a 2-core machine and decides nothing) and `full` (the seeds and
schedule the claims are judged on).

Held-out studies (`protocol: megc-loso`, Table 1; `protocol: lodo`, cross-dataset): cells
are arm × seed × fold, a fold holding out one subject or one primary dataset
(platform/megc.py: the supervised arm trains as megc-loso trains, any other learner
meta-trains on the rest and adapts on a support set of its training subjects); each arm
and seed's fold predictions are joined by clip id and scored once on the pooled counts
(`pool_folds`), then analysed as below, per dataset too, beside the study's `reference`.

Cells are arm × seed (seeds `--seed` .. `--seed` + budget.seeds − 1; the seed draws the
subject split, the episodes and the initialisation, so the arms of one seed are tested on
the same test subjects and episodes: the pairs of the paired contrasts). Each cell is one
`run_training` (the code of `lightman train`: model selection on validation subjects
only, then one test on the test subjects), in process in its Tune trial (workers=1).

The grid: `ray.tune.Tuner` over `grid_search` of the pending cell ids, a function trainable
that runs its cell, `cpus_per_cell` CPUs per trial; Tune places the trials over whatever
the cluster has (one machine or many), retries a failed one (`FailureConfig`) and keeps
its experiment state under <out>/ray. A cell's trial resumes its run from the run's last
checkpoint when one is there (a retry, or a study killed mid-cell).

Resumable: a finished cell is kept (platform/kept.py) at <out>/cells/<config hash>.json
with the index's content hash, its path-free config and the package versions; a study
started again runs only the cells not kept (a finished cell is never rerun). An output
folder holding a cell of another index is refused before anything runs, naming the cell
and both indexes.

Stages run before the cells, each kept like a cell (<out>/pretrain|tune/<hash>.json, its
path-free config's hash, the index's content hash), so a resumed study reads them back:
`pretrain:` names MA2MI pre-trainings (`run_pretraining`, the code of `lightman pretrain`),
one per stage and cell seed, shared by every cell whose model.init is `pretrain:<name>`
(the cell's config then names the stage by hash, so its own hash follows the stage's);
`tune:` names the arms searched first (`run_search`, the code of `lightman tune`, on the
validation subjects of the split the study's first seed draws; every arm the same trials),
whose best values become their cells' configs, every cell on that split (data.split_seed).
The report states each tuned arm's space, searched dimensions, trials and best values.
`grad_ratio`: a LightmanNet cell also measures ‖∇θ λ2·L_aux‖ / ‖∇θ λ1·CE‖ and L_aux of the
first inner step at initialisation and at its trained weights.

The cost of `full` is printed before it starts (and by `--plan` for any budget): on this
machine, each arm's seconds per outer step (the mean of 2 timed `meta_grads` + optimiser
steps after a warm-up, on the cell's own model, learner and episodes) and seconds per
evaluation episode (2 episodes adapted and predicted) are measured, and a cell is
estimated as step_s × iterations + episode_s × (val_episodes × validations +
test_episodes), times its `threads` for CPU hours; the data loading and Ray's start-up
are not counted, and another machine's speed differs.

The report (report.md, report.html with its figures embedded as data URIs, figures/*.png,
study.json with every number): per arm the mean ± 95% Student t CI across seeds of each
metric (in %), the paired contrasts with their CIs, p-values and Holm-adjusted p-values
over the table's family, which contrasts survive Holm, each claim's verdict by the rule of
platform/stats.py, the paper's published numbers beside ours, the exact configs (each
cell's config hash), the versions and the index's content hash.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from lightman.models.provenance import to_dict, versions
from lightman.platform import kept, stats
from lightman.platform.config import (
    ConfigError,
    _merge,
    from_dict,
    load_config,
    load_yaml,
    parse_overrides,
)
from lightman.platform.evaluate import METRICS
from lightman.tasks import storage

REPO = Path(__file__).resolve().parents[1]
STUDIES = "configs/studies"  # where `--study NAME` looks (the working folder, then the repo)
BUDGETS = ("quick", "full")
CELLS_DIR = "cells"
RUNS_DIR = "runs"
NAMES = {"acc": "ACC", "macro_f1": "F1", "uar": "UAR", "uf1": "UF1"}
PROTOCOLS = ("fewshot", "megc-loso", "lodo")  # lodo: leave one (primary) dataset out
HELD_UNIT = {"megc-loso": "left-out subject", "lodo": "held-out dataset"}


@dataclass(frozen=True)
class Claim:
    """A claim of the paper and the contrast that tests it, named before anything runs."""

    contrast: str  # "A-B:metric", e.g. lightman-maml:acc (A, B: arms of the study)
    direction: str = "greater"  # greater: the paper has A > B; less: A < B
    size: float | None = None  # the paper's A − B in points (%); None: direction only
    text: str = ""  # the paper's words or numbers the claim stands for

    def __post_init__(self) -> None:
        if self.direction not in stats.DIRECTIONS:
            raise ValueError(f"direction must be one of {stats.DIRECTIONS}")


@dataclass(frozen=True)
class Budget:
    """The seeds and schedule of one budget."""

    seeds: int = 2  # seeds per arm: the cells are arms × seeds
    train: dict = field(default_factory=dict)  # TrainConfig keys over the study's `train`
    megc: dict = field(default_factory=dict)  # MegcConfig keys over the study's `megc`
    # held-out protocols: the first `folds` folds (sorted) only, 0 = every fold; fewer
    # folds is a smoke run (its pooled metrics cover those folds' clips alone)
    folds: int = 0
    pretrain: dict = field(default_factory=dict)  # PretrainConfig keys over every pretrain stage
    tune: dict = field(default_factory=dict)  # TuneStage keys (trials, ...) over the study's


@dataclass(frozen=True)
class TuneStage:
    """A study's `tune:` block: the arms searched before their cells run (module docstring)."""

    spaces: dict = field(default_factory=dict)  # arm -> its space file (tune_spaces/*.yaml)
    trials: int = 12  # every searched arm's budget: the same number of trials
    concurrent: int = 2  # trials at once (0: what the cluster could place)
    metric: str = "val_uar"  # the validation metric the search maximises


@dataclass(frozen=True)
class StudyConfig:
    """A study: arms × seeds of one training config, its contrasts and the paper's claims."""

    name: str = ""  # the study's name (the report's title line)
    title: str = ""  # the part of the paper it stands for
    # the test: fewshot (episodes on the run's test subjects), megc-loso (one cell per
    # subject held out, trained on every other subject) or lodo (one cell per primary
    # dataset held out, trained on the others); module docstring
    protocol: str = "fewshot"
    base: str = ""  # a YAML file whose `base_key` section is the starting TrainConfig
    base_key: str = ""  # the section of `base` ("" = the whole file)
    train: dict = field(default_factory=dict)  # TrainConfig keys over `base` (every arm)
    learners: tuple[str, ...] = ("lightman", "maml")  # the arms, the primary among them
    primary: str = "lightman"  # the arm every contrast compares against
    # arm -> its TrainConfig overrides (key=value strings or a mapping); an arm without an
    # entry is the learner of its name; model.ways=classes: the primary pool's class count.
    # Arms named here or in claims but left out of `learners` (learners=[a,b] runs a subset)
    # are not run: their claims are not testable.
    overrides: dict = field(default_factory=dict)
    metrics: tuple[str, ...] = METRICS  # reported per arm
    contrast_metrics: tuple[str, ...] = ("acc",)  # the family: primary − arm on each
    primary_contrast: str = ""  # the table's pre-named contrast, "A-B:metric"
    claims: tuple[Claim, ...] = ()  # the paper's claims, each tested by its contrast
    paper: dict = field(default_factory=dict)  # arm -> {metric: the paper's %}
    paper_source: str = ""  # where the paper's numbers come from (table, column)
    quick: Budget = field(default_factory=lambda: Budget(seeds=2))  # a smoke run
    full: Budget = field(default_factory=lambda: Budget(seeds=5))  # what decides
    cpus_per_cell: float = 1.0  # CPUs Tune reserves per cell (its threads)
    confidence: float = 0.95  # of every interval; α = 1 − confidence
    # held-out protocols: the supervised arm's training (platform/megc.MegcConfig: epochs,
    # batch_size, lr) and the meta-learners' support shots per class (shots)
    megc: dict = field(default_factory=dict)
    # published figures of methods that are not arms (name -> {metric: %}), shown beside
    reference: dict = field(default_factory=dict)
    reference_source: str = ""
    # stages run before the cells, each kept under its own config hash (module docstring):
    # name -> PretrainConfig keys (`base`: a YAML PretrainConfig they override); an arm
    # whose model.init is `pretrain:<name>` starts from that stage's encoder (at its seed)
    pretrain: dict = field(default_factory=dict)
    tune: dict = field(default_factory=dict)  # TuneStage keys: which arms are tuned first
    # fewshot: for the lightman arms, ‖∇θ λ2·L_aux‖ / ‖∇θ λ1·CE‖ and L_aux of the first inner
    # step at initialisation and at the trained weights (mean over 8 training episodes)
    grad_ratio: bool = False

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {list(PROTOCOLS)}, got {self.protocol!r}")
        if self.primary not in self.learners:
            raise ValueError(f"primary {self.primary!r} is not one of learners {self.learners}")
        if len(set(self.learners)) != len(self.learners):
            raise ValueError(f"learners repeat a name: {self.learners}")
        for m in (*self.metrics, *self.contrast_metrics):
            if m not in METRICS:
                raise ValueError(f"metric {m!r} is not one of {list(METRICS)}")
        names = {c.name for c in self.contrasts_named()}
        if self.primary_contrast not in names:
            raise ValueError(
                f"primary_contrast {self.primary_contrast!r}: name one of the study's contrasts "
                f"up front: {sorted(names)}"
            )
        for claim in self.claims:  # an arm left out of `learners`: the claim is not testable
            arms, _, metric = claim.contrast.partition(":")
            if metric not in METRICS or "-" not in arms:
                raise ValueError(f"claim contrast {claim.contrast!r} is not A-B:metric")
        if self.quick.seeds < 1 or self.full.seeds < 1 or self.cpus_per_cell <= 0:
            raise ValueError("budgets need seeds >= 1 and cpus_per_cell > 0")
        for b in (self.quick, self.full):
            stage = from_dict(TuneStage, _merge(self.tune, b.tune), "tune.")
            if stage.trials < 1 or stage.metric not in ("val_uar", "val_acc"):
                raise ValueError("tune: trials >= 1, metric val_uar or val_acc")
        for arm in self.tune_stage("quick").spaces:
            if arm not in self.learners and arm not in self.overrides:
                raise ValueError(f"tune.spaces names {arm!r}, not an arm of the study")
        for name, spec in self.pretrain.items():
            if not isinstance(spec, dict):
                raise ValueError(f"pretrain.{name}: a mapping of PretrainConfig keys")

    def tune_stage(self, budget: str) -> TuneStage:
        """The `tune:` block with the budget's keys over it."""
        return from_dict(TuneStage, _merge(self.tune, self.budget(budget).tune), "tune.")

    def contrasts_named(self) -> list[stats.Contrast]:
        """The family's (empty) contrasts: primary − every other arm on each contrast metric."""
        return [
            stats.Contrast(
                stats.contrast_name(self.primary, b, m),
                self.primary,
                b,
                m,
                (),
                (),
                stats.Interval(math.nan, math.nan, 0),
                math.nan,
            )
            for m in self.contrast_metrics
            for b in self.learners
            if b != self.primary
        ]

    def budget(self, name: str) -> Budget:
        if name not in BUDGETS:
            raise ConfigError(f"budget must be one of {list(BUDGETS)}, got {name!r}")
        return getattr(self, name)


def study_path(study: str) -> Path:
    """A study file, or a name under configs/studies/ (the working folder's, then the repo's)."""
    for candidate in (
        Path(study),
        Path(STUDIES, f"{study}.yaml"),
        REPO / STUDIES / f"{study}.yaml",
    ):
        if candidate.is_file():
            return candidate
    known = sorted(p.stem for p in (REPO / STUDIES).glob("*.yaml"))
    raise ConfigError(f"--study {study}: no such file, nor a study of {STUDIES}/: {known}")


def load_study(study: str, overrides: list[str] | tuple[str, ...] = ()) -> StudyConfig:
    return load_config(StudyConfig, study_path(study), overrides)


@dataclass(frozen=True)
class Cell:
    """One arm at one seed: its path-free TrainConfig (data.index "") and that config's hash."""

    id: str
    arm: str
    seed: int
    config: dict
    hash: str
    fold: str = ""  # the held-out subject or dataset (megc-loso, lodo); "" for fewshot
    protocol: str = "fewshot"
    pretrain: str = ""  # the pretrain stage its model.init names ("" = none)


@dataclass(frozen=True)
class Stage:
    """A step run before the cells: a pre-training (`lightman pretrain`'s code) or an arm's
    search (`lightman tune`'s), kept at <out>/<kind>/<hash>.json like a cell."""

    kind: str  # pretrain | tune
    name: str  # the pretrain stage's name, or the tuned arm
    seed: int
    config: dict  # path-free (the index is named by its hash)
    hash: str

    @property
    def id(self) -> str:
        return f"{self.kind}-{self.name}-s{self.seed}"


PRETRAIN_DIR = "pretrain"
TUNE_DIR = "tune"
INIT_PREFIX = "pretrain:"  # model.init=pretrain:<stage name> in a study, <stage hash> in a cell


def _base(study: StudyConfig) -> dict:
    if not study.base:
        return {}
    return _yaml_file(study.base, study.base_key)


def _yaml_file(name: str, key: str = "") -> dict:
    path = Path(name)
    if not path.is_file():
        path = REPO / name
    data = load_yaml(path.read_text()) or {}
    return data.get(key, {}) if key else data


def _arm(study: StudyConfig, arm: str) -> dict:
    over = study.overrides.get(arm)
    if over is None:
        return {"learner": {"name": arm}}
    if isinstance(over, dict):
        return over
    return parse_overrides(list(over))


def pretrain_stage(study: StudyConfig, budget: str, name: str, seed: int) -> Stage:
    """The pretrain stage `name` at `seed`: its PretrainConfig (the stage's `base` file, its
    keys, the budget's `pretrain` keys), path-free, and that config's hash."""
    from lightman.platform.pretrain import PretrainConfig

    if name not in study.pretrain:
        raise ConfigError(
            f"model.init={INIT_PREFIX}{name}: no such pretrain stage {list(study.pretrain)}"
        )
    spec = dict(study.pretrain[name])
    data = _yaml_file(spec.pop("base")) if "base" in spec else {}
    data = _merge(_merge(data, spec), study.budget(budget).pretrain)
    cfg = from_dict(PretrainConfig, _merge(data, {"seed": seed, "index": ""}))
    config = to_dict(cfg)
    return Stage("pretrain", name, seed, config, kept.config_hash({"pretrain": config}))


def _arm_data(study: StudyConfig, budget: str, arm: str, index: str, classes: list) -> dict:
    """An arm's TrainConfig mapping before its seed: base, train, budget, the arm's keys."""
    common = _merge(_merge(_base(study), study.train), study.budget(budget).train)
    data = _merge(common, _arm(study, arm))
    for section in ("model", "episode"):  # ways=classes: the primary pool's class count
        if data.get(section, {}).get("ways") == "classes":
            if not classes:
                classes.append(_class_count(data, index))
            data = _merge(data, {section: {"ways": classes[0]}})
    return data


def tune_stages(study: StudyConfig, budget: str, index: str, seed: int = 0) -> list[Stage]:
    """One search per tuned arm (the study's `tune.spaces`, arms of `learners` only), each on
    the arm's config at the study's first seed (which draws the one subject split every
    search and every cell shares), with its space and the same trials."""
    from lightman.platform.train import TrainConfig
    from lightman.platform.tune_space import parse_space

    t = study.tune_stage(budget)
    stages, classes = [], []
    for arm, space_file in t.spaces.items():
        if arm not in study.learners:
            continue
        data = _arm_data(study, budget, arm, index, classes)
        cfg = from_dict(TrainConfig, _merge(data, {"seed": seed, "data": {"index": index}}))
        config = to_dict(cfg)
        config["data"]["index"] = ""
        space = _yaml_file(space_file)
        parse_space(space, space_file)  # a bad space fails before anything runs
        key = {
            "train": config,
            "space": space,
            "space_file": space_file,
            "search": {"trials": t.trials, "concurrent": t.concurrent, "metric": t.metric},
        }
        stages.append(Stage("tune", arm, seed, key, kept.config_hash(key)))
    return stages


def build_cells(
    study: StudyConfig,
    budget: str,
    index: str,
    seed: int = 0,
    tuned: dict[str, dict] | None = None,
) -> list[Cell]:
    """The study's cells for `budget`: every arm at seeds seed .. seed + seeds − 1, each
    config checked by TrainConfig (a bad key fails here, before anything runs). `tuned`:
    a tuned arm's best values (its search's `best_params`), over its config; without them
    a tuned arm's cells carry its untuned config (a plan). With a `tune:` block every cell
    draws its subject split from `seed` (data.split_seed), the searches' split."""
    from lightman.platform.train import TrainConfig
    from lightman.platform.tune_space import nested

    b = study.budget(budget)
    megc = _megc(study, budget)
    classes: list = []
    searched = study.tune_stage(budget).spaces
    cells = []
    for arm in study.learners:
        data = _arm_data(study, budget, arm, index, classes)
        if arm in searched and tuned and arm in tuned:
            data = _merge(data, nested(tuned[arm]))
        if searched:
            data = _merge(data, {"data": {"split_seed": seed}})
        init = str(data.get("model", {}).get("init") or "")
        stage_name = init[len(INIT_PREFIX) :] if init.startswith(INIT_PREFIX) else ""
        folds = [""]
        if study.protocol != "fewshot":
            folds = _folds(study.protocol, data, index)
            folds = folds[: b.folds] if b.folds else folds
        for s in range(seed, seed + b.seeds):
            at = _merge(data, {"seed": s, "data": {"index": index}})
            if stage_name:  # the stage's hash, so that the cell's hash follows its encoder
                h = pretrain_stage(study, budget, stage_name, s).hash
                at = _merge(at, {"model": {"init": INIT_PREFIX + h}})
            cfg = from_dict(TrainConfig, at)
            if cfg.uses_ray:
                raise ConfigError(
                    f"arm {arm}: a cell trains in its Tune trial's process: workers=1, "
                    "backend auto or local, no storage_path"
                )
            config = to_dict(cfg)
            config["data"]["index"] = ""  # path-free: the index is named by its hash
            for fold in folds:
                key = {"train": config, "protocol": study.protocol}
                if fold:
                    key |= {"fold": fold, "megc": to_dict(megc)}
                cid = f"{arm}-s{s}" + (f"-{fold.replace('/', '_')}" if fold else "")
                cells.append(
                    Cell(
                        cid,
                        arm,
                        s,
                        config,
                        kept.config_hash(key),
                        fold,
                        study.protocol,
                        stage_name,
                    )
                )
    return cells


def pretrain_stages(study: StudyConfig, budget: str, cells: list[Cell]) -> list[Stage]:
    """The pretrain stages `cells` need: one per (stage, seed), shared by every cell of it."""
    need = sorted({(c.pretrain, c.seed) for c in cells if c.pretrain})
    return [pretrain_stage(study, budget, name, s) for name, s in need]


def _megc(study: StudyConfig, budget: str):
    """The held-out folds' MegcConfig: the study's `megc`, then the budget's."""
    from lightman.platform.megc import MegcConfig

    return from_dict(MegcConfig, _merge(study.megc, study.budget(budget).megc))


def _fold_pool(data: dict, index: str, frames: bool = True):
    from lightman.platform.selection import DataSelection, primary_pool

    sel = from_dict(DataSelection, {**data.get("data", {}), "index": index})
    return primary_pool(sel, frames=frames)


def _folds(protocol: str, data: dict, index: str) -> list[str]:
    from lightman.platform.megc import fold_names

    return fold_names(_fold_pool(data, index, frames=False), protocol)


def _class_count(data: dict, index: str) -> int:
    from lightman.platform.selection import DataSelection, primary_pool

    sel = from_dict(DataSelection, {**data.get("data", {}), "index": index})
    return len(primary_pool(sel, frames=False).class_names)


def _with_index(config: dict, index: str, out: str = ""):
    """The cell's TrainConfig on `index`; a model.init naming a pretrain stage (by hash) is
    that stage's encoder under `out` (without `out`: no init, as the cost estimate runs)."""
    from lightman.platform.train import TrainConfig

    over: dict = {"data": {"index": index}}
    init = str(config.get("model", {}).get("init") or "")
    if init.startswith(INIT_PREFIX):
        over["model"] = {"init": _encoder(out, init[len(INIT_PREFIX) :]) if out else ""}
    return from_dict(TrainConfig, _merge(config, over))


def _encoder(out: str, stage_hash: str) -> str:
    """A local path of the encoder the pretrain stage `stage_hash` kept under `out` (copied
    from s3:// to a local cache folder once: model.init reads a local file)."""
    import tempfile

    loc = storage.resolve(out).join(PRETRAIN_DIR, stage_hash, "encoder.pt")
    if not loc.is_s3:
        return loc.path
    local = Path(tempfile.gettempdir(), "lightman-pretrain", f"{stage_hash}.pt")
    if not local.is_file():
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_name(f".{local.name}.{os.getpid()}")
        tmp.write_bytes(storage.read_bytes(loc))
        tmp.replace(local)
    return str(local)


def _stage_folder(stage: Stage, out: str) -> storage.Location:
    """<out>/pretrain or <out>/tune: where a stage's kept row (<hash>.json) and its run
    (<hash>/) live."""
    return storage.resolve(out).join(PRETRAIN_DIR if stage.kind == "pretrain" else TUNE_DIR)


def _stage_row(stage: Stage, out: str) -> storage.Location:
    return kept.cell_location(_stage_folder(stage, out).uri, stage.hash)


def run_pretrain_stage(stage: Stage, index: str, index_hash: str, out: str) -> dict:
    """`run_pretraining` (the code of `lightman pretrain`) into <out>/pretrain/<hash>/
    (encoder.pt, metrics.jsonl, pretrain.json); its row kept (`kept_stages` reads it back)."""
    from lightman.platform.pretrain import PretrainConfig, run_pretraining

    cfg = from_dict(PretrainConfig, _merge(stage.config, {"index": index}))
    run = _stage_folder(stage, out).join(stage.hash)
    summary = run_pretraining(cfg, run.uri).summary
    figures = {
        "stage": stage.id,
        "loss": summary["loss"],
        "check": summary["check"],
        "train_seconds": summary["train_seconds"],
        "train_clips": summary["train_clips"],
        "datasets": summary["datasets"],
        "encoder": run.join("encoder.pt").uri,
    }
    return kept.write_cell(_stage_row(stage, out), figures, stage.config, index_hash)


def searched_dimensions(space: dict) -> list[str]:
    """The keys a space searches: every key but a choice of one value (which only sets it)."""
    return [
        k
        for k, v in space.items()
        if not (isinstance(v, dict) and len(v.get("choice", [0, 0])) < 2)
    ]


def run_tune_stage(stage: Stage, index: str, index_hash: str, out: str) -> dict:
    """`run_search` (the code of `lightman tune`: its trials train on the split's training
    subjects and are scored on its validation subjects; no trial receives the test
    subjects) into <out>/tune/<hash>/; its best values kept (`kept_stages` reads them back)."""
    from lightman.platform.tune import SearchConfig, run_search
    from lightman.platform.tune_space import parse_space

    cfg = _with_index(stage.config["train"], index)
    space = parse_space(stage.config["space"], stage.config["space_file"])
    search = stage.config["search"]
    scfg = SearchConfig(
        trials=search["trials"],
        concurrent=search["concurrent"],
        metric=search["metric"],
        study=stage.name,
    )
    run = _stage_folder(stage, out).join(stage.hash)
    best = run_search(cfg, space, run.uri, scfg).best
    seen = json.loads(storage.read_bytes(run.join("trials", best["trial"], "seen.json")))
    figures = {
        "stage": stage.id,
        "arm": stage.name,
        "space_file": stage.config["space_file"],
        "dimensions": searched_dimensions(stage.config["space"]),
        "trials": search["trials"],
        "metric": search["metric"],
        "best_value": best[search["metric"]],
        "best_trial": best["trial"],
        "best_step": best["iteration"],
        "best_params": best["params"],
        "train_subjects": seen["train_subjects"],
        "val_subjects": seen["val_subjects"],
        "test_pool_seen": seen["test_pool"],
        "search": run.uri,
    }
    return kept.write_cell(_stage_row(stage, out), figures, stage.config, index_hash)


RATIO_EPISODES = 8  # training episodes the gradient ratio is averaged over


def grad_ratio(cfg, model, data) -> dict[str, float]:
    """‖∇θ λ2·L_aux‖ / ‖∇θ λ1·CE‖ and L_aux of the first inner step, each the mean over
    RATIO_EPISODES training episodes, at the model's weights (LearnerConfig.log_grad_ratio)."""
    from lightman.models.learners import build_learner
    from lightman.tasks.episodes import seeded_episodes

    learner = build_learner(dataclasses.replace(cfg.learner, log_grad_ratio=True))
    eps = seeded_episodes(
        data.train, cfg.episode, RATIO_EPISODES, seed=(cfg.seed, 10**6), aux_pool=data.aux
    )
    params, buffers = dict(model.named_parameters()), dict(model.named_buffers())
    _, m = learner.meta_grads(model, params, buffers, list(eps))
    return {
        "grad_ratio": m["aux_ce_grad_ratio"] / m["tasks"],
        "aux_loss": m["aux_loss"] / m["tasks"],
    }


def run_fold_cell(cell: Cell, cfg, out: str, resume: bool, megc) -> dict:
    """One held-out fold (platform/megc.py): the supervised arm trained as `megc-loso`
    trains it, any other learner meta-trained on the other subjects / datasets and adapted
    on a support set of its training subjects; the fold's predictions by clip id."""
    import torch

    from lightman.platform import megc as folds
    from lightman.platform.selection import auxiliary_pool, primary_pool

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    pool = primary_pool(cfg.data)
    held = folds.held_rows(pool, cell.protocol, cell.fold)
    if cfg.learner.name == "supervised":
        r = folds.supervised_fold(cfg, pool, held, cell.fold, megc)
    else:
        aux = auxiliary_pool(cfg.data) if cfg.episode.aux_shots else None
        r = folds.learner_fold(cfg, pool, aux, held, cell.fold, out, megc.shots, resume=resume)
    datasets = dict(zip(pool.clip_ids.tolist(), pool.datasets.tolist()))
    return {
        "cell": cell.id,
        "arm": cell.arm,
        "seed": cell.seed,
        "fold": cell.fold,
        "classes": list(pool.class_names),
        "datasets": [datasets[c] for c in r["clip_ids"]],
        **r,
        "resumed": resume,
    }


def run_cell(
    cell: Cell, index: str, index_hash: str, out: str, megc=None, grad_ratios: bool = False
) -> dict:
    """Train and test one cell (`run_training`, resuming its run from a checkpoint when one
    is there; a held-out fold: `run_fold_cell`) and keep its row; the row."""
    from lightman.platform.run_state import latest_checkpoint
    from lightman.platform.train import CHECKPOINTS_DIR, run_training

    cfg = _with_index(cell.config, index, out)
    run = storage.resolve(out).join(RUNS_DIR, f"{cell.id}-{cell.hash}")
    resume = latest_checkpoint(run.join(CHECKPOINTS_DIR)) is not None
    t0 = time.perf_counter()
    if cell.fold:
        figures = run_fold_cell(cell, cfg, run.uri, resume, megc)
        figures |= {"cell_seconds": round(time.perf_counter() - t0, 1), "run": run.uri}
        loc = kept.cell_location(storage.resolve(out).join(CELLS_DIR).uri, cell.hash)
        return kept.write_cell(loc, figures, cell.config, index_hash)
    ratios = {}
    if grad_ratios and cfg.learner.name == "lightman":
        import torch

        from lightman.models.net import build_model
        from lightman.platform.train import prepare

        data = prepare(cfg)
        torch.manual_seed(cfg.seed)  # the trainer's initialisation
        ratios["init"] = grad_ratio(cfg, build_model(cfg.model).train(), data)
    m = run_training(cfg, run.uri, resume=resume).metrics
    if ratios:
        from lightman.models.checkpoint import load_checkpoint

        best = run.join("best.pt")
        model, _, _ = load_checkpoint(io.BytesIO(storage.read_bytes(best)), best.uri)
        ratios["trained"] = grad_ratio(cfg, model.train(), data)
    figures = {
        "cell": cell.id,
        "arm": cell.arm,
        "seed": cell.seed,
        "figures": {k: 100 * m["test"][k][0] for k in METRICS},  # mean over test episodes, %
        "episode_ci": {k: 100 * m["test"][k][1] for k in METRICS},
        "test_episodes": m["test_episodes"],
        "test_subjects": m["test_subjects"],
        "best_iteration": m["best_iteration"],
        "val_acc": m["val_acc"],
        "train_seconds": m["train_seconds"],
        "seconds_per_step": (m["train_seconds"] or 0) / max(cfg.iterations, 1),
        "cell_seconds": round(time.perf_counter() - t0, 1),
        "resumed": resume,
        "run": run.uri,
        **({"grad_ratio": ratios} if ratios else {}),
    }
    loc = kept.cell_location(storage.resolve(out).join(CELLS_DIR).uri, cell.hash)
    return kept.write_cell(loc, figures, cell.config, index_hash)


def _trial(
    params: dict,
    *,
    cells: dict,
    index: str,
    index_hash: str,
    out: str,
    megc=None,
    grad_ratios: bool = False,
) -> None:
    """Tune's function trainable: run the cell `params["cell"]` (kept: read it back)."""
    import ray.tune

    from lightman.platform.runtime import setup

    setup()
    cell = cells[params["cell"]]
    loc = kept.cell_location(storage.resolve(out).join(CELLS_DIR).uri, cell.hash)
    row = kept.read_cell(loc, index_hash) or run_cell(
        cell, index, index_hash, out, megc, grad_ratios
    )
    ray.tune.report({"cell": cell.id, **row.get("figures", {})})


def run_grid(
    cells: list[Cell],
    index: str,
    index_hash: str,
    out: str,
    cpus: float,
    megc=None,
    grad_ratios: bool = False,
) -> list:
    """The pending cells as one Ray Tune grid (module docstring); Tune's errors, if any."""
    import ray
    import ray.tune

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    root = storage.resolve(out)
    started = not ray.is_initialized()
    if started:  # RAY_ADDRESS joins a cluster, else a local one
        ray.init(include_dashboard=False, configure_logging=False, log_to_driver=False)
    try:
        trainable = ray.tune.with_resources(
            ray.tune.with_parameters(
                _trial,
                cells={c.id: c for c in cells},
                index=index,
                index_hash=index_hash,
                out=root.uri,
                megc=megc,
                grad_ratios=grad_ratios,
            ),
            {"cpu": cpus},
        )
        tune_dir = root.join("ray")  # a path and a filesystem, as platform/tune.py does
        grid = ray.tune.Tuner(
            trainable,
            param_space={"cell": ray.tune.grid_search([c.id for c in cells])},
            run_config=ray.tune.RunConfig(
                name=f"cells-{time.strftime('%Y%m%d-%H%M%S')}",
                storage_path=tune_dir.path,
                storage_filesystem=tune_dir.fs if tune_dir.is_s3 else None,
                failure_config=ray.tune.FailureConfig(max_failures=2),
                verbose=0,
            ),
        ).fit()
        return list(grid.errors)
    finally:
        if started:
            ray.shutdown()


# --- the cost of a budget ---------------------------------------------------------------


def measure_arm(config: dict, index: str, steps: int = 2) -> dict:
    """Seconds per outer step and per evaluation episode of one cell's config, measured here
    (module docstring)."""
    import torch

    from lightman.models.learners import build_learner, outer_optimizer
    from lightman.models.net import build_model
    from lightman.platform.evaluate import evaluate_episodes
    from lightman.platform.loop import outer_step
    from lightman.platform.train import prepare
    from lightman.tasks.episodes import seeded_episodes

    cfg = _with_index(config, index)
    threads = torch.get_num_threads()
    torch.set_num_threads(max(cfg.threads, 1))
    try:
        data = prepare(cfg)
        torch.manual_seed(cfg.seed)
        model = build_model(cfg.model).train()
        learner = build_learner(cfg.learner)
        params, buffers = dict(model.named_parameters()), dict(model.named_buffers())
        optimizer = outer_optimizer(params.values(), cfg.learner)
        times = []
        for it in range(steps + 1):  # the first is a warm-up
            tasks = seeded_episodes(
                data.train, cfg.episode, cfg.meta_batch, seed=(cfg.seed, it + 1), aux_pool=data.aux
            )
            t0 = time.perf_counter()
            grads, _ = learner.meta_grads(model, params, buffers, list(tasks))
            outer_step(optimizer, params, grads, cfg.meta_batch)
            times.append(time.perf_counter() - t0)
        eps = seeded_episodes(data.val, cfg.episode, 2, seed=cfg.seed + 1, aux_pool=data.aux)
        t0 = time.perf_counter()
        evaluate_episodes(learner, model.eval(), params, buffers, eps)
        episode_s = (time.perf_counter() - t0) / 2
    finally:
        torch.set_num_threads(threads)
    return {"step_s": sum(times[1:]) / steps, "episode_s": episode_s}


def estimate(cells: list[Cell], index: str, cpus_per_cell: float) -> dict:
    """Expected seconds of each cell from its arm's measured speed (`measure_arm`, once per
    arm); {"arms": {arm: speeds}, "cells": {id: s}, "cpu_hours": Σ s × threads / 3600}."""
    arms: dict[str, dict] = {}
    per_cell = {}
    cpu_s = 0.0
    for cell in cells:
        if cell.arm not in arms:
            arms[cell.arm] = measure_arm(cell.config, index)
        speed, c = arms[cell.arm], cell.config
        validations = math.ceil(c["iterations"] / c["eval_every"])
        s = speed["step_s"] * c["iterations"] + speed["episode_s"] * (
            c["val_episodes"] * validations + c["test_episodes"]
        )
        per_cell[cell.id] = s
        cpu_s += s * max(c["threads"], cpus_per_cell, 1)
    return {"arms": arms, "cells": per_cell, "cpu_hours": cpu_s / 3600}


# --- the study --------------------------------------------------------------------------


@dataclass(frozen=True)
class ReproduceResult:
    out: str
    ran: list[str]  # the cells this call trained
    kept: list[str]  # the cells read back, finished before
    report: str  # report.md's URI ("" with plan_only)
    claims: list[dict]
    estimate: dict | None
    stages_ran: list[str] = field(default_factory=list)  # the stages this call ran
    stages_kept: list[str] = field(default_factory=list)  # the stages read back


def reproduce(
    study: str,
    index: str,
    out: str,
    budget: str = "quick",
    seed: int = 0,
    overrides: list[str] | tuple[str, ...] = (),
    plan_only: bool = False,
    echo: Callable[[str], None] = print,
) -> ReproduceResult:
    """Run `study` on `index` into `out` (module docstring); the report's claims."""
    from lightman.platform.index import read_manifest

    t_start = time.perf_counter()
    path = study_path(study)
    cfg = load_config(StudyConfig, path, overrides)
    index = storage.resolve(index).uri  # absolute: Tune's trials run in their own folders
    index_hash = read_manifest(index)["content_hash"]
    cells = build_cells(cfg, budget, index, seed)  # tuned arms untuned: a plan, checked
    root = storage.resolve(out)
    cells_dir = root.join(CELLS_DIR).uri
    for folder in (CELLS_DIR, PRETRAIN_DIR, TUNE_DIR):  # another index's: refused up front
        for row in kept.kept_cells(root.join(folder).uri):
            if row.get("index") != index_hash:
                what = row.get("cell") or row.get("stage", "?")
                raise kept.KeptRowError(
                    f"{root.uri} holds cell {what} ({row['_uri']}) measured on "
                    f"index {row.get('index')}; this index is {index_hash}: use another --out"
                )
    stages = [*pretrain_stages(cfg, budget, cells), *tune_stages(cfg, budget, index, seed)]
    stage_rows = kept_stages(stages, root.uri, index_hash)
    if stages:
        echo(
            f"[reproduce] {len(stages)} stage(s) before the cells, {len(stage_rows)} kept: "
            + ", ".join(st.id for st in stages)
        )
    stage_ran: list[str] = []
    if not plan_only:
        stage_ran = _run_stages(stages, stage_rows, index, index_hash, root.uri, echo)
        tuned = {st.name: stage_rows[st.id]["best_params"] for st in stages if st.kind == "tune"}
        if tuned:  # the tuned arms' cells: their best values over their configs
            cells = build_cells(cfg, budget, index, seed, tuned)
    done = {c.id: kept.read_cell(kept.cell_location(cells_dir, c.hash), index_hash) for c in cells}
    pending = [c for c in cells if done[c.id] is None]
    b = cfg.budget(budget)
    per = (
        f" x {len({c.fold for c in cells})} {cfg.protocol} folds"
        if cfg.protocol != "fewshot"
        else ""
    )
    echo(
        f"[reproduce] {cfg.name} ({budget}): {len(cfg.learners)} arms x {b.seeds} seeds{per} = "
        f"{len(cells)} cells, {len(cells) - len(pending)} kept, {len(pending)} to run; "
        f"index {index_hash}"
    )
    cost = None
    if budget == "full" or plan_only:
        cost = estimate(pending, index, cfg.cpus_per_cell)
        speeds = ", ".join(
            f"{a} {v['step_s']:.3g} s/step {v['episode_s']:.3g} s/episode"
            for a, v in cost["arms"].items()
        )
        echo(
            f"[reproduce] expected {cost['cpu_hours']:.2f} CPU hours for the {len(pending)} "
            f"cells to run (measured here: {speeds or 'nothing to run'}; data loading and "
            "start-up not counted)"
        )
    if plan_only:
        return ReproduceResult(root.uri, [], [c.id for c in cells if done[c.id]], "", [], cost)
    storage.make_dirs(root)
    if pending:
        megc = _megc(cfg, budget) if cfg.protocol != "fewshot" else None
        errors = run_grid(
            pending, index, index_hash, root.uri, cfg.cpus_per_cell, megc, cfg.grad_ratio
        )
        for e in errors:
            echo(f"[reproduce] a cell failed: {e}")
    rows = {c.id: kept.read_cell(kept.cell_location(cells_dir, c.hash), index_hash) for c in cells}
    missing = [c.id for c in cells if rows[c.id] is None]
    if missing:
        raise RuntimeError(
            f"{len(missing)} cell(s) did not finish: {missing}; the finished ones are kept in "
            f"{cells_dir}: run the same command again to run only these"
        )
    meta = {
        "study": cfg.name,
        "study_file": str(path),
        "budget": budget,
        "seeds": list(range(seed, seed + b.seeds)),
        "index": index_hash,
        "versions": versions(),
        "seconds": round(time.perf_counter() - t_start, 1),
        "ran": [c.id for c in pending],
        "overrides": list(overrides),
        "stages": {st.id: {"hash": st.hash, **stage_rows[st.id]} for st in stages},
        "stages_ran": stage_ran,
    }
    shown = cells
    if cfg.protocol != "fewshot":  # one unit per arm and seed: its folds' predictions pooled
        shown, rows = pool_folds(cells, rows)
    analysis = analyse(cfg, shown, rows, decisive=budget == "full")
    report = write_report(cfg, shown, rows, analysis, meta, root)
    echo(f"[reproduce] {len(cells)} cells in {meta['seconds']:.0f} s; report: {report}")
    for c in analysis["claims"]:
        echo(f"[reproduce] claim {c['contrast']}: {c['verdict']} ({c['reason']})")
    return ReproduceResult(
        root.uri,
        [c.id for c in pending],
        [c.id for c in cells if done[c.id]],
        report,
        analysis["claims"],
        cost,
        stage_ran,
        [st.id for st in stages if st.id not in stage_ran],
    )


def kept_stages(stages: list[Stage], out: str, index_hash: str) -> dict[str, dict]:
    """The stages kept under `out` (<out>/pretrain|tune/<hash>.json), by stage id."""
    rows = {}
    for st in stages:
        row = kept.read_cell(_stage_row(st, out), index_hash)
        if row is not None:
            rows[st.id] = row
    return rows


def _run_stages(
    stages: list[Stage], rows: dict, index: str, index_hash: str, out: str, echo
) -> list[str]:
    """Run the stages not kept (pre-trainings in this process, then each search as its own
    Ray Tune search), filling `rows`; the ids of those run."""
    import ray

    todo = [st for st in stages if st.id not in rows]
    started = False
    if any(st.kind == "tune" for st in todo) and not ray.is_initialized():
        # one Ray for every search (each would start and stop its own)
        ray.init(include_dashboard=False, configure_logging=False, log_to_driver=False)
        started = True
    try:
        for st in todo:
            echo(f"[reproduce] stage {st.id} ({st.hash}) ...")
            run = run_pretrain_stage if st.kind == "pretrain" else run_tune_stage
            rows[st.id] = run(st, index, index_hash, out)
    finally:
        if started:
            ray.shutdown()
    return [st.id for st in todo]


def pool_folds(cells: list[Cell], rows: dict) -> tuple[list[Cell], dict]:
    """Each (arm, seed)'s fold rows joined by clip id (every clip once: `pool_predictions`)
    and scored on the pooled counts (MEGC 2019's UF1 / UAR): one Cell per arm and seed (id
    arm-s<seed>) and its row, whose `figures` are the whole pool's scores in % and
    `groups` the scores of each dataset's clips."""
    import numpy as np

    from lightman.tasks.metrics import SCORES
    from lightman.tasks.splits import pool_predictions

    units: dict[tuple[str, int], list[Cell]] = {}
    for c in cells:
        units.setdefault((c.arm, c.seed), []).append(c)
    shown, out = [], {}
    for (arm, seed), members in units.items():
        fold_rows = [rows[c.id] for c in members]
        expected = {cid: y for r in fold_rows for cid, y in zip(r["clip_ids"], r["y_true"])}
        pooled = pool_predictions(
            [dict(zip(r["clip_ids"], zip(r["y_true"], r["y_pred"]))) for r in fold_rows],
            expected,
        )
        dataset_of = {c: d for r in fold_rows for c, d in zip(r["clip_ids"], r["datasets"])}
        datasets = np.array([dataset_of[c] for c in pooled.clip_ids])
        groups = {"all": np.ones(datasets.size, dtype=bool)}
        groups |= {d: datasets == d for d in sorted(set(datasets.tolist()))}
        scores = {
            g: {k: 100 * fn(pooled.y_true[m], pooled.y_pred[m]) for k, fn in SCORES.items()}
            for g, m in groups.items()
        }
        uid = f"{arm}-s{seed}"
        first = members[0]
        shown.append(Cell(uid, arm, seed, first.config, first.hash, "", first.protocol))
        out[uid] = {
            "figures": scores["all"],
            "groups": scores,
            "clips": {g: int(m.sum()) for g, m in groups.items()},
            "folds": len(members),
            "train_seconds": sum(r.get("train_seconds") or 0 for r in fold_rows),
            "cell_hashes": [c.hash for c in members],
        }
    return shown, out


def analyse(cfg: StudyConfig, cells: list[Cell], rows: dict, decisive: bool) -> dict:
    """Per arm the t interval of each metric across seeds, the family's paired contrasts
    with Holm's adjustment, and each claim's verdict (platform/stats.py)."""
    by = {a: {m: {} for m in cfg.metrics} for a in cfg.learners}
    for c in cells:
        for m in cfg.metrics:
            by[c.arm][m][c.seed] = rows[c.id]["figures"][m]
    arms = {
        a: {m: stats.t_interval(list(v.values()), cfg.confidence) for m, v in ms.items()}
        for a, ms in by.items()
    }
    family = stats.with_holm(
        [
            stats.paired(c.a, c.b, c.metric, by[c.a][c.metric], by[c.b][c.metric], cfg.confidence)
            for c in cfg.contrasts_named()
        ]
    )
    named = {c.name: c for c in family}
    alpha = 1 - cfg.confidence
    claims = []
    for claim in cfg.claims:
        c = named.get(claim.contrast)
        primary = claim.contrast == cfg.primary_contrast
        v = stats.verdict(c, claim.direction, claim.size, primary, decisive, alpha)
        claims.append(
            {
                "contrast": claim.contrast,
                "text": claim.text,
                "direction": claim.direction,
                "size": claim.size,
                "primary": primary,
                "ours": None if c is None else [c.interval.low, c.interval.mean, c.interval.high],
                "verdict": v.verdict,
                "reason": v.reason,
            }
        )
    return {"by_seed": by, "arms": arms, "contrasts": family, "claims": claims, "alpha": alpha}


# --- the report -------------------------------------------------------------------------


def _pm(iv: stats.Interval) -> str:
    return f"{iv.mean:.2f} ± {iv.half:.2f}" if math.isfinite(iv.half) else f"{iv.mean:.2f}"


def _p(p: float) -> str:
    return "-" if not math.isfinite(p) else f"{p:.3g}"


def _figures(cfg: StudyConfig, analysis: dict) -> dict[str, bytes]:
    """PNG figures: each arm's mean with its CI (paper's numbers as crosses), and the
    primary contrasts' paired differences with their CIs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = {}
    metric = cfg.contrast_metrics[0]
    arms = list(cfg.learners)
    ivs = [analysis["arms"][a][metric] for a in arms]
    fig, ax = plt.subplots(figsize=(1.2 * len(arms) + 2, 3.6))
    x = range(len(arms))
    halves = [iv.half if math.isfinite(iv.half) else 0 for iv in ivs]
    ax.bar(x, [iv.mean for iv in ivs], yerr=halves, capsize=4, color="#4c78a8", label="this run")
    published = [(i, cfg.paper.get(a, {}).get(metric)) for i, a in enumerate(arms)]
    published = [(i, v) for i, v in published if v is not None]
    if published:
        ax.plot(*zip(*published), "x", color="#e45756", ms=9, mew=2, label="paper")
    ax.set_xticks(list(x), arms, rotation=30, ha="right")
    ax.set_ylabel(f"{NAMES[metric]} (%)")
    ax.set_title(f"{cfg.name}: {NAMES[metric]}, mean ± {cfg.confidence:.0%} CI across seeds")
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    out[f"{metric}_per_arm.png"] = _png(fig)
    cs = [c for c in analysis["contrasts"] if c.metric == metric]
    fig, ax = plt.subplots(figsize=(6, 0.45 * len(cs) + 1.6))
    for i, c in enumerate(cs):
        half = c.interval.half if math.isfinite(c.interval.half) else 0
        ax.errorbar(c.interval.mean, i, xerr=half, fmt="o", capsize=4, color="#4c78a8")
    ax.axvline(0, color="grey", lw=1)
    ax.set_yticks(range(len(cs)), [f"{c.a} − {c.b}" for c in cs])
    ax.set_xlabel(f"paired difference of {NAMES[metric]} (points), {cfg.confidence:.0%} CI")
    ax.set_title("paired contrasts against the primary arm")
    fig.tight_layout()
    out[f"{metric}_contrasts.png"] = _png(fig)
    plt.close("all")
    return out


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def _tables(cfg: StudyConfig, cells: list[Cell], rows: dict, analysis: dict, meta: dict):
    """The report's sections as (heading, text paragraphs, table header, table rows)."""
    alpha = analysis["alpha"]
    sections = []
    seeds = meta["seeds"]
    head = ["arm", *[NAMES[m] for m in cfg.metrics], f"per-seed {NAMES[cfg.metrics[0]]}"]
    body = [
        [
            a + (" (primary)" if a == cfg.primary else ""),
            *[_pm(analysis["arms"][a][m]) for m in cfg.metrics],
            " ".join(f"{analysis['by_seed'][a][cfg.metrics[0]][s]:.1f}" for s in seeds),
        ]
        for a in cfg.learners
    ]
    if cfg.protocol == "fewshot":
        episodes = sorted({rows[c.id]["test_episodes"] for c in cells})
        what = (
            f"the mean over its {'/'.join(map(str, episodes))} test episodes on test "
            "subjects never seen in training or model selection"
        )
    else:
        unit = HELD_UNIT[cfg.protocol]
        folds = sorted({rows[c.id]["folds"] for c in cells})
        what = (
            f"scored once on the predictions of its {'/'.join(map(str, folds))} folds joined "
            f"by clip id (UF1 and UAR from the pooled counts, as MEGC 2019), each fold's "
            f"{unit} never seen in its training or model selection; the supervised arm trains "
            "as megc-loso trains, every other learner meta-trains and adapts on a support "
            "set of the fold's training subjects"
        )
    sections.append(
        (
            "Results",
            [
                f"Mean ± {cfg.confidence:.0%} Student t CI across {len(seeds)} seeds "
                f"({seeds[0]}..{seeds[-1]}), in %; each seed's figure is {what}."
            ],
            head,
            body,
        )
    )
    if cfg.protocol != "fewshot":
        groups = sorted({g for c in cells for g in rows[c.id]["groups"]} - {"all"})
        head = ["arm", "data", "clips", *[NAMES[m] for m in cfg.metrics]]
        body = []
        for a in cfg.learners:
            mine = [c for c in cells if c.arm == a]
            for g in ["all", *groups]:
                ivs = [
                    stats.t_interval(
                        [rows[c.id]["groups"][g][m] for c in mine if g in rows[c.id]["groups"]],
                        cfg.confidence,
                    )
                    for m in cfg.metrics
                ]
                body.append(
                    [a, g, str(rows[mine[0].id]["clips"].get(g, 0)), *[_pm(iv) for iv in ivs]]
                )
        sections.append(
            (
                "Per dataset",
                [
                    "Each dataset's clips scored from the same pooled predictions (mean ± "
                    f"{cfg.confidence:.0%} CI across seeds, in %); 'all' is the whole pool."
                ],
                head,
                body,
            )
        )
    sections += _stage_sections(cfg, cells, rows, meta)
    head = ["contrast", "mean difference (points)", "CI", "p (paired t)", "p (Holm)", "survives"]
    body = []
    for c in analysis["contrasts"]:
        iv = c.interval
        ci = f"[{iv.low:+.2f}, {iv.high:+.2f}]" if math.isfinite(iv.half) else "-"
        primary = c.name == cfg.primary_contrast
        body.append(
            [
                c.name + (" **(primary)**" if primary else ""),
                f"{iv.mean:+.2f}",
                ci,
                _p(c.p),
                _p(c.p_holm),
                "yes" if c.p_holm < alpha else "no",
            ]
        )
    survivors = [c.name for c in analysis["contrasts"] if c.p_holm < alpha]
    sections.append(
        (
            "Paired contrasts",
            [
                f"Primary contrast, named before the run: **{cfg.primary_contrast}**. Per seed "
                "A − B on the same test subjects and episodes; Holm's correction over the "
                f"family of {len(analysis['contrasts'])} contrasts at α = {alpha:.2g}. "
                f"Surviving Holm: {', '.join(survivors) or 'none'}."
            ],
            head,
            body,
        )
    )
    head = ["claim", "paper", "contrast", "this run (CI)", "verdict", "why"]
    body = [
        [
            c["text"] or c["contrast"],
            "-" if c["size"] is None else f"{c['size']:+.2f} ({c['direction']})",
            c["contrast"] + (" (primary)" if c["primary"] else ""),
            "-"
            if c["ours"] is None
            else f"{c['ours'][1]:+.2f} [{c['ours'][0]:+.2f}, {c['ours'][2]:+.2f}]",
            f"**{c['verdict']}**",
            c["reason"],
        ]
        for c in analysis["claims"]
    ]
    sections.append(
        (
            "The paper's claims",
            [
                "The rule (platform/stats.py): reproduced when the contrast's CI lies wholly "
                "on the paper's side of 0, secondary contrasts also surviving Holm, and, where "
                "the paper gives a size, the CI reaches it; not testable with fewer than 2 "
                "seeds or on the quick budget."
            ],
            head,
            body,
        )
    )
    if cfg.reference:
        shown = [m for m in METRICS if any(m in v for v in cfg.reference.values())]
        head = ["method", *[NAMES[m] for m in shown]]
        body = [
            [name, *["-" if v.get(m) is None else f"{v[m]:.2f}" for m in shown]]
            for name, v in cfg.reference.items()
        ]
        body += [
            [
                f"{a} (this run)",
                *[_pm(analysis["arms"][a][m]) if m in analysis["arms"][a] else "-" for m in shown],
            ]
            for a in cfg.learners
        ]
        sections.append(
            (
                "Beside the published reference",
                [
                    f"Published: {cfg.reference_source or 'see the study file'}. Side by side, "
                    "not one to one: this run's data, model and schedule are the study's."
                ],
                head,
                body,
            )
        )
    if cfg.paper:
        shown = sorted({m for v in cfg.paper.values() for m in v}, key=list(METRICS).index)
        head = [
            "arm",
            *[f"paper {NAMES[m]}" for m in shown],
            *[f"this run {NAMES[m]}" for m in shown],
        ]
        body = [
            [
                a,
                *[
                    "-" if cfg.paper.get(a, {}).get(m) is None else f"{cfg.paper[a][m]:.2f}"
                    for m in shown
                ],
                *[_pm(analysis["arms"][a][m]) if m in analysis["arms"][a] else "-" for m in shown],
            ]
            for a in cfg.learners
        ]
        sections.append(
            (
                "Beside the paper's published numbers",
                [
                    f"Published: {cfg.paper_source or 'the paper'}. This run's data, model and "
                    "schedule are the study's, not the paper's: the numbers are side by side, "
                    "not comparable one to one."
                ],
                head,
                body,
            )
        )
    return sections


def _stage_sections(cfg: StudyConfig, cells: list[Cell], rows: dict, meta: dict) -> list:
    """The report's sections on the tuning, the pre-training stages and the gradient ratios."""
    sections = []
    stages = meta.get("stages", {})
    tuned = {r["arm"]: r for r in stages.values() if r["stage"].startswith("tune-")}
    if tuned:
        head = [
            "arm",
            "space",
            "searched dimensions",
            "trials",
            "best validation (step)",
            "best values",
        ]
        body = []
        for a in cfg.learners:
            r = tuned.get(a)
            if r is None:
                body.append([a, "not tuned: the study's config", "0", "0", "-", "-"])
                continue
            values = ", ".join(
                f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                for k, v in r["best_params"].items()
            )
            body.append(
                [
                    a,
                    r["space_file"],
                    f"{len(r['dimensions'])}: {', '.join(r['dimensions'])}",
                    str(r["trials"]),
                    f"{r['metric']} {100 * r['best_value']:.1f} (step {r['best_step']})",
                    values,
                ]
            )
        dims = {a: len(r["dimensions"]) for a, r in tuned.items()}
        trials = {r["trials"] for r in tuned.values()}
        same = (
            "the same number of searched dimensions"
            if len(set(dims.values())) == 1
            else (
                "different numbers of searched dimensions ("
                + ", ".join(f"{a} {n}" for a, n in dims.items())
                + ")"
            )
        )
        subjects = next(iter(tuned.values()))["val_subjects"]
        sections.append(
            (
                "Tuning",
                [
                    f"Each tuned arm was searched (`lightman tune`'s code: TPE, ASHA on the "
                    f"validation metric) with a budget of {'/'.join(map(str, sorted(trials)))} "
                    f"trials and {same}, scored on the {len(subjects)} validation subjects of "
                    f"the split drawn by seed {meta['seeds'][0]} ({', '.join(subjects)}); no "
                    "trial saw a test subject. Every cell uses that split (data.split_seed), "
                    "its seed drawing the initialisation and episodes; a tuned arm's cells run "
                    "its best values."
                ],
                head,
                body,
            )
        )
    pre = {k: r for k, r in stages.items() if r["stage"].startswith("pretrain-")}
    if pre:
        head = [
            "stage",
            "config hash",
            "loss first → last",
            "held-out class acc random → pretrained",
            "seconds",
            "used by",
        ]
        body = []
        for sid, r in pre.items():
            users = sorted(
                {c.arm for c in cells if c.pretrain and sid == f"pretrain-{c.pretrain}-s{c.seed}"}
            )
            chk = r.get("check", {})
            probe = " → ".join(
                f"{chk[k].get('class_acc', float('nan')):.2f}"
                if isinstance(chk.get(k), dict)
                else "-"
                for k in ("random", "pretrained")
            )
            body.append(
                [
                    sid,
                    f"`{r['hash']}`",
                    f"{r['loss']['first']:.4g} → {r['loss']['last']:.4g}",
                    probe,
                    f"{r['train_seconds']:.0f}",
                    ", ".join(users),
                ]
            )
        sections.append(
            (
                "Pre-training",
                [
                    "MA2MI pre-training stages (`lightman pretrain`'s code on the index's macro "
                    "clips), one per stage and seed, each run once and kept under its config "
                    "hash; the arms listed start from its encoder (model.init)."
                ],
                head,
                body,
            )
        )
    ratio = [c for c in cells if "grad_ratio" in rows.get(c.id, {})]
    if ratio:
        head = ["arm", "ratio init", "ratio trained", "L_aux init", "L_aux trained"]
        body = []
        for a in cfg.learners:
            mine = [rows[c.id]["grad_ratio"] for c in ratio if c.arm == a]
            if not mine:
                continue
            cols = [
                f"{sum(m[w][k] for m in mine) / len(mine):.3g}"
                for k in ("grad_ratio", "aux_loss")
                for w in ("init", "trained")
            ]
            body.append([a, cols[0], cols[1], cols[2], cols[3]])
        sections.append(
            (
                "Gradient ratio",
                [
                    "‖∇θ λ2·L_aux‖ / ‖∇θ λ1·CE‖ and L_aux of the first inner step, at "
                    f"initialisation and at the trained weights: the mean over {RATIO_EPISODES} "
                    "training episodes, then over seeds."
                ],
                head,
                body,
            )
        )
    return sections


def _md_table(head: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(v).replace("|", "\\|") for v in r) + " |" for r in body]
    return "\n".join(lines)


def _html_text(text: str) -> str:
    out = html.escape(text)
    parts = out.split("**")
    return "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(parts))


def _html_table(head: list[str], body: list[list[str]]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    trs = "".join(
        "<tr>" + "".join(f"<td>{_html_text(str(v))}</td>" for v in r) + "</tr>" for r in body
    )
    return f"<table><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>"


CSS = (
    "body{font-family:sans-serif;max-width:70em;margin:2em auto;padding:0 1em;color:#222}"
    "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.3em .6em;"
    "text-align:left}th{background:#f3f3f3}pre{background:#f6f6f6;padding:1em;overflow:auto}"
    ".warn{background:#fff4ce;padding:.6em 1em;border-left:4px solid #e0a800}img{max-width:100%}"
)


def write_report(
    cfg: StudyConfig, cells: list[Cell], rows: dict, analysis: dict, meta: dict, root
) -> str:
    """report.md, report.html (self-contained), figures/*.png and study.json under `root`."""
    figures = _figures(cfg, analysis)
    for name, png in figures.items():
        storage.write_bytes(root.join("figures", name), png)
    sections = _tables(cfg, cells, rows, analysis, meta)
    title = f"{cfg.name}: {cfg.title}" if cfg.title else cfg.name
    warn = (
        "Budget quick: a smoke run of the machinery (few seeds, few steps, few episodes). "
        "It decides nothing: every claim is marked not testable; run --budget full."
        if meta["budget"] != "full"
        else ""
    )
    provenance = [
        f"Index content hash: `{meta['index']}`",
        f"Study: `{meta['study_file']}`, budget {meta['budget']}, seeds {meta['seeds']}"
        + (f", overrides {meta['overrides']}" if meta["overrides"] else ""),
        f"Cells: {len(cells)} ({len(meta['ran'])} run by this call, the rest kept), "
        f"{meta['seconds']:.0f} s for this call",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()),
    ]
    configs = {}
    for c in cells:
        if c.arm not in configs:
            seedless = {k: v for k, v in c.config.items() if k != "seed"}
            configs[c.arm] = yaml.safe_dump(seedless, sort_keys=False)
    hashes = ", ".join(f"{c.id} `{c.hash}`" for c in cells)
    md = [f"# {title}", ""]
    if warn:
        md += [f"> **{warn}**", ""]
    for heading, paragraphs, head, body in sections:
        md += [f"## {heading}", "", *paragraphs, "", _md_table(head, body), ""]
    md += ["## Figures", ""]
    md += [f"![{n}](figures/{n})" for n in figures] + [""]
    md += ["## Provenance", "", *[f"- {p}" for p in provenance], ""]
    md += [f"Cells and their config hashes (kept in `cells/<hash>.json`): {hashes}", ""]
    md += [
        "## The exact configs",
        "",
        "Each arm's TrainConfig (every seed the same but `seed`; `data.index` is the index above):",
        "",
    ]
    for arm, text in configs.items():
        md += [f"### {arm}", "", "```yaml", text.rstrip(), "```", ""]
    storage.write_text(root.join("report.md"), "\n".join(md))

    h = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    if warn:
        h.append(f"<p class='warn'><b>{html.escape(warn)}</b></p>")
    for heading, paragraphs, head, body in sections:
        h.append(f"<h2>{html.escape(heading)}</h2>")
        h += [f"<p>{_html_text(p)}</p>" for p in paragraphs]
        h.append(_html_table(head, body))
    h.append("<h2>Figures</h2>")
    for name, png in figures.items():
        data = base64.b64encode(png).decode()
        h.append(f"<p><img class='figure' alt='{name}' src='data:image/png;base64,{data}'></p>")
    h.append("<h2>Provenance</h2><ul>")
    h += [f"<li>{html.escape(p)}</li>" for p in provenance]
    h.append(f"</ul><p>Cells and their config hashes: {html.escape(hashes)}</p>")
    h.append("<h2>The exact configs</h2>")
    for arm, text in configs.items():
        h.append(f"<h3>{html.escape(arm)}</h3><pre>{html.escape(text)}</pre>")
    h.append("</body></html>")
    storage.write_text(root.join("report.html"), "\n".join(h))

    record = {
        **meta,
        "study_config": to_dict(cfg),
        "cells": [dataclasses.asdict(c) for c in cells],
        "figures": {c.id: rows[c.id]["figures"] for c in cells},
        "arms": {
            a: {m: dataclasses.asdict(iv) for m, iv in ms.items()}
            for a, ms in analysis["arms"].items()
        },
        "contrasts": [dataclasses.asdict(c) for c in analysis["contrasts"]],
        "claims": analysis["claims"],
    }
    storage.write_text(root.join("study.json"), json.dumps(record, indent=1, default=str))
    return root.join("report.md").uri

"""Meta-training: one explicit loop (docs/architecture.md).

sample a meta-batch of primary episodes (+ auxiliary macro clips) → learner.meta_grads
(sum over tasks) → [all-reduce: the distributed trainer wraps `outer_step`] → divide by
the global task count → Adam step → log → evaluate on validation subjects → keep the
best checkpoint by validation accuracy → final evaluation on test subjects.

Model selection only ever sees validation subjects; test subjects are touched once,
after training, by the checkpoint that validation chose.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lightman.models.checkpoint import load_checkpoint, save_checkpoint
from lightman.models.learners import LearnerConfig, build_learner
from lightman.models.net import ModelConfig, build_model
from lightman.models.provenance import to_dict, versions
from lightman.platform.evaluate import evaluate_episodes, format_table, write_results
from lightman.platform.selection import DataSelection, auxiliary_pool, primary_pool
from lightman.tasks.episodes import EpisodeConfig, EpisodeSampler, fixed_episodes
from lightman.tasks.splits import episode_ready_split, split_pools


@dataclass(frozen=True)
class TrainConfig:
    """A meta-training run; every field is settable from YAML or key=value."""

    seed: int = 0  # seeds episodes, splits and initialisation
    data: DataSelection = field(default_factory=DataSelection)
    episode: EpisodeConfig = field(default_factory=EpisodeConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    meta_batch: int = 4  # tasks per outer step (global, over all workers)
    iterations: int = 300  # outer steps
    eval_every: int = 50  # validate every N outer steps
    val_episodes: int = 100  # fixed validation episodes (same for every learner)
    test_episodes: int = 600  # fixed test episodes (paper: mean ± 95% CI over >= 600)
    threads: int = 0  # torch CPU threads (0: torch's default)

    def __post_init__(self) -> None:
        if self.model.ways != self.episode.ways:
            raise ValueError(f"model.ways ({self.model.ways}) must equal episode.ways ({self.episode.ways})")
        if self.meta_batch < 1 or self.iterations < 0 or self.eval_every < 1:
            raise ValueError("meta_batch >= 1, iterations >= 0 and eval_every >= 1 are required")


@dataclass(frozen=True)
class TrainResult:
    out: str
    metrics: dict
    table: str


def outer_step(optimizer: torch.optim.Optimizer, params: dict[str, torch.Tensor],
               grad_sums: dict[str, torch.Tensor], total_tasks: int) -> None:
    """θ ← Adam(θ, Σ_i ∇θ L_i / T): the paper's outer update (Eq. 4, second level)."""
    for name, p in params.items():
        p.grad = grad_sums[name] / total_tasks
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def run_training(cfg: TrainConfig, out: str | Path) -> TrainResult:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)

    pool = primary_pool(cfg.data)
    aux_pool = auxiliary_pool(cfg.data)
    split, split_attempt = episode_ready_split(
        pool, eval_fraction=cfg.data.test_fraction, val_fraction=cfg.data.val_fraction, seed=cfg.seed,
        ways=cfg.episode.ways, min_clips=cfg.episode.shots + cfg.episode.query)
    train_pool, val_pool, test_pool = split_pools(pool, split)

    sampler = EpisodeSampler(train_pool, cfg.episode, seed=cfg.seed, aux_pool=aux_pool)
    val_eps = fixed_episodes(val_pool, cfg.episode, cfg.val_episodes, seed=cfg.seed + 1, aux_pool=aux_pool)

    model = build_model(cfg.model)
    learner = build_learner(cfg.learner)
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    optimizer = torch.optim.Adam(params.values(), lr=cfg.learner.outer_lr, weight_decay=cfg.learner.weight_decay)
    meta = {"config": to_dict(cfg), "versions": versions(), "split": dataclasses.asdict(split),
            "split_attempt": split_attempt}

    best_acc, best_it = -1.0, -1
    log = (out / "metrics.jsonl").open("w")
    start = time.perf_counter()
    for it in range(1, cfg.iterations + 1):
        model.train()
        tasks = sampler.sample_batch(cfg.meta_batch)
        grad_sums, stats = learner.meta_grads(model, params, buffers, tasks)
        outer_step(optimizer, params, grad_sums, len(tasks))
        record = {"iteration": it, "seconds": round(time.perf_counter() - start, 2),
                  **{k: v / max(stats.get("tasks", 1), 1) for k, v in stats.items() if k != "tasks"}}
        if it % cfg.eval_every == 0 or it == cfg.iterations:
            val = evaluate_episodes(learner, model, params, buffers, val_eps)
            record["val_acc"] = val["acc"][0]
            if val["acc"][0] > best_acc:
                best_acc, best_it = val["acc"][0], it
                save_checkpoint(out / "best.pt", model, cfg.model,
                                {**meta, "learner": to_dict(cfg.learner), "iteration": it, "val": val})
        log.write(json.dumps(record) + "\n")
        log.flush()
    log.close()
    train_seconds = time.perf_counter() - start
    if best_it < 0:  # iterations == 0: the untrained initialisation is the model
        save_checkpoint(out / "best.pt", model, cfg.model, {**meta, "learner": to_dict(cfg.learner), "iteration": 0})

    best_model, _, _ = load_checkpoint(out / "best.pt")
    test_eps = fixed_episodes(test_pool, cfg.episode, cfg.test_episodes, seed=cfg.seed + 2, aux_pool=aux_pool)
    test = evaluate_episodes(learner, best_model, dict(best_model.named_parameters()),
                             dict(best_model.named_buffers()), test_eps)
    metrics = {
        "learner": cfg.learner.name, "ways": cfg.episode.ways, "shots": cfg.episode.shots,
        "bn_mode": cfg.model.bn_mode, "best_iteration": best_it, "val_acc": best_acc,
        "train_seconds": round(train_seconds, 1), "test": test, "test_episodes": cfg.test_episodes,
        "test_subjects": list(split.test),
    }
    write_results(out, {**meta, "metrics": metrics})
    return TrainResult(str(out), metrics, format_table([metrics]))

"""evaluate_episodes pools UF1 / UAR over the clips' real classes, not over way labels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from lightman.platform.evaluate import evaluate_episodes
from lightman.tasks.episodes import Episode
from lightman.tasks.metrics import uar, uf1


class Fixed:
    """A learner stand-in whose query logits are given per episode."""

    def __init__(self, logits: list[torch.Tensor]):
        self.logits = iter(logits)

    def predict(self, model, params, buffers, task):
        return next(self.logits)


def episode(query_y: list[int], classes: tuple[int, ...]) -> Episode:
    n = len(query_y)
    clips = torch.zeros((n, 1, 1, 2, 2))
    return Episode(
        clips,
        torch.tensor(query_y),
        clips,
        torch.tensor(query_y),
        None,
        None,
        classes,
        tuple(f"s{i}" for i in range(n)),
        tuple(f"q{i}" for i in range(n)),
    )


def test_pooled_metrics_count_global_classes():
    # Two 2-way episodes over the classes 0, 1, 2: way 0 is class 2 in the first, class 0 in
    # the second. The model always predicts way 0.
    eps = [episode([0, 1, 1], (2, 1)), episode([0, 0, 1], (0, 2))]
    logits = [torch.tensor([[1.0, 0.0]] * 3) for _ in eps]
    got = evaluate_episodes(Fixed(logits), nn.Identity(), {}, {}, eps)
    true = np.array([2, 1, 1, 0, 0, 2])  # the clips' real classes
    pred = np.array([2, 2, 2, 0, 0, 0])
    assert got["uf1_pooled"][0] == pytest.approx(uf1(true, pred))
    assert got["uar_pooled"][0] == pytest.approx(uar(true, pred))
    ways = np.array([0, 1, 1, 0, 0, 1])  # what pooling over way labels would have counted
    assert got["uf1_pooled"][0] == pytest.approx(0.4)  # over ways it would be (2/3 + 0) / 2
    assert uf1(ways, np.zeros(6, dtype=np.int64)) == pytest.approx(1 / 3)
    assert got["acc"][0] == pytest.approx((1 / 3 + 2 / 3) / 2)

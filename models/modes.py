"""Train/eval mode as a scope instead of hidden state a helper leaves behind."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """`model` in eval mode inside the block; afterwards (also on an error) every submodule
    is back in the mode it had, so a caller in training mode stays in training mode and a
    caller in eval mode stays in eval mode, without having to know what the helper did."""
    modes = [(m, m.training) for m in model.modules()]  # per module: a caller may mix modes
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training  # this module only; `train(mode)` would recurse

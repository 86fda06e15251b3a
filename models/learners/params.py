"""Parameters as a dict of tensors, the currency of every learner function."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

Params = dict[str, Tensor]  # θ: parameter name -> tensor


def trainable(params: Params, names: Sequence[str] | None = None) -> Params:
    """The same values as fresh leaves (detached: storage shared, nothing copied) that
    require grad on `names` (all if None); the caller's tensors are never touched."""
    return {n: p.detach().requires_grad_(names is None or n in names) for n, p in params.items()}

"""A guard for closed-form backward passes that are not themselves differentiable.

Lightman's kernels (batchnorm.py, maxpool.py, input_conv.py) write the second derivative
by hand, as meta-learning needs it. `torch.autograd.function.once_differentiable` is
meant to make a third derivative raise, but in PyTorch 2.13 a create_graph backward
through it can return zeros instead; `last_derivative` raises at once.
"""

from __future__ import annotations

import functools

import torch


def last_derivative(backward):
    """Wrap a custom Function's `backward(ctx, *grads)` so that it runs without a graph and
    refuses to be differentiated (create_graph=True through it, a third derivative)."""

    @functools.wraps(backward)
    def wrapper(ctx, *grads):
        if torch.is_grad_enabled():
            raise RuntimeError(
                f"{type(ctx).__name__}: Lightman's closed-form second derivative cannot be "
                "differentiated again (a third derivative, or create_graph=True through a "
                "second-order backward)"
            )
        return backward(ctx, *grads)

    return wrapper

"""Lightman's second-order kernels (batchnorm.py, maxpool.py, input_conv.py) against
PyTorch's own layers: the same values, the same first and second derivatives (float64,
and finite differences through gradcheck/gradgradcheck), and smaller autograd graphs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lightman.models.batchnorm import batch_norm_max_pool, batch_norm_train
from lightman.models.graph_memory import SavedBytes
from lightman.models.input_conv import input_conv
from lightman.models.maxpool import max_pool2x2

f64 = torch.float64


def rand(*shape, seed=0, grad=True):
    return torch.randn(
        *shape, dtype=f64, generator=torch.Generator().manual_seed(seed)
    ).requires_grad_(grad)


def torch_bn(x, w, b):
    return F.batch_norm(x, None, None, w, b, training=True)


def ours_bn(x, w, b):
    return batch_norm_train(x, w, b, None, None, 0.1, 1e-5)


def torch_bn_pool(x, w, b):
    return F.max_pool2d(torch_bn(x, w, b), 2)


def ours_bn_pool(x, w, b):
    return batch_norm_max_pool(x, w, b, None, None, 0.1, 1e-5)


def second_order(fn, inputs, seed=1):
    """∇ of ⟨∇ ⟨fn(inputs)², r⟩, s⟩ for fixed random r, s: a second derivative in every
    direction the meta-gradient uses (through the gradient's values and its graph)."""
    out = fn(*inputs)
    r = rand(*out.shape, seed=seed, grad=False)
    first = torch.autograd.grad((out * out * r).sum(), inputs, create_graph=True)
    dot = sum(
        (g * rand(*g.shape, seed=seed + 1 + i, grad=False)).sum() for i, g in enumerate(first)
    )
    return torch.autograd.grad(dot, inputs, allow_unused=True, materialize_grads=True)


@pytest.mark.parametrize("ours,reference", [(ours_bn, torch_bn), (ours_bn_pool, torch_bn_pool)])
@pytest.mark.parametrize("shape", [(4, 3, 6, 6), (2, 2, 7, 5)])
def test_batch_norm_matches_pytorch_to_second_order(ours, reference, shape):
    x, w, b = rand(*shape), rand(shape[1], seed=2) + 1, rand(shape[1], seed=3)
    assert torch.allclose(ours(x, w, b), reference(x, w, b), atol=1e-12)
    for got, want in zip(second_order(ours, (x, w, b)), second_order(reference, (x, w, b))):
        assert torch.allclose(got, want, atol=1e-10), (got - want).abs().max()
    assert torch.autograd.gradcheck(ours, (x, w, b))
    assert torch.autograd.gradgradcheck(ours, (x, w, b))


def test_batch_norm_updates_running_statistics_like_pytorch():
    x = rand(5, 3, 4, 4, grad=False) * 2 + 1
    w, b = torch.ones(3, dtype=f64), torch.zeros(3, dtype=f64)
    mine = (torch.zeros(3, dtype=f64), torch.ones(3, dtype=f64))
    theirs = (torch.zeros(3, dtype=f64), torch.ones(3, dtype=f64))
    batch_norm_max_pool(x, w, b, *mine, 0.1, 1e-5)
    F.batch_norm(x, *theirs, w, b, training=True, momentum=0.1)
    assert torch.allclose(mine[0], theirs[0]) and torch.allclose(mine[1], theirs[1])


@pytest.mark.parametrize("shape", [(2, 3, 8, 8), (1, 2, 7, 9)])
def test_max_pool_matches_pytorch_to_second_order(shape):
    x = rand(*shape)
    assert torch.equal(max_pool2x2(x), F.max_pool2d(x, 2))
    for got, want in zip(
        second_order(max_pool2x2, (x,)), second_order(lambda t: F.max_pool2d(t, 2), (x,))
    ):
        assert torch.allclose(got, want, atol=1e-12)
    assert torch.autograd.gradgradcheck(max_pool2x2, (x,))


def test_input_conv_matches_pytorch_to_second_order():
    x, w = rand(2, 3, 6, 5, grad=False), rand(4, 3, 3, 3, seed=5)
    assert torch.allclose(input_conv(x, w, 1), F.conv2d(x, w, padding=1), atol=1e-12)
    got = second_order(lambda w_: input_conv(x, w_, 1), (w,))
    want = second_order(lambda w_: F.conv2d(x, w_, padding=1), (w,))
    assert torch.allclose(got[0], want[0], atol=1e-10)
    assert torch.autograd.gradgradcheck(lambda w_: input_conv(x, w_, 1), (w,))
    with pytest.raises(ValueError, match="need no gradient"):
        input_conv(x.requires_grad_(), w, 1)


def test_a_third_derivative_is_refused_not_wrong():
    x, w, b = rand(3, 2, 4, 4), rand(2, seed=2), rand(2, seed=3)
    (g,) = torch.autograd.grad(ours_bn(x, w, b).pow(3).sum(), (x,), create_graph=True)
    torch.autograd.grad((g * g).sum(), (x,))  # the second derivative: fine
    (g,) = torch.autograd.grad(ours_bn(x, w, b).pow(3).sum(), (x,), create_graph=True)
    with pytest.raises(RuntimeError, match="cannot be differentiated again"):
        torch.autograd.grad((g * g).sum(), (x,), create_graph=True)


def saved_bytes_of_second_order_graph(fn, x, w, b) -> int:
    """Bytes autograd keeps for the second-order graph of ⟨fn(x), r⟩'s gradient (forward
    and create_graph backward both alive, as in a meta-step until its outer gradient)."""
    counter = SavedBytes()
    with torch.autograd.graph.saved_tensors_hooks(counter.pack, counter.unpack):
        out = fn(x, w, b)
        grads = torch.autograd.grad(
            (out * rand(*out.shape, seed=7, grad=False)).sum(), (x, w, b), create_graph=True
        )
        held = counter.now
    del grads, out
    return held


def test_norm_and_pool_keep_a_smaller_second_order_graph_than_pytorch_layers():
    x = rand(8, 16, 32, 32).float().detach().requires_grad_()
    w, b = torch.ones(16, requires_grad=True), torch.zeros(16, requires_grad=True)
    ours = saved_bytes_of_second_order_graph(ours_bn_pool, x, w, b)
    theirs = saved_bytes_of_second_order_graph(
        lambda *a: F.max_pool2d(F.relu(torch_bn(*a)), 2), x, w, b
    )
    full = x.numel() * x.element_size()
    # ours: x, the pooled gradient (1/4) and int32 indices (1/4); PyTorch's layers: x, the
    # norm's output, the ReLU's output, int64 indices (1/2) and the full gradient at the norm
    assert ours <= 1.6 * full and theirs >= 3.5 * full, (ours / full, theirs / full)

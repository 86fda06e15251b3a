"""The meta-learners' gradients against independent computations, in float64.

References here are written from the definitions (docs/architecture.md, "LightmanNet meta-step"):
a plain per-task loop with torch.autograd.grad(create_graph=True), central finite
differences of the outer loss, FOMAML's definition, and Reptile's plain SGD loop with
torch.optim.SGD on a copy of the model.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from lightman.models import backbones, norm
from lightman.models.graph_memory import SavedBytes
from lightman.models.learners import LearnerConfig, build_learner, learner_config
from lightman.models.learners.anil import head_objective
from lightman.models.learners.functional import inner_loop
from lightman.models.learners.lightman import aux_loss_fn, dual_branch_objective
from lightman.models.learners.params import trainable
from lightman.models.learners.passes import split_grads, split_hvp
from lightman.models.net import build_model

DT = torch.float64


@dataclass(frozen=True)
class Task:
    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    query_y: Tensor
    aux_x: Tensor | None
    aux_y: Tensor | None = None  # (A,) way of each macro clip, -1 unpaired
    classes: tuple[int, ...] = ()


def make_tasks(
    n: int,
    shape: tuple[int, ...],
    ways: int,
    shots: int = 2,
    query: int = 2,
    aux: int = 4,
    seed: int = 0,
) -> list[Task]:
    g = torch.Generator().manual_seed(seed)

    def clips(k: int) -> Tensor:
        return torch.rand((k, *shape), generator=g, dtype=DT)

    labels = torch.arange(ways)
    aux_y = torch.tensor([j if j < ways else -1 for j in range(aux)])  # ways 0..N-1, then unpaired
    return [
        Task(
            clips(ways * shots),
            labels.repeat(shots),
            clips(ways * query),
            labels.repeat(query),
            clips(aux),
            aux_y,
            tuple(range(ways)),
        )
        for _ in range(n)
    ]


# ---- a hand-written smooth model: pure function + the same math as an nn.Module ----------


def ref_forward(p: dict[str, Tensor], x: Tensor, head: str):
    """Mean over (H, W), flatten (M, C), tanh layer -> embedding; linear heads."""
    z = torch.tanh(x.mean(dim=(3, 4)).flatten(1) @ p["body.weight"].T + p["body.bias"])  # (B, D)
    logits = z @ p["pri.weight"].T + p["pri.bias"]
    feats = z @ p["aux.weight"].T + p["aux.bias"]
    return {"pri": logits, "aux": feats, "both": (logits, feats), "embed": z}[head]


class SmoothNet(nn.Module):
    """ref_forward's math with nn.Linear layers, behind LightmanNet's forward signature."""

    def __init__(
        self, frames: int = 3, channels: int = 2, dim: int = 5, ways: int = 3, aux_dim: int = 4
    ):
        super().__init__()
        self.body = nn.Linear(frames * channels, dim)
        self.pri = nn.Linear(dim, ways)
        self.aux = nn.Linear(dim, aux_dim)

    def forward(self, x: Tensor, head: str = "pri", update_stats: bool = False):
        z = torch.tanh(self.body(x.mean(dim=(3, 4)).flatten(1)))
        if head == "embed":
            return z
        if head == "pri":
            return self.pri(z)
        if head == "aux":
            return self.aux(z)
        return self.pri(z), self.aux(z)

    def head_param_names(self) -> tuple[str, ...]:
        return ("pri.weight", "pri.bias")


def gaussian(a: Tensor, b: Tensor, sigma: float) -> Tensor:
    return torch.exp(-((a[:, None, :] - b[None, :, :]) ** 2).sum(-1) / (2 * sigma**2))


def ref_aux(kind: str, x: Tensor, y: Tensor, sigma: float) -> Tensor:
    """Squared MMD (biased / unbiased) and paper Eq. 3, from their textbook definitions."""
    kxx, kyy, kxy = gaussian(x, x, sigma), gaussian(y, y, sigma), gaussian(x, y, sigma)
    n, m = len(x), len(y)
    if kind == "mmd":
        return kxx.sum() / n**2 + kyy.sum() / m**2 - 2 * kxy.sum() / (n * m)
    if kind == "mmd_unbiased":
        return (
            (kxx.sum() - kxx.trace()) / (n * (n - 1))
            + (kyy.sum() - kyy.trace()) / (m * (m - 1))
            - 2 * kxy.sum() / (n * m)
        )
    return kxy.sum() / (n * m)


def ref_sigmas(cfg: LearnerConfig, micro: Tensor, macro: Tensor) -> tuple[float, ...]:
    """σ as configured: sigma itself, or sigma × the median of the sorted pairwise distances of
    the pooled features (the lower middle one, as torch.median), as constants."""
    if cfg.bandwidth == "fixed":
        return cfg.sigma
    z = torch.cat((micro, macro)).detach()
    n = len(z)
    dists = sorted(float(torch.dist(z[i], z[j])) for i in range(n) for j in range(i + 1, n))
    return tuple(c * dists[(len(dists) - 1) // 2] for c in cfg.sigma)


def ref_aux_loss(
    cfg: LearnerConfig, micro: Tensor, macro: Tensor, y: Tensor, aux_y: Tensor | None
) -> Tensor:
    """L_aux as configured, by its definition: the kernel loss summed over bandwidths (MMD is
    linear in the kernel), over the whole sets or as the mean over the paired ways."""
    sigmas = ref_sigmas(cfg, micro, macro)

    def kernel(a, b):
        return sum(ref_aux(cfg.aux_loss, a, b, s) for s in sigmas)

    if cfg.aux_align == "marginal":
        return kernel(micro, macro)
    ways = [j for j in range(int(y.max()) + 1) if (aux_y == j).any() and (y == j).any()]
    return sum(kernel(micro[y == j], macro[aux_y == j]) for j in ways) / len(ways)


def ref_inner_loss(fwd, p: dict[str, Tensor], t: Task, cfg: LearnerConfig) -> Tensor:
    """λ1 CE + λ2 L_aux on the support set; aux_norm=joint runs one batch of support + macro
    clips and splits its outputs after the support rows; aux_joint takes the CE's logits
    from the support clips alone and L_aux's features from the joint batch."""
    n = len(t.support_x)
    if cfg.aux_norm in ("joint", "aux_joint"):
        both = torch.cat((t.support_x, t.aux_x))
        logits = fwd(p, both, "pri")[:n] if cfg.aux_norm == "joint" else fwd(p, t.support_x, "pri")
        feats = fwd(p, both, "aux")
        micro, macro = feats[:n], feats[n:]
    else:
        logits, micro = fwd(p, t.support_x, "pri"), fwd(p, t.support_x, "aux")
        macro = fwd(p, t.aux_x, "aux")
    ce = F.cross_entropy(logits, t.support_y)
    aux = ref_aux_loss(cfg, micro, macro, t.support_y, t.aux_y)
    return cfg.lambda_pri * ce + (1 - cfg.lambda_pri) * aux


def ref_meta_grad(
    fwd, params: dict[str, Tensor], tasks: list[Task], cfg: LearnerConfig
) -> dict[str, Tensor]:
    """Σ_i ∇θ CE(query_i; θ_i), θ_i by inner_steps steps on λ1 CE + λ2 L_aux, create_graph=True.

    fwd(params, x, head) is called once per head (no "both"), so the learner's single
    backbone pass is checked too.
    """
    theta = {k: v.detach().clone().requires_grad_() for k, v in params.items()}
    total = {k: torch.zeros_like(v) for k, v in theta.items()}
    for t in tasks:
        p = dict(theta)
        for _ in range(cfg.inner_steps):
            loss = ref_inner_loss(fwd, p, t, cfg)
            grads = torch.autograd.grad(loss, list(p.values()), create_graph=True)
            p = {k: v - cfg.inner_lr * g for (k, v), g in zip(p.items(), grads)}
        outer = F.cross_entropy(fwd(p, t.query_x, "pri"), t.query_y)
        for k, g in zip(theta, torch.autograd.grad(outer, list(theta.values()), allow_unused=True)):
            if g is not None:
                total[k] += g
    return total


def assert_close(
    got: dict[str, Tensor], want: dict[str, Tensor], rtol: float = 1e-9, atol: float = 1e-12
) -> None:
    assert set(got) == set(want)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=rtol, atol=atol, msg=f"gradient of {k}")


@pytest.fixture(scope="module")
def smooth():
    torch.manual_seed(0)
    model = SmoothNet().to(DT)
    return model, dict(model.named_parameters()), make_tasks(3, (3, 2, 4, 4), ways=3)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = build_model("tiny").to(DT).train()
    c = model.cfg
    tasks = make_tasks(
        2, (c.frames, c.in_channels, c.image_size, c.image_size), ways=c.ways, shots=1, query=1
    )
    return model, dict(model.named_parameters()), dict(model.named_buffers()), tasks


# ---- lightman's second-order meta-gradient --------------------------------------------


@pytest.mark.parametrize("steps", [1, 2])
@pytest.mark.parametrize("aux_loss", ["mmd", "mmd_unbiased", "paper_eq3"])
def test_lightman_matches_plain_loop_on_smooth_model(smooth, steps, aux_loss):
    model, params, tasks = smooth
    cfg = learner_config(
        inner_lr=0.3, inner_steps=steps, lambda_pri=0.55, sigma=(1.5,), aux_loss=aux_loss
    )
    got, metrics = build_learner(cfg).meta_grads(model, params, {}, tasks)
    assert_close(got, ref_meta_grad(ref_forward, params, tasks, cfg))
    assert metrics["tasks"] == len(tasks)


@pytest.mark.parametrize("steps", [1, 2])
@pytest.mark.parametrize("aux_loss", ["mmd", "paper_eq3"])
def test_lightman_matches_plain_loop_on_tiny_lightmannet(tiny, steps, aux_loss):
    model, params, buffers, tasks = tiny

    def fwd(p, x, head):
        return functional_call(model, (p, buffers), (x,), {"head": head})

    cfg = learner_config(inner_lr=0.1, inner_steps=steps, sigma=(2.0,), aux_loss=aux_loss)
    got, _ = build_learner(cfg).meta_grads(model, params, buffers, tasks)
    assert_close(got, ref_meta_grad(fwd, params, tasks, cfg), rtol=1e-7, atol=1e-10)


def outer_loss(model, params: dict[str, Tensor], tasks: list[Task], cfg: LearnerConfig) -> float:
    """Σ_i CE(query_i; θ_i) by the reference model's pure function (no autograd in θ)."""
    total = 0.0
    for t in tasks:
        p = {k: v.detach().clone().requires_grad_() for k, v in params.items()}
        for _ in range(cfg.inner_steps):
            grads = torch.autograd.grad(ref_inner_loss(ref_forward, p, t, cfg), list(p.values()))
            p = {
                k: (v - cfg.inner_lr * g).detach().requires_grad_()
                for (k, v), g in zip(p.items(), grads)
            }
        total += float(F.cross_entropy(ref_forward(p, t.query_x, "pri"), t.query_y).detach())
    return total


@pytest.mark.parametrize("steps", [1, 2])
def test_lightman_matches_finite_differences(smooth, steps):
    model, params, tasks = smooth
    cfg = learner_config(inner_lr=0.3, inner_steps=steps, sigma=(1.5,))
    got, _ = build_learner(cfg).meta_grads(model, params, {}, tasks)
    g = torch.Generator().manual_seed(1)
    eps = 1e-5
    for _ in range(3):
        u = {k: torch.randn(v.shape, generator=g, dtype=DT) for k, v in params.items()}
        plus = outer_loss(model, {k: v + eps * u[k] for k, v in params.items()}, tasks, cfg)
        minus = outer_loss(model, {k: v - eps * u[k] for k, v in params.items()}, tasks, cfg)
        numeric = (plus - minus) / (2 * eps)
        analytic = float(sum((got[k] * u[k]).sum() for k in params))
        assert analytic == pytest.approx(numeric, rel=1e-4, abs=1e-8)


# The auxiliary-branch options (LearnerConfig: aux_norm, bandwidth, aux_align), alone and together.
AUX_OPTIONS = {
    "joint": {"aux_norm": "joint"},
    "aux_joint": {"aux_norm": "aux_joint"},
    "median": {"bandwidth": "median", "sigma": (0.5, 2.0)},
    "class": {"aux_align": "class"},
    "all": {"aux_norm": "joint", "bandwidth": "median", "sigma": (1.0,), "aux_align": "class"},
}


@pytest.mark.parametrize("memory", ["fast", "low"])
@pytest.mark.parametrize("option", list(AUX_OPTIONS))
def test_aux_options_match_plain_loop_on_tiny_lightmannet(tiny, option, memory):
    """The per-task float64 loop of ref_inner_loss (joint: one batch split by hand; median:
    σ from the sorted distances, a constant; class: a loop over the paired ways), through
    both backward modes; bn_mode=task, so joint and separate passes differ."""
    model, params, buffers, tasks = tiny

    def fwd(p, x, head):
        return functional_call(model, (p, buffers), (x,), {"head": head})

    options = {"sigma": (2.0,), **AUX_OPTIONS[option]}
    cfg = learner_config(inner_lr=0.1, inner_steps=2, memory=memory, **options)
    got, metrics = build_learner(cfg).meta_grads(model, params, buffers, tasks)
    assert_close(got, ref_meta_grad(fwd, params, tasks, cfg), rtol=1e-7, atol=1e-10)
    with torch.no_grad():  # λ1 = 0: the inner loss is L_aux alone
        aux_only = replace(cfg, lambda_pri=0.0)
        want = sum(float(ref_inner_loss(fwd, params, t, aux_only)) for t in tasks)
    assert metrics["aux_loss"] == pytest.approx(want, rel=1e-9)


def test_joint_normalisation_changes_the_aux_loss(tiny):
    model, params, buffers, tasks = tiny
    cfg = learner_config(sigma=(2.0,))
    _, separate = build_learner(cfg).meta_grads(model, params, buffers, tasks)
    joint_learner = build_learner(replace(cfg, aux_norm="joint"))
    _, joint = joint_learner.meta_grads(model, params, buffers, tasks)
    assert joint["aux_loss"] != pytest.approx(separate["aux_loss"], rel=1e-3)


@pytest.mark.parametrize("memory", ["fast", "low"])
@pytest.mark.parametrize("option", ["joint", "aux_joint", "class"])
def test_aux_options_match_finite_differences(smooth, option, memory):
    """Central differences of the outer loss (median bandwidths are left out: the learner
    treats σ as a constant, which the numerical derivative would not)."""
    model, params, tasks = smooth
    options = {"sigma": (1.5,), **AUX_OPTIONS[option]}
    cfg = learner_config(inner_lr=0.3, inner_steps=2, memory=memory, **options)
    got, _ = build_learner(cfg).meta_grads(model, params, {}, tasks)
    g = torch.Generator().manual_seed(4)
    eps = 1e-5
    u = {k: torch.randn(v.shape, generator=g, dtype=DT) for k, v in params.items()}
    plus = outer_loss(model, {k: v + eps * u[k] for k, v in params.items()}, tasks, cfg)
    minus = outer_loss(model, {k: v - eps * u[k] for k, v in params.items()}, tasks, cfg)
    analytic = float(sum((got[k] * u[k]).sum() for k in params))
    assert analytic == pytest.approx((plus - minus) / (2 * eps), rel=1e-4, abs=1e-8)


def test_first_order_is_the_query_gradient_at_the_adapted_parameters(smooth):
    model, params, tasks = smooth
    cfg = learner_config(inner_lr=0.3, inner_steps=2, first_order=True, sigma=(1.5,))
    got, _ = build_learner(cfg).meta_grads(model, params, {}, tasks)
    want = {k: torch.zeros_like(v) for k, v in params.items()}
    for t in tasks:
        p = {k: v.detach() for k, v in params.items()}
        for _ in range(cfg.inner_steps):  # θ_i by plain SGD, nothing kept
            p = {k: v.requires_grad_() for k, v in p.items()}
            loss = cfg.lambda_pri * F.cross_entropy(
                ref_forward(p, t.support_x, "pri"), t.support_y
            ) + cfg.lambda_aux * ref_aux(
                "mmd", ref_forward(p, t.support_x, "aux"), ref_forward(p, t.aux_x, "aux"), 1.5
            )
            grads = torch.autograd.grad(loss, list(p.values()))
            p = {k: (v - cfg.inner_lr * g).detach() for (k, v), g in zip(p.items(), grads)}
        leaf = {k: v.requires_grad_() for k, v in p.items()}  # a function of θ_i only
        outer = F.cross_entropy(ref_forward(leaf, t.query_x, "pri"), t.query_y)
        for k, g in zip(leaf, torch.autograd.grad(outer, list(leaf.values()), allow_unused=True)):
            if g is not None:
                want[k] += g
    assert_close(got, want)
    # h_aux enters only the inner loss: without the second-order term it gets nothing.
    assert torch.equal(got["aux.weight"], torch.zeros_like(got["aux.weight"]))


def test_lambda_pri_one_is_maml_exactly(tiny):
    model, params, buffers, tasks = tiny
    no_aux = [replace(t, aux_x=None) for t in tasks]  # λ2 = 0 needs no macro clips
    cfg = learner_config(inner_lr=0.1, inner_steps=2, lambda_pri=1.0)
    light, light_m = build_learner(cfg).meta_grads(model, params, buffers, no_aux)
    maml, maml_m = build_learner(learner_config("maml", inner_lr=0.1, inner_steps=2)).meta_grads(
        model, params, buffers, tasks
    )
    assert all(torch.equal(light[k], maml[k]) for k in params)
    assert light_m == maml_m


def test_maml_matches_plain_loop(tiny):
    model, params, buffers, tasks = tiny
    cfg = learner_config("maml", inner_lr=0.1, inner_steps=2)  # no lambda_pri: no L_aux
    ref = learner_config("lightman", inner_lr=0.1, inner_steps=2, lambda_pri=1.0)

    def fwd(p, x, head):
        return functional_call(model, (p, buffers), (x,), {"head": head})

    # λ1 = 1 makes the reference's inner loss the plain CE; its aux term has weight 0.
    got, _ = build_learner(cfg).meta_grads(model, params, buffers, tasks)
    assert_close(got, ref_meta_grad(fwd, params, tasks, ref), rtol=1e-7, atol=1e-10)


# ---- ANIL -------------------------------------------------------------------------------


def test_anil_inner_loop_leaves_the_backbone_unchanged(tiny):
    model, params, buffers, tasks = tiny
    head = set(model.head_param_names())
    theta = trainable(params)
    t = tasks[0]
    objective = head_objective(model, theta, buffers, t.support_x, t.support_y)
    adapted, _ = inner_loop(objective, theta, sorted(head), lr=0.1, steps=3, create_graph=True)
    for name in params:
        if name in head:
            assert not torch.equal(adapted[name], theta[name]), name
        else:
            assert adapted[name] is theta[name], name


def test_anil_matches_plain_loop_over_the_full_model(tiny):
    model, params, buffers, tasks = tiny
    head = model.head_param_names()
    cfg = learner_config(name="anil", inner_lr=0.2, inner_steps=2)
    got, _ = build_learner(cfg).meta_grads(model, params, buffers, tasks)
    theta = {k: v.detach().clone().requires_grad_() for k, v in params.items()}
    want = {k: torch.zeros_like(v) for k, v in theta.items()}
    for t in tasks:
        p = dict(theta)
        for _ in range(cfg.inner_steps):  # the whole model runs every step; only the head moves
            loss = F.cross_entropy(
                functional_call(model, (p, buffers), (t.support_x,)), t.support_y
            )
            grads = torch.autograd.grad(loss, [p[n] for n in head], create_graph=True)
            p = {**p, **{n: p[n] - cfg.inner_lr * g for n, g in zip(head, grads)}}
        outer = F.cross_entropy(functional_call(model, (p, buffers), (t.query_x,)), t.query_y)
        for k, g in zip(theta, torch.autograd.grad(outer, list(theta.values()), allow_unused=True)):
            if g is not None:
                want[k] += g
    assert_close(got, want, rtol=1e-7, atol=1e-10)
    backbone = [k for k in params if k.startswith("backbone.")]
    assert any(got[k].abs().sum() > 0 for k in backbone)  # the outer gradient reaches g


# ---- Reptile ------------------------------------------------------------------------------


def test_reptile_meta_gradient_is_theta_minus_sgd_result(tiny):
    model, params, buffers, tasks = tiny
    cfg = learner_config(name="reptile", inner_lr=0.05, reptile_steps=3)
    got, metrics = build_learner(cfg).meta_grads(model, params, buffers, tasks)
    want = {k: torch.zeros_like(v) for k, v in params.items()}
    for t in tasks:
        clone = copy.deepcopy(model)
        opt = torch.optim.SGD(clone.parameters(), lr=cfg.inner_lr)
        x, y = torch.cat((t.support_x, t.query_x)), torch.cat((t.support_y, t.query_y))
        for _ in range(cfg.reptile_steps):
            opt.zero_grad()
            F.cross_entropy(clone(x), y).backward()
            opt.step()
        for k, p in clone.named_parameters():
            want[k] += params[k].detach() - p.detach()
    assert_close(got, want, rtol=1e-9, atol=1e-12)
    assert metrics["tasks"] == len(tasks)


# ---- memory="low": the checkpointed second-order backward --------------------------------


def test_checkpointed_backward_matches_plain_loop_on_tiny_lightmannet(tiny):
    model, params, buffers, tasks = tiny

    def fwd(p, x, head):
        return functional_call(model, (p, buffers), (x,), {"head": head})

    cfg = learner_config(inner_lr=0.1, inner_steps=2, sigma=(2.0,), memory="low")
    got, _ = build_learner(cfg).meta_grads(model, params, buffers, tasks)
    assert_close(got, ref_meta_grad(fwd, params, tasks, cfg), rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("steps", [1, 2])
def test_checkpointed_backward_matches_finite_differences(smooth, steps):
    model, params, tasks = smooth
    cfg = learner_config(inner_lr=0.3, inner_steps=steps, sigma=(1.5,), memory="low")
    got, _ = build_learner(cfg).meta_grads(model, params, {}, tasks)
    assert_close(got, ref_meta_grad(ref_forward, params, tasks, cfg))
    g = torch.Generator().manual_seed(2)
    u = {k: torch.randn(v.shape, generator=g, dtype=DT) for k, v in params.items()}
    eps = 1e-5
    plus = outer_loss(model, {k: v + eps * u[k] for k, v in params.items()}, tasks, cfg)
    minus = outer_loss(model, {k: v - eps * u[k] for k, v in params.items()}, tasks, cfg)
    analytic = float(sum((got[k] * u[k]).sum() for k in params))
    assert analytic == pytest.approx((plus - minus) / (2 * eps), rel=1e-4, abs=1e-8)


@pytest.mark.parametrize("name", ["lightman", "maml", "anil"])
def test_low_and_fast_memory_give_the_same_gradients_and_metrics(tiny, name):
    model, params, buffers, tasks = tiny
    cfg = learner_config(name=name, inner_lr=0.2, inner_steps=3, log_support_after=True)
    fast, fast_m = build_learner(cfg).meta_grads(model, params, buffers, tasks)
    low, low_m = build_learner(replace(cfg, memory="low")).meta_grads(model, params, buffers, tasks)
    assert_close(low, fast, rtol=1e-9, atol=1e-13)
    assert low_m.keys() == fast_m.keys()
    for k in fast_m:
        assert low_m[k] == pytest.approx(fast_m[k], rel=1e-12), k


def test_low_memory_first_order_is_first_order(tiny):
    model, params, buffers, tasks = tiny
    cfg = learner_config(inner_lr=0.1, inner_steps=2, first_order=True)
    fast, _ = build_learner(cfg).meta_grads(model, params, buffers, tasks)
    low, _ = build_learner(replace(cfg, memory="low")).meta_grads(model, params, buffers, tasks)
    assert all(torch.equal(low[k], fast[k]) for k in params)


def saved_peak(learner, model, params, buffers, tasks) -> int:
    counter = SavedBytes()
    with torch.autograd.graph.saved_tensors_hooks(counter.pack, counter.unpack):
        learner.meta_grads(model, params, buffers, tasks)
    assert counter.now == 0 and not counter.refs  # every graph was freed
    return counter.peak


def test_low_memory_holds_one_inner_step_not_all_of_them():
    torch.manual_seed(0)
    model = build_model("tiny").train()
    c = model.cfg
    tasks = [
        Task(
            *(
                t.float() if t.is_floating_point() else t
                for t in (u.support_x, u.support_y, u.query_x, u.query_y, u.aux_x)
            )
        )
        for u in make_tasks(1, (c.frames, c.in_channels, c.image_size, c.image_size), ways=c.ways)
    ]
    params, buffers = dict(model.named_parameters()), dict(model.named_buffers())
    peak = {
        (steps, memory): saved_peak(
            build_learner(learner_config(inner_steps=steps, memory=memory)),
            model,
            params,
            buffers,
            tasks,
        )
        for steps in (1, 3)
        for memory in ("fast", "low")
    }
    # fast keeps every step's second-order graph and the query pass at once; low rebuilds
    # one step at a time, so its peak does not grow with the steps.
    assert peak[3, "low"] == peak[1, "low"] < peak[1, "fast"]
    assert peak[3, "fast"] > 3 * peak[3, "low"]


def test_split_gradient_and_hvp_equal_the_whole_objectives(tiny):
    """passes.py's one-pass-at-a-time ∇L and ∇θ⟨∇L, v⟩ against plain double backward over the
    whole dual-branch loss, and the graphs they hold against the whole loss's."""
    model, params, buffers, tasks = tiny
    t = tasks[0]
    cfg = learner_config(sigma=(2.0,))
    objective = dual_branch_objective(
        model, buffers, t.support_x, t.support_y, t.aux_x, cfg.lambda_pri, aux_loss_fn(cfg)
    )
    point = {k: v.detach() for k, v in params.items()}
    g = torch.Generator().manual_seed(3)
    v = {k: torch.randn(p.shape, generator=g, dtype=DT) for k, p in point.items()}
    names = [n for n in point if not n.startswith("head_pri.")]  # a subset: the projection matters

    def whole():
        theta = {k: p.clone().requires_grad_() for k, p in point.items()}
        loss, _ = objective(theta)
        grads = torch.autograd.grad(loss, [theta[n] for n in names], create_graph=True)
        dot = sum((gi * v[n]).sum() for n, gi in zip(names, grads))
        return dict(zip(names, grads)), dict(
            zip(theta, torch.autograd.grad(dot, list(theta.values())))
        )

    def split():
        grads, metrics, outs = split_grads(objective, point, names)
        return grads, split_hvp(objective, point, outs, v, names)

    want_grads, want_hvp = whole()
    got_grads, got_hvp = split()
    assert_close({n: got_grads[n] for n in names}, {n: want_grads[n].detach() for n in names})
    assert_close(got_hvp, want_hvp, rtol=1e-8, atol=1e-11)
    peaks = []
    for run in (whole, split):
        counter = SavedBytes()
        with torch.autograd.graph.saved_tensors_hooks(counter.pack, counter.unpack):
            run()
        peaks.append(counter.peak)
    # Support and macro batches of 5 and 4 clips: the bigger pass alone holds 5/9 of the graph.
    assert peaks[1] < 0.6 * peaks[0]


def test_memory_mode_is_checked():
    with pytest.raises(ValueError, match=r"memory must be one of \['fast', 'low'\], got 'small'"):
        learner_config(memory="small")


def test_meta_gradient_is_the_same_on_pytorch_layers(tiny, monkeypatch):
    """LightmanNet's second-order meta-gradient through Lightman's kernels (batchnorm.py,
    maxpool.py, input_conv.py; Conv4 block as conv -> norm+pool -> ReLU) against the same
    model built from PyTorch's layers (conv -> F.batch_norm -> ReLU -> F.max_pool2d)."""
    model, params, buffers, tasks = tiny
    learner = build_learner(learner_config(inner_steps=2))
    ours, _ = learner.meta_grads(model, params, buffers, tasks)

    def batch_norm(x, weight, bias, running_mean, running_var, momentum, eps):
        return F.batch_norm(
            x, running_mean, running_var, weight, bias, training=True, momentum=momentum, eps=eps
        )

    def block(self, x, update_stats=False):
        x = F.relu(self.norm(backbones.per_frame(self.conv, x), update_stats))
        return backbones.per_frame(lambda f: F.max_pool2d(f, 2), x) if self.pool else x

    monkeypatch.setattr(norm, "batch_norm_train", batch_norm)
    monkeypatch.setattr(backbones.ConvBlock, "forward", block)
    theirs, _ = learner.meta_grads(model, params, buffers, tasks)
    assert_close(ours, theirs, rtol=1e-9, atol=1e-12)

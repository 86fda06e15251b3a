"""The learners' behaviour on the tiny LightmanNet: adaptation lowers the support loss,
meta-gradients reach every parameter, predictions have the right shape, ProtoNet's
logits and the registry/config checks."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import get_args

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from lightman.models.learners import LEARNERS, LearnerConfig, build_learner, learner_config
from lightman.models.learners.anil import ANIL
from lightman.models.learners.config import (
    LEARNER_CONFIGS,
    LearnerName,
    ProtoNetConfig,
    for_learner,
)
from lightman.models.learners.functional import forward, inner_loop
from lightman.models.learners.lightman import (
    Lightman,
    aux_loss_fn,
    dual_branch_loss,
    dual_branch_objective,
)
from lightman.models.learners.maml import MAML, cross_entropy_objective
from lightman.models.learners.optimizer import outer_optimizer
from lightman.models.learners.params import trainable
from lightman.models.learners.protonet import ProtoNet
from lightman.models.learners.reptile import Reptile
from lightman.models.learners.supervised import Supervised
from lightman.models.modes import eval_mode
from lightman.models.net import PRESETS, build_model
from lightman.platform.config import ConfigError, describe_config, from_dict, load_config
from lightman.platform.train import TrainConfig


@dataclass(frozen=True)
class Task:
    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    query_y: Tensor
    aux_x: Tensor | None
    aux_y: Tensor | None = None  # (A,) way of each macro clip, -1 unpaired
    classes: tuple[int, ...] = ()  # the pool's class of way j


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = build_model("tiny").train()
    c = model.cfg
    shape = (c.frames, c.in_channels, c.image_size, c.image_size)
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(c.ways)

    def task(classes: tuple[int, ...]) -> Task:
        return Task(
            torch.rand((2 * c.ways, *shape), generator=g),
            labels.repeat(2),
            torch.rand((3 * c.ways, *shape), generator=g),
            labels.repeat(3),
            torch.rand((4, *shape), generator=g),
            torch.tensor([0, 1, 2, -1]),
            classes,
        )

    # way j is a different class in each episode, as drawn by the sampler
    tasks = [task((2, 0, 4, 1, 3)), task((3, 4, 1, 0, 2))]
    return model, dict(model.named_parameters()), dict(model.named_buffers()), tasks


# One gradient step on these fixed tiny tasks lowers a loss by a relative amount that does not
# depend on the machine (one step is not chaotic): measured with 1 and 2 threads, the
# smallest drops are 1.6e-3 (anil's head-only inner step), 2.4e-2 (anil's and supervised's
# adaptation), 5.0e-2 (supervised's step) and 0.12 or more for the others; the two thread
# counts agree to 1e-7. A drop of at least LOSS_DROP (a third of the smallest) is asserted,
# thousands of times float32 rounding.
LOSS_DROP = 5e-4


def dropped(before: float, after: float) -> bool:
    """`after` is below `before` by at least LOSS_DROP of it."""
    return (before - after) / abs(before) > LOSS_DROP


# ---- adaptation ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["lightman", "maml", "anil"])
def test_one_inner_step_lowers_the_inner_loss(setup, name):
    model, params, buffers, tasks = setup
    learner = build_learner(learner_config(name=name, inner_lr=0.01))
    names = learner.adapted_names(model, params)
    for t in tasks:
        theta = trainable(params, names)
        objective = learner.make_objective(
            model, theta, buffers, t.support_x, t.support_y, t.aux_x, "test"
        )
        before, _ = objective(theta)
        adapted, _ = inner_loop(
            objective, theta, names, learner.cfg.inner_lr, 1, create_graph=False
        )
        after, _ = objective(adapted)
        assert dropped(float(before.detach()), float(after.detach())), name


def test_adapt_lowers_the_support_cross_entropy(setup):
    model, params, buffers, tasks = setup
    t = tasks[0]
    for name in ("maml", "anil", "reptile", "supervised"):
        learner = build_learner(learner_config(name=name, inner_lr=0.05))
        adapted = learner.adapt(model, params, buffers, t.support_x, t.support_y, steps=3)
        with torch.no_grad():
            before = F.cross_entropy(
                forward(model, params, buffers, t.support_x, "pri"), t.support_y
            )
            after = F.cross_entropy(
                forward(model, adapted, buffers, t.support_x, "pri"), t.support_y
            )
        # supervised starts from a fresh zero head, whose support CE is log N
        before = math.log(model.cfg.ways) if name == "supervised" else float(before)
        assert dropped(before, float(after)), name
        assert all(not p.requires_grad for p in adapted.values())


def test_adapt_with_zero_steps_returns_theta(setup):
    model, params, buffers, tasks = setup
    adapted = build_learner("lightman").adapt(
        model, params, buffers, tasks[0].support_x, tasks[0].support_y, steps=0
    )
    assert all(torch.equal(adapted[k], params[k]) for k in params)


# ---- meta-gradients -----------------------------------------------------------------------


def test_lightman_gradient_reaches_every_parameter_second_order_only_for_the_aux_head(setup):
    model, params, buffers, tasks = setup
    cfg = learner_config(inner_lr=0.1)
    second, _ = build_learner(cfg).meta_grads(model, params, buffers, tasks)
    # L_aux compares micro and macro features through ||x - y|| only, so it is blind to a
    # shift of both: the bias of h_aux's output layer gets no gradient (float noise only).
    shift = "head_aux.out.bias"
    for name, g in second.items():
        assert torch.isfinite(g).all(), name
        if name == shift:
            assert g.abs().max() < 1e-6, name
        else:
            assert g.abs().max() > 1e-3, f"{name} gets no meta-gradient"
    # h_aux enters the inner loss only: with first_order its outer gradient is exactly 0,
    # while the rest of the model still learns from the query loss.
    first, _ = build_learner(replace(cfg, first_order=True)).meta_grads(
        model, params, buffers, tasks
    )
    for name, g in first.items():
        if name.startswith("head_aux."):
            assert torch.equal(g, torch.zeros_like(g)), name
        else:
            assert torch.isfinite(g).all() and g.abs().max() > 1e-3, name


# each learner's keys for the contract tests: α = 0.05 where it adapts, 2 Reptile steps
CONTRACT_KEYS: dict[str, dict] = {
    "lightman": {"inner_lr": 0.05},
    "maml": {"inner_lr": 0.05},
    "anil": {"inner_lr": 0.05},
    "reptile": {"inner_lr": 0.05, "reptile_steps": 2},
    "protonet": {},
    "supervised": {"inner_lr": 0.05},
}


@pytest.mark.parametrize("name", list(get_args(LearnerName)))
def test_meta_grads_contract(setup, name):
    """Sums over tasks (split meta-batches add up), deterministic, params untouched."""
    model, params, buffers, tasks = setup
    learner = build_learner(learner_config(name, **CONTRACT_KEYS[name]))
    before = {k: v.detach().clone() for k, v in params.items()}
    whole, metrics = learner.meta_grads(model, params, buffers, tasks)
    again, metrics_again = learner.meta_grads(model, params, buffers, tasks)
    first, m1 = learner.meta_grads(model, params, buffers, tasks[:1])
    second, m2 = learner.meta_grads(model, params, buffers, tasks[1:])
    assert set(whole) == set(params)
    for k in params:
        assert whole[k].shape == params[k].shape
        assert torch.equal(whole[k], again[k]), k
        torch.testing.assert_close(whole[k], first[k] + second[k], rtol=1e-5, atol=1e-6)
        assert torch.equal(params[k], before[k]) and params[k].grad is None
    assert metrics == metrics_again
    assert metrics["tasks"] == 2 and m1["tasks"] == m2["tasks"] == 1
    assert metrics["outer_loss"] == pytest.approx(m1["outer_loss"] + m2["outer_loss"])
    assert 0 <= metrics["query_acc"] <= 2


@pytest.mark.parametrize("name", list(get_args(LearnerName)))
def test_meta_grads_writes_running_norm_statistics_in_place_and_only_those(setup, name):
    """bn_mode=running, training mode: each task's outer pass updates the running statistics
    among `buffers` in place (the documented side effect); the gradients, taken with batch
    statistics, are the same on the next call. In eval mode nothing is written."""
    _, _, _, tasks = setup
    torch.manual_seed(0)
    model = build_model(replace(PRESETS["tiny"], bn_mode="running")).train()
    params, buffers = dict(model.named_parameters()), dict(model.named_buffers())
    assert buffers and all(k.endswith(("running_mean", "running_var")) for k in buffers)
    learner = build_learner(learner_config(name, **CONTRACT_KEYS[name]))
    initial = {k: b.clone() for k, b in buffers.items()}
    first, _ = learner.meta_grads(model, params, buffers, tasks)
    written = {k: b.clone() for k, b in buffers.items()}
    assert all(buffers[k] is b for k, b in model.named_buffers())  # the model's own tensors
    assert any(not torch.equal(written[k], initial[k]) for k in buffers)
    again, _ = learner.meta_grads(model, params, buffers, tasks)
    assert all(torch.equal(first[k], again[k]) for k in params)
    before_eval = {k: b.clone() for k, b in buffers.items()}
    with eval_mode(model):
        learner.meta_grads(model, params, buffers, tasks[:1])
    assert all(torch.equal(buffers[k], before_eval[k]) for k in buffers)


@pytest.mark.parametrize("name", ["lightman", "maml", "anil"])
def test_support_loss_after_is_logged_on_request(setup, name):
    model, params, buffers, tasks = setup
    cfg = learner_config(name=name, inner_lr=0.01)
    _, quiet = build_learner(cfg).meta_grads(model, params, buffers, tasks)
    assert "support_loss_after" not in quiet
    _, logged = build_learner(replace(cfg, log_support_after=True)).meta_grads(
        model, params, buffers, tasks
    )
    want = 0.0
    for t in tasks:  # the support CE at θ_i = adapt(θ), one step
        adapted = build_learner(cfg).adapt(
            model, params, buffers, t.support_x, t.support_y, t.aux_x, steps=1
        )
        with torch.no_grad():
            want += float(
                F.cross_entropy(forward(model, adapted, buffers, t.support_x, "pri"), t.support_y)
            )
    assert logged["support_loss_after"] == pytest.approx(want, rel=1e-5)
    assert dropped(logged["support_loss_before"], logged["support_loss_after"])
    assert {k: v for k, v in logged.items() if k != "support_loss_after"} == quiet


def test_lightman_needs_macro_clips(setup):
    model, params, buffers, tasks = setup
    broken = [tasks[0], replace(tasks[1], aux_x=None)]
    with pytest.raises(ValueError, match=r"task 1 .*aux_x.*lambda_pri=1"):
        build_learner("lightman").meta_grads(model, params, buffers, broken)
    with pytest.raises(ValueError, match="aux_x"):
        build_learner("supervised").meta_grads(model, params, buffers, broken)


def test_empty_meta_batch_is_an_error(setup):
    model, params, buffers, _ = setup
    for name in get_args(LearnerName):
        with pytest.raises(ValueError, match="no tasks"):
            build_learner(name).meta_grads(model, params, buffers, [])


# ---- prediction ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(get_args(LearnerName)))
def test_predict_returns_query_logits(setup, name):
    model, params, buffers, tasks = setup
    t = tasks[0]
    with torch.no_grad():  # as an evaluator calls it; adaptation still gets its gradients
        logits = build_learner(learner_config(name=name)).predict(model, params, buffers, t)
    assert logits.shape == (t.query_x.shape[0], model.cfg.ways)
    assert torch.isfinite(logits).all() and not logits.requires_grad


def test_protonet_logits_are_negative_squared_distances_to_class_means(setup):
    model, params, buffers, tasks = setup
    t = tasks[0]
    logits = build_learner("protonet").predict(model, params, buffers, t)
    with torch.no_grad():
        z = model(torch.cat((t.support_x, t.query_x)), head="embed").double()
    zs, zq = z[: len(t.support_y)], z[len(t.support_y) :]
    want = torch.empty(len(zq), model.cfg.ways, dtype=torch.float64)
    for j in range(model.cfg.ways):
        proto = zs[t.support_y == j].mean(dim=0)
        for i in range(len(zq)):
            want[i, j] = -((zq[i] - proto) ** 2).sum()
    torch.testing.assert_close(logits.double(), want, rtol=1e-5, atol=1e-5)


def test_protonet_rejects_a_way_without_support(setup):
    model, params, buffers, tasks = setup
    t = replace(tasks[0], support_y=torch.where(tasks[0].support_y == 2, 0, tasks[0].support_y))
    with pytest.raises(ValueError, match=r"task 0 .*counts"):
        build_learner("protonet").meta_grads(model, params, buffers, [t])


def supervised_loss(model, params, buffers, task, cfg: LearnerConfig) -> Tensor:
    """λ1 CE(h_pri(g(x)), classes[y]) + λ2 MMD²(h_aux(g(x)), h_aux(g(aux))) on support + query,
    written from the definition (global classes, σ = 1, biased MMD)."""
    x = torch.cat((task.support_x, task.query_x))
    y = torch.tensor(task.classes)[torch.cat((task.support_y, task.query_y))]
    ce = F.cross_entropy(forward(model, params, buffers, x, "pri"), y)
    a = forward(model, params, buffers, x, "aux")
    b = forward(model, params, buffers, task.aux_x, "aux")

    def k(u, v):
        return torch.exp(-((u[:, None] - v[None]) ** 2).sum(-1) / 2).mean()

    return cfg.lambda_pri * ce + cfg.lambda_aux * (k(a, a) + k(b, b) - 2 * k(a, b))


def test_supervised_trains_on_global_classes(setup):
    model, params, buffers, tasks = setup
    cfg = learner_config(name="supervised")
    learner = build_learner(cfg)
    grads, metrics = learner.meta_grads(model, params, buffers, tasks)
    theta = trainable(params)
    want = [
        torch.autograd.grad(supervised_loss(model, theta, buffers, t, cfg), list(theta.values()))
        for t in tasks
    ]
    for i, name in enumerate(params):
        torch.testing.assert_close(grads[name], want[0][i] + want[1][i], rtol=1e-4, atol=1e-6)
    with torch.no_grad():
        losses = [float(supervised_loss(model, params, buffers, t, cfg)) for t in tasks]
    assert metrics["outer_loss"] == pytest.approx(sum(losses), rel=1e-5)
    # one step along the summed gradient lowers the loss
    stepped = {k: (v - 0.01 * grads[k] / len(tasks)).detach() for k, v in params.items()}
    _, after = learner.meta_grads(model, stepped, buffers, tasks)
    assert dropped(metrics["outer_loss"], after["outer_loss"])


def test_supervised_needs_a_head_for_every_class(setup):
    model, params, buffers, tasks = setup
    beyond = replace(tasks[0], classes=(0, 1, 2, 3, 7))
    message = r"task 0 of the meta-batch has global class 7, but h_pri has 5 outputs.*model.ways"
    with pytest.raises(ValueError, match=message):
        build_learner("supervised").meta_grads(model, params, buffers, [beyond])


def test_supervised_fine_tunes_a_fresh_zero_head(setup):
    """Test time: h_pri re-initialised to an N-way head of zeros; one SGD step moves the head
    alone, to W = α/S Σ_s (onehot(y_s) − 1/N) g(x_s)ᵀ, bias 0 on a balanced support set."""
    model, params, buffers, tasks = setup
    t = tasks[0]
    keep = t.support_y < 3  # a 3-way support set: the fresh head has 3 outputs
    x, y = t.support_x[keep], t.support_y[keep]
    learner = build_learner(learner_config(name="supervised", inner_lr=0.3))
    adapted = learner.adapt(model, params, buffers, x, y, steps=1)
    with torch.no_grad():
        z = forward(model, params, buffers, x, "embed")  # (S, D)
    want = 0.3 / len(y) * (F.one_hot(y, 3).double() - 1 / 3).T @ z.double()  # (3, D)
    torch.testing.assert_close(adapted["head_pri.weight"].double(), want, rtol=1e-5, atol=1e-7)
    assert adapted["head_pri.bias"].shape == (3,) and adapted["head_pri.bias"].abs().max() < 1e-7
    for name in params:
        if not name.startswith("head_pri."):
            assert torch.equal(adapted[name], params[name]), name
    logits = learner.logits(model, adapted, buffers, x, y, t.query_x)
    assert logits.shape == (t.query_x.shape[0], 3)


def test_dual_branch_objective_weighs_the_two_losses(setup):
    model, params, buffers, tasks = setup
    t = tasks[0]
    cfg = learner_config(lambda_pri=0.3)
    with torch.no_grad():
        total, metrics = dual_branch_objective(
            model, buffers, t.support_x, t.support_y, t.aux_x, 0.3, aux_loss_fn(cfg)
        )(params)
        ce, _ = cross_entropy_objective(model, buffers, t.support_x, t.support_y)(params)
    assert float(metrics["support_loss_before"]) == pytest.approx(float(ce))
    assert float(total) == pytest.approx(0.3 * float(ce) + 0.7 * float(metrics["aux_loss"]))


# ---- the auxiliary branch's options ------------------------------------------------------


def test_aux_loss_fn_median_class_form_is_the_direct_computation():
    """bandwidth=median, aux_align=class: σ_k = c_k · median distance of all the task's
    features, then the mean over the paired ways of their MMD² (unpaired clips left out)."""
    g = torch.Generator().manual_seed(0)
    micro = torch.randn(6, 3, generator=g, dtype=torch.float64)
    macro = torch.randn(5, 3, generator=g, dtype=torch.float64)
    y, aux_y = torch.tensor([0, 1, 2, 0, 1, 2]), torch.tensor([0, 0, 2, -1, 2])  # way 1 unpaired
    cfg = learner_config(bandwidth="median", sigma=(0.5, 2.0), aux_align="class")
    z = torch.cat((micro, macro)).tolist()
    dists = sorted(math.dist(z[i], z[j]) for i in range(11) for j in range(i + 1, 11))
    sigmas = [0.5 * dists[27], 2.0 * dists[27]]  # 55 pairs: the middle one

    def mmd(a, b):
        k = lambda u, v: sum(math.exp(-(math.dist(u, v) ** 2) / (2 * s * s)) for s in sigmas)  # noqa: E731
        a, b = a.tolist(), b.tolist()
        return (
            sum(k(u, v) for u in a for v in a) / len(a) ** 2
            + sum(k(u, v) for u in b for v in b) / len(b) ** 2
            - 2 * sum(k(u, v) for u in a for v in b) / (len(a) * len(b))
        )

    want = (mmd(micro[y == 0], macro[aux_y == 0]) + mmd(micro[y == 2], macro[aux_y == 2])) / 2
    assert float(aux_loss_fn(cfg, y, aux_y)(micro, macro)) == pytest.approx(want, rel=1e-10)
    marginal = aux_loss_fn(replace(cfg, aux_align="marginal"))(micro, macro)
    assert float(marginal) == pytest.approx(mmd(micro, macro), rel=1e-10)
    with pytest.raises(ValueError, match="aux_align=class needs the ways"):
        aux_loss_fn(cfg)


def test_joint_pass_is_one_batch_split(setup):
    """joint: CE and L_aux from one batch of support + macro clips split after the support
    rows; aux_joint: the CE of the support clips alone, L_aux of that joint batch."""
    model, params, buffers, tasks = setup
    t = tasks[0]
    cfg = learner_config(aux_norm="joint")

    def loss(aux_norm: str):
        return dual_branch_loss(
            model,
            params,
            buffers,
            t.support_x,
            t.support_y,
            t.aux_x,
            cfg.lambda_pri,
            aux_loss_fn(cfg),
            aux_norm=aux_norm,
        )

    with torch.no_grad():
        out, separate, mixed = loss("joint"), loss("separate"), loss("aux_joint")
        both = torch.cat((t.support_x, t.aux_x))
        n = len(t.support_x)
        logits, feats = model(both, head="pri")[:n], model(both, head="aux")
        want_ce = F.cross_entropy(logits, t.support_y)
        want_aux = aux_loss_fn(cfg)(feats[:n], feats[n:])
    assert float(out.ce) == pytest.approx(float(want_ce), rel=1e-6)
    assert float(out.aux) == pytest.approx(float(want_aux), rel=1e-6)
    # bn_mode=task: the two normalisations differ
    assert float(out.aux) != pytest.approx(float(separate.aux), rel=1e-2)
    assert float(mixed.ce) == pytest.approx(float(separate.ce), rel=1e-6)
    assert float(mixed.aux) == pytest.approx(float(want_aux), rel=1e-6)


def test_grad_ratio_is_logged_on_request(setup):
    """aux_ce_grad_ratio = ‖∇θ λ2·L_aux‖ / ‖∇θ λ1·CE‖ at θ, summed over tasks like every metric."""
    model, params, buffers, tasks = setup
    cfg = learner_config(inner_lr=0.05)
    _, quiet = build_learner(cfg).meta_grads(model, params, buffers, tasks)
    assert "aux_ce_grad_ratio" not in quiet
    logging = build_learner(replace(cfg, log_grad_ratio=True))
    _, logged = logging.meta_grads(model, params, buffers, tasks)
    want = 0.0
    for t in tasks:
        theta = trainable(params)
        ce = F.cross_entropy(forward(model, theta, buffers, t.support_x, "pri"), t.support_y)
        micro = forward(model, theta, buffers, t.support_x, "aux")
        macro = forward(model, theta, buffers, t.aux_x, "aux")
        g_ce = torch.autograd.grad(cfg.lambda_pri * ce, list(theta.values()), allow_unused=True)
        aux = cfg.lambda_aux * aux_loss_fn(cfg)(micro, macro)
        g_aux = torch.autograd.grad(aux, list(theta.values()), allow_unused=True)
        norm = lambda gs: math.sqrt(sum(float(g.pow(2).sum()) for g in gs if g is not None))  # noqa: E731
        want += norm(g_aux) / norm(g_ce)
    assert logged["aux_ce_grad_ratio"] == pytest.approx(want, rel=1e-4)
    assert {k: v for k, v in logged.items() if k != "aux_ce_grad_ratio"} == quiet


def test_adamw_keeps_h_aux_alive_in_first_order_mode(setup):
    """first_order: h_aux's outer gradient is exactly 0, so Adam's coupled weight decay
    (grad + wd·w, normalised) shrinks each weight by about outer_lr per step, while AdamW's
    decoupled decay multiplies it by (1 − outer_lr·wd). 100 steps on the first-order
    meta-gradient (h_aux's part is 0 at every step in this mode; the rest is held fixed)."""
    model, params, buffers, tasks = setup
    cfg = learner_config(first_order=True, outer_lr=1e-3, weight_decay=1e-4)
    grads, _ = build_learner(cfg).meta_grads(model, params, buffers, tasks)
    aux = [n for n in params if n.startswith("head_aux.") and n.endswith("weight")]
    assert all(torch.equal(grads[n], torch.zeros_like(grads[n])) for n in aux)
    kept = {}
    kinds = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "auto": torch.optim.AdamW}
    assert type(outer_optimizer(params.values(), replace(cfg, first_order=False))) is (
        torch.optim.Adam
    )  # auto: Adam in second-order mode, AdamW in first-order mode
    for optimizer in ("adam", "adamw", "auto"):
        theta = {n: p.detach().clone().requires_grad_() for n, p in params.items()}
        opt = outer_optimizer(theta.values(), replace(cfg, optimizer=optimizer))
        assert type(opt) is kinds[optimizer]
        for _ in range(100):
            for n, p in theta.items():
                p.grad = grads[n] / len(tasks)
            opt.step()
        kept[optimizer] = min(float(theta[n].detach().norm() / params[n].norm()) for n in aux)
    # measured: 63% of h_aux's weight norm is left after 100 Adam steps (each |w| shrinks by
    # ~0.1; the tiny model's weights are ~0.3), all of it after 100 AdamW steps
    assert kept["adam"] < 0.7
    assert kept["adamw"] > 0.999 and kept["auto"] == kept["adamw"]


# ---- registry and config ------------------------------------------------------------------


def test_registry_covers_every_name():
    assert set(LEARNERS) == set(get_args(LearnerName))
    classes = {
        "lightman": Lightman,
        "maml": MAML,
        "anil": ANIL,
        "reptile": Reptile,
        "protonet": ProtoNet,
        "supervised": Supervised,
    }
    for name, cls in classes.items():
        learner = build_learner(learner_config(name=name))
        assert type(learner) is cls and learner.cfg.name == name
    assert build_learner("maml").cfg == learner_config(name="maml")
    with pytest.raises(TypeError, match="LearnerConfig"):
        build_learner(3)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("name", "mamll", "name must be one of"),
        ("aux_loss", "kl", "aux_loss must be one of"),
        ("inner_lr", 0.0, "inner_lr must be > 0"),
        ("outer_lr", -1e-3, "outer_lr must be > 0"),
        ("weight_decay", -1.0, "weight_decay must be >= 0"),
        ("inner_steps", 0, "inner_steps must be an integer >= 1"),
        ("test_inner_steps", -1, "test_inner_steps must be an integer >= 0"),
        ("reptile_steps", 0, "reptile_steps must be an integer >= 1"),
        ("lambda_pri", 1.5, r"lambda_pri \(λ1\) must lie in \[0, 1\]"),
        ("lambda_pri", -0.1, "lambda_pri"),
        ("sigma", (), "sigma must be one or more bandwidths"),
        ("sigma", (1.0, -2.0), "sigma must be one or more bandwidths"),
        ("aux_norm", "shared", r"aux_norm must be one of \['separate', 'joint', 'aux_joint'\]"),
        ("bandwidth", "auto", r"bandwidth must be one of \['fixed', 'median'\]"),
        ("aux_align", "way", r"aux_align must be one of \['marginal', 'class'\]"),
        ("optimizer", "sgd", r"optimizer must be one of \['auto', 'adam', 'adamw'\]"),
    ],
)
def test_config_rejects_bad_values(field, value, message):
    name = "reptile" if field == "reptile_steps" else "lightman"  # a learner that reads it
    with pytest.raises(ValueError, match=message):
        learner_config(**{"name": name, field: value})


def test_paper_eq3_takes_one_bandwidth():
    with pytest.raises(ValueError, match="exactly one sigma"):
        learner_config(aux_loss="paper_eq3", sigma=(1.0, 2.0))
    assert learner_config(aux_loss="mmd", sigma=(1.0, 2.0)).sigma == (1.0, 2.0)


def test_config_loads_from_yaml_and_overrides(tmp_path):
    path = tmp_path / "learner.yaml"
    path.write_text("name: lightman\ninner_lr: 0.2\nsigma: [0.5, 2.0]\n")
    cfg = load_config(LearnerConfig, path, ["lambda_pri=0.7", "first_order=true"])
    assert (cfg.name, cfg.inner_lr, cfg.sigma, cfg.lambda_pri, cfg.first_order) == (
        "lightman",
        0.2,
        (0.5, 2.0),
        0.7,
        True,
    )
    assert cfg.lambda_aux == pytest.approx(0.3)
    with pytest.raises(ConfigError, match="valid keys"):
        from_dict(LearnerConfig, {"lamda_pri": 0.5})
    with pytest.raises(ConfigError, match="lambda_pri"):
        from_dict(LearnerConfig, {"lambda_pri": 2})
    with pytest.raises(ConfigError, match="anil does not read it"):  # anil has no L_aux
        load_config(LearnerConfig, path, ["name=anil"])


def test_a_key_the_learner_does_not_read_is_an_error_naming_who_reads_it():
    with pytest.raises(ValueError, match=r"lambda_pri=0.5 is set, but maml does not read it") as e:
        learner_config("maml", lambda_pri=0.5)
    assert "(read by lightman, supervised)" in str(e.value)
    with pytest.raises(ConfigError, match=r"learner.inner_lr=0.2 is set, but protonet") as e:
        load_config(TrainConfig, None, ["learner.name=protonet", "learner.inner_lr=0.2"])
    assert "learner.inner_lr=null" not in str(e.value) and "learner.KEY=null" in str(e.value)
    # null unsets a key: how one base config is narrowed for a learner that lacks it
    cfg = load_config(
        TrainConfig,
        None,
        ["learner.inner_lr=0.2", "learner.name=protonet", "learner.inner_lr=null"],
    )
    assert cfg.learner == learner_config("protonet") and type(cfg.learner) is ProtoNetConfig
    # each learner's config holds exactly the keys its code reads
    assert [f.name for f in fields(LEARNER_CONFIGS["reptile"])] == [
        "name",
        "outer_lr",
        "weight_decay",
        "optimizer",
        "inner_lr",
        "test_inner_steps",
        "reptile_steps",
    ]
    assert "inner_lr" not in {f.name for f in fields(ProtoNetConfig)}


def test_for_learner_carries_the_keys_a_config_sets():
    cfg = learner_config("lightman", inner_lr=0.2, lambda_pri=0.55)  # 0.55: the default
    assert for_learner(cfg, "maml") == learner_config("maml", inner_lr=0.2)
    with pytest.raises(ValueError, match="lambda_pri=0.3 is set, but maml"):
        for_learner(replace(cfg, lambda_pri=0.3), "maml")


def test_supervised_names_its_class_count_and_model_ways_must_match():
    cfg = load_config(TrainConfig, None, ["learner.name=supervised", "model.ways=12"])
    assert cfg.learner.classes == 12  # 0 (unset) resolved from model.ways, printed by --cfg
    assert "classes: 12" in describe_config(cfg)
    with pytest.raises(ConfigError, match=r"learner.classes \(12\) .* set model.ways=12"):
        load_config(
            TrainConfig, None, ["learner.name=supervised", "learner.classes=12", "model.ways=7"]
        )


def test_outer_optimizer_auto_stays_named_and_resolves_per_learner():
    assert learner_config("lightman").optimizer == "auto"
    assert learner_config("lightman", first_order=True).outer_optimizer_name == "adamw"
    assert learner_config("maml").outer_optimizer_name == "adam"
    assert learner_config("protonet").outer_optimizer_name == "adam"  # no first-order mode

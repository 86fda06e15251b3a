"""LightmanNet: shapes, functional calls, second-order gradients, BN modes, checkpoints."""

from __future__ import annotations

import io
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from lightman.models.backbones import BACKBONES, TemporalConv
from lightman.models.checkpoint import load_checkpoint, save_checkpoint
from lightman.models.modes import eval_mode
from lightman.models.net import (
    PRESETS,
    LightmanNet,
    ModelConfig,
    build_model,
    count_parameters,
    motion_input,
)
from lightman.models.norm import ClipNorm
from lightman.platform.config import ConfigError, from_dict

AUX_HEADS = ("embed", "decoder")


def tiny(**overrides) -> ModelConfig:
    return replace(PRESETS["tiny"], **overrides)


def clips(cfg: ModelConfig, batch: int, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shape = (batch, cfg.frames, cfg.in_channels, cfg.image_size, cfg.image_size)
    return torch.rand(shape, generator=g).to(dtype)  # (B, M, C, H, W) in [0, 1]


def seeded_model(cfg: ModelConfig, seed: int = 0) -> LightmanNet:
    torch.manual_seed(seed)
    return build_model(cfg)


# ---------------------------------------------------------------- shapes and config


@pytest.mark.parametrize("aux_head", AUX_HEADS)
@pytest.mark.parametrize("backbone", BACKBONES)
def test_shapes_at_64px(backbone, aux_head):
    cfg = ModelConfig(backbone=backbone, aux_head=aux_head, hidden=8, aux_dim=12, ways=3)
    model = seeded_model(cfg)
    x = clips(cfg, 2)
    with torch.no_grad():
        feats = model.backbone(x)
        logits, aux = model(x, head="both")
    assert [tuple(s.shape[-2:]) for s in feats.stages] == [(32, 32), (16, 16), (8, 8), (4, 4)]
    assert [s.shape[2] for s in feats.stages] == list(model.backbone.stage_channels)
    assert feats.temporal.shape == (2, cfg.frames - 5, 8, 4, 4)
    assert feats.embedding.shape == (2, 8)
    assert logits.shape == (2, 3) and aux.shape == (2, 12)


@pytest.mark.parametrize("aux_head", AUX_HEADS)
def test_every_head_comes_from_one_backbone_pass(aux_head):
    model = seeded_model(tiny(aux_head=aux_head))
    x = clips(model.cfg, 3)
    logits, aux = model(x, head="both")
    assert torch.equal(logits, model(x, head="pri")) and torch.equal(aux, model(x, head="aux"))
    embedding = model(x, head="embed")
    assert embedding.shape == (3, 8)
    assert torch.allclose(logits, model.head_pri(embedding), atol=1e-6)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_one_forward_at_112px(backbone):
    cfg = ModelConfig(backbone=backbone, aux_head="decoder", image_size=112, hidden=4, aux_dim=6)
    logits, aux = seeded_model(cfg)(clips(cfg, 1), head="both")
    assert logits.shape == (1, 5) and aux.shape == (1, 6)
    assert torch.isfinite(logits).all() and torch.isfinite(aux).all()


def test_every_preset_builds_and_runs(capsys):
    assert {"conv4-64", "conv4-112", "resnet-64", "vgg-64", "densenet-64", "tiny"} <= set(PRESETS)
    sizes = {}
    for name, cfg in PRESETS.items():
        model = build_model(name)
        assert model.cfg == cfg
        batch = 1 if cfg.image_size > 64 else 2
        with torch.no_grad():
            logits, aux = model(clips(cfg, batch), head="both")
        assert logits.shape == (batch, cfg.ways) and aux.shape == (batch, cfg.aux_dim)
        sizes[name] = count_parameters(model)
    with capsys.disabled():
        print("\nparameters:", sizes)
    assert sizes["conv4-64"] == sizes["conv4-112"]  # global pooling: size-independent
    assert sizes["tiny"] < sizes["conv4-64"] < sizes["resnet-64"]


def test_count_parameters_counts_every_scalar():
    model = build_model(tiny(aux_head="decoder"))
    by_hand = sum(t.numel() for _, t in model.named_parameters())
    assert count_parameters(model) == by_hand > 0
    # Conv4 at hidden 8 on RGB: four 3x3 convs (no bias) + their norms' weight and bias.
    conv4 = 3 * 8 * 9 + 3 * 8 * 8 * 9 + 4 * 2 * 8
    assert count_parameters(model.backbone.encoder) == conv4


def test_fewer_than_six_frames_is_an_error():
    with pytest.raises(ValueError, match="frames must be an integer >= 6"):
        ModelConfig(frames=5)
    model = build_model("tiny")
    short = torch.rand(2, 5, 3, 16, 16)
    with pytest.raises(ValueError, match="M >= 6"):
        model(short)
    with pytest.raises(ValueError, match="M >= 6"):
        TemporalConv(8, 8, "task")(torch.rand(2, 4, 8, 2, 2))


def test_bad_inputs_and_configs_give_specific_errors():
    model = build_model("tiny")
    with pytest.raises(ValueError, match="got a 4-d tensor"):
        model(torch.rand(6, 3, 16, 16))
    with pytest.raises(ValueError, match=r"C=3"):
        model(torch.rand(2, 6, 1, 16, 16))
    with pytest.raises(ValueError, match=r"H=16"):
        model(torch.rand(2, 6, 3, 32, 32))
    with pytest.raises(ValueError, match="float"):
        model(torch.zeros(2, 6, 3, 16, 16, dtype=torch.uint8))
    with pytest.raises(ValueError, match="head must be one of"):
        model(torch.rand(2, 6, 3, 16, 16), head="both_heads")
    for field, value in [
        ("backbone", "alexnet"),
        ("bn_mode", "batch"),
        ("aux_head", "mlp"),
        ("input_mode", "flow"),
        ("image_size", 8),
        ("ways", 1),
    ]:
        with pytest.raises(ValueError, match=field):
            ModelConfig(**{field: value})
    with pytest.raises(ValueError, match="presets"):
        build_model("conv5-64")
    # The config loads through the platform's YAML/override machinery.
    assert from_dict(ModelConfig, {"backbone": "vgg", "frames": 10}) == ModelConfig(
        backbone="vgg", frames=10
    )
    with pytest.raises(ConfigError, match="valid keys"):
        from_dict(ModelConfig, {"width": 3})


def test_head_param_names_are_h_pri():
    model = build_model("tiny")
    names = model.head_param_names()
    assert names == ("head_pri.weight", "head_pri.bias")
    params = dict(model.named_parameters())
    assert params[names[0]].shape == (5, 8) and params[names[1]].shape == (5,)


def test_input_modes():
    cfg = tiny(input_mode="delta")
    x = clips(cfg, 3)
    delta = motion_input(x, "delta")
    for t in range(cfg.frames):
        assert torch.equal(delta[:, t], x[:, t] - x[:, 0])
    both = motion_input(x, "frames+delta")
    assert torch.equal(both[:, :, :3], x) and torch.equal(both[:, :, 3:], delta)
    # Deltas ignore a brightness change common to every frame; raw frames do not.
    model = seeded_model(cfg)
    assert torch.allclose(model(x), model(x + 0.1), atol=1e-5)
    raw = seeded_model(tiny())
    assert not torch.allclose(raw(x), raw(x + 0.1), atol=1e-3)
    stacked = seeded_model(tiny(input_mode="frames+delta"))
    assert stacked.backbone.encoder.stages[0].conv.in_channels == 6
    assert stacked(x).shape == (3, 5)


# ---------------------------------------------------------------- functional use


@pytest.mark.parametrize("aux_head", AUX_HEADS)
def test_functional_call_equals_the_module_call(aux_head):
    model = seeded_model(tiny(aux_head=aux_head, bn_mode="running"))
    x = clips(model.cfg, 4)
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    for head in ("pri", "aux", "embed"):
        assert torch.equal(
            functional_call(model, (params, buffers), (x,), {"head": head}), model(x, head=head)
        )
    logits, aux = functional_call(model, (params, buffers), (x,), {"head": "both"})
    assert torch.equal(logits, model(x)) and torch.equal(aux, model(x, head="aux"))
    # The output follows the params passed, not the module's own.
    params["head_pri.bias"] = params["head_pri.bias"] + 1.0
    assert torch.allclose(
        functional_call(model, (params, buffers), (x,)), model(x) + 1.0, atol=1e-6
    )


def both_loss(model, params, x, y):
    logits, aux = functional_call(model, params, (x,), {"head": "both"})
    return F.cross_entropy(logits, y) + 0.1 * aux.pow(2).mean()


@pytest.mark.parametrize(
    "backbone,aux_head", [(b, "embed") for b in BACKBONES] + [("conv4", "decoder")]
)
def test_second_order_gradients_match_finite_differences(backbone, aux_head):
    # The Hessian-vector product by double backward (what second-order MAML uses)
    # against central differences of the first-order gradient, in float64.
    model = seeded_model(tiny(backbone=backbone, aux_head=aux_head)).double()
    x, y = clips(model.cfg, 4, dtype=torch.float64), torch.tensor([0, 1, 2, 3])
    names = [n for n, _ in model.named_parameters()]
    theta = {n: p.detach().clone().requires_grad_() for n, p in model.named_parameters()}
    g = torch.Generator().manual_seed(1)
    v = {n: torch.randn(p.shape, generator=g, dtype=torch.float64) for n, p in theta.items()}

    grads = torch.autograd.grad(
        both_loss(model, theta, x, y), list(theta.values()), create_graph=True
    )
    gv = sum((gi * v[n]).sum() for gi, n in zip(grads, names))
    hvp = torch.autograd.grad(gv, list(theta.values()))

    def grad_at(eps):
        shifted = {n: (theta[n] + eps * v[n]).detach().requires_grad_() for n in names}
        return torch.autograd.grad(both_loss(model, shifted, x, y), list(shifted.values()))

    # Tiny maps put ReLU/max-pool kinks close by: a small step stays on one linear piece.
    eps = 1e-7
    plus, minus = grad_at(eps), grad_at(-eps)
    for n, h, gp, gm in zip(names, hvp, plus, minus):
        assert torch.allclose(h, (gp - gm) / (2 * eps), rtol=1e-4, atol=1e-6), n
    assert sum(h.abs().sum() for h in hvp) > 0


@pytest.mark.parametrize(
    "backbone,aux_head", [(b, "decoder") for b in BACKBONES] + [("conv4", "embed")]
)
def test_gradients_reach_every_parameter_through_both(backbone, aux_head):
    model = seeded_model(tiny(backbone=backbone, aux_head=aux_head))
    x, y = clips(model.cfg, 4), torch.tensor([0, 1, 2, 3])
    params = dict(model.named_parameters())
    both_loss(model, params, x, y).backward()
    for n, p in params.items():
        assert p.grad is not None and p.grad.abs().sum() > 0, n


# ---------------------------------------------------------------- normalisation modes


def norm_with_affine(mode: str, channels: int = 3) -> ClipNorm:
    norm = ClipNorm(channels, mode)
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([0.5, 2.0, -1.0]))
        norm.bias.copy_(torch.tensor([0.1, -0.3, 0.7]))
    return norm


def test_norm_modes_match_torch_references():
    x = torch.randn(4, 5, 3, 6, 6) * 2 + 1  # (B, T, C, H, W)
    flat = x.flatten(0, 1)  # (B*T, C, H, W): every frame of every clip is a BN sample
    task = norm_with_affine("task")
    ref = F.batch_norm(flat, None, None, task.weight, task.bias, training=True, eps=1e-5)
    assert torch.allclose(task(x), ref.unflatten(0, (4, 5)), atol=1e-5)

    clip = norm_with_affine("clip")
    per_clip = F.instance_norm(x.transpose(1, 2), weight=clip.weight, bias=clip.bias, eps=1e-5)
    assert torch.allclose(clip(x), per_clip.transpose(1, 2), atol=1e-5)

    running = norm_with_affine("running")
    running.running_mean.copy_(torch.tensor([0.2, -1.0, 3.0]))
    running.running_var.copy_(torch.tensor([0.5, 4.0, 2.0]))
    running.eval()
    ref = F.batch_norm(
        flat,
        running.running_mean,
        running.running_var,
        running.weight,
        running.bias,
        training=False,
        eps=1e-5,
    )
    assert torch.allclose(running(x), ref.unflatten(0, (4, 5)), atol=1e-5)


def test_running_stats_change_only_when_asked():
    x = torch.randn(4, 5, 3, 6, 6) * 2 + 1
    norm = ClipNorm(3, "running")
    untouched = (norm.running_mean.clone(), norm.running_var.clone())
    norm(x)  # training mode, not asked
    norm.eval()
    norm(x, update_stats=True)  # eval mode: running stats are read, not written
    assert torch.equal(norm.running_mean, untouched[0]) and torch.equal(
        norm.running_var, untouched[1]
    )

    norm.train()
    out = norm(x, update_stats=True)
    reference = torch.nn.BatchNorm2d(3, momentum=0.1)
    ref_out = reference(x.flatten(0, 1))
    assert torch.allclose(out, ref_out.unflatten(0, (4, 5)), atol=1e-5)
    assert torch.allclose(norm.running_mean, reference.running_mean, atol=1e-6)
    assert torch.allclose(norm.running_var, reference.running_var, atol=1e-6)


def test_eval_mode_restores_every_module_as_it_was_even_on_error():
    model = seeded_model(tiny())
    model.train()
    model.head_pri.eval()  # a caller may mix modes: each module gets its own back
    modes = {name: m.training for name, m in model.named_modules()}
    with eval_mode(model) as inside:
        assert inside is model and not any(m.training for m in model.modules())
    assert {name: m.training for name, m in model.named_modules()} == modes
    with pytest.raises(RuntimeError, match="boom"), eval_mode(model):
        raise RuntimeError("boom")
    assert {name: m.training for name, m in model.named_modules()} == modes
    with eval_mode(model.eval()):
        pass
    assert not model.training


@pytest.mark.parametrize("pool", [False, True])
@pytest.mark.parametrize(
    "mode,training", [("task", True), ("clip", True), ("running", True), ("running", False)]
)
def test_norm_second_order_gradients(mode, training, pool):
    norm = norm_with_affine(mode).double().train(training)
    if mode == "running":
        norm.running_var.fill_(1.5)
    x = torch.randn(2, 3, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    w = norm.weight.detach().clone().requires_grad_()
    b = norm.bias.detach().clone().requires_grad_()
    buffers = dict(norm.named_buffers())

    def fn(x_, w_, b_):
        return functional_call(norm, ({"weight": w_, "bias": b_}, buffers), (x_,), {"pool": pool})

    assert torch.autograd.gradcheck(fn, (x, w, b))
    assert torch.autograd.gradgradcheck(fn, (x, w, b))


def test_task_mode_is_transductive_clip_mode_is_not():
    batch = clips(tiny(frames=8), 4, seed=3)
    other = clips(tiny(frames=8), 4, seed=4)
    mixed = torch.cat((batch[:1], other[1:]))  # same first (query) clip, other companions

    task = seeded_model(tiny(frames=8, bn_mode="task"))
    assert not torch.allclose(task(batch)[0], task(mixed)[0], atol=1e-4)

    clip = seeded_model(tiny(frames=8, bn_mode="clip"))
    assert clip.bn_mode == "clip"
    for head in ("pri", "aux"):
        alone = clip(batch[:1], head=head)[0]
        assert torch.allclose(clip(batch, head=head)[0], alone, atol=1e-5)
        assert torch.allclose(clip(mixed, head=head)[0], alone, atol=1e-5)


def test_clip_mode_refuses_a_single_value_per_channel():
    # tiny: 16 px -> 1x1 maps, M = 6 -> one time step after the 3D conv.
    model = build_model(tiny(bn_mode="clip"))
    with pytest.raises(ValueError, match="constant"):
        model(clips(model.cfg, 2))


def test_running_mode_eval_is_independent_of_the_batch():
    model = seeded_model(tiny(bn_mode="running", aux_head="decoder"))
    x = clips(model.cfg, 4, seed=5)
    # Fill the running statistics on a few outer passes, functionally.
    params, buffers = dict(model.named_parameters()), dict(model.named_buffers())
    before = {n: b.clone() for n, b in buffers.items()}
    functional_call(model, (params, buffers), (x,), {"head": "both"})  # not asked: no change
    assert all(torch.equal(before[n], b) for n, b in buffers.items())
    for seed in range(3):
        functional_call(
            model,
            (params, buffers),
            (clips(model.cfg, 4, seed=10 + seed),),
            {"head": "both", "update_stats": True},
        )
    assert all(not torch.equal(before[n], b) for n, b in buffers.items())

    model.eval()
    mixed = torch.cat((x[:1], clips(model.cfg, 3, seed=6)))
    for head in ("pri", "aux"):
        alone = model(x[:1], head=head)[0]
        assert torch.allclose(model(x, head=head)[0], alone, atol=1e-5)
        assert torch.allclose(model(mixed, head=head)[0], alone, atol=1e-5)


# ---------------------------------------------------------------- checkpoints


def test_checkpoint_round_trip(tmp_path):
    cfg = tiny(bn_mode="running", aux_head="decoder", input_mode="frames+delta")
    model = seeded_model(cfg)
    x = clips(cfg, 3)
    model(x, update_stats=True)  # non-default running statistics must survive too
    model.eval()
    extra = {"step": 7, "labels": ["a", "b"], "metrics": {"acc": 0.5, "ci": None}}
    expected = model(x, head="both")

    buf = io.BytesIO()
    save_checkpoint(buf, model, cfg, extra)
    buf.seek(0)
    raw = torch.load(io.BytesIO(buf.getvalue()), weights_only=True)
    assert raw["config"]["input_mode"] == "frames+delta"
    loaded, loaded_cfg, meta = load_checkpoint(buf)
    assert loaded_cfg == cfg and not loaded.training
    assert meta["extra"] == extra
    assert meta["versions"]["torch"] == torch.__version__ and {"python", "lightman"} <= set(
        meta["versions"]
    )
    for a, b in zip(loaded(x, head="both"), expected):
        assert torch.equal(a, b)

    path = tmp_path / "sub" / "model.pt"
    save_checkpoint(path, model, cfg, extra)
    assert [p.name for p in path.parent.iterdir()] == ["model.pt"]  # no temporary left
    again, _, _ = load_checkpoint(str(path))
    assert torch.equal(again(x), expected[0])


def test_checkpoint_errors_are_specific(tmp_path):
    cfg = tiny()
    model = build_model(cfg)
    with pytest.raises(TypeError, match=r"extra\.metrics\.curve"):
        save_checkpoint(io.BytesIO(), model, cfg, {"metrics": {"curve": torch.zeros(3)}})
    with pytest.raises(ValueError, match="not the config"):
        save_checkpoint(io.BytesIO(), model, replace(cfg, ways=3), {})
    bad = tmp_path / "garbage.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="garbage.pt"):
        load_checkpoint(bad)
    buf = io.BytesIO()
    torch.save({"state_dict": {}}, buf)
    buf.seek(0)
    with pytest.raises(ValueError, match="keys"):
        load_checkpoint(buf)

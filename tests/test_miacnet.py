"""MIACNet behind the model interface: shapes, gradients, which input reaches which branch,
and a second-order meta-step through it against the plain per-task loop (float64)."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch.func import functional_call

from lightman.models.learners import build_learner, learner_config
from lightman.models.miacnet import apex_motion
from lightman.models.net import PRESETS, build_model
from lightman.tasks.preprocess import spot_apex

sys.path.insert(0, str(Path(__file__).parent))  # pytest runs with --import-mode=importlib
from test_meta_gradient import DT, assert_close, make_tasks, ref_meta_grad  # noqa: E402

TINY = replace(PRESETS["tiny"], backbone="miacnet", frames=4)


def clips(n: int, cfg=TINY, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shape = (n, cfg.frames, cfg.in_channels, cfg.image_size, cfg.image_size)
    return torch.rand(shape, generator=g, dtype=dtype)


@pytest.mark.parametrize("backbone", ["miacnet", "miacnet_action"])
@pytest.mark.parametrize("aux_head", ["embed", "decoder"])
def test_shapes_match_the_clip_backbone_interface(backbone, aux_head):
    cfg = replace(TINY, backbone=backbone, aux_head=aux_head, image_size=32)
    model = build_model(cfg)
    x = clips(3, cfg)
    feats = model.backbone(x)
    assert feats.embedding.shape == (3, cfg.hidden)
    sizes = [16, 8, 4, 2]  # 1/2 .. 1/16 of 32 px
    assert [tuple(s.shape) for s in feats.stages] == [(3, 1, cfg.hidden, h, h) for h in sizes]
    assert feats.temporal.shape == (3, 1, cfg.hidden, 2, 2)
    logits, aux = model(x, head="both")
    assert logits.shape == (3, cfg.ways) and aux.shape == (3, cfg.aux_dim)


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="input_mode=frames"):
        replace(TINY, input_mode="delta")
    with pytest.raises(ValueError, match="multiple of 16"):
        replace(TINY, image_size=24)
    assert replace(TINY, frames=2).frames == 2  # no 3D convolution: two frames suffice


def test_gradients_reach_both_branches():
    model = build_model(TINY)
    loss = model(clips(4), head="both")[0].logsumexp(-1).sum()
    loss.backward()
    for branch in ("backbone.action.", "backbone.position.", "backbone.project."):
        grads = [p.grad for n, p in model.named_parameters() if n.startswith(branch)]
        assert grads and all(g is not None for g in grads), branch
        assert sum(float(g.abs().sum()) for g in grads) > 0, branch


def branch_outputs(model, x):
    """(action map, position map) of clips x, each branch run on what the backbone gives it."""
    g = model.backbone
    return g.action(apex_motion(x))[-1], g.position(x[:, 0])


def test_position_branch_sees_only_the_onset_and_action_branch_only_the_motion():
    model = build_model(TINY).eval()
    x = clips(4)
    act, pos = branch_outputs(model, x)
    # the same face offset in every frame: the motion is unchanged, the onset is not
    shifted = x + 0.3 * torch.rand(x[:, :1].shape, generator=torch.Generator().manual_seed(1))
    act2, pos2 = branch_outputs(model, shifted)
    torch.testing.assert_close(act2, act, rtol=1e-5, atol=1e-5)
    assert (pos2 - pos).abs().max() > 1e-3
    # later frames moved, the onset kept: the position map is bit-identical
    moved = x.clone()
    moved[:, 1:] += 0.2
    act3, pos3 = branch_outputs(model, moved)
    assert torch.equal(pos3, pos)
    assert (act3 - act).abs().max() > 1e-3
    # and through the whole model: a shared offset changes the embedding only via position
    feats = model.backbone(shifted)
    without = replace(TINY, backbone="miacnet_action")
    action_only = build_model(without).eval()
    action_only.load_state_dict(
        {k: v for k, v in model.state_dict().items() if ".position." not in k}
    )
    torch.testing.assert_close(
        action_only.backbone(shifted).embedding, action_only.backbone(x).embedding
    )
    assert (feats.embedding - model.backbone(x).embedding).abs().max() > 1e-4


def test_apex_is_the_frame_that_moved_most():
    x = torch.zeros(2, 5, 1, 4, 4)
    x[0, 3] = 1.0  # clip 0: apex at t = 3
    x[1, 1], x[1, 4] = 0.5, 0.2  # clip 1: apex at t = 1
    motion = apex_motion(x)
    assert motion.shape == (2, 1, 1, 4, 4)
    assert torch.equal(motion[0, 0], x[0, 3]) and torch.equal(motion[1, 0], x[1, 1])


def test_apex_is_not_the_last_frame_of_a_drifting_clip():
    # illumination drifts linearly onset -> offset (0.1 per frame); a smaller bump at t = 2.
    # |frame_t - onset| is largest at the last frame; against the onset -> offset blend the
    # drift cancels and the bump is the apex, as ingest's estimate finds it
    t = torch.arange(6, dtype=torch.float32).view(1, 6, 1, 1, 1)
    x = (0.1 * t).expand(1, 6, 1, 4, 4).clone()
    x[0, 2] += 0.3
    assert torch.allclose(apex_motion(x)[0, 0], x[0, 2] - x[0, 0])
    frames = (x[0, :, 0] * 255).numpy()  # the same clip through the ingest estimate
    assert spot_apex(frames) == 2


@pytest.mark.parametrize("name,steps", [("lightman", 2), ("maml", 1)])
def test_second_order_meta_step_matches_the_plain_loop(name, steps):
    torch.manual_seed(0)
    model = build_model(TINY).to(DT).train()
    params, buffers = dict(model.named_parameters()), dict(model.named_buffers())
    tasks = make_tasks(2, (4, 3, 16, 16), ways=TINY.ways, shots=1, query=1)

    def fwd(p, x, head):
        return functional_call(model, (p, buffers), (x,), {"head": head})

    # maml: λ1 = 1 makes the reference's inner loss the plain CE (its aux term weighs 0)
    lam = 1.0 if name == "maml" else 0.55
    ref = learner_config(inner_lr=0.1, inner_steps=steps, sigma=(2.0,), lambda_pri=lam)
    cfg = ref if name == "lightman" else learner_config(name, inner_lr=0.1, inner_steps=steps)
    got, _ = build_learner(cfg).meta_grads(model, params, buffers, tasks)
    want = ref_meta_grad(fwd, params, tasks, ref)
    assert_close(got, want, rtol=1e-7, atol=1e-10)
    # the second-order term is there: first order differs
    fo, _ = build_learner(replace(cfg, first_order=True)).meta_grads(model, params, buffers, tasks)
    diff = max(float((fo[k] - want[k]).abs().max()) for k in want)
    assert diff > 1e-6


def test_supervised_learner_trains_and_adapts_through_it():
    cfg = replace(TINY, ways=5)
    model = build_model(cfg).train()
    params, buffers = dict(model.named_parameters()), dict(model.named_buffers())
    tasks = make_tasks(1, (4, 3, 16, 16), ways=5, shots=2, query=1, seed=3)
    tasks = [
        replace(t, support_x=t.support_x.float(), query_x=t.query_x.float(), aux_x=t.aux_x.float())
        for t in tasks
    ]
    learner = build_learner(learner_config(name="supervised"))
    grads, _ = learner.meta_grads(model, params, buffers, tasks)
    assert all(torch.isfinite(g).all() for g in grads.values())
    logits = learner.predict(model, params, buffers, tasks[0])
    assert logits.shape == (len(tasks[0].query_y), 5)

"""DIVE model: shapes, gradients, determinism, ablations, test-time fill, the predict() entry point."""

import dataclasses

import pytest
import torch

from dive.config import DataConfig, ModelConfig
from dive.model import DIVE, DIVEOutput, fill_missing_appearance

B = 2

# Model settings of the Moving MNIST scenarios: only s3 has changing appearance.
SCENARIO_MODELS = {
    "s1": ModelConfig(use_dynamic_appearance=False),
    "s2": ModelConfig(use_dynamic_appearance=False),
    "s3": ModelConfig(),
}
ABLATIONS = {
    "dive": ModelConfig(),
    "no_imputation": ModelConfig(use_imputation=False),
    "no_dynamic": ModelConfig(use_dynamic_appearance=False),
    "ddpae": ModelConfig(use_imputation=False, use_dynamic_appearance=False),
    "straight_through": ModelConfig(straight_through=True),
    "slot_spread": ModelConfig(slot_spread=0.5),
    "track": ModelConfig(pose_inference="track"),
    "track_ddpae": ModelConfig(pose_inference="track", use_imputation=False, use_dynamic_appearance=False),
}


def make(model_cfg=None, data_cfg=None, seed=0) -> DIVE:
    torch.manual_seed(seed)
    return DIVE(model_cfg or ModelConfig(), data_cfg or DataConfig())


def video(model: DIVE, batch=B, seed=1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, *model.input_shape, generator=g)


def check_shapes(out: DIVEOutput, model: DIVE, batch: int) -> None:
    t_in, c, h, w = model.input_shape
    T, K, S, A = model.t_in + model.t_out, model.n_slots, model.obj_size, model.app_dim
    expected = {
        "input_masked": (batch, t_in, c, h, w),
        "input_rec": (batch, t_in, c, h, w),
        "pred": (batch, model.t_out, c, h, w),
        "slots": (batch, T, K, c, h, w),
        "objects": (batch, T, K, c, S, S),
        "pose": (batch, T, K, 3),
        "presence_logits": (batch, t_in, K),
        "presence": (batch, t_in, K),
        "presence_hard": (batch, t_in, K),
        "app_mu": (batch, T, K, A),
        "app_sigma": (batch, T, K, A),
        "pose_mu": (batch, T, K, 3),
        "pose_sigma": (batch, T, K, 3),
        "init_mu": (batch, K, 3),
        "init_sigma": (batch, K, 3),
    }
    got = {f.name: tuple(getattr(out, f.name).shape) for f in dataclasses.fields(out)}
    assert got == expected
    for name in expected:
        assert torch.isfinite(getattr(out, name)).all(), name
    assert out.input_masked.max() <= 1 and out.pred.max() <= 1 and out.pred.min() >= 0
    assert (out.app_sigma > 0).all() and (out.pose_sigma > 0).all() and (out.init_sigma > 0).all()
    s = out.pose[..., 0]
    assert (s >= model.scale_prior - 1).all() and (s <= model.scale_prior + 1).all()


def simple_loss(out: DIVEOutput, x: torch.Tensor) -> torch.Tensor:
    terms = [out.app_mu, out.app_sigma, out.pose_mu, out.pose_sigma, out.init_mu, out.init_sigma]
    return (((out.input_masked - x) ** 2).mean() + out.pred.pow(2).mean()
            + sum(t.pow(2).mean() for t in terms) + out.presence_logits.mean())


@pytest.mark.parametrize("scenario", sorted(SCENARIO_MODELS))
def test_shapes_moving_mnist(scenario):
    model = make(SCENARIO_MODELS[scenario])
    x = video(model)
    check_shapes(model(x, temperature=0.5, gamma_app=0.3, gamma_imp=0.25), model, B)
    model.eval()
    out = model(x)
    check_shapes(out, model, B)
    assert set(out.presence.unique().tolist()) <= {0.0, 1.0}
    torch.testing.assert_close(out.presence, out.presence_hard)


def test_shapes_pedestrians():
    data = DataConfig(dataset="pedestrians", image_size=256, t_out=5)
    model = make(ModelConfig(n_slots=3, hidden=96, scale_prior=3.5), data)
    assert model.obj_size == 128
    x = video(model, batch=1)
    out = model(x, temperature=0.5)
    check_shapes(out, model, 1)
    simple_loss(out, x).backward()


@pytest.mark.parametrize("name", sorted(ABLATIONS))
@pytest.mark.parametrize("render_slots", [True, False])
def test_every_parameter_gets_a_gradient(name, render_slots):
    model = make(ABLATIONS[name])
    x = video(model)
    out = model(x, temperature=0.5, gamma_app=0.0, gamma_imp=0.5, render_slots=render_slots)
    simple_loss(out, x).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"no gradient reaches {missing}"


def test_straight_through_presence_is_hard_in_training():
    model = make(ModelConfig(straight_through=True))
    out = model(video(model), temperature=0.5)
    assert set(out.presence.unique().tolist()) <= {0.0, 1.0} and out.presence.requires_grad


def test_conv_depth_follows_the_size():
    from dive.nn.convnets import FrameEncoder, ObjectDecoder, num_halvings

    assert [num_halvings(s) for s in (8, 32, 64, 256)] == [1, 3, 4, 6]
    with pytest.raises(ValueError, match="4 \\* 2\\*\\*n"):
        num_halvings(48)
    assert FrameEncoder(1, 256, 32)(torch.rand(2, 1, 256, 256)).shape == (2, 32)
    assert ObjectDecoder(3, 16, 8)(torch.randn(2, 8)).shape == (2, 3, 16, 16)


def test_ablations_drop_their_parameters():
    names = {n for n, _ in make(ModelConfig(use_imputation=False, use_dynamic_appearance=False)).named_parameters()}
    assert not any("impute_regression" in n or "predictor" in n or "dyn_" in n for n in names)
    full = {n for n, _ in make().named_parameters()}
    assert any("impute_regression" in n for n in full) and any("dyn_change" in n for n in full)


def test_eval_is_deterministic_and_ignores_noise():
    model = make().eval()
    x = video(model)
    a = model(x)
    b = model(x, temperature=0.1, gamma_app=1.0, gamma_imp=0.9, noise=model.sample_noise(B, "cpu"))
    for f in dataclasses.fields(a):
        assert torch.equal(getattr(a, f.name), getattr(b, f.name)), f.name


def test_same_noise_gives_same_output_in_training():
    model = make()
    x = video(model)
    g = torch.Generator().manual_seed(7)
    noise = model.sample_noise(B, "cpu", generator=g)
    assert torch.equal(noise["app"], model.sample_noise(B, "cpu", torch.Generator().manual_seed(7))["app"])
    kw = dict(temperature=0.5, gamma_app=0.3, gamma_imp=0.25)
    a, b = model(x, noise=noise, **kw), model(x, noise=noise, **kw)
    for f in dataclasses.fields(a):
        assert torch.equal(getattr(a, f.name), getattr(b, f.name)), f.name
    c = model(x, noise=model.sample_noise(B, "cpu", generator=g), **kw)
    assert not torch.equal(a.pred, c.pred)


def test_noise_shapes():
    model = make()
    noise = model.sample_noise(3, "cpu")
    T, K = model.t_in + model.t_out, model.n_slots
    assert {k: tuple(v.shape) for k, v in noise.items()} == {
        "app": (3, T, K, model.app_dim), "pose": (3, T, K, 3), "init": (3, K, 3),
        "presence": (3, model.t_in, K), "imp_drop": (3, model.t_in, K), "app_drop": (1,),
    }


@pytest.mark.parametrize("cfg", [ModelConfig(), ModelConfig(use_dynamic_appearance=False)])
def test_without_dynamic_part_appearance_is_constant_over_time(cfg):
    model = make(cfg)
    x = video(model)
    gamma_app = 1.0 if cfg.use_dynamic_appearance else 0.0  # 1.0 drops the dynamic part for sure
    out = model(x, gamma_app=gamma_app)
    torch.testing.assert_close(out.app_mu, out.app_mu[:, :1].expand_as(out.app_mu))
    if cfg.use_dynamic_appearance:
        assert not torch.allclose(model(x, gamma_app=0.0).app_mu[:, 0], model(x, gamma_app=0.0).app_mu[:, -1])


def test_initial_pose_starts_at_the_prior_scale():
    model = make(ModelConfig(scale_prior=3.5), DataConfig(t_in=4, t_out=2)).eval()
    out = model(video(model))
    assert (out.init_mu[..., 0] - 3.5).abs().max() < 0.2
    assert out.init_mu[..., 1:].abs().max() < 0.2


@pytest.mark.parametrize("pose_std, app_std", [(0.05, 0.1), (0.3, 0.02)])
def test_posterior_std_init_sets_the_starting_scales(pose_std, app_std):
    model = make(ModelConfig(pose_std_init=pose_std, app_std_init=app_std), DataConfig(t_in=4, t_out=2)).train()
    out = model(video(model))
    for got, want in ((out.pose_sigma, pose_std), (out.init_sigma, pose_std), (out.app_sigma, app_std)):
        assert (got / want - 1).abs().max() < 0.1
    # the plain init is softplus(0) ~ 0.69 for all three
    plain = make(ModelConfig(), DataConfig(t_in=4, t_out=2)).train()(video(model))
    assert (plain.pose_sigma - 0.693).abs().max() < 0.1 and (plain.app_sigma - 0.693).abs().max() < 0.1


@pytest.mark.parametrize("n_slots", [2, 3])
def test_slot_spread_starts_slots_apart(n_slots):
    from dive.slots import pose_centres

    data = DataConfig(t_in=4, t_out=2)
    spread = make(ModelConfig(n_slots=n_slots, slot_spread=0.5), data).eval()
    plain = make(ModelConfig(n_slots=n_slots), data).eval()
    x = video(spread)
    for model, apart in ((spread, True), (plain, False)):
        centres = pose_centres(model(x).pose[:, 0]) * 32  # (b k 2) pixels from the centre
        gaps = torch.cdist(centres, centres)[:, ~torch.eye(n_slots, dtype=torch.bool)]
        assert (gaps > 15).all() if apart else (gaps < 3).all(), gaps
    assert set(dict(spread.named_parameters())) - set(dict(plain.named_parameters())) == {"pose.init_slot_offset"}


def test_imputation_ignores_encoding_where_weight_is_zero():
    pose_net = make().pose
    g = torch.Generator().manual_seed(0)
    e = torch.randn(2, 5, 2, pose_net.hidden, generator=g)
    e2 = e.clone()
    e2[:, 1:] = torch.randn(e2[:, 1:].shape, generator=g)
    missing = torch.zeros(2, 5, 2)
    out, _ = pose_net.impute(e, missing)
    out2, _ = pose_net.impute(e2, missing)
    for a, b in zip(out, out2):
        torch.testing.assert_close(a, b)  # frame 0 reads e, every later frame g(state)
    seen, _ = pose_net.impute(e2, torch.ones(2, 5, 2))
    assert not torch.allclose(seen[-1], out[-1])


def test_fill_missing_appearance_copies_nearest_observed_neighbour():
    T, K, A = 6, 2, 3
    z = torch.arange(T, dtype=torch.float32)[None, :, None, None].expand(2, T, K, A).clone()
    z[1] += 100  # batch item 1 is told apart by value
    observed = torch.ones(2, T, K)
    observed[0, 3, 0] = 0  # -> t-1 = 2
    observed[0, 2:4, 1] = 0  # t=2 -> 1; t=3 -> t-2 = 1
    observed[1, 0, 0] = 0  # no earlier frame -> t+1 = 1
    observed[1, 0:2, 1] = 0  # t=0 -> t+2 = 2; t=1 -> t+1 = 2
    observed[1, :, 0] = 0
    observed[1, 5, 0] = 1  # slot 0 of item 1 seen only at t=5: t=3,4 copy it, t=0..2 keep their own
    filled = fill_missing_appearance(z, observed)
    source = filled[..., 0]  # (b t k): the frame each value came from (+100 for item 1)
    assert source[0, :, 0].tolist() == [0, 1, 2, 2, 4, 5]
    assert source[0, :, 1].tolist() == [0, 1, 1, 1, 4, 5]
    assert source[1, :, 0].tolist() == [100, 101, 102, 105, 105, 105]
    assert source[1, :, 1].tolist() == [102, 102, 102, 103, 104, 105]


def test_fill_missing_in_the_model():
    model = make().eval()
    x = video(model)
    T, K = model.t_in + model.t_out, model.n_slots
    decoded = []

    def force_presence(module, args, logits):  # logits ((b t) k 1): slot 0 missing at frame 4
        logits = torch.full_like(logits, 5.0)
        logits.view(B, model.t_in, K)[:, 4, 0] = -5.0
        return logits

    def keep_latents(module, args):  # the decoder's input z ((b T k) a)
        decoded.append(args[0].reshape(B, T, K, -1))

    hooks = [model.pose.presence_head.register_forward_hook(force_presence),
             model.decoder.register_forward_pre_hook(keep_latents)]
    try:
        filled = model(x)
        model(x, fill_missing=False)
    finally:
        for h in hooks:
            h.remove()
    z_filled, z_plain = decoded
    assert filled.presence_hard[:, 4, 0].eq(0).all() and filled.presence_hard.sum() == B * model.t_in * K - B
    assert torch.equal(z_filled[:, 4, 0], z_plain[:, 3, 0])  # copied from t - 1
    assert not torch.equal(z_plain[:, 4, 0], z_plain[:, 3, 0])
    assert torch.equal(z_filled[:, :4], z_plain[:, :4]) and torch.equal(z_filled[:, 5:], z_plain[:, 5:])
    assert torch.equal(z_filled[:, 4, 1], z_plain[:, 4, 1])


def test_predict_returns_eval_outputs_and_restores_mode():
    model = make()
    x = video(model)
    result = model.predict(x)
    assert model.training
    T, K = model.t_in + model.t_out, model.n_slots
    assert {k: tuple(v.shape) for k, v in result.items()} == {
        "reconstruction": (B, 10, 1, 64, 64), "prediction": (B, 10, 1, 64, 64),
        "slots": (B, T, K, 1, 64, 64), "pose": (B, T, K, 3),
        "presence_prob": (B, 10, K), "presence": (B, 10, K),
    }
    assert not result["prediction"].requires_grad
    torch.testing.assert_close(result["prediction"], model.eval()(x).pred)


def test_predict_validates_input():
    model = make()
    with pytest.raises(ValueError, match=r"expected input of shape \(B, 10, 1, 64, 64\), got \(B, 10, 64, 64\)"):
        model.predict(torch.rand(2, 10, 64, 64))
    with pytest.raises(ValueError, match=r"got \(B, 8, 1, 64, 64\)"):
        model.predict(torch.rand(2, 8, 1, 64, 64))
    with pytest.raises(ValueError, match="floating"):
        model.predict(torch.zeros(2, 10, 1, 64, 64, dtype=torch.uint8))
    bad = torch.rand(1, 10, 1, 64, 64)
    bad[0, 3, 0, 5, 5] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        model.predict(bad)


def test_runs_under_bfloat16_autocast():
    model = make(data_cfg=DataConfig(t_in=4, t_out=2))
    x = video(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, temperature=0.5, gamma_imp=0.25)
        loss = simple_loss(out, x)
    loss.float().backward()
    assert torch.isfinite(out.pred.float()).all()


def test_future_poses_only_cuts_the_future_gradient_into_appearance():
    data = DataConfig(t_in=4, t_out=3)
    model = make(ModelConfig(pose_inference="track"), data)
    x = video(model)
    noise = model.sample_noise(B, "cpu", torch.Generator().manual_seed(3))
    grads, preds = {}, {}
    for cut in (False, True):
        model.zero_grad()
        out = model(x, noise=noise, future_poses_only=cut)
        out.pred.sum().backward()  # the future frames alone
        grads[cut] = {n: p.grad.clone() if p.grad is not None else None for n, p in model.named_parameters()}
        preds[cut] = out.pred.detach()
    torch.testing.assert_close(preds[True], preds[False])  # the values do not change
    def reached(cut, prefix):
        return any(g is not None and g.abs().sum() > 0 for n, g in grads[cut].items() if n.startswith(prefix))
    for prefix in ("decoder.", "appearance."):
        assert reached(False, prefix) and not reached(True, prefix), prefix
    assert reached(True, "pose.future_mu") and reached(True, "pose.predict_cell")  # the future poses still learn


@pytest.mark.parametrize("name, dtype, tol", [("dive", torch.float64, 1e-10), ("track", torch.float32, 1e-4)])
def test_composites_without_slot_images_are_the_same(name, dtype, tol):
    # render_slots=False (the training step's setting) gives the ELBO's inputs and gradients unchanged.
    # (The ink tracker runs in float32 only.)
    model = make(ABLATIONS[name]).to(dtype)
    x = video(model).to(dtype)
    noise = {k: v.to(dtype) for k, v in model.sample_noise(B, "cpu", torch.Generator().manual_seed(4)).items()}
    results = {}
    for render in (True, False):
        model.zero_grad()
        out = model(x, noise=noise, temperature=0.5, render_slots=render)
        simple_loss(out, x).backward()
        results[render] = out, [p.grad.clone() for p in model.parameters()]
    (full, full_grads), (fast, fast_grads) = results[True], results[False]
    assert fast.slots is None and fast.input_rec is None and full.slots is not None
    torch.testing.assert_close(fast.input_masked, full.input_masked, atol=tol, rtol=0)
    torch.testing.assert_close(fast.pred, full.pred, atol=tol, rtol=0)
    for a, b in zip(fast_grads, full_grads):
        torch.testing.assert_close(a, b, atol=tol, rtol=tol)


def test_appearance_predictor_steps_its_lstm_one_frame_at_a_time():
    # The layer-by-layer lstm_cell loop is the predictor LSTM run on one-frame sequences.
    model = make()
    app = model.appearance
    g = torch.Generator().manual_seed(5)
    last = torch.randn(B, model.n_slots, app.hidden, generator=g)
    state = tuple(torch.randn(2, B * model.n_slots, app.hidden, generator=g) for _ in range(2))
    x, s, want = last.reshape(B * model.n_slots, 1, -1), state, []
    for _ in range(app.t_out):
        x, s = app.predictor(x, s)
        want.append(x.reshape(B, model.n_slots, -1))
    torch.testing.assert_close(app.predict(last, state), torch.stack(want, dim=1), atol=1e-6, rtol=1e-5)

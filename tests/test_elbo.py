"""dive.elbo term by term, against independent computations with torch.distributions."""

import math
import warnings
from types import SimpleNamespace

import pytest
import torch
from torch.distributions import Bernoulli, Normal, kl_divergence

from dive.config import LossConfig
from dive.elbo import elbo, gaussian_blur
from dive.errors import InputError

B, T_IN, T_OUT, H, W, K, A = 2, 3, 2, 8, 6, 2, 4
T = T_IN + T_OUT
HIDDEN_ROWS = 3

TERMS = ("ll_input", "ll_future", "kl_app", "kl_pose_input", "kl_pose_future", "kl_init", "kl_presence")
KL_TERMS = TERMS[2:]


def make_cfg():
    # every weight and prior different from its neighbours, so mixing two up is caught
    return LossConfig(
        likelihood_std=0.45,
        app_prior_std=0.8,
        pose_prior_std=0.15,
        init_pose_prior_mean=[2.5, 0.2, -0.3],
        init_pose_prior_std=[0.25, 0.9, 1.3],
        presence_prior=0.35,
        kl_app_weight=0.5,
        kl_pose_weight=2.0,
        kl_init_weight=3.0,
        kl_presence_weight=0.7,
    )


def make_out(seed=0, C=1, requires_grad=True):
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=g)

    def pos(*shape):
        return torch.exp(0.5 * torch.randn(*shape, generator=g)) * 0.3

    fields = dict(
        input_masked=torch.rand(B, T_IN, C, H, W, generator=g),
        pred=torch.rand(B, T_OUT, C, H, W, generator=g),
        presence_logits=3 * rand(B, T_IN, K),
        app_mu=rand(B, T, K, A),
        app_sigma=pos(B, T, K, A),
        pose_mu=0.2 * rand(B, T, K, 3),
        pose_sigma=pos(B, T, K, 3) * 0.3,
        init_mu=rand(B, K, 3) + torch.tensor([3.0, 0.0, 0.0]),
        init_sigma=pos(B, K, 3),
    )
    if requires_grad:
        fields = {k: v.requires_grad_() for k, v in fields.items()}
    return SimpleNamespace(**fields)


def make_batch(seed=1, C=1, per_channel=False):
    g = torch.Generator().manual_seed(seed)
    visible = torch.ones(B, C if per_channel else 1, H, W)
    visible[:, :, :HIDDEN_ROWS] = 0
    if per_channel:
        visible[:, 0, -1] = 0  # the last row hidden in channel 0 only
    return {
        "input": torch.rand(B, T_IN, C, H, W, generator=g),
        "target": torch.rand(B, T_OUT, C, H, W, generator=g),
        "visible": visible,
    }


def oracle_terms(out, batch, cfg, future_mask=False):
    """Every term from torch.distributions, masking by boolean selection (not multiplication)."""
    x, y = batch["input"], batch["target"]
    vis = batch["visible"].bool().unsqueeze(1)  # b 1 c h w
    lp_in = Normal(out.input_masked, cfg.likelihood_std).log_prob(x)
    lp_fut = Normal(out.pred, cfg.likelihood_std).log_prob(y)
    ll_input = lp_in[vis.expand_as(lp_in)].sum()
    ll_future = lp_fut[vis.expand_as(lp_fut)].sum() if future_mask else lp_fut.sum()

    def normal_kl(mu, sigma, pmu, psigma):
        pmu = torch.as_tensor(pmu, dtype=mu.dtype).expand_as(mu)
        psigma = torch.as_tensor(psigma, dtype=mu.dtype).expand_as(mu)
        return kl_divergence(Normal(mu, sigma), Normal(pmu, psigma)).sum()

    return {
        "ll_input": ll_input,
        "ll_future": ll_future,
        "kl_app": normal_kl(out.app_mu, out.app_sigma, 0.0, cfg.app_prior_std),
        "kl_pose_input": normal_kl(out.pose_mu[:, :T_IN], out.pose_sigma[:, :T_IN], 0.0, cfg.pose_prior_std),
        "kl_pose_future": normal_kl(out.pose_mu[:, T_IN:], out.pose_sigma[:, T_IN:], 0.0, cfg.pose_prior_std),
        "kl_init": normal_kl(out.init_mu, out.init_sigma, cfg.init_pose_prior_mean, cfg.init_pose_prior_std),
        "kl_presence": kl_divergence(
            Bernoulli(logits=out.presence_logits),
            Bernoulli(probs=torch.full_like(out.presence_logits, cfg.presence_prior)),
        ).sum(),
    }


def close(a, b):
    torch.testing.assert_close(a, b, rtol=2e-5, atol=1e-3)


@pytest.mark.parametrize("future_mask", [False, True])
@pytest.mark.parametrize("C, per_channel", [(1, False), (3, False), (3, True)])
def test_terms_match_oracle(future_mask, C, per_channel):
    out, batch, cfg = make_out(C=C), make_batch(C=C, per_channel=per_channel), make_cfg()
    res = elbo(out, batch, cfg, future_mask=future_mask)
    expected = oracle_terms(out, batch, cfg, future_mask=future_mask)
    assert set(res.terms) == set(TERMS)
    for name in TERMS:
        assert res.terms[name].dim() == 0, name
        close(res.terms[name], expected[name])
        assert torch.isfinite(res.terms[name])
    for name in KL_TERMS:
        assert res.terms[name] > 0, name


@pytest.mark.parametrize("kl_weight", [1.0, 0.37, 0.0])
def test_total_is_weighted_combination_and_loss_is_per_element(kl_weight):
    out, batch, cfg = make_out(), make_batch(), make_cfg()
    res = elbo(out, batch, cfg, kl_weight=kl_weight)
    t = oracle_terms(out, batch, cfg)
    expected_total = t["ll_input"] + t["ll_future"] - kl_weight * (
        0.5 * t["kl_app"] + 2.0 * (t["kl_pose_input"] + t["kl_pose_future"])
        + 3.0 * t["kl_init"] + 0.7 * t["kl_presence"]
    )
    close(res.total, expected_total)
    n = B * (T_IN + T_OUT) * 1 * H * W
    assert res.n_elements == n
    torch.testing.assert_close(res.loss, -res.total / n)
    assert res.weights == pytest.approx({
        "ll_input": 1.0, "ll_future": 1.0,
        "kl_app": kl_weight * 0.5, "kl_pose_input": kl_weight * 2.0, "kl_pose_future": kl_weight * 2.0,
        "kl_init": kl_weight * 3.0, "kl_presence": kl_weight * 0.7,
    })
    # the total is exactly the sum of weighted terms it reports
    recombined = sum(res.weights[k] * res.terms[k] * (1 if k.startswith("ll") else -1) for k in TERMS)
    torch.testing.assert_close(res.total, recombined)


def test_kl_weight_scales_only_the_kl_weights():
    out, batch, cfg = make_out(), make_batch(), make_cfg()
    full = elbo(out, batch, cfg, kl_weight=1.0)
    part = elbo(out, batch, cfg, kl_weight=0.25)
    for name in TERMS:
        assert torch.equal(full.terms[name], part.terms[name])  # terms do not depend on the weight
    for name in ("ll_input", "ll_future"):
        assert part.weights[name] == full.weights[name] == 1.0
    for name in KL_TERMS:
        assert part.weights[name] == pytest.approx(0.25 * full.weights[name])
    zero = elbo(out, batch, cfg, kl_weight=0.0)
    torch.testing.assert_close(zero.total, full.terms["ll_input"] + full.terms["ll_future"])


def test_hidden_input_pixels_do_not_count():
    out, batch, cfg = make_out(requires_grad=False), make_batch(), make_cfg()
    base = elbo(out, batch, cfg).terms["ll_input"]

    # 100 is outside the [0, 1] the value check asks for: it is off so that one pixel moves the sum a lot
    changed = dict(batch, input=batch["input"].clone())
    changed["input"][:, :, :, :HIDDEN_ROWS] = 100.0  # far from any prediction
    assert torch.equal(elbo(out, changed, cfg, check_values=False).terms["ll_input"], base)

    # whereas a visible pixel does count
    changed["input"][0, 0, 0, HIDDEN_ROWS, 0] = 100.0
    assert elbo(out, changed, cfg, check_values=False).terms["ll_input"] < base - 1000

    # and the prediction at hidden pixels does not matter either
    out2 = SimpleNamespace(**vars(out))
    out2.input_masked = out.input_masked.clone()
    out2.input_masked[:, :, :, :HIDDEN_ROWS] = -50.0
    assert torch.equal(elbo(out2, batch, cfg).terms["ll_input"], base)


def test_future_mask_excludes_hidden_future_pixels_only_when_on():
    out, batch, cfg = make_out(requires_grad=False), make_batch(), make_cfg()
    changed = dict(batch, target=batch["target"].clone())
    changed["target"][:, :, :, :HIDDEN_ROWS] = 100.0

    masked, masked2 = (elbo(out, b, cfg, future_mask=True, check_values=False).terms["ll_future"]
                       for b in (batch, changed))
    assert torch.equal(masked, masked2)

    unmasked, unmasked2 = (elbo(out, b, cfg, future_mask=False, check_values=False).terms["ll_future"]
                           for b in (batch, changed))
    assert unmasked2 < unmasked - 1000
    assert not torch.equal(masked, unmasked)


def test_per_channel_visibility():
    C = 3
    out, batch, cfg = make_out(C=C, requires_grad=False), make_batch(C=C, per_channel=True), make_cfg()
    base = elbo(out, batch, cfg).terms["ll_input"]
    changed = dict(batch, input=batch["input"].clone())
    changed["input"][:, :, 0, -1] = 100.0  # hidden in channel 0
    assert torch.equal(elbo(out, changed, cfg, check_values=False).terms["ll_input"], base)
    changed["input"][:, :, 1, -1] = 100.0  # visible in channel 1
    assert elbo(out, changed, cfg, check_values=False).terms["ll_input"] < base - 1000


def test_gradient_reaches_every_field():
    out, batch, cfg = make_out(), make_batch(), make_cfg()
    elbo(out, batch, cfg, kl_weight=0.5).loss.backward()
    for name, value in vars(out).items():
        assert value.grad is not None, name
        assert torch.isfinite(value.grad).all(), name
        assert value.grad.abs().sum() > 0, name
    # both halves of the pose sequence are scored
    assert out.pose_mu.grad[:, :T_IN].abs().sum() > 0
    assert out.pose_mu.grad[:, T_IN:].abs().sum() > 0
    # hidden prediction pixels get no gradient, visible ones do
    assert (out.input_masked.grad[:, :, :, :HIDDEN_ROWS] == 0).all()
    assert (out.input_masked.grad[:, :, :, HIDDEN_ROWS:] != 0).all()


def test_gradient_of_loss_matches_oracle():
    out, batch, cfg = make_out(), make_batch(), make_cfg()
    elbo(out, batch, cfg, kl_weight=0.5).loss.backward()
    ours = {k: v.grad.clone() for k, v in vars(out).items()}
    for v in vars(out).values():
        v.grad = None
    t = oracle_terms(out, batch, cfg)
    total = t["ll_input"] + t["ll_future"] - 0.5 * (
        0.5 * t["kl_app"] + 2.0 * (t["kl_pose_input"] + t["kl_pose_future"])
        + 3.0 * t["kl_init"] + 0.7 * t["kl_presence"])
    (-total / (B * T * H * W)).backward()
    for name, value in vars(out).items():
        torch.testing.assert_close(ours[name], value.grad, rtol=1e-4, atol=1e-7, msg=name)


def _expect_shape_error(out, batch, expected, got):
    with pytest.raises(ValueError) as info:
        elbo(out, batch, make_cfg())
    msg = str(info.value)
    assert "expected" in msg
    assert str(tuple(expected)) in msg and str(tuple(got)) in msg


def test_shape_mismatch_input():
    out, batch = make_out(), make_batch()
    bad = torch.rand(B, T_IN + 1, 1, H, W)
    _expect_shape_error(out, dict(batch, input=bad), out.input_masked.shape, bad.shape)


def test_shape_mismatch_target():
    out, batch = make_out(), make_batch()
    bad = torch.rand(B, T_OUT, 1, H, W + 1)
    _expect_shape_error(out, dict(batch, target=bad), out.pred.shape, bad.shape)


@pytest.mark.parametrize("C, shape", [
    (3, (B, 1, H, W + 1)), (3, (B + 1, 1, H, W)), (3, (B, H, W)), (3, (B, 2, H, W)),
    (1, (B, 3, H, W)),  # would silently broadcast the single channel three times
])
def test_shape_mismatch_visible(C, shape):
    out, batch = make_out(C=C), make_batch(C=C)
    with pytest.raises(ValueError) as info:
        elbo(out, dict(batch, visible=torch.ones(shape)), make_cfg())
    assert "expected" in str(info.value) and str(tuple(shape)) in str(info.value)


def test_scalars_are_plain_floats():
    res = elbo(make_out(), make_batch(), make_cfg(), kl_weight=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning about converting tensors that require grad
        s = res.scalars()
    assert all(type(v) is float for v in s.values())
    assert s["loss"] == pytest.approx(res.loss.item())
    assert s["elbo"] == pytest.approx(res.total.item())
    assert s["weight/kl_init"] == pytest.approx(1.5)
    assert {f"term/{k}" for k in TERMS} <= set(s)


def test_perfect_reconstruction_has_the_normalising_constant():
    """With x == xhat everywhere visible, ll_input = -n_visible (log sigma + log(2 pi) / 2)."""
    out, batch, cfg = make_out(requires_grad=False), make_batch(), make_cfg()
    batch = dict(batch, input=out.input_masked.clone())
    n_visible = B * T_IN * (H - HIDDEN_ROWS) * W
    expected = -n_visible * (math.log(cfg.likelihood_std) + 0.5 * math.log(2 * math.pi))
    assert elbo(out, batch, cfg).terms["ll_input"].item() == pytest.approx(expected, rel=1e-5)


# --------------------------------------------------------------------------- coarse-to-fine blur


def test_gaussian_blur_matches_a_dense_2d_convolution():
    g = torch.Generator().manual_seed(3)
    x = torch.rand(2, 3, 1, 11, 9, generator=g)
    sigma = 1.3
    r = math.ceil(3 * sigma)
    d = torch.arange(-r, r + 1, dtype=torch.float32)
    k1 = torch.exp(-0.5 * (d / sigma) ** 2)
    k2 = torch.outer(k1, k1) / k1.sum() ** 2  # the 2-D Gaussian, normalised
    dense = torch.nn.functional.conv2d(x.reshape(-1, 1, 11, 9), k2[None, None], padding=r).reshape(x.shape)
    torch.testing.assert_close(gaussian_blur(x, sigma), dense, rtol=1e-5, atol=1e-6)
    assert gaussian_blur(x, 0.0) is x


def test_blurred_likelihood_is_the_likelihood_of_blurred_images():
    out, batch, cfg = make_out(), make_batch(), make_cfg()
    blurred_out = SimpleNamespace(**vars(out))
    blurred_out.input_masked = gaussian_blur(out.input_masked, 1.5)
    blurred_out.pred = gaussian_blur(out.pred, 1.5)
    blurred_batch = dict(batch, input=gaussian_blur(batch["input"], 1.5), target=gaussian_blur(batch["target"], 1.5))
    got = elbo(out, batch, cfg, blur=1.5)
    want = oracle_terms(blurred_out, blurred_batch, cfg)
    for name in TERMS:
        close(got.terms[name], want[name])
    exact = elbo(out, batch, cfg)
    assert not torch.allclose(got.terms["ll_input"], exact.terms["ll_input"])
    for name in KL_TERMS:
        assert torch.equal(got.terms[name], exact.terms[name])


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf"), True, "2"])
def test_blur_must_be_a_finite_non_negative_number(bad):
    with pytest.raises(InputError, match="blur"):
        elbo(make_out(), make_batch(), make_cfg(), blur=bad)

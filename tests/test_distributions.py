"""dive.distributions against torch.distributions as the oracle."""

import math

import pytest
import torch
from torch.distributions import (
    Bernoulli,
    Normal,
    RelaxedBernoulli,
    kl_divergence,
)
from torch.distributions.relaxed_bernoulli import LogitRelaxedBernoulli

from dive.distributions import (
    bernoulli_kl,
    gaussian_kl,
    gaussian_log_likelihood,
    gaussian_log_prob,
    gaussian_rsample,
    hard_decision,
    logistic_noise,
    relaxed_bernoulli_log_prob,
    relaxed_bernoulli_logit_log_prob,
    relaxed_bernoulli_rsample,
    relaxed_bernoulli_rsample_logit,
)

N = 1000
D = torch.float64


def gen(seed):
    return torch.Generator().manual_seed(seed)


def rand_sigma(n, g, lo=-3.0, hi=3.0):
    return torch.exp(torch.empty(n, dtype=D).uniform_(lo, hi, generator=g))


def rand_logits(n, g):
    """Standard-normal logits times 5, with the extremes +-30 and 0 included."""
    logits = 5 * torch.randn(n, dtype=D, generator=g)
    logits[:6] = torch.tensor([-30.0, 30.0, 0.0, -15.0, 15.0, 1e-3], dtype=D)
    return logits


# --------------------------------------------------------------------------- Gaussian


def test_gaussian_log_prob_matches_normal():
    g = gen(0)
    mu = 3 * torch.randn(N, dtype=D, generator=g)
    sigma = rand_sigma(N, g)
    x = mu + sigma * 4 * torch.randn(N, dtype=D, generator=g)
    ours = gaussian_log_prob(x, mu, sigma)
    torch.testing.assert_close(ours, Normal(mu, sigma).log_prob(x), rtol=1e-10, atol=1e-10)


def test_gaussian_log_prob_float32_with_scalar_sigma():
    g = gen(1)
    x, mu = torch.randn(N, generator=g), torch.randn(N, generator=g)
    sigma = torch.tensor(0.3)
    torch.testing.assert_close(gaussian_log_prob(x, mu, sigma), Normal(mu, sigma).log_prob(x))


@pytest.mark.parametrize("weighted", [False, True])
def test_gaussian_log_likelihood_is_the_weighted_sum_of_log_densities(weighted):
    g = gen(7)
    x = torch.rand(3, 4, 1, 5, 6, dtype=D, generator=g)
    mu = torch.rand(3, 4, 1, 5, 6, dtype=D, generator=g)
    mask = (torch.rand(3, 1, 1, 5, 6, generator=g) > 0.3).to(D) if weighted else None  # broadcast over dim 1
    oracle = Normal(mu, 0.3).log_prob(x)
    oracle = (oracle * mask).sum() if weighted else oracle.sum()
    torch.testing.assert_close(gaussian_log_likelihood(x, mu, 0.3, weight=mask), oracle, rtol=1e-12, atol=1e-9)
    mu.requires_grad_()
    ours = torch.autograd.grad(gaussian_log_likelihood(x, mu, torch.tensor(0.3, dtype=D), weight=mask), mu)[0]
    want = torch.autograd.grad(((Normal(mu, 0.3).log_prob(x)) * (1 if mask is None else mask)).sum(), mu)[0]
    torch.testing.assert_close(ours, want, rtol=1e-12, atol=1e-12)


def test_gaussian_log_likelihood_takes_one_std():
    with pytest.raises(ValueError, match="one std"):
        gaussian_log_likelihood(torch.zeros(3), torch.zeros(3), torch.ones(3))


def test_gaussian_kl_matches_oracle():
    g = gen(2)
    mu, pmu = 3 * torch.randn(N, dtype=D, generator=g), 3 * torch.randn(N, dtype=D, generator=g)
    sigma, psigma = rand_sigma(N, g), rand_sigma(N, g)
    ours = gaussian_kl(mu, sigma, pmu, psigma)
    oracle = kl_divergence(Normal(mu, sigma), Normal(pmu, psigma))
    torch.testing.assert_close(ours, oracle, rtol=1e-9, atol=1e-9)
    assert (ours >= 0).all()


@pytest.mark.parametrize("prior_mu, prior_sigma", [(0.0, 1.0), (0.5, 0.1), (-2.0, 3.0)])
def test_gaussian_kl_scalar_prior_broadcasts(prior_mu, prior_sigma):
    g = gen(3)
    mu, sigma = torch.randn(N, dtype=D, generator=g), rand_sigma(N, g, -2, 1)
    ours = gaussian_kl(mu, sigma, prior_mu, prior_sigma)
    oracle = kl_divergence(Normal(mu, sigma),
                           Normal(torch.full_like(mu, prior_mu), torch.full_like(mu, prior_sigma)))
    assert ours.shape == mu.shape
    torch.testing.assert_close(ours, oracle, rtol=1e-9, atol=1e-9)


def test_gaussian_kl_vector_prior_broadcasts_over_last_dim():
    g = gen(4)
    mu, sigma = torch.randn(N, 3, dtype=D, generator=g), rand_sigma(3 * N, g, -2, 1).reshape(N, 3)
    pmu = torch.tensor([3.0, 0.0, -1.0], dtype=D)
    psigma = torch.tensor([0.2, 1.0, 2.5], dtype=D)
    ours = gaussian_kl(mu, sigma, pmu, psigma)
    oracle = kl_divergence(Normal(mu, sigma), Normal(pmu.expand(N, 3), psigma.expand(N, 3)))
    assert ours.shape == (N, 3)
    torch.testing.assert_close(ours, oracle, rtol=1e-9, atol=1e-9)


def test_gaussian_kl_zero_iff_equal():
    mu = torch.tensor([0.3, -1.0])
    sigma = torch.tensor([0.5, 2.0])
    torch.testing.assert_close(gaussian_kl(mu, sigma, mu, sigma), torch.zeros(2))
    assert (gaussian_kl(mu, sigma, mu + 0.1, sigma) > 0).all()
    assert (gaussian_kl(mu, sigma, mu, sigma * 1.1) > 0).all()


def test_gaussian_rsample_given_eps_is_affine():
    g = gen(5)
    mu, sigma, eps = torch.randn(N, generator=g), rand_sigma(N, g).float(), torch.randn(N, generator=g)
    assert torch.equal(gaussian_rsample(mu, sigma, eps), mu + sigma * eps)


def test_gaussian_rsample_moments():
    torch.manual_seed(0)
    n = 200_000
    mu = torch.full((n,), 1.5)
    sigma = torch.full((n,), 0.7)
    x = gaussian_rsample(mu, sigma)
    # standard errors: 0.7 / sqrt(n) ~ 1.6e-3 for the mean, ~1.1e-3 for the std
    assert abs(x.mean().item() - 1.5) < 0.01
    assert abs(x.std().item() - 0.7) < 0.01


@pytest.mark.parametrize("given_eps", [True, False])
def test_gaussian_rsample_is_reparameterised(given_eps):
    g = gen(6)
    mu = torch.randn(50, generator=g).requires_grad_()
    sigma = rand_sigma(50, g).float().requires_grad_()
    eps = torch.randn(50, generator=g) if given_eps else None
    x = gaussian_rsample(mu, sigma, eps)
    x.sum().backward()
    if eps is None:
        eps = ((x - mu) / sigma).detach()
    torch.testing.assert_close(mu.grad, torch.ones(50))
    torch.testing.assert_close(sigma.grad, eps)


# --------------------------------------------------------------------------- relaxed Bernoulli


def test_relaxed_logit_log_prob_matches_oracle():
    g = gen(7)
    logits = rand_logits(N, g)
    temp = torch.empty(N, dtype=D).uniform_(0.05, 3.0, generator=g)
    y = LogitRelaxedBernoulli(temp, logits=logits).sample()
    ours = relaxed_bernoulli_logit_log_prob(y, logits, temp)
    oracle = LogitRelaxedBernoulli(temp, logits=logits).log_prob(y)
    assert torch.isfinite(oracle).all()
    torch.testing.assert_close(ours, oracle, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("temperature", [0.1, 0.5, 1.0, 2.0])
def test_relaxed_logit_log_prob_scalar_temperature(temperature):
    g = gen(8)
    logits = rand_logits(N, g)
    y = 40 * torch.rand(N, dtype=D, generator=g) - 20  # arbitrary points, not only samples
    ours = relaxed_bernoulli_logit_log_prob(y, logits, temperature)
    oracle = LogitRelaxedBernoulli(torch.tensor(temperature, dtype=D), logits=logits).log_prob(y)
    torch.testing.assert_close(ours, oracle, rtol=1e-9, atol=1e-9)


def test_relaxed_logit_log_prob_is_a_density():
    """Integrates to 1 over y (trapezoid rule), for several logits and temperatures."""
    y = torch.linspace(-400, 400, 400_001, dtype=D)
    for a, lam in [(0.0, 1.0), (2.0, 0.5), (-3.0, 0.1)]:
        p = relaxed_bernoulli_logit_log_prob(y, torch.tensor(a, dtype=D), lam).exp()
        assert abs(torch.trapezoid(p, y).item() - 1) < 1e-6


def test_relaxed_log_prob_matches_oracle():
    g = gen(9)
    logits = rand_logits(N, g)
    temp = torch.empty(N, dtype=D).uniform_(0.1, 3.0, generator=g)
    x = torch.empty(N, dtype=D).uniform_(0.01, 0.99, generator=g)
    ours = relaxed_bernoulli_log_prob(x, logits, temp)
    oracle = RelaxedBernoulli(temp, logits=logits, validate_args=False).log_prob(x)
    assert torch.isfinite(oracle).all()
    torch.testing.assert_close(ours, oracle, rtol=1e-8, atol=1e-8)


def test_rsample_logit_with_given_u_is_the_formula():
    g = gen(10)
    logits = rand_logits(N, g)
    u = torch.empty(N, dtype=D).uniform_(1e-3, 1 - 1e-3, generator=g)
    for temp in (0.1, 0.7, 2.0):
        ours = relaxed_bernoulli_rsample_logit(logits, temp, u)
        expected = (logits + torch.log(u) - torch.log(1 - u)) / temp
        torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(relaxed_bernoulli_rsample(logits, temp, u), torch.sigmoid(expected))


def test_logistic_noise_finite_at_u_endpoints():
    u = torch.tensor([0.0, 1.0, 0.5])
    noise = logistic_noise(u.shape, u=u)
    assert torch.isfinite(noise).all()
    assert noise[0] < -10 and noise[1] > 10 and noise[2] == 0


def test_logistic_noise_distribution():
    """Standard logistic: mean 0, variance pi^2/3, CDF sigmoid."""
    noise = logistic_noise((200_000,), generator=gen(11), dtype=D)
    assert abs(noise.mean().item()) < 0.02
    assert abs(noise.var().item() - math.pi**2 / 3) < 0.05
    for t in (-2.0, 0.0, 1.0):
        assert abs((noise <= t).double().mean().item() - torch.sigmoid(torch.tensor(t)).item()) < 0.005


@pytest.mark.parametrize("temperature", [0.05, 1.0, 3.0])
def test_relaxed_sample_is_positive_with_bernoulli_probability(temperature):
    """y > 0 iff a + L > 0, so P(y > 0) = sigmoid(a) at every temperature."""
    torch.manual_seed(12)
    a = torch.tensor([-2.0, -0.5, 0.0, 1.2, 3.0])
    y = relaxed_bernoulli_rsample_logit(a.expand(20_000, 5), temperature)
    frac = (y > 0).float().mean(0)
    torch.testing.assert_close(frac, torch.sigmoid(a), atol=0.015, rtol=0)


def test_relaxed_sample_mean_tends_to_sigmoid_as_temperature_falls():
    torch.manual_seed(13)
    a = torch.tensor([-3.0, -1.0, -0.3, 0.3, 1.0, 3.0])
    logits = a.expand(20_000, 6)
    low = relaxed_bernoulli_rsample(logits, 0.05).mean(0)
    high = relaxed_bernoulli_rsample(logits, 1.0).mean(0)
    err_low = (low - torch.sigmoid(a)).abs()
    err_high = (high - torch.sigmoid(a)).abs()
    assert (err_low < 0.02).all(), err_low
    # The convergence claim is not trivial: at temperature 1 the mean is pulled
    # toward 1/2, visibly so for |logits| >= 1.
    big = a.abs() >= 1
    assert (err_high[big] > 0.05).all(), err_high
    assert (err_low[big] < err_high[big] / 3).all()


def test_hard_decision():
    logits = torch.tensor([-30.0, -1e-6, 0.0, 1e-6, 2.0, 30.0], dtype=D)
    out = hard_decision(logits)
    assert out.dtype == D
    assert torch.equal(out, torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0, 1.0], dtype=D))
    g = gen(14)
    logits = torch.randn(N, generator=g)
    assert torch.equal(hard_decision(logits), (logits > 0).float())


def test_straight_through_forward_is_exactly_hard_and_gradient_is_soft():
    g = gen(15)
    n = 100_000
    logits = (3 * torch.randn(n, generator=g)).requires_grad_()
    u = torch.rand(n, generator=g)
    w = torch.randn(n, generator=g)  # a random downstream loss
    temp = 0.5

    st = relaxed_bernoulli_rsample(logits, temp, u, straight_through=True)
    (grad_st,) = torch.autograd.grad((st * w).sum(), logits)
    soft = relaxed_bernoulli_rsample(logits, temp, u)
    (grad_soft,) = torch.autograd.grad((soft * w).sum(), logits)

    assert ((st == 0) | (st == 1)).all(), "forward values must be exactly 0 or 1"
    assert torch.equal(st.detach(), (soft.detach() > 0.5).float())
    assert 0 < st.detach().mean() < 1
    torch.testing.assert_close(grad_st, grad_soft, rtol=0, atol=0)
    assert grad_soft.abs().sum() > 0


# --------------------------------------------------------------------------- Bernoulli KL


def test_bernoulli_kl_matches_oracle_including_extreme_logits():
    g = gen(16)
    logits = rand_logits(N, g)
    prior = torch.empty(N, dtype=D).uniform_(0.02, 0.98, generator=g)
    ours = bernoulli_kl(logits, prior)
    oracle = kl_divergence(Bernoulli(logits=logits), Bernoulli(probs=prior))
    assert torch.isfinite(oracle).all()
    torch.testing.assert_close(ours, oracle, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("prior", [0.5, 0.1, 0.9])
def test_bernoulli_kl_scalar_prior_float32(prior):
    g = gen(17)
    logits = rand_logits(N, g)
    ours = bernoulli_kl(logits.float(), prior)
    oracle = kl_divergence(Bernoulli(logits=logits), Bernoulli(probs=torch.full_like(logits, prior)))
    assert ours.dtype == torch.float32 and torch.isfinite(ours).all()
    torch.testing.assert_close(ours.double(), oracle, rtol=1e-5, atol=1e-6)


def test_bernoulli_kl_extremes_have_the_limit_values_and_finite_gradients():
    logits = torch.tensor([-30.0, 30.0, -100.0, 100.0], requires_grad=True)
    kl = bernoulli_kl(logits, 0.25)
    # q -> 0: KL -> -log(1 - p); q -> 1: KL -> -log p
    expected = torch.tensor([-math.log(0.75), -math.log(0.25)] * 2)
    torch.testing.assert_close(kl.detach(), expected, rtol=1e-5, atol=1e-6)
    kl.sum().backward()
    assert torch.isfinite(logits.grad).all()


def test_bernoulli_kl_nonnegative_and_zero_at_prior():
    g = gen(18)
    logits = rand_logits(N, g)
    prior = torch.empty(N, dtype=D).uniform_(0.01, 0.99, generator=g)
    assert (bernoulli_kl(logits, prior) >= -1e-12).all()
    at_prior = torch.log(prior) - torch.log1p(-prior)
    torch.testing.assert_close(bernoulli_kl(at_prior, prior), torch.zeros(N, dtype=D), rtol=0, atol=1e-12)
    # and strictly positive away from it
    assert (bernoulli_kl(at_prior + 0.5, prior) > 1e-4).all()


def test_functions_broadcast_and_never_reduce():
    logits = torch.zeros(4, 1, 3)
    assert bernoulli_kl(logits, torch.full((5, 1), 0.3)).shape == (4, 5, 3)
    assert relaxed_bernoulli_logit_log_prob(torch.zeros(2, 3), torch.zeros(3), 0.5).shape == (2, 3)
    assert gaussian_log_prob(torch.zeros(2, 1), torch.zeros(3), torch.ones(())).shape == (2, 3)

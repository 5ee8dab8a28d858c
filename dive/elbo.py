"""The objective: DIVE's evidence lower bound, term by term.

For one video with observed input frames x (T_in frames), future frames y
(T_out frames), visibility mask v (1 where a pixel is observed) and the
posterior q of appearance z, pose increments beta, initial pose p0 and
presence m:

    ELBO =   sum_{t<T_in, pixels} v * log N(x_t ; xhat_t^masked, sigma_x^2)     ll_input
           + sum_{t>=T_in, pixels} v' * log N(y_t ; yhat_t, sigma_x^2)          ll_future
           - w_app  * KL( q(z)       || N(0, sigma_z^2) )                         kl_app
           - w_pose * KL( q(beta_in)  || N(0, sigma_beta^2) )                     kl_pose_input
           - w_pose * KL( q(beta_fut) || N(0, sigma_beta^2) )                     kl_pose_future
           - w_init * KL( q(p0)       || N(mu_0, diag sigma_0^2) )                kl_init
           - w_pres * KL( Bern(sigmoid(a)) || Bern(pi) )                          kl_presence

xhat^masked is the composite in which every slot is multiplied by its presence
m; yhat the predicted future. v' is all ones, except in scenario s1 from the
switch step on, where only the visible rows of the future count. Each w is a
config weight times the KL warm-up weight of the step.

Estimators, written down:
* the likelihood includes its normalising constant (-log sigma_x - log(2 pi)/2
  per pixel), as the original's, so the loss can go negative;
* every Gaussian KL is in closed form (the original sampled log q - log p);
* the presence KL is the analytic KL between the Bernoulli posterior
  Bern(sigmoid(a)) and the Bernoulli prior Bern(pi), while the likelihood sees
  the relaxed (binary Concrete) sample. This is exact for the discrete latent,
  has no sampling variance, and does not depend on the temperature; the
  alternative, log q - log p of the relaxed sample under two Concrete
  densities, is noisy and is only a bound on a different model.

Optionally (``blur`` > 0, a training curriculum set by schedules.blur) x, y,
xhat and yhat are all blurred with the same Gaussian before the two
likelihood terms; with blur = 0, the default and what evaluation uses, the
ELBO is exactly the one above.

Everything is summed over the batch; `loss` is -ELBO / (B * T * C * H * W),
the per-element figure the original reported, and the value the optimiser
minimises (the scale does not change Adam's steps).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from .config import LossConfig
from .distributions import at_least_float32, bernoulli_kl, gaussian_kl, gaussian_log_likelihood
from .errors import InputError


@dataclass
class ELBO:
    """A named breakdown of the objective (every tensor a scalar summed over the batch)."""

    total: Tensor  # the ELBO, sum over the batch
    loss: Tensor  # -total / n_elements: what the optimiser minimises
    terms: dict[str, Tensor]  # ll_input, ll_future, kl_app, kl_pose_input, kl_pose_future, kl_init, kl_presence
    weights: dict[str, float]  # the weight that multiplied each term in `total`
    n_elements: int  # B * T * C * H * W

    def scalars(self) -> dict[str, float]:
        """Plain floats for logging (one host sync, after the step)."""
        out = {f"term/{k}": float(v.detach()) for k, v in self.terms.items()}
        out.update({f"weight/{k}": float(v) for k, v in self.weights.items()})
        out["elbo"] = float(self.total.detach())
        out["loss"] = float(self.loss.detach())
        return out


_OUT_FIELDS = ("input_masked", "pred", "presence_logits", "app_mu", "app_sigma", "pose_mu", "pose_sigma",
               "init_mu", "init_sigma")


def _expect(name: str, got: Tensor, shape: tuple[int, ...]) -> None:
    if tuple(got.shape) != tuple(shape):
        raise InputError(f"elbo: expected {name} of shape {tuple(shape)}, got {tuple(got.shape)}")


def _check_args(out, batch, cfg, kl_weight) -> None:
    missing = [f for f in _OUT_FIELDS if not isinstance(getattr(out, f, None), Tensor)]
    if missing:
        raise InputError(f"elbo: `out` must be the model's DIVEOutput; it lacks tensors {missing}")
    if not isinstance(cfg, LossConfig):
        raise InputError(f"elbo: cfg must be a dive.config.LossConfig, got {type(cfg).__name__}")
    if isinstance(kl_weight, bool) or not isinstance(kl_weight, (int, float)) or not 0 <= kl_weight < math.inf:
        raise InputError(f"elbo: kl_weight must be a finite number >= 0, got {kl_weight!r}")
    if not isinstance(batch, Mapping):
        raise InputError(f"elbo: batch must be a dict with input, target and visible, got {type(batch).__name__}")
    for key in ("input", "target", "visible"):
        value = batch.get(key)
        if not isinstance(value, Tensor):
            raise InputError(f"elbo: batch[{key!r}] must be a tensor, got {type(value).__name__}")
        if not (value.is_floating_point() or (key == "visible" and value.dtype == torch.bool)):
            raise InputError(f"elbo: batch[{key!r}] must be floating point with values in [0, 1], "
                             f"got dtype {value.dtype}")


def _check_values(batch) -> None:
    for key in ("input", "target", "visible"):
        value = batch[key]
        if value.dtype == torch.bool or value.numel() == 0:
            continue
        if not torch.isfinite(value).all():
            raise InputError(f"elbo: batch[{key!r}] contains NaN or infinite values")
        lo, hi = value.min().item(), value.max().item()
        if lo < 0 or hi > 1:
            raise InputError(f"elbo: batch[{key!r}] must have values in [0, 1], found [{lo:.4g}, {hi:.4g}]")


def _blur_matrix(size: int, sigma: float, like: Tensor) -> Tensor:
    """(size size) matrix whose row i holds the Gaussian weights of pixel i's neighbours (zero padding)."""
    radius = max(1, math.ceil(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, device=like.device, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    i = torch.arange(size, device=like.device)
    d = i[None, :] - i[:, None]  # column minus row
    inside = d.abs() <= radius
    return torch.where(inside, kernel[(d + radius).clamp(0, 2 * radius)], 0.0).to(like.dtype)


def gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """Blur the last two dims (h w) of x (... h w) with a Gaussian of std `sigma` pixels, zero padding.

    Separable, kernel radius ceil(3 sigma), written as two matrix products
    (G_h @ x @ G_w^T): one-channel convolutions with wide kernels are slow on
    CPU, batched matmuls are not. Linear, so blurring the sum of the slots
    equals summing blurred slots.
    """
    if sigma <= 0:
        return x
    g_h = _blur_matrix(x.shape[-2], sigma, x)
    g_w = _blur_matrix(x.shape[-1], sigma, x)
    return g_h @ x @ g_w.T


def elbo(out, batch: dict[str, Tensor], cfg: LossConfig, *, kl_weight: float = 1.0,
         future_mask: bool = False, check_values: bool = True, blur: float = 0.0) -> ELBO:
    """The ELBO of a batch.

    Args:
        out: the model's `DIVEOutput` for ``batch["input"]``.
        batch: ``input`` (b t_in c h w) observed frames, ``target`` (b t_out c h w)
            observed future frames, ``visible`` (b c h w) or (b 1 h w) observation mask.
        cfg: likelihood std, priors and KL weights.
        kl_weight: the KL warm-up factor of this step (schedules.kl_weight).
        future_mask: score the future frames only where ``visible`` (scenario s1
            from the switch step on).
        check_values: check that the batch is finite and in [0, 1]. This reads
            every pixel (a host sync on CUDA); the training loop, whose batches
            come from the package's own datasets, turns it off.
        blur: std in pixels of a Gaussian blur applied to frames and
            renderings alike before the likelihood (the coarse-to-fine
            curriculum, schedules.blur); 0, the default, is the exact ELBO.

    Raises InputError naming the argument, what was expected and what was found.
    """
    _check_args(out, batch, cfg, kl_weight)
    x, y, v = batch["input"], batch["target"], batch["visible"]
    if x.dim() != 5:
        raise InputError(f"elbo: expected batch['input'] of shape (B, T_in, C, H, W), got {tuple(x.shape)}")
    _expect("batch['input']", x, tuple(out.input_masked.shape))
    _expect("batch['target']", y, tuple(out.pred.shape))
    B, T_in, C, H, W = x.shape
    T_out = y.shape[1]
    if v.dim() != 4 or v.shape[0] != B or v.shape[1] not in (1, C) or v.shape[-2:] != (H, W):
        raise InputError(f"elbo: expected batch['visible'] of shape ({B}, 1 or {C}, {H}, {W}), "
                         f"got {tuple(v.shape)}")
    if check_values:
        _check_values(batch)
    if isinstance(blur, bool) or not isinstance(blur, (int, float)) or not 0 <= blur < math.inf:
        raise InputError(f"elbo: blur must be a finite number of pixels >= 0, got {blur!r}")
    v = v.unsqueeze(1)  # b 1 c h w: broadcast over time
    sigma_x = torch.as_tensor(cfg.likelihood_std, dtype=x.dtype, device=x.device)

    # Likelihoods in float32 (or wider) even under autocast: sums of 10^6 terms.
    xhat, yhat = at_least_float32(out.input_masked), at_least_float32(out.pred)
    if blur > 0:
        x, y, xhat, yhat = (gaussian_blur(at_least_float32(a), blur) for a in (x, y, xhat, yhat))
    ll_input = gaussian_log_likelihood(x, xhat, sigma_x, weight=v)
    ll_future = gaussian_log_likelihood(y, yhat, sigma_x, weight=v if future_mask else None)

    t_in = out.presence_logits.shape[1]
    pose_mu, pose_sigma = at_least_float32(out.pose_mu), at_least_float32(out.pose_sigma)
    init_mean = torch.tensor(cfg.init_pose_prior_mean, dtype=pose_mu.dtype, device=x.device)
    init_std = torch.tensor(cfg.init_pose_prior_std, dtype=pose_mu.dtype, device=x.device)
    terms = {
        "ll_input": ll_input,
        "ll_future": ll_future,
        "kl_app": gaussian_kl(at_least_float32(out.app_mu), at_least_float32(out.app_sigma), 0.0,
                              cfg.app_prior_std).sum(),
        "kl_pose_input": gaussian_kl(pose_mu[:, :t_in], pose_sigma[:, :t_in], 0.0, cfg.pose_prior_std).sum(),
        "kl_pose_future": gaussian_kl(pose_mu[:, t_in:], pose_sigma[:, t_in:], 0.0, cfg.pose_prior_std).sum(),
        "kl_init": gaussian_kl(at_least_float32(out.init_mu), at_least_float32(out.init_sigma), init_mean,
                               init_std).sum(),
        "kl_presence": bernoulli_kl(at_least_float32(out.presence_logits), cfg.presence_prior).sum(),
    }
    weights = {
        "ll_input": 1.0,
        "ll_future": 1.0,
        "kl_app": kl_weight * cfg.kl_app_weight,
        "kl_pose_input": kl_weight * cfg.kl_pose_weight,
        "kl_pose_future": kl_weight * cfg.kl_pose_weight,
        "kl_init": kl_weight * cfg.kl_init_weight,
        "kl_presence": kl_weight * cfg.kl_presence_weight,
    }

    total = (
        weights["ll_input"] * terms["ll_input"]
        + weights["ll_future"] * terms["ll_future"]
        - weights["kl_app"] * terms["kl_app"]
        - weights["kl_pose_input"] * terms["kl_pose_input"]
        - weights["kl_pose_future"] * terms["kl_pose_future"]
        - weights["kl_init"] * terms["kl_init"]
        - weights["kl_presence"] * terms["kl_presence"]
    )
    n_elements = B * (T_in + T_out) * C * H * W
    return ELBO(total=total, loss=-total / n_elements, terms=terms, weights=weights, n_elements=n_elements)

"""The model and objective learn: overfitting one fixed batch shrinks the errors."""

from __future__ import annotations

import torch

from dive import config, schedules
from dive.data import MovingMNIST
from dive.elbo import elbo
from dive.engine import adam_eps, build_model, build_optimizer
from dive.runtime import step_generator


def _errors(model, batch) -> tuple[float, float]:
    """Per-frame-sum MSE of the imputed reconstruction and of the prediction, in eval mode."""
    model.eval()
    with torch.no_grad():
        out = model(batch["input"])
    model.train()
    rec = ((out.input_rec - batch["input_full"]) ** 2).sum(dim=(-3, -2, -1)).mean()
    pred = ((out.pred - batch["target_full"]) ** 2).sum(dim=(-3, -2, -1)).mean()
    return float(rec), float(pred)


def test_overfitting_one_s2_batch_halves_the_errors():
    torch.set_num_threads(2)
    # 100 steps: the errors are at 0.46 / 0.38 of where they started (0.41 / 0.36 after 200)
    cfg = config.load("configs/s2.toml", ["train.steps=100"])
    batch = MovingMNIST(config=cfg.data, split="train", seed=0).batch(list(range(8)))
    model = build_model(cfg)
    opt = build_optimizer(model, cfg)
    rec0, pred0 = _errors(model, batch)
    for step in range(cfg.train.steps):
        s = schedules.at(step, cfg)
        noise = model.sample_noise(8, "cpu", generator=step_generator(0, step, 0, torch.device("cpu")))
        out = model(batch["input"], temperature=s.temperature, gamma_app=s.gamma_app, gamma_imp=s.gamma_imp,
                    noise=noise)
        loss = elbo(out, batch, cfg.loss, kl_weight=s.kl_weight).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    rec1, pred1 = _errors(model, batch)
    assert rec1 <= 0.5 * rec0, (rec0, rec1)
    assert pred1 <= 0.5 * pred0, (pred0, pred1)


def test_the_fused_optimiser_takes_the_default_adam_steps():
    cfg = config.load("configs/smoke.toml", [])
    batch = MovingMNIST(config=cfg.data, split="train", seed=0).batch(list(range(2)))
    params = {}
    for fused in (True, False):
        model = build_model(cfg)
        opt = build_optimizer(model, cfg)
        if not fused:
            opt = torch.optim.Adam(model.parameters(), lr=cfg.train.lr, betas=tuple(cfg.train.betas),
                                   eps=adam_eps(cfg))
        assert opt.defaults["fused"] is (True if fused else None)
        for step in range(3):
            noise = model.sample_noise(2, "cpu", generator=step_generator(0, step, 0, torch.device("cpu")))
            out = model(batch["input"], temperature=0.5, noise=noise, render_slots=False)
            opt.zero_grad()
            elbo(out, batch, cfg.loss).loss.backward()
            opt.step()
        params[fused] = torch.cat([p.detach().flatten() for p in model.parameters()])
    moved = (params[True] - torch.cat([p.detach().flatten() for p in build_model(cfg).parameters()])).abs().max()
    assert moved > 1e-3  # the steps did something
    torch.testing.assert_close(params[True], params[False], atol=1e-6, rtol=1e-5)


def test_adam_eps_gives_the_steps_of_the_unscaled_loss():
    # The original stepped Adam (eps 1e-8) on the unscaled -ELBO; this code steps on -ELBO / N with eps 1e-8 / N
    # (train.adam_eps = 0): the same parameters after three steps. With eps 1e-8 on the scaled loss they differ.
    cfg = config.load("configs/smoke.toml", [])
    batch = MovingMNIST(config=cfg.data, split="train", seed=0).batch(list(range(cfg.train.batch_size)))
    assert adam_eps(cfg) == 1e-8 / (cfg.train.batch_size * (cfg.data.t_in + cfg.data.t_out) * 64 * 64)
    params = {}
    for mode in ("scaled", "unscaled", "scaled, eps 1e-8"):
        torch.manual_seed(0)
        model = build_model(cfg).double()
        if mode == "unscaled":
            opt = torch.optim.Adam(model.parameters(), lr=cfg.train.lr, betas=tuple(cfg.train.betas), eps=1e-8)
        else:
            opt = build_optimizer(model, config.load("configs/smoke.toml", ["train.adam_eps=1e-8"]) if "eps" in mode
                                  else cfg)
        for step in range(3):
            noise = {k: v.double() for k, v in model.sample_noise(
                cfg.train.batch_size, "cpu", generator=step_generator(0, step, 0, torch.device("cpu"))).items()}
            out = model(batch["input"].double(), temperature=0.5, noise=noise, render_slots=False)
            e = elbo(out, {k: v.double() for k, v in batch.items()}, cfg.loss)
            opt.zero_grad()
            (e.loss * e.n_elements if mode == "unscaled" else e.loss).backward()
            opt.step()
        params[mode] = torch.cat([p.detach().flatten() for p in model.parameters()])
    torch.testing.assert_close(params["scaled"], params["unscaled"], rtol=1e-9, atol=1e-9)
    assert (params["scaled, eps 1e-8"] - params["unscaled"]).abs().max() > 1e-4

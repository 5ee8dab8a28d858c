"""Regenerate tests/golden/golden.npz, the fixed reference a port of DIVE can check itself against.

    python tests/golden/make_golden.py            # rewrites tests/golden/golden.npz

The file holds, as plain arrays (np.load(..., allow_pickle=False)):

    config                 the model's config as TOML text (configs/smoke.toml sizes)
    param/<name>           every entry of model.state_dict() (weights and batch-norm buffers)
    input                  (1, t_in, 1, 64, 64) observed frames of one fixed s3 test sequence
    target, visible        its future frames and visibility mask (for the ELBO)
    noise/<name>           the noise of one training pass (DIVE.sample_noise): app, pose, init,
                           presence, imp_drop, app_drop
    temperature, gamma_app, gamma_imp
                           the schedule values of that pass
    train/<field>          DIVEOutput fields of the training-mode pass (batch-norm on batch statistics)
    eval/<field>           DIVEOutput fields of the eval-mode pass (running statistics, posterior means)
    elbo/<term>, elbo/loss the ELBO terms of the training-mode pass

A port loads the weights, feeds `input` with the stored noise and schedule
values, and compares its outputs with `train/*`, `eval/*` and `elbo/*`
(tests/test_golden.py does exactly that for this code).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from dive import config
from dive.data import MovingMNIST
from dive.elbo import elbo
from dive.model import DIVE

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
GOLDEN = HERE / "golden.npz"
FIELDS = ("input_masked", "input_rec", "pred", "pose", "presence_logits", "presence", "presence_hard",
          "app_mu", "app_sigma", "pose_mu", "pose_sigma", "init_mu", "init_sigma")
SCHEDULE = {"temperature": 0.7, "gamma_app": 0.3, "gamma_imp": 0.25}


def golden_config() -> config.Config:
    return config.load(ROOT / "configs" / "smoke.toml")


@torch.no_grad()
def randomize_(model: DIVE) -> None:
    """Weights and batch-norm statistics a comparison can see (from torch's global generator).

    At the DCGAN init the appearance means are near 0 and whole layers barely touch the
    output; random weights at a larger scale make every layer matter. Batch-norm running
    statistics move away from their (0, 1) start so the eval pass tests them too. Also used
    by tests/conformance/conformance.py.
    """
    for p in model.parameters():
        p.add_(0.1 * torch.randn_like(p))
    for name, buf in model.named_buffers():
        if name.endswith("running_mean"):
            buf.copy_(0.1 * torch.randn_like(buf))
        elif name.endswith("running_var"):
            buf.copy_(1 + 0.1 * torch.rand_like(buf))


def build() -> dict[str, np.ndarray]:
    cfg = golden_config()
    torch.manual_seed(0)
    model = DIVE(cfg.model, cfg.data)
    randomize_(model)
    batch = MovingMNIST(config=cfg.data, split="test", seed=0).batch([0])
    noise = model.sample_noise(1, "cpu", generator=torch.Generator().manual_seed(0))

    out: dict[str, np.ndarray] = {"config": np.array(config.dumps_toml(cfg))}
    out.update({f"param/{k}": v.detach().contiguous().numpy() for k, v in model.state_dict().items()})
    for key in ("input", "target", "visible"):
        out[key] = batch[key].numpy()
    out.update({f"noise/{k}": v.numpy() for k, v in noise.items()})
    out.update({k: np.array(v, dtype=np.float32) for k, v in SCHEDULE.items()})

    state = {k: v.clone() for k, v in model.state_dict().items()}
    train_out, terms = run_train(model, batch, noise)
    model.load_state_dict(state)  # the training pass moved the running statistics
    eval_out = run_eval(model, batch)
    out.update({f"train/{f}": getattr(train_out, f).detach().numpy() for f in FIELDS})
    out.update({f"eval/{f}": getattr(eval_out, f).detach().numpy() for f in FIELDS})
    out.update({f"elbo/{k}": np.array(float(v), dtype=np.float64) for k, v in terms.items()})
    return out


def run_train(model: DIVE, batch, noise):
    cfg = golden_config()
    model.train()
    with torch.no_grad():
        out = model(batch["input"], noise=noise, **SCHEDULE)
        e = elbo(out, batch, cfg.loss)
    return out, {**e.terms, "loss": e.loss}


def run_eval(model: DIVE, batch):
    model.eval()
    with torch.no_grad():
        return model(batch["input"])


if __name__ == "__main__":
    arrays = build()
    np.savez_compressed(GOLDEN, **arrays)
    print(f"wrote {GOLDEN} ({GOLDEN.stat().st_size / 1024:.0f} KiB, {len(arrays)} arrays)")

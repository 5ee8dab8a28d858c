"""The code reproduces the stored golden outputs (tests/golden/golden.npz, see make_golden.py)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch

from dive import config
from dive.elbo import elbo
from dive.model import DIVE

GOLDEN = Path(__file__).resolve().parent / "golden" / "golden.npz"
FIELDS = ("input_masked", "input_rec", "pred", "pose", "presence_logits", "presence", "presence_hard",
          "app_mu", "app_sigma", "pose_mu", "pose_sigma", "init_mu", "init_sigma")


@pytest.fixture(scope="module")
def golden():
    with np.load(GOLDEN, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def _model(g) -> tuple[DIVE, config.Config]:
    cfg = config.validate(config.from_dict(tomllib.loads(str(g["config"]))))
    model = DIVE(cfg.model, cfg.data)
    params = {k[len("param/"):]: torch.from_numpy(v) for k, v in g.items() if k.startswith("param/")}
    model.load_state_dict(params)
    return model, cfg


def _batch(g) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(g[k]) for k in ("input", "target", "visible")}


def _close(name: str, got: torch.Tensor, want: np.ndarray) -> None:
    np.testing.assert_allclose(got.detach().numpy(), want, rtol=1e-4, atol=1e-5, err_msg=name)


def test_training_pass_and_elbo_match(golden):
    model, cfg = _model(golden)
    noise = {k[len("noise/"):]: torch.from_numpy(v) for k, v in golden.items() if k.startswith("noise/")}
    schedule = {k: float(golden[k]) for k in ("temperature", "gamma_app", "gamma_imp")}
    batch = _batch(golden)
    model.train()
    with torch.no_grad():
        out = model(batch["input"], noise=noise, **schedule)
        e = elbo(out, batch, cfg.loss)
    for field in FIELDS:
        _close(f"train/{field}", getattr(out, field), golden[f"train/{field}"])
    for term, value in {**e.terms, "loss": e.loss}.items():
        np.testing.assert_allclose(float(value), golden[f"elbo/{term}"], rtol=1e-4, atol=1e-3, err_msg=term)


def test_eval_pass_matches(golden):
    model, _ = _model(golden)
    model.eval()
    with torch.no_grad():
        out = model(_batch(golden)["input"])
    for field in FIELDS:
        _close(f"eval/{field}", getattr(out, field), golden[f"eval/{field}"])


def test_golden_is_not_trivial(golden):
    # A golden file of zeros or of untouched batch-norm buffers would test nothing.
    assert np.abs(golden["train/pred"]).max() > 0.01
    assert golden["eval/pred"].shape == (1, 2, 1, 64, 64)
    running_means = [v for k, v in golden.items() if k.endswith("running_mean")]
    assert running_means and all(not np.allclose(v, 0) for v in running_means)
    assert np.ptp(golden["train/presence"]) > 0 and golden["elbo/kl_presence"] > 0


def test_a_changed_weight_is_caught(golden):
    # The comparison is tight enough to see a 1e-3 change of the first conv's weights.
    for name in ("param/frame_encoder.net.0.weight",):
        tampered = dict(golden)
        tampered[name] = golden[name] + 1e-3
        with pytest.raises(AssertionError):
            test_eval_pass_matches(tampered)


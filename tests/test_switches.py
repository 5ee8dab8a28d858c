"""Every pair of switches: a config error that names one of them, or a training step that runs.

A switch here is a setting that changes the model or the objective away from
the published one (or adds a diagnostic). Combinations that cannot work
together must be refused when the config is read, with a message naming the
key, never silently ignored or left to fail inside a training step.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from dive import config, schedules
from dive.config import ConfigError
from dive.data import MovingMNIST
from dive.engine import build_model, build_optimizer, train_step
from dive.runtime import Runtime

SWITCHES = {
    "model.use_imputation": ["model.use_imputation=false"],
    "model.use_dynamic_appearance": ["model.use_dynamic_appearance=false"],
    "model.straight_through": ["model.straight_through=true"],
    "model.pose_inference": ["model.pose_inference=track"],
    "model.diagnostic_true_positions": ["model.diagnostic_true_positions=true"],
    "model.slot_spread": ["model.slot_spread=0.5"],
    "model.pose_std_init": ["model.pose_std_init=0.1"],
    "model.app_std_init": ["model.app_std_init=0.1"],
    "model.scale_range": ["model.scale_range=[-1.0, 2.5]"],
    "model.position_margin": ["model.position_margin=0.125"],
    "loss.future_track_std": ["loss.future_track_std=2.0"],
    "schedule.blur_start": ["schedule.blur_start=2.0", "schedule.blur_steps=10"],
    "schedule.future_poses_only_steps": ["schedule.future_poses_only_steps=10"],
    "schedule.kl_warmup_steps": ["schedule.kl_warmup_steps=10"],
    "train.adam_eps": ["train.adam_eps=1e-8"],
}
BASE = ["data.scenario=none", "data.t_in=3", "data.t_out=1", "train.batch_size=2"]


@pytest.fixture(scope="module")
def batch():
    cfg = config.load("configs/smoke.toml", BASE)
    return MovingMNIST(config=cfg.data, split="train", seed=0).batch([0, 1])


@pytest.mark.parametrize("a, b", list(itertools.combinations(SWITCHES, 2)))
def test_pair_is_refused_by_name_or_trains(a, b, batch):
    try:
        cfg = config.load("configs/smoke.toml", BASE + SWITCHES[a] + SWITCHES[b])
    except ConfigError as e:
        assert a in str(e) or b in str(e), f"the error names neither {a} nor {b}: {e}"
        return
    torch.manual_seed(0)
    model = build_model(cfg)
    logs = train_step(model, model, build_optimizer(model, cfg), batch, cfg, schedules.at(0, cfg),
                       Runtime(device=torch.device("cpu")), amp=False)
    assert logs["finite"]


def test_the_refusals_the_model_needs():
    # each of these would be ignored, or fail inside a step, if the config let it through
    refused = [
        (["model.diagnostic_true_positions=true"], "model.diagnostic_true_positions"),
        (["loss.future_track_std=2.0"], "loss.future_track_std"),
        (["model.pose_inference=track", "model.slot_spread=0.5"], "model.slot_spread"),
        (["model.pose_inference=track", "model.position_margin=0.125"], "model.pose_inference"),
        (["model.pose_inference=track", "model.scale_range=[-1.0, 2.5]"], "model.pose_inference"),
    ]
    for overrides, key in refused:
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            config.load("configs/smoke.toml", BASE + overrides)

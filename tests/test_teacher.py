"""The tracker as a teacher for the future poses (loss.future_track_std, dive/teacher.py)."""

import math

import pytest
import torch

from dive import config
from dive.config import DataConfig, ModelConfig
from dive.data import build_dataset
from dive.slots import pose_centres
from dive.model import DIVE, forward_batch
from dive.teacher import future_targets, future_track_term


@pytest.fixture(scope="module")
def batch():
    return build_dataset(DataConfig(scenario="s2", test_size=32), "test").batch(list(range(32)))


def model_on_the_digits() -> DIVE:
    torch.manual_seed(0)
    return DIVE(ModelConfig(pose_inference="track", diagnostic_true_positions=True), DataConfig(scenario="s2")).eval()


def test_targets_follow_the_digits_into_the_future_in_the_models_slot_order(batch):
    model = model_on_the_digits()
    out = forward_batch(model, batch)  # slot k on digit k on the input frames
    targets, seen = future_targets(model.pose.tracker, batch, out.pose)
    error = (targets - batch["positions"][:, 10:]).norm(dim=-1) * 32  # (b t_out k) pixels from digit k
    assert seen.mean() > 0.9 and error[seen > 0].median() < 1.2 and error[seen > 0].mean() < 2.5
    swapped, _ = future_targets(model.pose.tracker, batch, out.pose.flip(2))  # the model's slots swapped
    torch.testing.assert_close(swapped, targets.flip(2))


def test_the_term_is_a_gaussian_log_density_of_the_tracked_centres(batch):
    model = model_on_the_digits()
    out = forward_batch(model, batch)
    pose = out.pose.detach().requires_grad_(True)
    term = future_track_term(model.pose.tracker, batch, pose, 64, std_px=2.0)
    targets, seen = future_targets(model.pose.tracker, batch, pose)
    d2 = ((targets - pose_centres(pose[:, 10:])) * 32).pow(2).sum(-1)
    expected = (seen * (-d2 / (2 * 4.0) - 2 * (math.log(2.0) + 0.5 * math.log(2 * math.pi)))).sum()
    torch.testing.assert_close(term, expected)
    term.backward()
    assert pose.grad[:, :10].abs().sum() == 0 and pose.grad[:, 10:].abs().sum() > 0  # future poses only


def test_needs_the_tracking_pose_inference():
    config.load(overrides=["model.pose_inference=track", "loss.future_track_std=2.0"])
    with pytest.raises(config.ConfigError, match="loss.future_track_std"):
        config.load(overrides=["loss.future_track_std=2.0"])
    with pytest.raises(config.ConfigError, match="loss.future_track_std"):
        config.load(overrides=["model.pose_inference=track", "loss.future_track_std=-1.0"])

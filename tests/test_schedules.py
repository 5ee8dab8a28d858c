"""dive.schedules: values at and around every switch point, and purity."""

import math
import random

import pytest

from dive import schedules
from dive.config import Config, ScheduleConfig, TrainConfig


def make_cfg(scenario="s1", **schedule):
    cfg = Config()
    cfg.data.scenario = scenario
    cfg.train.steps = 900
    cfg.train.lr = 2e-3
    for k, v in schedule.items():
        setattr(cfg.schedule, k, v)
    return cfg


# --------------------------------------------------------------------------- learning rate


@pytest.mark.parametrize("steps, fraction, boundary", [
    (900, 1 / 3, 300), (1000, 0.35, 350), (100_000, 1 / 3, 33_333), (10, 0.55, 5), (7, 1.0, 7),
])
def test_learning_rate_decays_exactly_at_boundary(steps, fraction, boundary):
    t = TrainConfig(steps=steps, lr=2e-3)
    s = ScheduleConfig(lr_decay_fraction=fraction, lr_decay_factor=0.4)
    assert int(fraction * steps) == boundary
    assert schedules.learning_rate(0, t, s) == 2e-3
    assert schedules.learning_rate(boundary - 1, t, s) == 2e-3
    assert schedules.learning_rate(boundary, t, s) == pytest.approx(2e-3 * 0.4)
    assert schedules.learning_rate(boundary + 1, t, s) == pytest.approx(8e-4)
    assert schedules.learning_rate(10 * steps, t, s) == pytest.approx(8e-4)


def test_learning_rate_piecewise_over_a_whole_run():
    t = TrainConfig(steps=300, lr=0.01)
    s = ScheduleConfig(lr_decay_fraction=0.5, lr_decay_factor=0.1)
    values = [schedules.learning_rate(i, t, s) for i in range(300)]
    assert values[:150] == [0.01] * 150
    assert values[150:] == pytest.approx([0.001] * 150)


def test_learning_rate_fraction_zero_decays_from_start():
    t = TrainConfig(steps=100, lr=1.0)
    s = ScheduleConfig(lr_decay_fraction=0.0, lr_decay_factor=0.5)
    assert schedules.learning_rate(0, t, s) == 0.5


# --------------------------------------------------------------------------- gamma


@pytest.mark.parametrize("switch", [0, 1, 3000])
def test_gamma_app_halves_at_switch_step(switch):
    s = ScheduleConfig(gamma_app=0.3, switch_step=switch)
    if switch > 0:
        assert schedules.gamma_app(0, s) == 0.3
        assert schedules.gamma_app(switch - 1, s) == 0.3
    assert schedules.gamma_app(switch, s) == pytest.approx(0.15)
    assert schedules.gamma_app(switch + 10_000, s) == pytest.approx(0.15)


def test_gamma_imp_constant():
    s = ScheduleConfig(gamma_imp=0.25, switch_step=10)
    assert {schedules.gamma_imp(i, s) for i in (0, 9, 10, 11, 10**6)} == {0.25}


# --------------------------------------------------------------------------- temperature


def test_temperature_endpoints_and_monotone_decay():
    s = ScheduleConfig(temperature_start=1.0, temperature_end=0.5, temperature_steps=1000)
    assert schedules.temperature(0, s) == pytest.approx(1.0)
    assert schedules.temperature(1000, s) == 0.5
    assert schedules.temperature(5000, s) == 0.5
    values = [schedules.temperature(i, s) for i in range(1001)]
    assert all(a > b for a, b in zip(values, values[1:])), "strictly decreasing during the decay"
    assert all(0.5 < v <= 1.0 for v in values[:-1])
    # exponential: the midpoint is the geometric mean
    assert schedules.temperature(500, s) == pytest.approx(math.sqrt(0.5))
    assert schedules.temperature(250, s) == pytest.approx(0.5**0.25)


def test_temperature_can_rise_and_is_monotone_then():
    s = ScheduleConfig(temperature_start=0.2, temperature_end=2.0, temperature_steps=50)
    values = [schedules.temperature(i, s) for i in range(60)]
    assert values[0] == pytest.approx(0.2)
    assert all(a < b for a, b in zip(values[:51], values[1:51]))
    assert values[50:] == [2.0] * 10


def test_temperature_steps_zero_is_constant_end():
    s = ScheduleConfig(temperature_start=1.0, temperature_end=0.3, temperature_steps=0)
    assert {schedules.temperature(i, s) for i in (0, 1, 100)} == {0.3}


# --------------------------------------------------------------------------- KL warm-up


def test_kl_weight_linear_warmup():
    s = ScheduleConfig(kl_warmup_steps=200)
    assert schedules.kl_weight(0, s) == 0.0
    assert schedules.kl_weight(50, s) == pytest.approx(0.25)
    assert schedules.kl_weight(100, s) == pytest.approx(0.5)
    assert schedules.kl_weight(199, s) == pytest.approx(199 / 200)
    assert schedules.kl_weight(200, s) == 1.0
    assert schedules.kl_weight(10**6, s) == 1.0
    values = [schedules.kl_weight(i, s) for i in range(201)]
    diffs = [b - a for a, b in zip(values, values[1:])]
    assert diffs == pytest.approx([1 / 200] * 200)


def test_kl_weight_disabled_is_one():
    s = ScheduleConfig(kl_warmup_steps=0)
    assert {schedules.kl_weight(i, s) for i in (0, 1, 10**6)} == {1.0}


# --------------------------------------------------------------------------- future mask


def test_future_mask_only_in_s1_after_switch():
    for scenario in ("s1", "s2", "s3", "none"):
        cfg = make_cfg(scenario, switch_step=100)
        before = schedules.at(99, cfg).future_mask
        at_switch = schedules.at(100, cfg).future_mask
        after = schedules.at(5000, cfg).future_mask
        assert before is False
        assert at_switch is after is (scenario == "s1"), scenario


def test_future_mask_follows_hidden_rows_not_the_name():
    cfg = make_cfg("s3", switch_step=10)
    cfg.data.hidden_rows = 4
    assert schedules.at(10, cfg).future_mask is True
    cfg = make_cfg("s1", switch_step=10)
    cfg.data.hidden_rows = 0
    assert schedules.at(10, cfg).future_mask is False


# --------------------------------------------------------------------------- at / purity


def test_at_collects_every_schedule():
    cfg = make_cfg("s1", kl_warmup_steps=100, switch_step=200, temperature_steps=400,
                   lr_decay_fraction=0.5)
    sch = schedules.at(250, cfg)
    assert sch.step == 250
    assert sch.lr == schedules.learning_rate(250, cfg.train, cfg.schedule) == 2e-3
    assert sch.kl_weight == 1.0
    assert sch.temperature == schedules.temperature(250, cfg.schedule)
    assert sch.gamma_app == pytest.approx(cfg.schedule.gamma_app / 2)
    assert sch.gamma_imp == cfg.schedule.gamma_imp
    assert sch.future_mask is True
    assert schedules.at(450, cfg).lr == pytest.approx(2e-3 * cfg.schedule.lr_decay_factor)


def test_schedules_are_pure():
    cfg = make_cfg("s1", kl_warmup_steps=300, switch_step=250, temperature_steps=600)
    steps = list(range(0, 1000, 7)) + [249, 250, 299, 300, 600]
    reference = {i: schedules.at(i, cfg) for i in steps}
    rng = random.Random(0)
    for _ in range(3):
        rng.shuffle(steps)
        for i in steps:
            assert schedules.at(i, cfg) == reference[i]
    # evaluating a late step first (as a resumed run would) changes nothing earlier
    fresh = make_cfg("s1", kl_warmup_steps=300, switch_step=250, temperature_steps=600)
    schedules.at(10**6, fresh)
    assert schedules.at(0, fresh) == reference[0]
    assert schedules.at(249, fresh) == reference[249]
    # and the config is not modified
    assert fresh == make_cfg("s1", kl_warmup_steps=300, switch_step=250, temperature_steps=600)


# --------------------------------------------------------------------------- coarse-to-fine blur


def test_blur_decays_linearly_to_zero_then_stays_off():
    s = ScheduleConfig(blur_start=3.0, blur_steps=300)
    assert schedules.blur(0, s) == 3.0
    assert schedules.blur(100, s) == pytest.approx(2.0)
    assert schedules.blur(299, s) == pytest.approx(0.01)
    assert {schedules.blur(i, s) for i in (300, 301, 10**6)} == {0.0}
    for off in (ScheduleConfig(), ScheduleConfig(blur_start=3.0), ScheduleConfig(blur_steps=300)):
        assert {schedules.blur(i, off) for i in (0, 10, 10**6)} == {0.0}


def test_future_poses_only_until_its_step_then_off():
    s = ScheduleConfig(future_poses_only_steps=300)
    assert [schedules.future_poses_only(i, s) for i in (0, 299, 300, 10**6)] == [True, True, False, False]
    assert not any(schedules.future_poses_only(i, ScheduleConfig()) for i in (0, 1, 10**6))
    cfg = make_cfg("s2", future_poses_only_steps=300)
    assert schedules.at(299, cfg).future_poses_only and not schedules.at(300, cfg).future_poses_only

"""Annealing schedules: plain functions of the optimiser step.

Nothing here holds state: resuming at step n gives exactly the values an
uninterrupted run had at step n, and evaluation or visualisation calls cannot
move a schedule (the original's gamma counter advanced during them).
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import Config, ScheduleConfig, TrainConfig


def kl_weight(step: int, s: ScheduleConfig) -> float:
    """Linear KL warm-up from 0 to 1 over `kl_warmup_steps` (1 throughout when 0, as the original)."""
    if s.kl_warmup_steps <= 0:
        return 1.0
    return min(1.0, step / s.kl_warmup_steps)


def blur(step: int, s: ScheduleConfig) -> float:
    """Std (pixels) of the likelihood's Gaussian blur: linear from `blur_start` to 0 over `blur_steps`."""
    if s.blur_start <= 0 or s.blur_steps <= 0 or step >= s.blur_steps:
        return 0.0
    return s.blur_start * (1 - step / s.blur_steps)


def temperature(step: int, s: ScheduleConfig) -> float:
    """Relaxed-Bernoulli temperature: exponential decay from start to end over `temperature_steps`, then flat."""
    if s.temperature_steps <= 0 or step >= s.temperature_steps:
        return s.temperature_end
    frac = step / s.temperature_steps
    return s.temperature_start * (s.temperature_end / s.temperature_start) ** frac


def gamma_app(step: int, s: ScheduleConfig) -> float:
    """Probability of dropping the dynamic appearance for a batch; halves at `switch_step`."""
    return s.gamma_app if step < s.switch_step else s.gamma_app / 2


def gamma_imp(step: int, s: ScheduleConfig) -> float:
    """Probability of treating an observed frame as missing (imputation dropout); constant."""
    return s.gamma_imp


def future_mask_on(step: int, s: ScheduleConfig) -> bool:
    """Scenario s1: score the future frames on visible rows only from `switch_step` on."""
    return step >= s.switch_step


def future_poses_only(step: int, s: ScheduleConfig) -> bool:
    """Whether the future frames' likelihood trains the future poses only at this step."""
    return step < s.future_poses_only_steps


def learning_rate(step: int, t: TrainConfig, s: ScheduleConfig) -> float:
    """Step decay: `lr` until `lr_decay_fraction` of training, then `lr * lr_decay_factor`."""
    if step >= int(s.lr_decay_fraction * t.steps):
        return t.lr * s.lr_decay_factor
    return t.lr


@dataclass(frozen=True)
class Schedule:
    """Every scheduled value at one step (what the training loop uses and logs)."""

    step: int
    lr: float
    kl_weight: float
    temperature: float
    gamma_app: float
    gamma_imp: float
    future_mask: bool
    blur: float
    future_poses_only: bool


def at(step: int, cfg: Config) -> Schedule:
    s = cfg.schedule
    return Schedule(
        step=step,
        lr=learning_rate(step, cfg.train, s),
        kl_weight=kl_weight(step, s),
        temperature=temperature(step, s),
        gamma_app=gamma_app(step, s),
        gamma_imp=gamma_imp(step, s),
        future_mask=cfg.data.resolved("hidden_rows") > 0 and future_mask_on(step, s),
        blur=blur(step, s),
        future_poses_only=future_poses_only(step, s),
    )

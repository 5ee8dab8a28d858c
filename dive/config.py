"""Configuration as typed data.

One `Config` holds five sections (`data`, `model`, `loss`, `schedule`, `train`).
Values come from, in increasing priority:

    dataclass defaults  <  TOML file (``--config FILE``)  <  ``--set section.key=value``

Every value is type-checked against the dataclass annotation, unknown keys are
errors that list the valid ones, and `validate` rejects out-of-range values
before any work starts. The resolved config is stored with every run and in
every checkpoint (`to_dict` / `from_dict`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


SCENARIOS = ("s1", "s2", "s3", "none")
POSE_INFERENCE = ("sequential", "track")

# What each Moving MNIST scenario sets unless the config says otherwise
# (reference section 1). `hidden_rows`: rows hidden at the top of every observed
# frame; `num_missing`: consecutive input frames each digit is out of scene;
# `elastic_alpha`: initial strength of the decaying elastic deformation (0 = off).
SCENARIO_PRESETS: dict[str, dict[str, Any]] = {
    "s1": {"hidden_rows": 32, "num_missing": 0, "elastic_alpha": 0.0},
    "s2": {"hidden_rows": 0, "num_missing": 2, "elastic_alpha": 0.0},
    "s3": {"hidden_rows": 0, "num_missing": 1, "elastic_alpha": 100.0},
    "none": {"hidden_rows": 0, "num_missing": 0, "elastic_alpha": 0.0},
}


@dataclass
class DataConfig:
    """Where videos come from and how they are corrupted.

    `hidden_rows`, `num_missing` and `elastic_alpha` left unset take the
    scenario's value (`SCENARIO_PRESETS`); set them to override it.
    """

    dataset: str = "moving_mnist"  # "moving_mnist" | "pedestrians" | "videos" (your own clips, dive/data/videos.py)
    scenario: str = "s3"  # s1 | s2 | s3 | none (Moving MNIST only)
    # Digits: "embedded" (10k digits shipped with the package), "full" (60k via
    # torchvision download into `mnist_root`), or a path to an idx images file.
    mnist: str = "embedded"
    mnist_root: str = "~/.cache/dive/mnist"
    num_digits: int = 2
    image_size: int = 64
    digit_size: int = 28
    channels: int = 1
    t_in: int = 10
    t_out: int = 10
    step_length: float = 0.15
    hidden_rows: int | None = None
    num_missing: int | None = None
    elastic_alpha: float | None = None
    elastic_sigma: float = 4.0
    elastic_mode: str = "rows"  # "rows" (as the original) | "2d"
    seed: int = 0  # training-stream seed; items depend on (split, settings, seed, index)
    test_seed: int = 0  # the fixed test set
    val_seed: int = 1  # validation set used during training (drawn from the test pool)
    test_size: int = 1024
    # Pedestrians (MOTSChallenge crops): folder of seq_* folders; videos: folder of clips.
    root: str = ""
    cache_dir: str = ""  # "" = <root>/.dive_cache
    frame_stride: int = 6
    max_drift: float = 0.07
    num_blanked: int = 1

    def resolved(self, key: str) -> Any:
        """The effective value of a scenario-dependent setting."""
        value = getattr(self, key)
        if value is not None:
            return value
        return SCENARIO_PRESETS[self.scenario][key]


@dataclass
class ModelConfig:
    """Sizes and switches of the network (reference section 2)."""

    n_slots: int = 2  # K, object slots ("components")
    feat_dim: int = 256  # frame-encoder output
    app_dim: int = 128  # A, appearance latent
    hidden: int = 64
    dyn_dim: int = 48  # dynamic-appearance size
    conv_width: int = 8  # base width of the DCGAN conv stacks
    scale_prior: float = 3.0  # s is clamped to [scale_prior + scale_range[0], scale_prior + scale_range[1]]
    scale_range: list[float] = field(default_factory=lambda: [-1.0, 1.0])  # the original's pedestrians: [-1, 2.5]
    # > 0: tanh of the raw translation is clamped to +-(1 - margin) before it is scaled (the original's
    # pedestrians: 1/8, dive/nn/stn.py constrain_pose). 0: no clamp, as for Moving MNIST.
    position_margin: float = 0.0
    use_imputation: bool = True
    use_dynamic_appearance: bool = True
    straight_through: bool = False  # hard 0/1 presence in the forward pass, relaxed gradient
    # Pose inference network: "sequential" (DIVE's, dive/nn/pose.py) or "track" (each slot tracks
    # the ink with an explicit position estimate, dive/nn/tracker.py; a departure, docs/model.md).
    pose_inference: str = "sequential"
    # Diagnostic only, never in a recipe: with pose_inference = "track", the tracked centres are
    # replaced by the digits' true centres from the batch (a ceiling for the tracker).
    diagnostic_true_positions: bool = False
    # With pose_inference = "track": frames where the tracker does not see a slot's object, between
    # two where it does, are filled in with the object bouncing off a wall where its motion turned
    # across the gap (dive/nn/tracker.py, fill_gaps). False: linearly, as the shipped checkpoints.
    tracker_bounce_gaps: bool = False
    # With pose_inference = "track", on Moving MNIST: the tracker's centres on every frame become the
    # straight motion, bouncing off the walls as the digits do, that best fits the frames where it
    # sees the slot's object (dive/nn/tracker.py, fit_motion): it places digits out of scene or in
    # s1's hidden half, and smooths the template's noise. False: the tracked and gap-filled centres.
    tracker_motion_fit: bool = False
    # With tracker_motion_fit: the future poses start from the motion fitted to the input frames,
    # continued over the future frames (bounces included), and the prediction LSTM's translation
    # increments are corrections to its steps (dive/nn/pose_track.py, rollout_tracked). A weights
    # key: a checkpoint's LSTM learned one meaning of its increments or the other.
    tracker_future_fit: bool = False
    # > 0: a learned per-slot offset of the initial pose, started with the slots spread on a
    # circle of this radius (raw translation units; 0.5 puts two slots ~25 px apart at
    # scale 3). 0 = none: every slot starts at the centre, as the original.
    slot_spread: float = 0.0
    # Initial posterior std of the Gaussian latents, set through the bias of each scale head
    # (the weights start near 0, so every posterior starts near this std). 0 = plain init:
    # softplus(0) ~ 0.69, as the original. Initialisation only: not an architecture key.
    pose_std_init: float = 0.0  # pose increments and initial pose
    app_std_init: float = 0.0  # appearance


@dataclass
class LossConfig:
    """Likelihood, priors and KL weights of the ELBO (reference section 3)."""

    likelihood_std: float = 0.3
    app_prior_std: float = 1.0
    pose_prior_std: float = 0.1  # std of every pose increment
    init_pose_prior_mean: list[float] = field(default_factory=lambda: [3.0, 0.0, 0.0])
    init_pose_prior_std: list[float] = field(default_factory=lambda: [0.2, 1.0, 1.0])
    presence_prior: float = 0.5  # Bernoulli prior probability that an object is visible
    kl_app_weight: float = 1.0
    kl_pose_weight: float = 1.0
    kl_init_weight: float = 1.0
    kl_presence_weight: float = 1.0
    # > 0: the tracker's centres on the future frames enter as observations of the future poses,
    # log N(tracked; pose centre, std^2) in pixels, added to the ELBO (dive/teacher.py; training only,
    # needs model.pose_inference = "track"). 0 = off: the ELBO alone, as published.
    future_track_std: float = 0.0


@dataclass
class ScheduleConfig:
    """Annealing, as plain functions of the optimiser step (dive/schedules.py)."""

    kl_warmup_steps: int = 0  # 0 = full KL weight from step 0 (as the original)
    # Coarse-to-fine likelihood: frames and renderings are both blurred with a Gaussian of this
    # std (pixels) at step 0, decaying linearly to 0 (the exact objective) at `blur_steps`.
    blur_start: float = 0.0  # 0 = off (as the original)
    blur_steps: int = 0
    # For the first N steps the future frames' likelihood trains the future poses only: its gradient
    # into the appearance and the decoder is cut (the ELBO's value is unchanged). 0 = off.
    future_poses_only_steps: int = 0
    temperature_start: float = 1.0
    temperature_end: float = 0.5
    temperature_steps: int = 10000  # exponential decay start -> end over this many steps
    gamma_app: float = 0.3  # prob. of zeroing dynamic appearance (halved at switch_step)
    gamma_imp: float = 0.25  # prob. of treating an observed frame as missing
    switch_step: int = 3000  # gamma_app halves; s1 loss mask starts
    lr_decay_factor: float = 0.4
    lr_decay_fraction: float = 1 / 3  # of train.steps


@dataclass
class TrainConfig:
    """Optimisation and bookkeeping."""

    steps: int = 100_000
    batch_size: int = 64
    lr: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.5, 0.999])
    grad_clip: float = 0.0  # 0 = off
    # Adam's eps for the loss the optimiser steps on, -ELBO / (B T C H W). 0: the original's steps, whose
    # Adam (eps 1e-8) stepped on the unscaled -ELBO, i.e. eps = 1e-8 / (B T C H W) here (dive/engine.py).
    adam_eps: float = 0.0
    seed: int = 0
    num_workers: int = 0
    log_every: int = 50
    image_every: int = 1000
    eval_every: int = 2000
    eval_size: int = 128
    ckpt_every: int = 1000
    max_nonfinite: int = 10  # consecutive skipped steps before training stops
    # Under torchrun: seconds a rank waits in a collective for the others before the job stops (a rank
    # that died or hangs); torch's own default is 30 minutes.
    dist_timeout: float = 300.0


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


SECTIONS = tuple(f.name for f in dataclasses.fields(Config))


# ---------------------------------------------------------------------------
# type checking


def _check_type(value: Any, annotation: Any, where: str) -> Any:
    """Return `value` converted to `annotation`, or raise ConfigError naming `where`."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_type(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0])
    if origin is list:
        (item_type,) = typing.get_args(annotation)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        return [_check_type(v, item_type, f"{where}[{i}]") for i, v in enumerate(value)]
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected an integer, got {type(value).__name__} {value!r}")
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                return float(value)
            except OverflowError:
                raise ConfigError(f"{where}: {value!r} is too large for a float") from None
        raise ConfigError(f"{where}: expected a number, got {type(value).__name__} {value!r}")
    if annotation is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {type(value).__name__} {value!r}")
    raise ConfigError(f"{where}: unsupported type {annotation!r}")  # pragma: no cover


@functools.cache  # resolving the string annotations takes ~0.4 ms, and every key set asks
def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _apply(cfg: Config, section: str, key: str, value: Any) -> None:
    if section not in SECTIONS:
        raise ConfigError(f"unknown config section {section!r}; valid sections: {', '.join(SECTIONS)}")
    sub = getattr(cfg, section)
    types_ = _field_types(type(sub))
    if key not in types_:
        raise ConfigError(
            f"unknown key {section}.{key}; valid keys in [{section}]: {', '.join(sorted(types_))}"
        )
    setattr(sub, key, _check_type(value, types_[key], f"{section}.{key}"))


def from_dict(d: dict[str, Any], base: Config | None = None) -> Config:
    """Build a Config from nested dicts ({section: {key: value}}), checking every key and type."""
    cfg = copy_config(base) if base is not None else Config()
    if not isinstance(d, dict):
        raise ConfigError(f"expected a table of sections, got {type(d).__name__}")
    for section, table in d.items():
        if section not in SECTIONS:
            raise ConfigError(f"unknown config section {section!r}; valid sections: {', '.join(SECTIONS)}")
        if not isinstance(table, dict):
            raise ConfigError(f"[{section}] must be a table of key = value pairs, got {table!r}")
        for key, value in table.items():
            _apply(cfg, section, key, value)
    return cfg


def to_dict(cfg: Config) -> dict[str, Any]:
    """Plain nested dict (None values dropped, so it round-trips through TOML)."""
    return {
        s: {k: v for k, v in dataclasses.asdict(getattr(cfg, s)).items() if v is not None}
        for s in SECTIONS
    }


def copy_config(cfg: Config) -> Config:
    return from_dict(to_dict(cfg))


def load_toml(path: str | Path, base: Config | None = None) -> Config:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path} (see configs/ for the shipped ones)")
    try:
        with path.open("rb") as f:
            d = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    try:
        return from_dict(d, base)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def parse_override(text: str) -> tuple[str, str, Any]:
    """Parse ``section.key=value``; the value is read as a TOML value, falling back to a bare string."""
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise ConfigError(f"override {text!r} must look like section.key=value, e.g. train.batch_size=16")
    lhs, rhs = text.split("=", 1)
    section, key = lhs.strip().split(".", 1)
    rhs = rhs.strip()
    try:
        parsed = tomllib.loads(f"v = {rhs}")
    except tomllib.TOMLDecodeError:
        parsed = {}
    # Anything but exactly one TOML value (a bare word such as s2 or cpu, or text
    # that would parse as further key/value lines) is kept as the literal string.
    value = parsed["v"] if set(parsed) == {"v"} else rhs
    return section, key, value


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    cfg = copy_config(cfg)
    for text in overrides:
        section, key, value = parse_override(text)
        _apply(cfg, section, key, value)
    return cfg


def load(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """defaults < TOML file < overrides, then `validate`."""
    cfg = load_toml(path) if path else Config()
    cfg = apply_overrides(cfg, overrides or [])
    validate(cfg)
    return cfg


def _toml_char(c: str) -> str:
    """One character of a TOML basic string: quote, backslash and control characters escaped."""
    if c in ('"', "\\"):
        return "\\" + c
    if ord(c) < 0x20 or ord(c) == 0x7F:
        return f"\\u{ord(c):04x}"
    return c


def dumps_toml(cfg: Config) -> str:
    """The config as TOML text (what `train.py` saves as config.toml in the run folder)."""

    def fmt(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return '"' + "".join(_toml_char(c) for c in v) + '"'
        if isinstance(v, float):
            return repr(v)
        if isinstance(v, list):
            return "[" + ", ".join(fmt(x) for x in v) + "]"
        return str(v)

    lines = []
    for section, table in to_dict(cfg).items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {fmt(v)}" for k, v in table.items()]
        lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# range checks


def _require(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{key} = {value!r} is not allowed: {allowed}")


def validate(cfg: Config) -> Config:
    """Reject out-of-range values, naming the key, the value and what is allowed."""
    # NaN passes no comparison and inf passes every lower bound, so range checks alone would let them through.
    for section in SECTIONS:
        for key, value in dataclasses.asdict(getattr(cfg, section)).items():
            items = value if isinstance(value, list) else [value]
            _require(all(math.isfinite(v) for v in items if isinstance(v, float)), f"{section}.{key}", value,
                     "finite numbers only")
    d, m, l, s, t = cfg.data, cfg.model, cfg.loss, cfg.schedule, cfg.train
    _require(d.dataset in ("moving_mnist", "pedestrians", "videos"), "data.dataset", d.dataset,
             "one of moving_mnist, pedestrians, videos")
    _require(d.scenario in SCENARIOS, "data.scenario", d.scenario, f"one of {', '.join(SCENARIOS)}")
    _require(d.elastic_mode in ("rows", "2d"), "data.elastic_mode", d.elastic_mode, "rows or 2d")
    _require(d.num_digits >= 1, "data.num_digits", d.num_digits, "at least 1")
    _require(d.channels >= 1, "data.channels", d.channels, "at least 1")
    _require(d.image_size >= 16 and d.image_size % 16 == 0, "data.image_size", d.image_size,
             "a multiple of 16, at least 16")
    _require(1 <= d.digit_size <= d.image_size, "data.digit_size", d.digit_size,
             f"between 1 and data.image_size ({d.image_size})")
    _require(d.t_in >= 2, "data.t_in", d.t_in, "at least 2")
    _require(d.t_out >= 1, "data.t_out", d.t_out, "at least 1")
    _require(d.step_length > 0, "data.step_length", d.step_length, "> 0")
    hidden = d.resolved("hidden_rows")
    _require(0 <= hidden < d.image_size, "data.hidden_rows", hidden,
             f"between 0 and data.image_size - 1 ({d.image_size - 1})")
    nm = d.resolved("num_missing")
    max_missing = max(d.t_in - 5, 0)
    _require(0 <= nm <= max_missing, "data.num_missing", nm,
             f"between 0 and t_in - 5 = {max_missing}: missing frames start in 2..t_in-num_missing-2 "
             "so the first two and last two input frames always show every digit")
    _require(d.resolved("elastic_alpha") >= 0, "data.elastic_alpha", d.resolved("elastic_alpha"), ">= 0")
    _require(d.elastic_sigma > 0, "data.elastic_sigma", d.elastic_sigma, "> 0")
    _require(d.test_size >= 1, "data.test_size", d.test_size, "at least 1")
    _require(d.frame_stride >= 1, "data.frame_stride", d.frame_stride, "at least 1")
    _require(d.max_drift >= 0, "data.max_drift", d.max_drift, ">= 0")
    _require(0 <= d.num_blanked < d.t_in, "data.num_blanked", d.num_blanked, "between 0 and t_in - 1")

    _require(m.n_slots >= 1, "model.n_slots", m.n_slots, "at least 1")
    for key in ("feat_dim", "app_dim", "hidden", "dyn_dim", "conv_width"):
        _require(getattr(m, key) >= 1, f"model.{key}", getattr(m, key), "at least 1")
    _require(m.pose_inference in POSE_INFERENCE, "model.pose_inference", m.pose_inference,
             f"one of {', '.join(POSE_INFERENCE)}")
    if m.diagnostic_true_positions:
        _require(m.pose_inference == "track" and d.dataset == "moving_mnist" and d.num_digits == m.n_slots,
                 "model.diagnostic_true_positions", True,
                 "only with model.pose_inference = \"track\" on Moving MNIST with data.num_digits = model.n_slots")
    if m.tracker_bounce_gaps:
        _require(m.pose_inference == "track", "model.tracker_bounce_gaps", True,
                 'only with model.pose_inference = "track" (it is how the ink tracker fills gaps)')
    if m.tracker_future_fit:
        _require(m.tracker_motion_fit, "model.tracker_future_fit", True,
                 "only with model.tracker_motion_fit = true (it continues the tracker's motion fit)")
    if m.tracker_motion_fit:
        _require(m.pose_inference == "track" and d.dataset == "moving_mnist", "model.tracker_motion_fit", True,
                 'only with model.pose_inference = "track" on Moving MNIST (it fits how the digits bounce)')
    _require(len(m.scale_range) == 2 and m.scale_range[0] < m.scale_range[1], "model.scale_range", m.scale_range,
             "two numbers lo < hi (offsets of the clamp of s from model.scale_prior)")
    _require(m.scale_prior + m.scale_range[0] > 0, "model.scale_prior", m.scale_prior,
             f"> -scale_range[0] = {-m.scale_range[0]:g} (the smallest scale s must be positive)")
    _require(0 <= m.position_margin < 1, "model.position_margin", m.position_margin, "in [0, 1)")
    if m.pose_inference == "track":
        # the tracker sets every slot's initial position: a learned spread would be ignored
        _require(m.slot_spread == 0, "model.slot_spread", m.slot_spread,
                 '0 with model.pose_inference = "track" (the tracker places the slots)')
        _require(m.scale_range == [-1.0, 1.0] and m.position_margin == 0, "model.pose_inference", m.pose_inference,
                 "the tracking pose inference assumes the Moving MNIST constraint "
                 "(model.scale_range = [-1.0, 1.0], model.position_margin = 0)")
    _require(0 <= m.slot_spread <= 3, "model.slot_spread", m.slot_spread, "in [0, 3]")
    for key in ("pose_std_init", "app_std_init"):
        value = getattr(m, key)
        _require(value == 0 or 1e-3 <= value <= 10, f"model.{key}", value, "0 (plain init) or in [0.001, 10]")

    for key in ("likelihood_std", "app_prior_std", "pose_prior_std"):
        _require(getattr(l, key) > 0, f"loss.{key}", getattr(l, key), "> 0")
    _require(len(l.init_pose_prior_mean) == 3, "loss.init_pose_prior_mean", l.init_pose_prior_mean,
             "three numbers (s, tx, ty)")
    _require(len(l.init_pose_prior_std) == 3 and all(v > 0 for v in l.init_pose_prior_std),
             "loss.init_pose_prior_std", l.init_pose_prior_std, "three positive numbers")
    _require(0 < l.presence_prior < 1, "loss.presence_prior", l.presence_prior, "strictly between 0 and 1")
    for key in ("kl_app_weight", "kl_pose_weight", "kl_init_weight", "kl_presence_weight"):
        _require(getattr(l, key) >= 0, f"loss.{key}", getattr(l, key), ">= 0")
    _require(l.future_track_std >= 0, "loss.future_track_std", l.future_track_std, ">= 0 pixels (0 = off)")
    if l.future_track_std > 0:
        _require(m.pose_inference == "track" and d.dataset == "moving_mnist", "loss.future_track_std",
                 l.future_track_std, 'only with model.pose_inference = "track" on Moving MNIST (it uses the tracker)')

    _require(s.kl_warmup_steps >= 0, "schedule.kl_warmup_steps", s.kl_warmup_steps, ">= 0")
    _require(0 <= s.blur_start <= 16, "schedule.blur_start", s.blur_start, "in [0, 16] pixels")
    _require(s.blur_steps >= 0, "schedule.blur_steps", s.blur_steps, ">= 0")
    _require(s.future_poses_only_steps >= 0, "schedule.future_poses_only_steps", s.future_poses_only_steps, ">= 0")
    _require(s.temperature_start > 0, "schedule.temperature_start", s.temperature_start, "> 0")
    _require(s.temperature_end > 0, "schedule.temperature_end", s.temperature_end, "> 0")
    _require(s.temperature_steps >= 0, "schedule.temperature_steps", s.temperature_steps, ">= 0")
    _require(0 <= s.gamma_app <= 1, "schedule.gamma_app", s.gamma_app, "between 0 and 1")
    _require(0 <= s.gamma_imp < 1, "schedule.gamma_imp", s.gamma_imp, "between 0 and 1 (1 excluded)")
    _require(s.switch_step >= 0, "schedule.switch_step", s.switch_step, ">= 0")
    _require(s.lr_decay_factor > 0, "schedule.lr_decay_factor", s.lr_decay_factor, "> 0")
    _require(0 <= s.lr_decay_fraction <= 1, "schedule.lr_decay_fraction", s.lr_decay_fraction, "between 0 and 1")

    _require(t.steps >= 0, "train.steps", t.steps, ">= 0")
    _require(t.batch_size >= 1, "train.batch_size", t.batch_size, "at least 1")
    _require(t.lr > 0, "train.lr", t.lr, "> 0")
    _require(len(t.betas) == 2 and all(0 <= b < 1 for b in t.betas), "train.betas", t.betas,
             "two numbers in [0, 1)")
    _require(t.grad_clip >= 0, "train.grad_clip", t.grad_clip, ">= 0 (0 = off)")
    _require(t.adam_eps >= 0, "train.adam_eps", t.adam_eps, ">= 0 (0 = the original's, 1e-8 on the unscaled loss)")
    _require(t.num_workers >= 0, "train.num_workers", t.num_workers, ">= 0")
    _require(t.dist_timeout > 0, "train.dist_timeout", t.dist_timeout, "> 0 seconds")
    for key in ("log_every", "image_every", "eval_every", "eval_size", "ckpt_every", "max_nonfinite"):
        _require(getattr(t, key) >= 1, f"train.{key}", getattr(t, key), "at least 1")
    return cfg


# Keys that change the network's parameters: a checkpoint can only be loaded
# (or resumed) under a config that agrees on them.
ARCHITECTURE_KEYS = (
    [("model", f.name) for f in dataclasses.fields(ModelConfig)
     if f.name not in ("straight_through", "pose_std_init", "app_std_init", "diagnostic_true_positions",
                       "tracker_bounce_gaps", "tracker_motion_fit")]
    + [("data", "image_size"), ("data", "channels"), ("data", "t_in"), ("data", "t_out")]
)


def architecture_diff(a: Config, b: Config) -> list[str]:
    """Architecture keys whose values differ between two configs, as 'section.key: a -> b'."""
    out = []
    for section, key in ARCHITECTURE_KEYS:
        va, vb = getattr(getattr(a, section), key), getattr(getattr(b, section), key)
        if va != vb:
            out.append(f"{section}.{key}: {va!r} -> {vb!r}")
    return out

"""dive.config: precedence, type and range checking, TOML round trips, overrides."""

import dataclasses
import math
import string
import typing

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dive import config as C
from dive.config import (
    ARCHITECTURE_KEYS,
    SECTIONS,
    Config,
    ConfigError,
    apply_overrides,
    architecture_diff,
    dumps_toml,
    from_dict,
    load,
    load_toml,
    parse_override,
    to_dict,
    validate,
)

VALID_KEYS = {s: [f.name for f in dataclasses.fields(getattr(Config(), s))] for s in SECTIONS}


def write(tmp_path, text, name="cfg.toml"):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


# --------------------------------------------------------------------------- defaults, loading, precedence


def test_defaults_validate():
    cfg = Config()
    assert validate(cfg) is cfg
    assert load() == Config()


@pytest.mark.parametrize("scenario", C.SCENARIOS)
def test_every_scenario_validates(scenario):
    load(overrides=[f"data.scenario={scenario}"])


def test_load_toml(tmp_path):
    p = write(tmp_path, '[data]\nscenario = "s2"\nt_in = 12\n\n[train]\nlr = 0.01\nbetas = [0.9, 0.99]\n'
                        '[model]\nuse_imputation = false\n')
    cfg = load_toml(p)
    assert cfg.data.scenario == "s2" and cfg.data.t_in == 12
    assert cfg.train.lr == 0.01 and cfg.train.betas == [0.9, 0.99]
    assert cfg.model.use_imputation is False
    assert cfg.train.batch_size == Config().train.batch_size  # untouched keys keep defaults


def test_int_in_toml_is_accepted_for_float_key(tmp_path):
    cfg = load_toml(write(tmp_path, "[loss]\nlikelihood_std = 1\n"))
    assert cfg.loss.likelihood_std == 1.0 and type(cfg.loss.likelihood_std) is float


def test_precedence_defaults_file_overrides(tmp_path):
    p = write(tmp_path, "[train]\nbatch_size = 16\nlr = 0.01\n[model]\nn_slots = 3\n")
    cfg = load(p, ["train.batch_size=8", "model.n_slots=4"])
    assert cfg.train.batch_size == 8  # override beats file
    assert cfg.model.n_slots == 4
    assert cfg.train.lr == 0.01  # file beats default
    assert cfg.train.steps == Config().train.steps  # default
    assert load(p).train.batch_size == 16
    # later overrides win over earlier ones
    assert load(p, ["train.batch_size=8", "train.batch_size=2"]).train.batch_size == 2


def test_load_toml_with_base(tmp_path):
    base = Config()
    base.train.seed = 7
    cfg = load_toml(write(tmp_path, "[train]\nlr = 0.5\n"), base=base)
    assert cfg.train.seed == 7 and cfg.train.lr == 0.5
    assert base.train.lr == Config().train.lr  # base not modified


def test_apply_overrides_does_not_mutate_input():
    cfg = Config()
    new = apply_overrides(cfg, ["train.batch_size=3", "loss.init_pose_prior_mean=[1, 2, 3]"])
    assert new.train.batch_size == 3 and new.loss.init_pose_prior_mean == [1.0, 2.0, 3.0]
    assert cfg == Config()


def test_shipped_configs_load():
    from pathlib import Path

    shipped = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.toml"))
    if not shipped:
        pytest.skip("no shipped configs")
    for p in shipped:
        load_toml(p)  # keys and types; ranges may depend on e.g. data.root


# --------------------------------------------------------------------------- unknown names


def test_unknown_section_lists_valid_ones(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_toml(write(tmp_path, "[trian]\nlr = 1.0\n"))
    msg = str(info.value)
    assert "trian" in msg and all(s in msg for s in SECTIONS)
    with pytest.raises(ConfigError) as info:
        apply_overrides(Config(), ["optim.lr=1"])
    assert "optim" in str(info.value) and all(s in str(info.value) for s in SECTIONS)


def test_unknown_key_lists_valid_ones():
    with pytest.raises(ConfigError) as info:
        apply_overrides(Config(), ["train.batchsize=3"])
    msg = str(info.value)
    assert "train.batchsize" in msg
    assert all(k in msg for k in VALID_KEYS["train"])
    with pytest.raises(ConfigError) as info:
        from_dict({"model": {"slots": 2}})
    assert "model.slots" in str(info.value) and "n_slots" in str(info.value)


def test_section_must_be_a_table(tmp_path):
    with pytest.raises(ConfigError, match="train"):
        from_dict({"train": 3})
    with pytest.raises(ConfigError, match="not valid|train"):
        load_toml(write(tmp_path, "train = 3\n"))


# --------------------------------------------------------------------------- types


@pytest.mark.parametrize("override, key", [
    ('train.batch_size="x"', "train.batch_size"),
    ("train.batch_size=x", "train.batch_size"),
    ("train.batch_size=16.0", "train.batch_size"),
    ("train.batch_size=true", "train.batch_size"),
    ("model.use_imputation=1", "model.use_imputation"),
    ('model.use_imputation="true"', "model.use_imputation"),
    ("train.lr=true", "train.lr"),
    ("train.lr=fast", "train.lr"),
    ("train.betas=0.5", "train.betas"),
    ('train.betas=[0.5, "a"]', "train.betas[1]"),
    ("data.scenario=3", "data.scenario"),
    ("data.hidden_rows=2.5", "data.hidden_rows"),
    ("train.lr=1" + "0" * 400, "train.lr"),  # an integer too large for a float
])
def test_wrong_type_names_the_key(override, key):
    with pytest.raises(ConfigError) as info:
        apply_overrides(Config(), [override])
    assert key in str(info.value)


def test_wrong_type_in_file_names_file_and_key(tmp_path):
    p = write(tmp_path, '[train]\nbatch_size = "x"\n')
    with pytest.raises(ConfigError) as info:
        load_toml(p)
    assert str(p) in str(info.value) and "train.batch_size" in str(info.value)


def test_optional_keys_accept_values_and_fall_back_to_scenario():
    cfg = load(overrides=["data.scenario=s1"])
    assert cfg.data.hidden_rows is None and cfg.data.resolved("hidden_rows") == 32
    cfg = load(overrides=["data.scenario=s1", "data.hidden_rows=10", "data.elastic_alpha=3"])
    assert cfg.data.resolved("hidden_rows") == 10
    assert cfg.data.elastic_alpha == 3.0 and type(cfg.data.elastic_alpha) is float


# --------------------------------------------------------------------------- ranges


@pytest.mark.parametrize("override, key", [
    ("train.lr=-0.001", "train.lr"),
    ("train.lr=0", "train.lr"),
    ("model.n_slots=0", "model.n_slots"),
    ("data.num_missing=6", "data.num_missing"),  # t_in = 10 allows at most 5
    ("schedule.temperature_start=0", "schedule.temperature_start"),
    ("schedule.temperature_end=-0.5", "schedule.temperature_end"),
    ("loss.presence_prior=1.0", "loss.presence_prior"),
    ("loss.presence_prior=0.0", "loss.presence_prior"),
    ("loss.likelihood_std=0", "loss.likelihood_std"),
    ("loss.init_pose_prior_std=[0.2, 0.0, 1.0]", "loss.init_pose_prior_std"),
    ("loss.init_pose_prior_mean=[1.0, 2.0]", "loss.init_pose_prior_mean"),
    ("train.betas=[0.9, 1.0]", "train.betas"),
    ("train.batch_size=0", "train.batch_size"),
    ("data.image_size=60", "data.image_size"),
    ("data.scenario=s4", "data.scenario"),
    ("data.hidden_rows=64", "data.hidden_rows"),
    ("schedule.gamma_imp=1.0", "schedule.gamma_imp"),
    ("train.lr=nan", "train.lr"),
    ("model.pose_std_init=-0.1", "model.pose_std_init"),
    ("model.slot_spread=-0.5", "model.slot_spread"),
    ("model.app_std_init=0.0001", "model.app_std_init"),
    ("model.pose_inference=glimpse", "model.pose_inference"),
    ("model.diagnostic_true_positions=true", "model.diagnostic_true_positions"),  # needs pose_inference = track
    ("model.scale_range=[1.0, -1.0]", "model.scale_range"),
    ("model.scale_range=[-1.0]", "model.scale_range"),
    ("model.scale_range=[-3.5, 1.0]", "model.scale_prior"),  # the smallest scale would be negative
    ("model.position_margin=1.0", "model.position_margin"),
])
def test_out_of_range_rejected_naming_the_key(override, key):
    with pytest.raises(ConfigError) as info:
        load(overrides=[override])
    assert key in str(info.value)


def test_num_missing_bound_follows_t_in():
    load(overrides=["data.num_missing=5"])  # t_in = 10: 5 is the largest allowed
    load(overrides=["data.t_in=12", "data.num_missing=7"])
    with pytest.raises(ConfigError, match="data.num_missing"):
        load(overrides=["data.t_in=12", "data.num_missing=8"])
    # the scenario's preset counts too: s2 misses 2 frames, so t_in = 6 is too short
    with pytest.raises(ConfigError, match="data.num_missing"):
        load(overrides=["data.scenario=s2", "data.t_in=6"])


def test_diagnostic_true_positions_needs_the_tracker_and_one_slot_per_digit():
    load(overrides=["model.pose_inference=track", "model.diagnostic_true_positions=true"])
    with pytest.raises(ConfigError, match="model.diagnostic_true_positions"):
        load(overrides=["model.pose_inference=track", "model.diagnostic_true_positions=true", "model.n_slots=3"])


def test_tracker_bounce_gaps_needs_the_tracker():
    assert load(overrides=["model.pose_inference=track", "model.tracker_bounce_gaps=true"]).model.tracker_bounce_gaps
    with pytest.raises(ConfigError, match="model.tracker_bounce_gaps"):
        load(overrides=["model.tracker_bounce_gaps=true"])


def test_tracker_motion_fit_needs_the_tracker_on_moving_mnist():
    assert load(overrides=["model.pose_inference=track", "model.tracker_motion_fit=true"]).model.tracker_motion_fit
    with pytest.raises(ConfigError, match="model.tracker_motion_fit"):
        load(overrides=["model.tracker_motion_fit=true"])
    with pytest.raises(ConfigError, match="model.tracker_motion_fit"):
        load(overrides=["model.pose_inference=track", "model.tracker_motion_fit=true", "data.dataset=videos"])
    assert load(overrides=["model.pose_inference=track", "model.tracker_motion_fit=true",
                           "model.tracker_future_fit=true"]).model.tracker_future_fit
    with pytest.raises(ConfigError, match="model.tracker_future_fit"):
        load(overrides=["model.pose_inference=track", "model.tracker_future_fit=true"])


def test_boundary_values_accepted():
    load(overrides=["loss.presence_prior=0.999", "schedule.temperature_end=1e-3", "model.n_slots=1",
                    "schedule.gamma_app=1.0", "schedule.kl_warmup_steps=0", "train.grad_clip=0"])


# --------------------------------------------------------------------------- files


def test_malformed_toml_names_the_file(tmp_path):
    p = write(tmp_path, "[train\nbatch_size = \n")
    with pytest.raises(ConfigError) as info:
        load_toml(p)
    assert str(p) in str(info.value)
    with pytest.raises(ConfigError) as info:
        load(p)
    assert str(p) in str(info.value)


def test_missing_file_names_the_file(tmp_path):
    p = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load(p)
    assert str(p) in str(info.value)


def _nondefault_config():
    cfg = Config()
    cfg.data.scenario = "s1"
    cfg.data.hidden_rows = 20
    cfg.data.elastic_alpha = 12.5
    cfg.data.root = 'C:\\data\\"mots"\tdir\nnext\x7f\x01 é ✓'
    cfg.model.n_slots = 3
    cfg.model.straight_through = True
    cfg.loss.init_pose_prior_mean = [2.0, -0.1, 1e-7]
    cfg.loss.presence_prior = 0.123456789
    cfg.schedule.lr_decay_fraction = 1 / 3
    cfg.train.lr = 3e-5
    cfg.train.betas = [0.9, 0.999]
    cfg.train.steps = 12345678901
    return cfg


@pytest.mark.parametrize("make", [Config, _nondefault_config])
def test_dumps_toml_round_trips(tmp_path, make):
    cfg = make()
    p = write(tmp_path, dumps_toml(cfg))
    assert load_toml(p) == cfg
    assert from_dict(to_dict(cfg)) == cfg


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(root=st.text(), lr=st.floats(allow_nan=False), steps=st.integers(-(2**70), 2**70),
       betas=st.lists(st.floats(allow_nan=False), max_size=3), flag=st.booleans())
def test_dumps_toml_round_trips_arbitrary_values(tmp_path, root, lr, steps, betas, flag):
    cfg = Config()
    cfg.data.root, cfg.train.lr, cfg.train.steps, cfg.train.betas = root, lr, steps, betas
    cfg.model.use_imputation = flag
    p = write(tmp_path, dumps_toml(cfg))
    assert load_toml(p) == cfg


# --------------------------------------------------------------------------- overrides


@pytest.mark.parametrize("text, expected", [
    ("train.batch_size=16", ("train", "batch_size", 16)),
    ("train.lr=1e-3", ("train", "lr", 1e-3)),
    ("train.lr=0.5", ("train", "lr", 0.5)),
    ("model.use_imputation=false", ("model", "use_imputation", False)),
    ("model.straight_through=true", ("model", "straight_through", True)),
    ("train.betas=[0.9, 0.99]", ("train", "betas", [0.9, 0.99])),
    ("data.scenario=s2", ("data", "scenario", "s2")),
    ('data.scenario="s2"', ("data", "scenario", "s2")),
    ("data.root=/data/mots", ("data", "root", "/data/mots")),
    ("data.root=", ("data", "root", "")),
    ("data.root=a=b", ("data", "root", "a=b")),
    ("  train.seed = 3  ", ("train", "seed", 3)),
    ("data.root=1\nx = 2", ("data", "root", "1\nx = 2")),  # not silently truncated to 1
])
def test_parse_override(text, expected):
    got = parse_override(text)
    assert got == expected
    assert type(got[2]) is type(expected[2])


@pytest.mark.parametrize("text", ["train", "train.lr", "lr=1", "=1", "trainlr=1"])
def test_parse_override_rejects_malformed(text):
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_override(text)


# --------------------------------------------------------------------------- architecture


def test_architecture_diff_reports_model_keys_only():
    a = Config()
    b = apply_overrides(a, ["model.n_slots=3", "model.app_dim=64", "data.t_in=12",
                            "train.lr=0.5", "train.batch_size=2", "loss.kl_app_weight=2",
                            "schedule.switch_step=1", "model.straight_through=true"])
    diff = architecture_diff(a, b)
    assert sorted(diff) == sorted(["model.n_slots: 2 -> 3", "model.app_dim: 128 -> 64", "data.t_in: 10 -> 12"])
    assert architecture_diff(a, a) == []
    assert architecture_diff(a, apply_overrides(a, ["train.lr=0.5", "train.steps=3"])) == []


def test_architecture_keys_cover_every_model_key_but_the_training_only_ones():
    model_keys = {k for s, k in ARCHITECTURE_KEYS if s == "model"}
    # straight_through, the diagnostic switch and the tracker's gap filling change the forward pass
    # only, the *_std_init keys the initial weights only
    assert model_keys == set(VALID_KEYS["model"]) - {"straight_through", "pose_std_init", "app_std_init",
                                                     "diagnostic_true_positions", "tracker_bounce_gaps",
                                                     "tracker_motion_fit"}
    for section, key in ARCHITECTURE_KEYS:
        assert key in VALID_KEYS[section]


# --------------------------------------------------------------------------- never another exception


ALL_KEYS = sorted({k for keys in VALID_KEYS.values() for k in keys})
names = st.one_of(st.sampled_from(ALL_KEYS), st.text(string.ascii_letters + "_.", max_size=12), st.text(max_size=8))
sections = st.one_of(st.sampled_from(SECTIONS), st.sampled_from(["", "Train", "optim", "data.x"]), st.text(max_size=6))
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(-(10**400), 10**400), st.floats(),
    st.text(max_size=20), st.sampled_from(["s1", "s2", "s3", "none", "rows", "2d", "moving_mnist", "inf", "nan"]),
)
values = st.one_of(scalars, st.lists(scalars, max_size=4), st.tuples(scalars, scalars),
                   st.dictionaries(st.text(max_size=3), scalars, max_size=2))


def _as_text(value):
    """A command-line rendering of a Python value (TOML-like where possible, else str)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_as_text(v) for v in value) + "]"
    return str(value)


VALID_PAIRS = [(s, k) for s in SECTIONS for k in VALID_KEYS[s]]
pairs = st.one_of(st.sampled_from(VALID_PAIRS), st.tuples(sections, names))


@settings(max_examples=400, deadline=None)
@given(pair=pairs, value=values, quoted=st.booleans())
def test_overrides_succeed_or_raise_config_error(pair, value, quoted):
    section, key = pair
    text = _as_text(value)
    if quoted and isinstance(value, str):
        text = '"' + text + '"'
    base = Config()
    for attempt in (lambda: apply_overrides(base, [f"{section}.{key}={text}"]),
                    lambda: from_dict({section: {key: value}})):
        try:
            cfg = attempt()
        except ConfigError:
            continue
        assert isinstance(cfg, Config)
        try:
            validate(cfg)
        except ConfigError:
            pass
        # a second round trip never fails on something the checks accepted
        try:
            dumps_toml(cfg)
            from_dict(to_dict(cfg))
        except ConfigError:  # pragma: no cover - would be a bug
            pytest.fail("an accepted config does not round trip")
    assert base == Config()


@settings(max_examples=150, deadline=None)
@given(section=st.sampled_from(SECTIONS), data=st.data())
def test_valid_key_valid_type_is_applied(section, data):
    """For every real key, a value of the annotated type is stored as given."""
    key = data.draw(st.sampled_from(VALID_KEYS[section]))
    annotation = typing.get_type_hints(type(getattr(Config(), section)))[key]
    strategies = {
        bool: st.booleans(), int: st.integers(-(10**6), 10**6), float: st.floats(-1e6, 1e6),
        str: st.text(max_size=10), list[float]: st.lists(st.floats(-10, 10), max_size=4),
        int | None: st.one_of(st.none(), st.integers(-100, 100)),
        float | None: st.one_of(st.none(), st.floats(-100, 100)),
    }
    value = data.draw(strategies[annotation])
    cfg = from_dict({section: {key: value}})
    assert getattr(getattr(cfg, section), key) == value


def test_tracking_refuses_another_pose_constraint():
    with pytest.raises(ConfigError, match="tracking pose inference assumes"):
        load(overrides=["model.pose_inference=track", "model.position_margin=0.125"])
    load(overrides=["model.pose_inference=track"])

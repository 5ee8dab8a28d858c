"""Bad input to the public entry points: each is refused with the project's error type and a message
that says what was expected and what was found, and none is unpickled.

The property tests throw random shapes, dtypes, values and keyword arguments at DIVE.predict /
forward, elbo, MovingMNIST, load_test_set and the config parser: every call either works or raises
a DIVEError, never an unrelated exception. Each records its outcome with hypothesis.event, so
``pytest tests/test_validation.py --hypothesis-show-statistics`` shows how many inputs were accepted
and how many refused (the figures in docs/reliability.md).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import pathlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from dive import checkpoint, config, engine, errors
from dive.config import Config, ConfigError, LossConfig
from dive.data import DataError, MovingMNIST, TensorSequenceDataset, load_test_set
from dive.data.common import DataIndexError
from dive.elbo import elbo
from dive.errors import DIVEError, InputError
from dive.model import DIVE

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke.toml"
T_IN, T_OUT, C, S, K = 6, 2, 1, 64, 2  # the smoke config's sizes
# DIVE_FUZZ_EXAMPLES raises the count for a longer search than the suite's default.
FUZZ = settings(max_examples=int(os.environ.get("DIVE_FUZZ_EXAMPLES", "80")), deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


def _script(name: str):
    """Import train.py / evaluate.py as modules (they live at the repository root, not in the package)."""
    spec = importlib.util.spec_from_file_location(f"_script_{name}", ROOT / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class RunsCode:
    """Pickles as a call that creates `marker`: loading it with unpickling would run code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


@pytest.fixture(scope="module")
def smoke_cfg() -> Config:
    return config.load(SMOKE)


@pytest.fixture(scope="module")
def model(smoke_cfg) -> DIVE:
    return engine.build_model(smoke_cfg).eval()


def _outcome(fn):
    """Call fn; return 'ok' or the name of the DIVEError subclass raised (anything else propagates)."""
    try:
        fn()
    except DIVEError as e:
        assert str(e), "an error without a message"
        event(f"refused with {type(e).__name__}")
        return type(e).__name__
    event("accepted")
    return "ok"


# --------------------------------------------------------------------------- the error types


def test_one_error_hierarchy_keeps_the_old_names_and_bases():
    from dive.data import DataError as data_error

    assert config.ConfigError is errors.ConfigError
    assert data_error is errors.DataError
    assert checkpoint.CheckpointError is errors.CheckpointError
    assert engine.TrainingError is errors.TrainingError
    old_bases = {errors.ConfigError: ValueError, errors.DataError: ValueError, errors.InputError: ValueError,
                 errors.DataIndexError: IndexError, errors.CheckpointError: RuntimeError,
                 errors.TrainingError: RuntimeError}
    for cls, base in old_bases.items():
        assert issubclass(cls, DIVEError) and issubclass(cls, base), cls


# --------------------------------------------------------------------------- DIVE.predict / forward


@pytest.mark.parametrize("make, message", [
    (lambda: torch.rand(2, T_IN, S, S), r"expected input of shape \(B, 6, 1, 64, 64\), got \(B, 6, 64, 64\)"),
    (lambda: torch.rand(2, T_IN + 1, C, S, S), r"got \(B, 7, 1, 64, 64\)"),
    (lambda: torch.rand(0, T_IN, C, S, S), "B >= 1, got B = 0"),
    (lambda: torch.rand(T_IN, C, S, S).numpy(), "expected a torch.Tensor"),
    (lambda: torch.zeros(1, T_IN, C, S, S, dtype=torch.uint8), "floating-point input.*got dtype torch.uint8"),
    (lambda: torch.full((1, T_IN, C, S, S), float("nan")), "NaN or infinite"),
    (lambda: torch.full((1, T_IN, C, S, S), float("inf")), "NaN or infinite"),
    (lambda: torch.rand(1, T_IN, C, S, S) * 255, r"values in \[0, 1\], found \[0"),
    (lambda: torch.rand(1, T_IN, C, S, S) - 1, r"values in \[0, 1\], found \[-"),
])
def test_predict_refuses_bad_input(model, make, message):
    with pytest.raises(InputError, match=message):
        model.predict(make())


def test_predict_converts_dtype(model):
    x = torch.rand(1, T_IN, C, S, S)
    a = model.predict(x)["prediction"]
    b = model.predict(x.double())["prediction"]
    assert b.dtype == torch.float32 and torch.allclose(a, b, atol=1e-6)


def test_forward_checks_shape_noise_and_schedule_values(smoke_cfg):
    m = engine.build_model(smoke_cfg).train()
    x = torch.rand(2, T_IN, C, S, S)
    with pytest.raises(InputError, match=r"expected input of shape \(B, 6, 1, 64, 64\), got \(B, 6, 64, 64\)"):
        m(x[:, :, 0])
    noise = m.sample_noise(3)  # for a batch of 3, not 2
    with pytest.raises(InputError, match=r"noise\['app'\]: expected a tensor of shape \(2, 8, 2, 16\)"):
        m(x, noise=noise)
    with pytest.raises(InputError, match="gamma_imp must be a probability"):
        m(x, gamma_imp=1.5)
    with pytest.raises(InputError, match="temperature must be > 0"):
        m(x, temperature=0.0)
    with pytest.raises(InputError, match="expected torch.float32 input .*got torch.float64; predict"):
        m(x.double())
    m(x, noise=m.sample_noise(2), temperature=0.5, gamma_imp=0.2)  # the valid call still works


DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.uint8, torch.int64, torch.bool]


@st.composite
def videos(draw):
    """Tensors near the expected (B, 6, 1, 64, 64): a valid one, or one with 1-3 things wrong
    (rank and sizes, dtype, values)."""
    shape, dtype, values = [draw(st.integers(1, 2)), T_IN, C, S, S], torch.float32, "unit"
    for what in draw(st.lists(st.sampled_from(["shape", "dtype", "values"]), max_size=3, unique=True)):
        if what == "shape":
            shape = draw(st.lists(st.sampled_from([0, 1, 2, 3, T_IN, T_IN + 1, 32, S]), max_size=6))
            if math.prod(shape) > 3 * T_IN * S * S:
                shape = shape[:2]
        elif what == "dtype":
            dtype = draw(st.sampled_from(DTYPES))
        else:
            values = draw(st.sampled_from(["wide", "nan", "inf", "zero"]))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    x = torch.rand(shape, generator=g, dtype=torch.float64)
    if values == "wide":
        x = x * 4 - 2
    elif values == "zero":
        x = x * 0
    elif values in ("nan", "inf") and x.numel():
        x.view(-1)[draw(st.integers(0, x.numel() - 1))] = float(values)
    return x.to(dtype) if dtype != torch.bool else x > 0.5


@FUZZ
@given(x=videos())
def test_predict_property(model, x):
    result = {}
    outcome = _outcome(lambda: result.update(model.predict(x)))
    if outcome == "ok":
        assert result["prediction"].shape == (x.shape[0], T_OUT, C, S, S)
        assert torch.isfinite(result["prediction"]).all()
    else:
        assert outcome == "InputError"


@pytest.fixture(scope="module")
def train_model(smoke_cfg) -> DIVE:
    return engine.build_model(smoke_cfg).train()


@FUZZ
@given(x=videos(), gamma=st.one_of(st.floats(0, 1), st.floats(-1, 2)),
       temperature=st.one_of(st.floats(0.1, 2), st.floats(-1, 2)))
def test_forward_property(train_model, x, gamma, temperature):
    outcome = _outcome(lambda: train_model(x, gamma_imp=gamma, gamma_app=gamma, temperature=temperature))
    assert outcome in ("ok", "InputError")


# --------------------------------------------------------------------------- elbo

B_E, H_E, W_E, A_E = 2, 8, 6, 4


def _out():
    g = torch.Generator().manual_seed(0)
    T = T_IN + T_OUT
    return SimpleNamespace(
        input_masked=torch.rand(B_E, T_IN, C, H_E, W_E, generator=g), pred=torch.rand(B_E, T_OUT, C, H_E, W_E),
        presence_logits=torch.randn(B_E, T_IN, K), app_mu=torch.randn(B_E, T, K, A_E),
        app_sigma=torch.rand(B_E, T, K, A_E) + 0.1, pose_mu=torch.randn(B_E, T, K, 3) * 0.1,
        pose_sigma=torch.rand(B_E, T, K, 3) + 0.1, init_mu=torch.randn(B_E, K, 3),
        init_sigma=torch.rand(B_E, K, 3) + 0.1)


def _batch():
    return {"input": torch.rand(B_E, T_IN, C, H_E, W_E), "target": torch.rand(B_E, T_OUT, C, H_E, W_E),
            "visible": torch.ones(B_E, 1, H_E, W_E)}


@pytest.mark.parametrize("change, message", [
    (lambda b: b.pop("target"), r"batch\['target'\] must be a tensor, got NoneType"),
    (lambda b: b.update(input=b["input"].numpy()), r"batch\['input'\] must be a tensor, got ndarray"),
    (lambda b: b.update(input=(b["input"] * 255).to(torch.uint8)), r"floating point.*got dtype torch.uint8"),
    (lambda b: b.update(input=b["input"][0]), r"expected batch\['input'\] of shape \(B, T_in, C, H, W\)"),
    (lambda b: b["target"].view(-1).__setitem__(3, float("nan")), r"batch\['target'\] contains NaN"),
    (lambda b: b["input"].mul_(3), r"batch\['input'\] must have values in \[0, 1\], found"),
    (lambda b: b.update(visible=torch.ones(B_E, 2, H_E, W_E)), r"batch\['visible'\] of shape \(2, 1 or 1, 8, 6\)"),
])
def test_elbo_refuses_bad_batches(change, message):
    batch = _batch()
    change(batch)
    with pytest.raises(InputError, match=message):
        elbo(_out(), batch, LossConfig())


def test_elbo_refuses_bad_arguments():
    with pytest.raises(InputError, match="kl_weight must be a finite number >= 0, got -1"):
        elbo(_out(), _batch(), LossConfig(), kl_weight=-1)
    with pytest.raises(InputError, match="cfg must be a dive.config.LossConfig, got dict"):
        elbo(_out(), _batch(), {})
    with pytest.raises(InputError, match="DIVEOutput; it lacks tensors"):
        elbo(SimpleNamespace(pred=torch.zeros(1)), _batch(), LossConfig())
    with pytest.raises(InputError, match="batch must be a dict"):
        elbo(_out(), [1, 2], LossConfig())


@st.composite
def elbo_batches(draw):
    batch = _batch()
    for key in draw(st.lists(st.sampled_from(["input", "target", "visible"]), max_size=3, unique=True)):
        how = draw(st.sampled_from(["drop", "shape", "dtype", "nan", "range", "list"]))
        v = batch[key]
        if how == "drop":
            del batch[key]
        elif how == "shape":
            dims = list(v.shape)
            i = draw(st.integers(0, len(dims)))
            dims = dims[:i] + dims[i + 1:] if draw(st.booleans()) else dims[:i] + [2] + dims[i:]
            batch[key] = torch.rand(dims)
        elif how == "dtype":
            batch[key] = v.to(draw(st.sampled_from(DTYPES)))
        elif how == "nan":
            v.view(-1)[0] = float(draw(st.sampled_from(["nan", "inf", "-inf"])))
        elif how == "range":
            batch[key] = v * draw(st.floats(-5, 5, allow_nan=False))
        else:
            batch[key] = v.tolist()
    return batch


@FUZZ
@given(batch=elbo_batches(), kl_weight=st.one_of(st.floats(0, 2), st.floats(-1, 2), st.just(float("inf")),
                                                 st.text(max_size=2)))
def test_elbo_property(batch, kl_weight):
    result = []
    outcome = _outcome(lambda: result.append(elbo(_out(), batch, LossConfig(), kl_weight=kl_weight)))
    if outcome == "ok":
        assert torch.isfinite(result[0].loss)
    else:
        assert outcome == "InputError"


# --------------------------------------------------------------------------- MovingMNIST


@pytest.mark.parametrize("kwargs, error, message", [
    ({"seed": 1.5}, DataError, "seed must be an integer, got float 1.5"),
    ({"seed": "0"}, DataError, "seed must be an integer, got str"),
    ({"size": 0}, DataError, "size = 0 is not allowed: at least 1"),
    ({"size": -3}, DataError, "size = -3 is not allowed"),
    ({"size": 2.0}, DataError, "size must be an integer"),
    ({"split": "TEST"}, DataError, "split = 'TEST' is not allowed"),
    ({"split": ["test"]}, DataError, "split = \\['test'\\] is not allowed"),
    ({"config": {"scenario": "s2"}}, ConfigError, "config must be a dive.config.DataConfig, got dict"),
    ({"scenario": "s4"}, ConfigError, "data.scenario = 's4' is not allowed"),
    ({"num_digitz": 2}, ConfigError, "unknown key data.num_digitz"),
    ({"num_digits": "two"}, ConfigError, "data.num_digits: expected an integer"),
    ({"step_length": float("nan")}, ConfigError, "data.step_length = nan is not allowed"),
    ({"digits": np.zeros((3, 28, 28), np.uint8)}, DataError, "digits must be a uint8 tensor"),
    ({"digits": torch.zeros(3, 28, 28)}, DataError, "non-empty uint8 tensor.*torch.float32"),
    ({"digits": torch.zeros(0, 28, 28, dtype=torch.uint8)}, DataError, "non-empty uint8 tensor"),
])
def test_moving_mnist_refuses_bad_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        MovingMNIST(**{"split": "test", "size": 4, **kwargs})


@pytest.mark.parametrize("indices, error, message", [
    ([4], DataIndexError, r"index 4 out of range for a dataset of 4 items \(valid: -4 to 3\)"),
    ([-5], DataIndexError, "index -5 out of range"),
    ([0, 2**70], DataIndexError, "out of range"),
    ([0.5], DataError, "indices must be integers, got float 0.5"),
    (["0"], DataError, "indices must be integers, got str"),
    ("01", DataError, "sequence of integers, got str"),
    (3, DataError, "sequence of integers, got int"),
    ([], DataError, "at least one item"),
])
def test_moving_mnist_refuses_bad_indices(indices, error, message):
    ds = MovingMNIST("s2", split="test", size=4)
    with pytest.raises(error, match=message):
        ds.batch(indices)
    assert torch.equal(ds.batch([-1])["input"], ds.batch([3])["input"])  # negative indices count from the end
    with pytest.raises(IndexError):  # still an IndexError, so `for item in ds` style code keeps working
        ds[4]


_DATA_KEYS = {"num_digits": st.integers(-1, 4), "image_size": st.sampled_from([0, 15, 16, 32, 48, 64, 65]),
              "digit_size": st.integers(-1, 40), "t_in": st.integers(0, 12), "t_out": st.integers(-1, 4),
              "step_length": st.floats(-1, 1), "hidden_rows": st.one_of(st.none(), st.integers(-2, 70)),
              "num_missing": st.one_of(st.none(), st.integers(-1, 8)),
              "elastic_alpha": st.one_of(st.none(), st.floats(-10, 200)),
              "elastic_mode": st.sampled_from(["rows", "2d", "3d"]), "channels": st.integers(0, 3),
              "elastic_sigma": st.floats(-1, 8), "mnist": st.sampled_from(["embedded", "/no/such/file", "~nobody_x/f"]),
              "nonsense": st.integers()}
_ANY = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(), st.text(max_size=3),
                 st.lists(st.integers(), max_size=2))


@st.composite
def moving_mnist_calls(draw):
    """Keyword arguments for MovingMNIST (valid ones with 0-3 changes) and indices for .batch."""
    kwargs = {"scenario": "s2", "split": "test", "seed": 0, "size": 8}
    changes = {
        "scenario": st.one_of(st.none(), st.sampled_from(["s1", "s2", "s3", "none", "s4", ""]), _ANY),
        "split": st.one_of(st.sampled_from(["train", "val", "test", "Test"]), _ANY),
        "seed": st.one_of(st.integers(-(2**70), 2**70), _ANY),
        "size": st.one_of(st.integers(-2, 10**12), _ANY),
        "override": st.sampled_from(sorted(_DATA_KEYS)),
    }
    for what in draw(st.lists(st.sampled_from(sorted(changes)), max_size=3)):
        if what == "override":
            key = draw(changes[what])
            kwargs[key] = draw(st.one_of(_DATA_KEYS[key], _ANY))
        else:
            kwargs[what] = draw(changes[what])
    indices = draw(st.one_of(st.lists(st.integers(-8, 7), min_size=1, max_size=3),
                             st.lists(st.integers(-(2**40), 2**40), max_size=3), _ANY))
    return kwargs, indices


@FUZZ
@given(call=moving_mnist_calls())
def test_moving_mnist_property(call):
    kwargs, indices = call
    made = []
    if _outcome(lambda: made.append(MovingMNIST(**kwargs))) != "ok":
        return
    got = {}
    if _outcome(lambda: got.update(made[0].batch(indices))) == "ok":
        assert got["input"].shape[0] == len(indices)
        assert 0 <= got["input"].min() and got["input"].max() <= 1


# --------------------------------------------------------------------------- test-set files


@pytest.fixture(scope="module")
def good_arrays() -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in MovingMNIST("s2", split="test", size=3).batch(range(3)).items()}


def _write(path: Path, arrays: dict, header=None) -> Path:
    header = {"format": 1, "meta": {}, "encodings": {}} if header is None else header
    np.savez(path, **arrays, __meta__=np.array(json.dumps(header)))  # allow_pickle on save: object arrays too
    return path


def test_test_set_with_object_array_is_refused_unread(tmp_path, good_arrays):
    marker = tmp_path / "ran"
    payload = np.empty(1, dtype=object)
    payload[0] = RunsCode(marker)
    np.save(tmp_path / "control.npy", payload, allow_pickle=True)
    np.load(tmp_path / "control.npy", allow_pickle=True)  # the payload works when unpickled ...
    assert marker.exists()
    marker.unlink()
    path = _write(tmp_path / "evil.npz", {**good_arrays, "input": payload})
    with pytest.raises(DataError, match=r"evil.npz: not a valid test set: .*allow_pickle=False"):
        load_test_set(path)
    assert not marker.exists()  # ... and was not run here


@pytest.mark.parametrize("change, message", [
    (lambda a: a["input"].__setitem__((0, 0, 0, 0, 0), np.nan), "field 'input' holds NaN or infinite values"),
    (lambda a: a.update(target=a["target"] + 1.5), r"field 'target' has values outside \[0, 1\] \(min 1.5"),
    (lambda a: a.update(visible=a["visible"][:, :, :32]), r"field 'visible' has shape \(3, 1, 32, 64\), expected"),
    (lambda a: a.update(input=a["input"][0]), r"input and target must be \(N, T, C, H, W\), got \(10, 1, 64, 64\)"),
    (lambda a: a.update(present=a["present"].astype(np.float64)), "field 'present' should be float32, is float64"),
    (lambda a: a.update(input=(a["input"] * 255).astype(np.int32)), "field 'input' should be float32, is int32"),
    (lambda a: a.update(extra=np.float32(1.0)), r"field 'extra' has shape \(\), expected one row per sequence"),
    (lambda a: a.pop("target_full"), r"missing fields \['target_full'\]"),
])
def test_test_set_refusals_say_expected_and_found(tmp_path, good_arrays, change, message):
    arrays = {k: v.copy() for k, v in good_arrays.items()}
    change(arrays)
    with pytest.raises(DataError, match=message):
        load_test_set(_write(tmp_path / "bad.npz", arrays))


@pytest.mark.parametrize("header, message", [
    (5, "metadata should be a JSON object, found int"),
    ({"format": 2}, "format 2, this code reads 1"),
    ({"format": 1, "encodings": []}, "'encodings' and 'meta' should be JSON objects"),
])
def test_test_set_bad_metadata(tmp_path, good_arrays, header, message):
    with pytest.raises(DataError, match=message):
        load_test_set(_write(tmp_path / "bad.npz", good_arrays, header))


def test_test_set_not_an_npz(tmp_path, good_arrays):
    np.save(tmp_path / "one.npy", good_arrays["input"])
    with pytest.raises(DataError, match=r"expected an .npz archive of arrays, found a single .npy array"):
        load_test_set(tmp_path / "one.npy")
    (tmp_path / "empty.npz").write_bytes(b"")
    with pytest.raises(DataError, match="empty.npz: not a valid test set"):
        load_test_set(tmp_path / "empty.npz")


_FIELDS = ["input", "target", "input_full", "target_full", "present", "visible", "positions", "other"]


@st.composite
def saved_test_sets(draw):
    n, t_in, t_out, c, h = 2, 3, 2, 1, 4
    good = {"input": (n, t_in, c, h, h), "target": (n, t_out, c, h, h), "input_full": (n, t_in, c, h, h),
            "target_full": (n, t_out, c, h, h), "present": (n, t_in, 2), "visible": (n, c, h, h),
            "positions": (n, t_in + t_out, 2, 2)}
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    arrays = {k: rng.random(shape, dtype=np.float32) for k, shape in good.items()}
    for _ in range(draw(st.integers(0, 3))):
        key = draw(st.sampled_from(_FIELDS))
        how = draw(st.sampled_from(["drop", "shape", "dtype", "nan", "scale", "object", "scalar"]))
        if how == "drop":
            arrays.pop(key, None)
        elif how == "shape":
            arrays[key] = rng.random(draw(st.lists(st.integers(0, 5), max_size=6)), dtype=np.float32)
        elif how == "dtype":
            dtype = draw(st.sampled_from([np.float64, np.float16, np.uint8, np.int64, np.bool_, np.complex64, "U3"]))
            arrays[key] = rng.random(good.get(key, (n,))).astype(dtype)
        elif how == "nan" and key in arrays and arrays[key].size and arrays[key].dtype.kind == "f":
            arrays[key].flat[0] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
        elif how == "scale" and key in arrays and arrays[key].dtype.kind == "f":
            arrays[key] = arrays[key] * draw(st.floats(-3, 3, allow_nan=False))
        elif how == "object":
            arrays[key] = np.array([{"a": 1}, None], dtype=object)
        elif how == "scalar":
            arrays[key] = np.float32(draw(st.floats(width=32)))
    header = draw(st.one_of(st.just({"format": 1, "meta": {}, "encodings": {}}),
                            st.fixed_dictionaries({"format": st.sampled_from([1, 2, "1"]),
                                                   "encodings": st.dictionaries(st.sampled_from(_FIELDS),
                                                                                st.sampled_from(["raw", "uint8/255", "x"]),
                                                                                max_size=2)}),
                            st.sampled_from([None, 3, [1], "text"])))
    return arrays, header


@FUZZ
@given(spec=saved_test_sets())
def test_load_test_set_property(tmp_path, spec):
    arrays, header = spec
    path = tmp_path / "fuzz.npz"
    extra = {} if header is None else {"__meta__": np.array(json.dumps(header))}
    np.savez(path, **arrays, **extra)
    loaded = []
    if _outcome(lambda: loaded.append(load_test_set(path))) == "ok":
        ds = loaded[0]
        assert isinstance(ds, TensorSequenceDataset)
        item = ds.batch([0, -1])
        assert all(torch.isfinite(v).all() for v in item.values())


# --------------------------------------------------------------------------- evaluate.py --input


@pytest.fixture(scope="module")
def evaluate_module():
    return _script("evaluate")


def _video(tmp_path: Path, array, name="video.npy", allow_pickle=False) -> Path:
    np.save(tmp_path / name, array, allow_pickle=allow_pickle)
    return tmp_path / name


@pytest.mark.parametrize("make, message", [
    (lambda: np.full((T_IN, S, S), np.nan, np.float32), "contains NaN or infinite values"),
    (lambda: np.full((T_IN, S, S), 2.0, np.float32), r"values must lie in \[0, 1\], found \[2, 2\]"),
    (lambda: np.zeros((S, S), np.float32), r"expected frames of shape \(T, H, W\) or \(T, H, W, C\), got \(64, 64\)"),
    (lambda: np.zeros((T_IN - 1, S, S), np.float32), r"5 frames, fewer than the 6 needed"),
    (lambda: np.zeros((T_IN, S, S, 2), np.float32), r"expected 1 or 3 channels in \(T, H, W, C\), got shape"),
    (lambda: np.zeros((0, T_IN, C, S, S), np.float32), r"holds no video \(shape \(0, 6, 1, 64, 64\)\)"),
    (lambda: np.zeros((2, T_IN, C, 32, S), np.float32), r"a 5-D array is a batch of windows \(B, 6, 1, 64, 64\)"),
    (lambda: np.zeros((T_IN, S, S), np.int32), "expected uint8 or float values, got dtype int32"),
    (lambda: np.zeros((T_IN, S, S), bool), "expected uint8 or float values, got dtype bool"),
    (lambda: np.zeros((T_IN, S, S), np.complex64), "got dtype complex64"),
])
def test_own_video_refusals(tmp_path, smoke_cfg, evaluate_module, make, message):
    with pytest.raises(DataError, match=message):
        evaluate_module.load_video(_video(tmp_path, make()), smoke_cfg)


def test_own_video_accepts_the_documented_layouts(tmp_path, smoke_cfg, evaluate_module):
    frames = np.random.default_rng(0).random((T_IN, S, S), dtype=np.float32)
    for array in (frames, frames[:, None], frames[..., None], frames[None, :, None], (frames * 255).astype(np.uint8),
                  frames.astype(np.float64)):
        got, starts, length = evaluate_module.load_video(_video(tmp_path, array), smoke_cfg)
        assert got.shape == (1, T_IN, C, S, S) and got.dtype == torch.float32 and starts == [0]
        torch.testing.assert_close(got[0, :, 0], torch.from_numpy(frames), atol=1.01 / 255, rtol=0)  # uint8: truncated


def test_own_video_of_any_length_size_and_form_runs_on_its_windows(tmp_path, smoke_cfg, evaluate_module):
    from PIL import Image
    rng = np.random.default_rng(0)
    long = rng.random((2 * T_IN + 3, S, S), dtype=np.float32)
    got, starts, length = evaluate_module.load_video(_video(tmp_path, long), smoke_cfg)
    assert starts == [0, T_IN] and length == 2 * T_IN + 3
    torch.testing.assert_close(got[1, :, 0], torch.from_numpy(long[T_IN:2 * T_IN]), atol=0.5 / 255, rtol=0)
    colour = (rng.random((T_IN, 48, 96, 3)) * 255).astype(np.uint8)  # wide, RGB: grey, fitted, centred
    np.savez(tmp_path / "clip.npz", frames=colour)
    got, _, _ = evaluate_module.load_video(tmp_path / "clip.npz", smoke_cfg)
    assert got.shape == (1, T_IN, C, S, S)
    assert got[0, :, :, :16].abs().max() == 0 and got[0, :, :, 48:].abs().max() == 0  # black above and below
    assert got[0, :, :, 16:48].mean() > 0.3
    folder = tmp_path / "frames"
    folder.mkdir()
    for t in range(T_IN):  # numbered out of order on disk, read in order
        Image.fromarray((long[t] * 255).round().astype(np.uint8)).save(folder / f"frame_{t}.png")
    got, starts, _ = evaluate_module.load_video(folder, smoke_cfg)
    assert starts == [0]
    torch.testing.assert_close(got[0, :, 0], torch.from_numpy(long[:T_IN]), atol=0.5 / 255, rtol=0)


def test_own_video_object_array_and_npz_are_refused_unread(tmp_path, smoke_cfg, evaluate_module):
    marker = tmp_path / "ran"
    payload = np.empty(1, dtype=object)
    payload[0] = RunsCode(marker)
    path = _video(tmp_path, payload, "evil.npy", allow_pickle=True)
    with pytest.raises(DataError, match=r"evil.npy: not a plain array of numbers .*allow_pickle=False"):
        evaluate_module.load_video(path, smoke_cfg)
    assert not marker.exists()
    np.load(path, allow_pickle=True)  # the control: the payload does run when unpickled
    assert marker.exists()
    np.savez(tmp_path / "frames.npz", x=np.zeros((T_IN, S, S), np.float32), y=np.zeros(3))
    with pytest.raises(DataError, match=r"frames.npz: holds 2 arrays \(x, y\); expected one, or one named 'frames'"):
        evaluate_module.load_video(tmp_path / "frames.npz", smoke_cfg)


# --------------------------------------------------------------------------- configuration


FLOAT_KEYS = [(s, f.name) for s in config.SECTIONS for f in dataclasses.fields(getattr(Config(), s))
              if "float" in str(f.type)]


@pytest.mark.parametrize("section, key", FLOAT_KEYS)
@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_config_refuses_non_finite_numbers(section, key, value):
    current = getattr(getattr(Config(), section), key)
    text = f"[{value}, {value}, {value}]" if isinstance(current, list) else value
    with pytest.raises(ConfigError, match=rf"{section}\.{key} = .* is not allowed"):
        config.load(None, [f"{section}.{key}={text}"])


_KEYS = {s: [f.name for f in dataclasses.fields(getattr(Config(), s))] + ["bogus"] for s in config.SECTIONS}


@FUZZ
@given(data=st.data())
def test_config_many_keys_property(data):
    """Several random key/value pairs at once (the single-pair case is in test_config.py)."""
    table = {}
    for _ in range(data.draw(st.integers(1, 6))):
        section = data.draw(st.sampled_from([*config.SECTIONS, "optim"]))
        key = data.draw(st.sampled_from(_KEYS.get(section, ["lr"])))
        table.setdefault(section, {})[key] = data.draw(_ANY)
    cfg = []
    _outcome(lambda: cfg.append(config.validate(config.from_dict(table))))
    if cfg:
        assert config.from_dict(config.to_dict(cfg[0])) == cfg[0]

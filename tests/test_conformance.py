"""This code against the original Pyro implementation's numbers, stored by tests/conformance/conformance.py.

tests/conformance/original.npz holds, for s1, s2, s3, the DDPAE ablation and
pedestrians (small sizes), the weights, input, noise and schedule values of
one comparison, and what the original computed from them with every
documented departure applied as an edit (the report beside it says which,
and what each edit changes). Here this code reruns the same passes, in
float64 as there, without pyro, and must give the same numbers.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch

from cli import run as run_script
from dive import config, convert_original
from dive.convert_original import ORIGINAL_NETS, from_original, read_original, to_original
from dive.errors import CheckpointError

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
_spec = importlib.util.spec_from_file_location("dive_conformance", HERE / "conformance" / "conformance.py")
conformance = sys.modules.setdefault("dive_conformance", importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(conformance)

SETTINGS = list(conformance.SETTINGS)


@pytest.fixture(scope="module")
def store():
    with np.load(conformance.STORE, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


@pytest.fixture
def float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def _setting(store, name):
    """Rebuild one stored comparison: config, weights, batch, noise, Setting, the original's numbers."""
    cfg = config.validate(config.from_dict(tomllib.loads(str(store[f"{name}/config"]))))
    state = {k[len(f"{name}/param/"):]: torch.from_numpy(v) for k, v in store.items()
             if k.startswith(f"{name}/param/")}
    state = {k: v.double() if v.is_floating_point() else v for k, v in state.items()}
    batch = {k: torch.from_numpy(store[f"{name}/{k}"]).double() for k in ("input", "target", "visible")}
    noise = {k[len(f"{name}/noise/"):]: torch.from_numpy(v).double() for k, v in store.items()
             if k.startswith(f"{name}/noise/")}
    temperature, gamma_app, gamma_imp = store[f"{name}/schedule"].tolist()
    s = conformance.Setting(name, "", [], temperature=temperature,
                            gamma_app=gamma_app, gamma_imp=gamma_imp, app_drop=float(noise["app_drop"]),
                            future_mask=bool(store[f"{name}/future_mask"]))
    ref = {k[len(f"{name}/original/"):]: v for k, v in store.items() if k.startswith(f"{name}/original/")}
    return cfg, state, batch, noise, s, ref


def _ours(cfg, state, batch, noise, s, **kw):
    from dive.model import DIVE

    model = DIVE(cfg.model, cfg.data)
    return conformance.ours(model, state, cfg, s, batch, noise, **kw)


@pytest.mark.parametrize("name", SETTINGS)
def test_matches_the_original(store, float64, name):
    cfg, state, batch, noise, s, ref = _setting(store, name)
    diffs = conformance.compare(_ours(cfg, state, batch, noise, s), ref)
    # every family the script compares is stored: outputs of both passes, sites, likelihoods, ELBO, gradients,
    # one optimiser step
    for family in ("eval/slots", "train/pred", "site/appearance", "site/mask", "ll_input", "elbo", "grad", "step"):
        assert family in diffs
    bad = {f: d for f, d in diffs.items() if d > conformance.STORED_RTOL}
    assert not bad, f"{name}: this code differs from the original (largest relative differences): {bad}"


@pytest.mark.parametrize("undo", [{"mlp_slope": 0.2}, {"eps": 1e-8}])
def test_a_departure_is_caught(store, float64, undo):
    # The old dynamic-appearance slope (0.2) and the old Adam eps (1e-8 on the loss per element) change
    # s3's numbers far beyond the tolerance.
    cfg, state, batch, noise, s, ref = _setting(store, "s3")
    diffs = conformance.compare(_ours(cfg, state, batch, noise, s, **undo), ref)
    assert max(diffs.values()) > 1e-3


def test_provenance_is_recorded(store):
    assert str(store["provenance/commit"]) == conformance.COMMIT
    for key in ("pyro", "torch", "command", "edits"):
        assert str(store[f"provenance/{key}"])
    assert set(str(store["provenance/edits"]).split(", ")) == set(conformance.EDITS)


# ----------------------------------------------------------------------------- the converter


def test_reads_the_originals_own_checkpoint(store):
    # net_<name>_1.pth as the original's BaseModel.save wrote them (tests/conformance/conformance.py --write)
    cfg, state, *_ = _setting(store, "s3")
    nets, epoch = read_original(conformance.SAVED)
    assert epoch == 1 and set(nets) == set(ORIGINAL_NETS)
    ours = from_original(nets, cfg)
    assert ours.keys() == state.keys()
    for k, v in state.items():
        torch.testing.assert_close(ours[k].to(v.dtype), v, rtol=0, atol=1e-7, msg=k)


@pytest.mark.parametrize("name", SETTINGS)
def test_round_trip_both_ways(store, name):
    cfg, state, *_ = _setting(store, name)
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    nets = to_original(state, cfg)
    assert set(nets) == set(ORIGINAL_NETS)
    back = from_original(nets, cfg)
    for k, v in state.items():
        torch.testing.assert_close(back[k], v, rtol=0, atol=1e-7, msg=k)
    grads = {k: v for k, v in state.items() if v.is_floating_point() and "running" not in k}
    from dive.model import DIVE

    params = dict(DIVE(cfg.model, cfg.data).named_parameters())
    grads = {k: v for k, v in grads.items() if k in params}
    back = from_original(to_original(grads, cfg, gradients=True), cfg, gradients=True)
    assert all(torch.equal(back[k], v) for k, v in grads.items())  # gradients: no offsets, exact


def test_legacy_format_and_refusals(tmp_path, store):
    cfg, state, *_ = _setting(store, "s3")
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    nets = to_original(state, cfg)
    # files as torch 0.4 wrote them (before the zip format), read with weights_only=True
    for net, sd in nets.items():
        torch.save(sd, tmp_path / f"net_{net}_7.pth", _use_new_zipfile_serialization=False)
    got, epoch = read_original(tmp_path)
    assert epoch == 7
    torch.testing.assert_close(from_original(got, cfg)["decoder.net.0.weight"], state["decoder.net.0.weight"])

    class Payload:
        def __reduce__(self):
            return (print, ("this must not run",))

    torch.save({"weight": Payload()}, tmp_path / "net_object_decoder_7.pth")
    with pytest.raises(CheckpointError, match="refused"):
        read_original(tmp_path)
    with pytest.raises(CheckpointError, match="is not a folder"):
        read_original(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no net_<name>_<epoch>.pth"):
        read_original(tmp_path / "empty")
    with pytest.raises(CheckpointError, match="no epoch 3"):
        read_original(tmp_path, epoch=3)


def test_wrong_config_is_named(store):
    cfg, state, *_ = _setting(store, "s3")
    nets = to_original(state, cfg)
    wrong = config.load(ROOT / "configs" / "s3.toml", ["data.t_in=7", "data.t_out=2", "model.hidden=16"])
    with pytest.raises(CheckpointError, match="shape .* this config needs"):
        from_original(nets, wrong)
    del nets["object_decoder"]
    with pytest.raises(CheckpointError, match="object_decoder"):
        from_original(nets, cfg)
    track = config.load(ROOT / "configs" / "s2_track.toml")
    with pytest.raises(CheckpointError, match="no counterpart"):
        to_original({}, track)


def test_command_line_both_ways_and_evaluate(tmp_path, store):
    # the original's files -> a checkpoint that evaluate.py scores -> the original's files again
    cfg, *_ = _setting(store, "s3")
    toml = tmp_path / "s3_small.toml"
    toml.write_text(config.dumps_toml(cfg))
    ckpt = tmp_path / "converted.pt"
    assert convert_original.main([str(conformance.SAVED), "--config", str(toml), "--out", str(ckpt)]) == 0
    run_script("evaluate.py", "--ckpt", str(ckpt), "--out", str(tmp_path / "eval"), "--n", "4")
    assert (tmp_path / "eval" / "metrics.json").is_file()
    assert convert_original.main(["--to-original", str(ckpt), "--out", str(tmp_path / "orig"), "--epoch", "5"]) == 0
    again, _ = read_original(tmp_path / "orig", epoch=5)
    first, _ = read_original(conformance.SAVED)
    for net in ORIGINAL_NETS:
        for k, v in first[net].items():
            if net == "var_appearance_layer" or k.startswith("masks_sigma_layer"):
                continue  # no counterpart here: written as zeros
            torch.testing.assert_close(again[net][k], v, rtol=0, atol=1e-7, msg=f"{net}.{k}")
    # the module's entry point, from a new interpreter, on a folder that is not there
    bad = subprocess.run([sys.executable, "-m", "dive.convert_original", str(tmp_path / "nowhere"), "--config",
                          str(toml), "--out", str(ckpt)], capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 1 and "not a folder" in bad.stderr and "Traceback" not in bad.stderr


def test_script_says_what_is_wrong_with_the_checkout(tmp_path, capsys):
    def script(original: Path) -> tuple[int, str]:
        # main() sets float64 and one thread for the comparison; the test process gets its own back
        dtype, threads = torch.get_default_dtype(), torch.get_num_threads()
        try:
            code = conformance.main(["--original", str(original)])
        finally:
            torch.set_default_dtype(dtype)
            torch.set_num_threads(threads)
        return code, capsys.readouterr().err

    code, err = script(tmp_path / "DIVE")
    assert code == 2 and "is not a folder" in err and conformance.COMMIT in err
    other = tmp_path / "other"
    (other / "models").mkdir(parents=True)
    (other / "models" / "DiveModel.py").write_text("")
    git = ["git", "-C", str(other), "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run(["git", "init", "-q", str(other)], check=True)
    subprocess.run(git + ["add", "."], check=True)
    subprocess.run(git + ["commit", "-qm", "x"], check=True)
    code, err = script(other)
    assert code == 2 and "is at commit" in err and f"checkout {conformance.COMMIT}" in err

"""Weights between this code and the original Pyro implementation, both ways.

    python -m dive.convert_original DIR --config configs/s3.toml --out model.pt      # original -> checkpoint
    python -m dive.convert_original --to-original model.pt --out DIR                 # checkpoint -> original

The original saves one state dict per network, ``DIR/net_<name>_<epoch>.pth``
for the six networks in `ORIGINAL_NETS` (models/base_model.py there). They
are pickles: they are read with ``torch.load(weights_only=True)``, which
refuses anything but tensors and plain containers, so a file that would run
code when unpickled is an error, not a risk.

The map is one to one but for these (docs/model.md, "Differences from the
original"):

* our ``nn.LSTMCell`` layers (``impute_cell``, ``predict_cell``) are the
  original's one-layer ``nn.LSTM``\\ s (names with ``_l0``);
* presence: the original thresholds a Gaussian value at 0.5, this code the
  logits at 0, so ``presence_head.bias`` = ``masks_mu_layer.bias`` - 0.5.
  ``masks_sigma_layer`` (the Gaussian's scale) has no counterpart;
* ``var_appearance_layer`` is never used by the original: no counterpart;
* without imputation (the DDPAE ablation) the original's imputation LSTM still
  reads the presence input, which is then always 1: its weight column is
  folded into the LSTM's input bias here, and ``imputation_regression``
  (multiplied by 0 there) does not exist here;
* without dynamic appearance the original keeps the dynamic-appearance
  layers and feeds zeros to the first ``dyn_dim`` inputs of the mixing layer:
  those layers and weight columns do not exist here.

Going the other way, weights without a counterpart are written as zeros:
unused by the original's forward pass, or multiplied by zero in it.
`from_original` / `to_original` with ``gradients=True`` map gradients the
same way, without the bias offset and folding (which shift values only), so
that gradients can be compared name by name (tests/conformance/).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import torch
from torch import Tensor

from . import checkpoint
from . import config as config_mod
from .config import Config, ModelConfig
from .errors import CheckpointError, DIVEError
from .model import DIVE

__all__ = ["ORIGINAL_NETS", "from_original", "read_original", "to_original", "write_original"]

ORIGINAL_NETS = ("pose_model", "appearance_model", "var_appearance_layer", "appearance_mix_layer",
                 "object_encoder", "object_decoder")
PRESENCE_THRESHOLD = 0.5  # the original's hard label: Gaussian value >= 0.5

# our prefix -> (original network, its prefix). LSTM cells get "_l0" appended to their parameter names.
_PREFIXES = (
    ("frame_encoder.net.", "pose_model", "image_encoder.main."),
    ("pose.enc_fwd.", "pose_model", "encode_rnn."),
    ("pose.enc_bwd.", "pose_model", "encode_rnn_reverse."),
    ("pose.enc_out.", "pose_model", "encoder_layer."),
    ("pose.presence_rnn.", "pose_model", "masks_rnn."),
    ("pose.presence_head.", "pose_model", "masks_mu_layer."),
    ("pose.impute_cell.", "pose_model", "sequence_rnn."),
    ("pose.impute_regression.", "pose_model", "imputation_regression."),
    ("pose.predict_cell.", "pose_model", "predict_rnn."),
    ("pose.beta_mu.", "pose_model", "beta_mu_layer."),
    ("pose.beta_sigma.", "pose_model", "beta_sigma_layer."),
    ("pose.init_rnn.", "pose_model", "initial_pose_rnn."),
    ("pose.init_mu.", "pose_model", "initial_pose_mu."),
    ("pose.init_sigma.", "pose_model", "initial_pose_sigma."),
    ("appearance.encoder.net.", "object_encoder", "main."),
    ("appearance.slot_rnn.", "appearance_model", "encoder."),
    ("appearance.static_head.", "appearance_model", "stat_app_layer."),
    ("appearance.predictor.", "appearance_model", "predictor."),
    ("appearance.dyn_init.0.", "appearance_model", "var_app_ini_layer_0."),
    ("appearance.dyn_init.2.", "appearance_model", "var_app_ini_layer."),
    ("appearance.dyn_change.0.", "appearance_model", "var_app_layer_0."),
    ("appearance.dyn_change.2.", "appearance_model", "var_app_layer."),
    ("appearance.z_head.", "appearance_mix_layer", ""),
    ("decoder.net.", "object_decoder", "main."),
)
_CELLS = ("pose.impute_cell.", "pose.predict_cell.")


def _check_convertible(m: ModelConfig) -> None:
    if m.pose_inference != "sequential":
        raise CheckpointError(f"model.pose_inference = {m.pose_inference!r} has no counterpart in the original "
                              "(only \"sequential\", DIVE's own pose inference, converts)")
    if m.slot_spread > 0:
        raise CheckpointError("model.slot_spread > 0 adds a parameter the original does not have; "
                              "only models with slot_spread = 0 convert")


def _original_name(ours: str) -> tuple[str, str]:
    for prefix, net, orig_prefix in _PREFIXES:
        if ours.startswith(prefix):
            rest = ours[len(prefix):]
            if prefix in _CELLS:
                rest += "_l0"
            return net, orig_prefix + rest
    raise CheckpointError(f"no counterpart in the original for parameter {ours!r}")


def _unused_in_ours(m: ModelConfig) -> dict[tuple[str, str], tuple[int, ...]]:
    """Original parameters without a counterpart here, with their shapes (written as zeros)."""
    a, d, h = m.app_dim, m.dyn_dim, m.hidden
    out = {("pose_model", "masks_sigma_layer.weight"): (1, h), ("pose_model", "masks_sigma_layer.bias"): (1,),
           ("var_appearance_layer", "weight"): (d, a + h // 4), ("var_appearance_layer", "bias"): (d,)}
    if not m.use_imputation:
        out[("pose_model", "imputation_regression.weight")] = (h, h)
        out[("pose_model", "imputation_regression.bias")] = (h,)
    if not m.use_dynamic_appearance:
        for layer in range(2):
            out[("appearance_model", f"predictor.weight_ih_l{layer}")] = (4 * h, h)
            out[("appearance_model", f"predictor.weight_hh_l{layer}")] = (4 * h, h)
            out[("appearance_model", f"predictor.bias_ih_l{layer}")] = (4 * h,)
            out[("appearance_model", f"predictor.bias_hh_l{layer}")] = (4 * h,)
        for name, shape in (("var_app_layer", (d, h)), ("var_app_layer_0", (h, h + 2 * a)),
                            ("var_app_ini_layer", (d, h)), ("var_app_ini_layer_0", (h, 3 * a))):
            out[("appearance_model", f"{name}.weight")] = shape
            out[("appearance_model", f"{name}.bias")] = shape[:1]
    return out


def _reference_state(cfg: Config, gradients: bool) -> dict[str, Tensor]:
    """The names and shapes to expect: the model's state dict, or its parameters alone for gradients."""
    model = DIVE(cfg.model, cfg.data)
    return dict(model.named_parameters()) if gradients else model.state_dict()


def from_original(nets: dict[str, dict[str, Tensor]], cfg: Config, *, gradients: bool = False) -> dict[str, Tensor]:
    """The original's per-network state dicts (or gradients) -> this code's state dict for `cfg`.

    Raises CheckpointError naming the network and parameter that is missing or of the wrong shape.
    """
    _check_convertible(cfg.model)
    expected = _reference_state(cfg, gradients)
    h = cfg.model.hidden
    out: dict[str, Tensor] = {}
    for ours, ref in expected.items():
        net, name = _original_name(ours)
        if net not in nets:
            raise CheckpointError(f"the original's network {net!r} is missing (expected net_{net}_<epoch>.pth)")
        if name not in nets[net]:
            if name.endswith("num_batches_tracked"):  # older torch wrote no counter; it only feeds momentum=None
                out[ours] = torch.zeros((), dtype=torch.long)
                continue
            raise CheckpointError(f"the original's {net} has no {name!r} (needed for {ours})")
        value = nets[net][name].detach().clone()
        if ours == "pose.impute_cell.weight_ih" and not cfg.model.use_imputation:
            value = value[:, :h]  # the presence input column: always 1 there, folded into the bias below
        if ours == "pose.impute_cell.bias_ih" and not cfg.model.use_imputation and not gradients:
            value = value + nets[net]["sequence_rnn.weight_ih_l0"][:, h].detach()
        if ours == "appearance.z_head.weight" and not cfg.model.use_dynamic_appearance:
            value = value[:, cfg.model.dyn_dim:]  # the dynamic-appearance inputs: always 0 there
        if ours == "pose.presence_head.bias" and not gradients:
            value = value - PRESENCE_THRESHOLD
        if tuple(value.shape) != tuple(ref.shape):
            raise CheckpointError(f"the original's {net}.{name} has shape {tuple(value.shape)}, this config "
                                  f"needs {tuple(ref.shape)} for {ours}: the config's sizes or switches differ "
                                  "from the ones the original was trained with")
        out[ours] = value.to(ref.dtype)
    return out


def to_original(state: dict[str, Tensor], cfg: Config, *, gradients: bool = False) -> dict[str, dict[str, Tensor]]:
    """This code's state dict (or gradients) for `cfg` -> the original's per-network state dicts."""
    _check_convertible(cfg.model)
    nets: dict[str, dict[str, Tensor]] = {net: {} for net in ORIGINAL_NETS}
    for ours, value in state.items():
        net, name = _original_name(ours)
        value = value.detach().clone().contiguous()
        if ours == "pose.impute_cell.weight_ih" and not cfg.model.use_imputation:
            value = torch.cat([value, value.new_zeros(value.shape[0], 1)], dim=1)
        if ours == "appearance.z_head.weight" and not cfg.model.use_dynamic_appearance:
            value = torch.cat([value.new_zeros(value.shape[0], cfg.model.dyn_dim), value], dim=1)
        if ours == "pose.presence_head.bias" and not gradients:
            value = value + PRESENCE_THRESHOLD
        nets[net][name] = value
    for (net, name), shape in _unused_in_ours(cfg.model).items():
        nets[net][name] = torch.zeros(shape)
    return nets


_NET_FILE = re.compile(r"net_(?P<net>.+)_(?P<epoch>\d+)\.pth$")


def read_original(folder: str | Path, epoch: int | None = None) -> tuple[dict[str, dict[str, Tensor]], int]:
    """Read ``net_<name>_<epoch>.pth`` for every network in `folder` (the latest epoch if None)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder} is not a folder; expected the original's checkpoint folder "
                              "with net_<name>_<epoch>.pth files")
    epochs = {int(m["epoch"]) for p in folder.iterdir() if (m := _NET_FILE.match(p.name)) and m["net"] in ORIGINAL_NETS}
    if not epochs:
        raise CheckpointError(f"no net_<name>_<epoch>.pth files of the original in {folder} "
                              f"(networks: {', '.join(ORIGINAL_NETS)})")
    if epoch is None:
        epoch = max(epochs)
    elif epoch not in epochs:
        raise CheckpointError(f"no epoch {epoch} in {folder}; found epochs {sorted(epochs)}")
    nets = {}
    for net in ORIGINAL_NETS:
        path = folder / f"net_{net}_{epoch}.pth"
        state = checkpoint.read_tensors(path)
        if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, Tensor)
                                                  for k, v in state.items()):
            raise CheckpointError(f"{path} is not a state dict (a dict of named tensors)")
        # saved from inside DataParallel, names carry a "module." prefix
        nets[net] = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    return nets, epoch


def write_original(nets: dict[str, dict[str, Tensor]], folder: str | Path, epoch: int) -> list[Path]:
    """Write the per-network state dicts as the original saves them; returns the files written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for net, state in nets.items():
        path = folder / f"net_{net}_{epoch}.pth"
        torch.save(state, path)
        paths.append(path)
    return paths


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m dive.convert_original",
        description="Convert checkpoints between the original Pyro DIVE (net_<name>_<epoch>.pth files) and this code.")
    p.add_argument("folder", nargs="?", type=Path, help="the original's checkpoint folder (to convert from)")
    p.add_argument("--config", type=Path, help="this code's config whose sizes and switches the original "
                   "was trained with (with FOLDER), e.g. configs/s3.toml")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="config override")
    p.add_argument("--epoch", type=int, help="which epoch's files (default: the latest in the folder)")
    p.add_argument("--to-original", type=Path, metavar="CKPT", help="convert this checkpoint of this code instead")
    p.add_argument("--out", type=Path, required=True,
                   help="checkpoint file to write (from the original) or folder (with --to-original)")
    args = p.parse_args(argv)
    if (args.folder is None) == (args.to_original is None):
        p.error("give either the original's FOLDER (with --config) or --to-original CKPT")
    if args.folder is not None and args.config is None:
        p.error("converting from the original needs --config: the sizes and switches it was trained with")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        if args.to_original is not None:
            state = checkpoint.load(args.to_original)
            cfg = checkpoint.config_of(state, args.to_original)
            epoch = 0 if args.epoch is None else args.epoch
            paths = write_original(to_original(state["model"], cfg), args.out, epoch)
            print(f"wrote {len(paths)} files to {args.out} (epoch {epoch}); "
                  f"the original loads them with --load_ckpt_epoch {epoch}")
            return 0
        cfg = config_mod.load(args.config, args.set)
        nets, epoch = read_original(args.folder, args.epoch)
        model = from_original(nets, cfg)
        checkpoint.save(args.out, {"step": 0, "config": config_mod.to_dict(cfg), "model": model,
                                   "extra": {"converted_from": str(args.folder), "original_epoch": epoch}})
        print(f"wrote {args.out} from epoch {epoch} of {args.folder}; score it with "
              f"python evaluate.py --ckpt {args.out} --out eval/converted")
        return 0
    except DIVEError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2 if isinstance(e, config_mod.ConfigError) else 1


if __name__ == "__main__":
    sys.exit(main())

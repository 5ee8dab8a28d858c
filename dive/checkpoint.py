"""Checkpoints: one dict, written atomically, read without unpickling code.

A checkpoint holds::

    format_version  int     CHECKPOINT_FORMAT; bumped when the layout changes
    version         str     the package version that wrote it
    step            int     optimiser steps taken
    config          dict    the resolved Config (dive.config.to_dict)
    model           dict    model.state_dict()
    optimizer       dict    optimizer.state_dict()
    rng             dict    torch (and CUDA) RNG states
    extra           dict    plain numbers (best validation score, skipped steps, ...)

Writes go to a temporary file in the same folder, are flushed and fsynced,
then renamed over the target, so a crash or kill at any moment leaves either
the old or the new checkpoint, never half of one. Reads use
``torch.load(weights_only=True)``: a file that needs arbitrary unpickling
(and could run code) is refused.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .config import Config, ConfigError, architecture_diff, from_dict, validate

CHECKPOINT_FORMAT = 1
_REQUIRED = ("format_version", "step", "config", "model")


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or read; the message names the file and the problem."""


def save(path: str | Path, state: dict[str, Any]) -> None:
    """Atomically write `state` (plus format and package version) to `path`."""
    path = Path(path)
    state = {"format_version": CHECKPOINT_FORMAT, "version": __version__, **state}
    tmp_name = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
        tmp_name = None
        _fsync_dir(path.parent)
    except OSError as e:
        raise CheckpointError(
            f"could not write checkpoint {path}: {e.strerror or e}. "
            "The previous checkpoint, if any, is unchanged; free disk space or choose a writable --out."
        ) from None
    finally:
        if tmp_name is not None and os.path.exists(tmp_name):
            os.unlink(tmp_name)


def _fsync_dir(folder: Path) -> None:
    # The rename is durable only once the folder entry is on disk.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint safely and check its layout."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"refused to load {path}: it contains objects other than tensors and plain containers, "
            f"which could run code when unpickled ({str(e).splitlines()[0]})"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as e:
        raise CheckpointError(f"{path} is truncated or not a checkpoint: {str(e).splitlines()[0]}") from None
    if not isinstance(state, dict) or any(k not in state for k in _REQUIRED):
        missing = [k for k in _REQUIRED if not isinstance(state, dict) or k not in state]
        raise CheckpointError(f"{path} is not a DIVE checkpoint: missing {', '.join(missing)}")
    if state["format_version"] != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path} has checkpoint format {state['format_version']}, this code reads format "
            f"{CHECKPOINT_FORMAT}; use the package version that wrote it ({state.get('version', '?')})"
        )
    return state


def config_of(state: dict[str, Any], path: str | Path = "checkpoint") -> Config:
    """The config a checkpoint was trained with."""
    try:
        return validate(from_dict(state["config"]))
    except ConfigError as e:
        raise CheckpointError(f"{path}: stored config is invalid: {e}") from None


def load_model_state(model: torch.nn.Module, state: dict[str, Any], path: str | Path = "checkpoint",
                     expected: Config | None = None) -> None:
    """Load weights into `model`, with a clear error when the architecture differs."""
    if expected is not None:
        diff = architecture_diff(config_of(state, path), expected)
        if diff:
            raise CheckpointError(f"{path} was trained with a different architecture: {'; '.join(diff)}")
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise CheckpointError(f"{path} does not fit this model: {str(e).splitlines()[0]}") from None


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    if "torch" in state:
        torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])

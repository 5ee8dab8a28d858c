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
the old or the new checkpoint, never half of one; the temporary file a
killed save leaves behind is never read and is removed by the next save (or
at the start of training). A failed write (disk full, read-only folder)
raises CheckpointError and leaves the previous checkpoint as it was.

Reads use ``torch.load(weights_only=True)``: a file that needs arbitrary
unpickling (and could run code) is refused before anything in it runs; a
truncated, corrupt or foreign file, another format version, or weights that
do not fit the model raise CheckpointError naming the file and the problem.
"""

from __future__ import annotations

import glob
import os
import pickle
import re
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .config import Config, ConfigError, architecture_diff, from_dict, validate
from .errors import CheckpointError

__all__ = ["CHECKPOINT_FORMAT", "CheckpointError", "config_of", "load", "load_model_state", "read_tensors",
           "remove_partial", "rng_state", "save", "set_rng_state"]

CHECKPOINT_FORMAT = 1
_REQUIRED = ("format_version", "step", "config", "model")


def _temp_prefix(path: Path) -> str:
    return f".{path.name}."


def remove_partial(path: str | Path) -> list[Path]:
    """Delete temporary files a killed `save` of `path` left behind; returns what was removed.

    They are never read, so leaving them would only waste disk space (a few
    of them could be what fills the disk on the next save).
    """
    path = Path(path)
    removed = []
    for tmp in path.parent.glob(f"{glob.escape(_temp_prefix(path))}*.tmp"):
        try:
            tmp.unlink()
            removed.append(tmp)
        except OSError:
            pass
    return removed


def save(path: str | Path, state: dict[str, Any]) -> None:
    """Atomically write `state` (plus format and package version) to `path`.

    Raises CheckpointError (the previous file at `path` untouched, no temporary file left) when the
    folder cannot be written or the disk is full.
    """
    path = Path(path)
    state = {"format_version": CHECKPOINT_FORMAT, "version": __version__, **state}
    tmp_name = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_partial(path)
        fd, tmp_name = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        _publish(tmp_name, path)
        tmp_name = None
    except (OSError, RuntimeError) as e:
        # torch.save reports a failed write (disk full) as RuntimeError from its zip writer
        reason = e.strerror if isinstance(e, OSError) and e.strerror else _torch_reason(e)
        raise CheckpointError(
            f"could not write checkpoint {path}: {reason}. "
            "The previous checkpoint, if any, is unchanged; free disk space or choose a writable --out."
        ) from None
    finally:
        if tmp_name is not None and os.path.exists(tmp_name):
            os.unlink(tmp_name)


def _publish(tmp_name: str, path: Path) -> None:
    # The one step that makes the new checkpoint visible: before it, `path` is the old file.
    os.replace(tmp_name, path)
    _fsync_dir(path.parent)


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


def _torch_reason(e: BaseException) -> str:
    # "[enforce fail at inline_container.cc:626] . unexpected pos ...\nPytorchStreamWriter failed ..." -> one line
    lines = [re.sub(r"^\[enforce fail at [^\]]*\]\s*\.?\s*", "", line.strip()) for line in str(e).splitlines()]
    return "; ".join(line for line in lines if line) or type(e).__name__


_UNSAFE = re.compile(r"GLOBAL (\S+)")


def _first_line(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return lines[0] if lines else type(e).__name__


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint safely and check its layout.

    Only tensors and plain containers are unpickled (``weights_only=True``);
    anything else, a corrupt or truncated file, or a file of another layout
    raises CheckpointError naming the file and the problem.
    """
    path = Path(path)
    state = read_tensors(path, map_location)
    _check_layout(path, state)
    return state


def read_tensors(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """What a torch.save file holds, unpickling only tensors and plain containers (``weights_only=True``).

    Anything else (a pickled object that could run code), a corrupt, truncated or empty file raises
    CheckpointError naming the file and the problem; nothing in a refused file is run.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    _check_container(path)
    try:
        with warnings.catch_warnings():
            # torch warns about the pickle protocol of foreign files before refusing them
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        unsafe = _UNSAFE.search(str(e))
        if unsafe:
            raise CheckpointError(
                f"refused to load {path}: it holds a Python object ({unsafe.group(1)}) that could run code "
                "when unpickled; checkpoints are read with weights_only=True, which allows only tensors "
                "and plain containers. Nothing in the file was run."
            ) from None
        detail = str(e).split("WeightsUnpickler error:")[-1] if "WeightsUnpickler error:" in str(e) else str(e)
        detail = [line.strip() for line in detail.splitlines() if line.strip()]
        raise CheckpointError(
            f"refused to load {path}: corrupt, or not a checkpoint written by torch.save; its pickle data "
            f"cannot be read as tensors and plain containers ({detail[0] if detail else 'unreadable'}). "
            "Nothing in the file was run."
        ) from None
    except Exception as e:  # torch.load raises many kinds on damaged files; none should escape as a traceback
        raise CheckpointError(f"{path} is truncated, corrupt or not a checkpoint: {_first_line(e)}") from None
    return state


def _check_container(path: Path) -> None:
    # torch.load's own errors for these cases are internal ("Invalid argument", "hasRecord") and say
    # nothing about the file; a look at the zip container first gives a message a user can act on.
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(4)
        if size == 0:
            raise CheckpointError(f"{path} is empty (0 bytes), not a checkpoint")
        if head != b"PK\x03\x04":
            return  # not a zip: torch.load reads it as a legacy pickle and refuses anything unsafe
        if not zipfile.is_zipfile(path):
            raise CheckpointError(f"{path} is truncated or corrupt: its zip archive ({size} bytes) has no "
                                  "end record, as when a copy or download stopped early")
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (OSError, zipfile.BadZipFile) as e:
        raise CheckpointError(f"{path} cannot be read: {e}") from None
    if not any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
        shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        raise CheckpointError(f"{path} is a zip archive but not a torch checkpoint (no data.pkl inside; "
                              f"it holds {shown or 'nothing'})")


def _check_layout(path: Path, state: Any) -> None:
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is not a DIVE checkpoint: expected a dict, found {type(state).__name__}")
    missing = [k for k in _REQUIRED if k not in state]
    if missing:
        raise CheckpointError(f"{path} is not a DIVE checkpoint: missing {', '.join(missing)}")
    fmt = state["format_version"]
    if isinstance(fmt, bool) or not isinstance(fmt, int):
        raise CheckpointError(f"{path}: format_version should be an integer, found {type(fmt).__name__}")
    if fmt != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path} has checkpoint format {fmt}, this code reads format "
            f"{CHECKPOINT_FORMAT}; use the package version that wrote it ({state.get('version', '?')})"
        )
    step = state["step"]
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise CheckpointError(f"{path}: step should be an integer >= 0, found {step!r}")
    if not isinstance(state["config"], dict):
        raise CheckpointError(f"{path}: config should be a dict, found {type(state['config']).__name__}")
    model = state["model"]
    if not isinstance(model, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in model.items()):
        raise CheckpointError(f"{path}: model should be a dict of named tensors (a state_dict)")


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
    problems = state_dict_mismatch(model.state_dict(), state["model"])
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise CheckpointError(f"{path} does not fit this model (its weights are of a different architecture "
                              f"than its stored config says): {shown}")
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise CheckpointError(f"{path} does not fit this model: {_first_line(e)}") from None


def state_dict_mismatch(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor]) -> list[str]:
    """Missing, unexpected and differently shaped entries, as readable lines
    (load_state_dict's own message puts them after a line that says only that loading failed)."""
    out = [f"missing {k}" for k in expected if k not in found]
    out += [f"unexpected {k}" for k in found if k not in expected]
    out += [f"{k}: checkpoint {tuple(found[k].shape)}, model {tuple(v.shape)}"
            for k, v in expected.items() if k in found and tuple(found[k].shape) != tuple(v.shape)]
    return out


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

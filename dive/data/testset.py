"""A fixed set of sequences on disk: .npz without pickle, plus JSON metadata.

Image fields whose values are all exactly k / 255 are stored as uint8 (4x
smaller, and compressed), anything else as float32; loading restores the
float32 values bit for bit.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .common import BatchedDataset, DataError, atomic_write, check_indices, from_uint8, to_uint8

FORMAT_VERSION = 1
_META_KEY = "__meta__"
REQUIRED = ("input", "target", "input_full", "target_full", "present", "visible")
_UNIT_RANGE = REQUIRED  # fields whose values must lie in [0, 1]


class TensorSequenceDataset(BatchedDataset):
    """Items from tensors that share a leading dim N; yields the same dicts as the generators.

    tensors: {key: (N, ...) tensor}; meta: free-form settings (scenario, seed, ...).
    """

    def __init__(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any] | None = None):
        if not tensors:
            raise DataError("TensorSequenceDataset needs at least one field")
        lengths = {k: v.shape[0] for k, v in tensors.items()}
        if len(set(lengths.values())) != 1:
            raise DataError(f"fields disagree on the number of items: {lengths}")
        self.tensors = dict(tensors)
        self.meta = dict(meta or {})
        self._n = next(iter(lengths.values()))

    def __len__(self) -> int:
        return self._n

    def batch(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        idx = torch.tensor(check_indices(indices, self._n), dtype=torch.long)
        return {k: v.index_select(0, idx) for k, v in self.tensors.items()}

    def __repr__(self) -> str:
        return f"TensorSequenceDataset({self._n} items, fields={list(self.tensors)}, meta={self.meta})"


def _gather(source: Dataset | dict[str, torch.Tensor], chunk: int = 256) -> tuple[dict[str, torch.Tensor], dict]:
    if isinstance(source, dict):
        return dict(source), {}
    meta = source.settings() if hasattr(source, "settings") else dict(getattr(source, "meta", {}))
    n = len(source)
    parts: dict[str, list[torch.Tensor]] = {}
    for start in range(0, n, chunk):
        idx = list(range(start, min(n, start + chunk)))
        got = source.batch(idx) if hasattr(source, "batch") else _stack([source[i] for i in idx])
        for k, v in got.items():
            parts.setdefault(k, []).append(v)
    return {k: torch.cat(v) for k, v in parts.items()}, meta


def _stack(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


def _encode(x: torch.Tensor) -> tuple[np.ndarray, str]:
    if x.dtype == torch.float32 and x.numel() and bool(((x >= 0) & (x <= 1)).all()):
        q = to_uint8(x)
        if torch.equal(from_uint8(q), x):
            return q.numpy(), "uint8/255"
    return x.detach().cpu().numpy(), "raw"


def save_test_set(source: Dataset | dict[str, torch.Tensor], path: str | os.PathLike,
                  meta: dict[str, Any] | None = None) -> Path:
    """Write every item of a dataset (or a batched dict) to `path` (.npz), atomically.

    The metadata (the dataset's settings, updated with `meta`) is stored as a
    JSON string. Nothing is pickled.
    """
    tensors, info = _gather(source)
    info.update(meta or {})
    missing = [k for k in REQUIRED if k not in tensors]
    if missing:
        raise DataError(f"cannot save a test set without fields {missing}")
    arrays: dict[str, np.ndarray] = {}
    encodings: dict[str, str] = {}
    for k, v in tensors.items():
        arrays[k], encodings[k] = _encode(v)
    header = {"format": FORMAT_VERSION, "meta": info, "encodings": encodings}
    arrays[_META_KEY] = np.array(json.dumps(header, sort_keys=True))
    return atomic_write(path, lambda f: np.savez_compressed(f, **arrays))


def _fail(path: Path, msg: str) -> DataError:
    return DataError(f"{path}: not a valid test set: {msg}")


def load_test_set(path: str | os.PathLike) -> TensorSequenceDataset:
    """Read a file written by `save_test_set`, checking shapes, dtypes, ranges and finiteness."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such test-set file")
    try:
        z = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:  # pickled content is refused here, before it is unpickled
        raise _fail(path, f"cannot read it as .npz ({e})") from None
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise _fail(path, f"expected an .npz archive of arrays, found a single .npy array of shape {z.shape}")
    try:
        with z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise _fail(path, f"cannot read its arrays ({e})") from None
    if _META_KEY not in arrays:
        raise _fail(path, "no metadata record")
    meta_record = arrays.pop(_META_KEY)
    if meta_record.dtype.kind != "U" or meta_record.ndim != 0:
        raise _fail(path, f"metadata should be one JSON string, found a {meta_record.dtype} array "
                          f"of shape {meta_record.shape}")
    try:
        header = json.loads(str(meta_record))
    except json.JSONDecodeError as e:
        raise _fail(path, f"metadata is not JSON ({e})") from None
    if not isinstance(header, dict):
        raise _fail(path, f"metadata should be a JSON object, found {type(header).__name__}")
    if header.get("format") != FORMAT_VERSION:
        raise _fail(path, f"format {header.get('format')!r}, this code reads {FORMAT_VERSION}")
    encodings = header.get("encodings", {})
    if not isinstance(encodings, dict) or not isinstance(header.get("meta", {}), dict):
        raise _fail(path, "metadata 'encodings' and 'meta' should be JSON objects")

    tensors: dict[str, torch.Tensor] = {}
    for k, a in arrays.items():
        if a.ndim == 0 or a.shape[0] == 0:
            raise _fail(path, f"field {k!r} has shape {a.shape}, expected one row per sequence (N, ...), N >= 1")
        enc = encodings.get(k, "raw")
        if enc == "uint8/255":
            if a.dtype != np.uint8:
                raise _fail(path, f"field {k!r} should be uint8, is {a.dtype}")
            tensors[k] = from_uint8(torch.from_numpy(a))
        elif enc == "raw":
            if a.dtype != np.float32:
                raise _fail(path, f"field {k!r} should be float32, is {a.dtype}")
            tensors[k] = torch.from_numpy(a.copy())
        else:
            raise _fail(path, f"field {k!r} has unknown encoding {enc!r}")

    missing = [k for k in REQUIRED if k not in tensors]
    if missing:
        raise _fail(path, f"missing fields {missing}")
    for k, v in tensors.items():
        if not torch.isfinite(v).all():
            raise _fail(path, f"field {k!r} holds NaN or infinite values")
        if k in _UNIT_RANGE and v.numel() and (v.min() < 0 or v.max() > 1):
            raise _fail(path, f"field {k!r} has values outside [0, 1] "
                              f"(min {v.min().item():.4g}, max {v.max().item():.4g})")
    _check_shapes(path, tensors)
    return TensorSequenceDataset(tensors, header.get("meta", {}))


def _check_shapes(path: Path, t: dict[str, torch.Tensor]) -> None:
    inp, tgt = t["input"], t["target"]
    if inp.dim() != 5 or tgt.dim() != 5:
        raise _fail(path, f"input and target must be (N, T, C, H, W), got {tuple(inp.shape)} and {tuple(tgt.shape)}")
    n, t_in, c, h, w = inp.shape
    expect = {
        "input_full": (n, t_in, c, h, w),
        "target": (n, tgt.shape[1], c, h, w),
        "target_full": (n, tgt.shape[1], c, h, w),
        "visible": (n, c, h, w),
    }
    for k, shape in expect.items():
        if tuple(t[k].shape) != shape:
            raise _fail(path, f"field {k!r} has shape {tuple(t[k].shape)}, expected {shape}")
    pres = t["present"]
    if pres.dim() != 3 or pres.shape[:2] != (n, t_in):
        raise _fail(path, f"field 'present' has shape {tuple(pres.shape)}, expected ({n}, {t_in}, K)")
    if "positions" in t:
        pos = t["positions"]
        if pos.dim() != 4 or pos.shape[0] != n or pos.shape[1] != t_in + tgt.shape[1] or pos.shape[3] != 2:
            raise _fail(path, f"field 'positions' has shape {tuple(pos.shape)}, "
                              f"expected ({n}, {t_in + tgt.shape[1]}, K, 2)")

"""MNIST digits: an idx-file reader and the digit sources Moving MNIST draws from."""

from __future__ import annotations

import functools
import gzip
import math
import os
import zlib
from pathlib import Path

import numpy as np
import torch

from .common import DataError

IDX_IMAGES = 2051  # unsigned bytes, 3 dims (N, rows, cols)
IDX_LABELS = 2049  # unsigned bytes, 1 dim (N,)
_IDX_DIMS = {IDX_IMAGES: 3, IDX_LABELS: 1}

EMBEDDED_FILE = "train-images-idx3-ubyte.gz"
_ASSETS = Path(__file__).resolve().parent / "assets"
_STANDARD_NAMES = ("train-images-idx3-ubyte", "train-images-idx3-ubyte.gz",
                   "train-images.idx3-ubyte")

TRAIN_FRACTION = 0.8

_HOW_TO_GET = (
    "Use data.mnist = \"embedded\" (10,000 digits shipped with the package), "
    "data.mnist = \"full\" (downloads the 60,000 training digits with torchvision into data.mnist_root), "
    "or download train-images-idx3-ubyte.gz from the MNIST site yourself and set data.mnist to its path."
)


def read_idx(path: str | os.PathLike) -> torch.Tensor:
    """Read an idx file (images, magic 2051, or labels, magic 2049), gzipped or not.

    Returns a uint8 tensor of the file's dims: (N, rows, cols) or (N,).
    Gzip is recognised by its magic bytes (1f 8b), not by the file name.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read idx file: {e.strerror or e}") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"{path}: gzip data is damaged or truncated ({e})") from None
    if len(raw) < 4:
        raise DataError(f"{path}: truncated idx file: {len(raw)} bytes, too short for the 4-byte magic number")
    magic = int.from_bytes(raw[:4], "big")
    if magic not in _IDX_DIMS:
        raise DataError(
            f"{path}: not an idx file of unsigned bytes: magic number {magic} (0x{magic:08x}), "
            f"expected {IDX_IMAGES} (images) or {IDX_LABELS} (labels)"
        )
    ndim = _IDX_DIMS[magic]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated idx file: {len(raw)} bytes, the header alone needs {header}")
    dims = tuple(int.from_bytes(raw[4 + 4 * k: 8 + 4 * k], "big") for k in range(ndim))
    need = math.prod(dims)
    have = len(raw) - header
    if have < need:
        raise DataError(
            f"{path}: truncated idx file: dims {dims} need {need} bytes of data, found {have}"
        )
    if have > need:
        raise DataError(
            f"{path}: idx file has {have - need} unexpected bytes after the data for dims {dims}"
        )
    data = np.frombuffer(raw, dtype=np.uint8, count=need, offset=header).reshape(dims)
    return torch.from_numpy(data.copy())


def _read_images(path: Path) -> torch.Tensor:
    images = read_idx(path)
    if images.dim() != 3:
        raise DataError(f"{path}: holds labels (magic {IDX_LABELS}), not images; point data.mnist at the "
                        f"images file (magic {IDX_IMAGES}), e.g. train-images-idx3-ubyte.gz")
    if images.shape[0] == 0:
        raise DataError(f"{path}: holds no images")
    return images


@functools.lru_cache(maxsize=4)
def _cached_file(path: str, mtime_ns: int, size: int) -> torch.Tensor:
    # mtime and size are part of the key so an edited file is read again.
    return _read_images(Path(path))


def _load_file(path: Path) -> torch.Tensor:
    st = path.stat()
    return _cached_file(str(path), st.st_mtime_ns, st.st_size).clone()


def _load_full(root: Path) -> torch.Tensor:
    try:
        from torchvision.datasets import MNIST
    except ImportError as e:
        raise DataError(f"data.mnist = \"full\" needs torchvision ({e}). {_HOW_TO_GET}") from None
    try:
        ds = MNIST(str(root), train=True, download=True)
    except Exception as e:  # torchvision raises several kinds when offline or on bad files
        raise DataError(
            f"data.mnist = \"full\": could not find or download MNIST into {root} "
            f"({type(e).__name__}: {e}). {_HOW_TO_GET}"
        ) from None
    return ds.data.to(torch.uint8).clone()


def load_digits(source: str = "embedded", root: str | os.PathLike = "~/.cache/dive/mnist") -> torch.Tensor:
    """MNIST digit images, uint8 (N, 28, 28).

    `source` (the config's ``data.mnist``):
    - a path to an idx images file (gzipped or not), or a folder holding
      ``train-images-idx3-ubyte[.gz]``;
    - ``"embedded"``: the 10,000 digits shipped in ``dive/data/assets``;
    - ``"full"``: the 60,000 training digits via torchvision, downloaded into
      `root` on first use.
    """
    if source == "embedded":
        path = _ASSETS / EMBEDDED_FILE
        if not path.is_file():
            raise DataError(f"data.mnist = \"embedded\": the shipped digits are missing, looked for {path} "
                            f"(reinstall the package). {_HOW_TO_GET}")
        return _load_file(path)
    if source == "full":
        return _load_full(Path(root).expanduser())
    try:
        path = Path(source).expanduser()
    except RuntimeError:  # "~user/..." naming no user
        raise DataError(f"data.mnist = {source!r}: cannot expand the home folder in that path. "
                        f"{_HOW_TO_GET}") from None
    if path.is_dir():
        looked = [path / name for name in _STANDARD_NAMES] + [path / "MNIST" / "raw" / n for n in _STANDARD_NAMES]
        for candidate in looked:
            if candidate.is_file():
                return _load_file(candidate)
        raise DataError(f"data.mnist = {source!r}: no MNIST images file in that folder; looked for "
                        f"{', '.join(str(p) for p in looked)}. {_HOW_TO_GET}")
    if not path.is_file():
        raise DataError(f"data.mnist = {source!r}: not \"embedded\", not \"full\", and no file at {path}. "
                        f"{_HOW_TO_GET}")
    return _load_file(path)


def digit_pools(digits: torch.Tensor, train_fraction: float = TRAIN_FRACTION) -> tuple[torch.Tensor, torch.Tensor]:
    """(train pool, test pool): the first 80 % and the last 20 % of the digits, never sharing an image."""
    n = digits.shape[0]
    n_train = int(n * train_fraction)
    if n_train < 1 or n_train >= n:
        raise DataError(f"{n} digit(s) cannot be split into non-empty train and test pools")
    return digits[:n_train], digits[n_train:]

"""Pieces shared by the datasets: errors, per-item seeds, batching, config handling.

Batching protocol. Every dataset here produces a whole batch at once with
``ds.batch(indices) -> dict of (B, ...) tensors``. ``torch.utils.data.DataLoader``
calls ``dataset.__getitems__(indices)`` and hands the result to its
``collate_fn``, whose default expects a list of samples. So ``__getitems__``
returns an `ItemBatch`: a list of per-item dicts (views into the batched
tensors, no copy) that also carries the batched dict. A plain
``DataLoader(ds, batch_size=64)`` therefore works and stacks the views again
(one copy); `loader` / `collate` hand over the already-batched dict instead.
"""

from __future__ import annotations

import operator
import os
import tempfile
import zlib
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset
from torch.utils.data._utils.collate import default_collate

from ..config import Config, ConfigError, DataConfig, from_dict, validate
from ..errors import DataError, DataIndexError

__all__ = [
    "SPLITS",
    "BatchedDataset",
    "ConfigError",
    "DataError",
    "DataIndexError",
    "ItemBatch",
    "atomic_write",
    "check_indices",
    "check_int",
    "check_split",
    "collate",
    "from_uint8",
    "item_seed",
    "loader",
    "per_item_uniforms",
    "resolve_config",
    "to_uint8",
    "truncate_to_uint8",
]

SPLITS = ("train", "val", "test")
_MAX_SHUFFLE = 100_000_000


# ---------------------------------------------------------------------------
# per-item seeds

_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    # A fixed integer mix rather than Python's hash(), which is salted per process.
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def item_seed(*parts: int | str) -> int:
    """A stable 63-bit seed from (stream, split, seed, index, ...), equal on every machine and run."""
    h = 0
    for p in parts:
        v = zlib.crc32(p.encode()) if isinstance(p, str) else int(p) & _MASK64
        h = _splitmix64(h ^ v)
    return h & ((1 << 63) - 1)


def per_item_uniforms(stream: str, split: str, seed: int, indices: Sequence[int], count: int,
                      dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """(B, count) uniforms in [0, 1); row b depends only on (stream, split, seed, indices[b]).

    Each item has its own generator, so an item never depends on which other
    items share its batch or worker. Only these few numbers are drawn per item;
    everything heavy downstream is batched.
    """
    out = torch.empty(len(indices), count, dtype=dtype)
    g = torch.Generator()
    for b, i in enumerate(indices):
        g.manual_seed(item_seed(stream, split, seed, i))
        torch.rand(count, generator=g, dtype=dtype, out=out[b])
    return out


def check_indices(indices: Iterable[Any], length: int) -> list[int]:
    """Indices as ints in [0, length); negative ones count from the end, as for a list.

    Raises DataError unless `indices` is a non-empty sequence of integers
    (DataIndexError, also an IndexError, for one out of range).
    """
    if isinstance(indices, (str, bytes)):
        raise DataError(f"indices must be a sequence of integers, got {type(indices).__name__} {indices!r}")
    try:
        items = list(indices)
    except TypeError:
        raise DataError(f"indices must be a sequence of integers, got {type(indices).__name__}") from None
    if not items:
        raise DataError("indices must name at least one item, got an empty sequence")
    out = []
    for i in items:
        try:
            i = operator.index(i)
        except TypeError:
            raise DataError(f"indices must be integers, got {type(i).__name__} {i!r}") from None
        if not -length <= i < length:
            raise DataIndexError(f"index {i} out of range for a dataset of {length} items "
                                 f"(valid: {-length} to {length - 1})")
        out.append(i % length)
    return out


def check_int(name: str, value: Any, minimum: int | None = None) -> int:
    """`value` as an int (bool and float refused: a fractional seed or size is a mistake), else DataError."""
    if isinstance(value, bool):
        raise DataError(f"{name} must be an integer, got {value!r}")
    try:
        value = operator.index(value)
    except TypeError:
        raise DataError(f"{name} must be an integer, got {type(value).__name__} {value!r}") from None
    if minimum is not None and value < minimum:
        raise DataError(f"{name} = {value} is not allowed: at least {minimum}")
    return value


def check_split(split: str) -> str:
    if not isinstance(split, str) or split not in SPLITS:
        raise DataError(f"split = {split!r} is not allowed: one of {', '.join(SPLITS)}")
    return split


# ---------------------------------------------------------------------------
# 8-bit pixels


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] floats rounded to the nearest k / 255, as uint8 k."""
    return truncate_to_uint8(x.mul(255.0).add_(0.5).clamp_(0, 255))


def truncate_to_uint8(x: torch.Tensor) -> torch.Tensor:
    # float -> uint8 directly is several times slower than through int16 on CPU
    return x.to(torch.int16).to(torch.uint8)


def from_uint8(x: torch.Tensor) -> torch.Tensor:
    """uint8 k -> float32 k * (1/255): multiplying is several times faster than dividing, and
    round(x * 255) still gives k back exactly."""
    return x.to(torch.float32).mul_(1.0 / 255)


# ---------------------------------------------------------------------------
# batching


class ItemBatch(list):
    """What ``__getitems__`` returns: per-item dicts, plus the batched dict in `.batched`."""

    def __init__(self, batched: dict[str, torch.Tensor]):
        n = len(next(iter(batched.values())))
        items = [{} for _ in range(n)]
        for key, value in batched.items():
            for item, row in zip(items, value.unbind(0)):
                item[key] = row
        super().__init__(items)
        self.batched = batched


def collate(samples: Any) -> Any:
    """collate_fn that passes an already-batched result through and stacks anything else."""
    if isinstance(samples, ItemBatch):
        return samples.batched
    if isinstance(samples, dict):
        return samples
    return default_collate(samples)


def loader(dataset: Dataset, batch_size: int, shuffle: bool = False, num_workers: int = 0,
           **kwargs: Any) -> DataLoader:
    """A DataLoader that uses the batched generation without re-stacking items.

    Generated items are independent draws keyed by their index, so `shuffle`
    is only useful for datasets read from disk.
    """
    if shuffle and len(dataset) > _MAX_SHUFFLE:
        raise DataError(f"shuffle=True over {len(dataset)} items would build a permutation of all of them; "
                        "generated items are already random: read them in order (shuffle=False)")
    kwargs.setdefault("collate_fn", collate)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
                      **kwargs)


class BatchedDataset(Dataset):
    """Base for datasets that build whole batches: subclasses implement `batch` and `__len__`."""

    def batch(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError

    def __getitems__(self, indices: Sequence[int]) -> ItemBatch:
        return ItemBatch(self.batch(indices))

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {k: v[0] for k, v in self.batch([index]).items()}

    def __iter__(self):
        # Without this, iteration would fall back to __getitem__ until IndexError.
        for i in range(len(self)):
            yield self[i]


# ---------------------------------------------------------------------------
# config and files


def resolve_config(config: DataConfig | None, overrides: dict[str, Any], **explicit: Any) -> DataConfig:
    """`config` (or defaults) with explicit arguments and keyword overrides applied, then validated.

    Override names are DataConfig fields; unknown names and bad values raise
    ConfigError naming the setting and what is allowed.
    """
    if config is not None and not isinstance(config, DataConfig):
        raise ConfigError(f"config must be a dive.config.DataConfig, got {type(config).__name__}")
    changes = {k: v for k, v in explicit.items() if v is not None}
    changes.update(overrides)
    # from_dict works on a copy, so the caller's config is never changed
    cfg = from_dict({"data": changes}, base=Config(data=config if config is not None else DataConfig()))
    validate(cfg)
    return cfg.data


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None]) -> Path:
    """Call ``write(fileobj)`` on a temporary file next to `path`, then move it into place.

    A reader never sees a half-written file, and a failure leaves nothing behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


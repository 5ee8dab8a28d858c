"""Data: Moving MNIST with missing data, MOTSChallenge pedestrians, your own videos, fixed test sets.

Every dataset returns items as dicts of float32 tensors with the keys
``input``, ``target``, ``input_full``, ``target_full``, ``present``,
``visible`` and ``positions`` (see `dive.data.moving_mnist`), builds whole
batches at once (``ds.batch(indices)``), and works with a plain
``torch.utils.data.DataLoader``; `loader` skips the re-stacking of items.
"""

from __future__ import annotations

from ..config import DataConfig
from .common import DataError, ItemBatch, collate, loader
from .mnist import digit_pools, load_digits, read_idx
from .moving_mnist import TRAIN_SIZE, MovingMNIST
from .pedestrians import Pedestrians
from .testset import TensorSequenceDataset, load_test_set, save_test_set
from .videos import Videos

__all__ = [
    "DataError",
    "ItemBatch",
    "MovingMNIST",
    "Pedestrians",
    "TRAIN_SIZE",
    "TensorSequenceDataset",
    "Videos",
    "build_dataset",
    "collate",
    "digit_pools",
    "load_digits",
    "load_test_set",
    "loader",
    "read_idx",
    "save_test_set",
]


def build_dataset(cfg: DataConfig, split: str, seed: int | None = None, size: int | None = None):
    """The dataset `cfg.dataset` names, for split "train", "val" or "test".

    `seed` defaults to cfg.seed (train), cfg.val_seed (val) or cfg.test_seed
    (test). `size` (Moving MNIST only) defaults to cfg.test_size for val/test
    and TRAIN_SIZE for train.
    """
    if seed is None:
        seed = {"train": cfg.seed, "val": cfg.val_seed, "test": cfg.test_seed}.get(split, cfg.seed)
    if cfg.dataset == "pedestrians":
        return Pedestrians(cfg.root, split=split, seed=seed, config=cfg, cache_dir=cfg.cache_dir or None)
    if cfg.dataset == "videos":
        return Videos(cfg.root, split=split, seed=seed, config=cfg)
    if cfg.dataset == "moving_mnist":
        return MovingMNIST(split=split, seed=seed, size=size, config=cfg)
    raise DataError(f"data.dataset = {cfg.dataset!r} is not allowed: one of moving_mnist, pedestrians, videos")

"""MOTSChallenge pedestrian sequences (reference section 1), read from a folder of frame images.

Layout. `root` is walked (at any depth) for folders whose names start with
``seq_``. Each holds frame images (.png, .jpg, .jpeg, .bmp, .tif, .tiff) whose
file stem, split on "_", carries the frame number in field 1 and the
permutation id in field 2: ``img_000006_3.png`` is frame 6 of permutation 3
(field 0 and fields after 2 are ignored). Other files are ignored; an image
whose name does not parse is an error.

Frames whose number is divisible by `frame_stride` are kept. A sequence is a
run of T = t_in + t_out kept frames of one permutation id whose numbers
follow each other at the stride; every such run is an item (runs overlap:
a run may start at any kept frame).

Each frame is read as grey, fitted into an S x S square (S = image_size,
longest side scaled to S, aspect kept) and padded with black. The padding
sits at the start, centre or end of the short side, chosen at random per
item. Fitting first and padding afterwards lets one cached copy of each frame
serve all three placements; it differs from padding before resizing only in
how the content's border pixel is interpolated.

80 % of the folders (fixed shuffle, the same whatever `seed`, so train and
test never share a folder) are train, the rest test; "val" uses the test
folders. Training items are reversed in time and flipped horizontally at
random. Every item gets a camera drift (a translation growing linearly in
time, at most `max_drift` per frame in normalised units, i.e. image width 2,
random direction and size) and `num_blanked` random input frames set to zero.

Items are dicts as for Moving MNIST (T_in, T_out frames, C channels, S x S):
input / target / input_full / target_full (T, C, S, S), present (T_in, 1)
(0 on blanked frames), visible (C, S, S) all ones. `positions` has shape
(T, 0, 2): pedestrians carry no object positions. The Moving MNIST corruption
settings (scenario, hidden_rows, num_missing, elastic_*) do not apply here.

The fitted frames of each folder are cached as .npy files in `cache_dir`
(default ``<root>/.dive_cache``), written atomically on first use and
memory-mapped afterwards. The cache key covers the file names, sizes and
modification times, S and the stride, so changed data is read again.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..config import DataConfig
from .common import (BatchedDataset, DataError, atomic_write, check_indices, check_split, item_seed,
                     per_item_uniforms, resolve_config)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
TRAIN_FRACTION = 0.8
_STREAM = "pedestrians"
_CACHE_VERSION = 1

_WHERE_TO_GET = (
    "Get the MOTSChallenge pedestrian data released with DIVE (the authors' pre-processed pedestrian "
    "crops, one seq_* folder per sequence) and point data.root at the folder that holds the seq_* folders."
)

# The paper's pedestrian settings, used when no config is given.
PEDESTRIAN_DEFAULTS = {"dataset": "pedestrians", "image_size": 256, "t_out": 5, "scenario": "none"}


def find_sequence_folders(root: Path) -> list[Path]:
    """Every folder under `root` whose name starts with ``seq_``, in a fixed (sorted) order."""
    found = []
    for dirpath, dirnames, _ in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [Path(dirpath) / d for d in dirnames if d.startswith("seq_")]
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def parse_frame_name(path: Path) -> tuple[int, str]:
    """(frame number, permutation id) from a name like ``img_000006_3.png``."""
    fields = path.stem.split("_")
    if len(fields) < 3 or not fields[1].isdigit():
        raise DataError(f"{path}: cannot read the frame number and permutation id from the file name; "
                        f"expected <anything>_<frame number>_<permutation id>[_...]{path.suffix}, "
                        f"e.g. img_000006_3{path.suffix}")
    return int(fields[1]), fields[2]


def _perm_key(p: str) -> tuple[int, int | str]:
    return (0, int(p)) if p.isdigit() else (1, p)


def list_frames(folder: Path, stride: int) -> list[tuple[int, str, Path]]:
    """Kept frames of one folder as (frame number, permutation id, path), by permutation then frame."""
    frames = []
    for p in folder.iterdir():
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
            number, perm = parse_frame_name(p)
            if number % stride == 0:
                frames.append((number, perm, p))
    frames.sort(key=lambda f: (_perm_key(f[1]), f[0]))
    return frames


def split_folders(folders: list[Path]) -> tuple[list[Path], list[Path]]:
    """(train, test): a fixed shuffle of the folders, 80 % train, at least one in each when there are two."""
    n = len(folders)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(item_seed(_STREAM, "folders"))).tolist()
    n_train = min(max(1, int(n * TRAIN_FRACTION)), max(n - 1, 1))
    return [folders[i] for i in order[:n_train]], [folders[i] for i in order[n_train:]]


def fit_square(image, size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """A PIL image as grey uint8 (size, size): scaled so its longest side is `size`, at the top-left, black elsewhere.

    Returns the canvas and the content's (height, width).
    """
    from PIL import Image

    grey = image.convert("L")
    w, h = grey.size
    scale = size / max(w, h)
    nw, nh = max(1, min(size, round(w * scale))), max(1, min(size, round(h * scale)))
    if (nw, nh) != (w, h):
        grey = grey.resize((nw, nh), Image.BILINEAR)
    canvas = np.zeros((size, size), dtype=np.uint8)
    canvas[:nh, :nw] = np.asarray(grey, dtype=np.uint8)
    return canvas, (nh, nw)


class Pedestrians(BatchedDataset):
    """Pedestrian sequences from a folder of ``seq_*`` folders (see the module docstring).

    Args:
        root: the folder to walk; default ``config.root``.
        split: "train" | "test" | "val" ("val" reads the test folders).
        seed: with split and index, fixes every item's padding, augmentation,
            drift and blanked frames.
        config: a DataConfig; default: DataConfig with the paper's pedestrian
            settings (256 x 256, T_out = 5).
        cache_dir: where the fitted frames are cached; default
            ``config.cache_dir`` or ``<root>/.dive_cache``.
        **overrides: DataConfig fields.
    """

    def __init__(self, root: str | os.PathLike | None = None, split: str = "train", seed: int = 0,
                 config: DataConfig | None = None, cache_dir: str | os.PathLike | None = None,
                 **overrides: Any):
        if config is None:
            config = DataConfig(**PEDESTRIAN_DEFAULTS)
        cfg = resolve_config(config, overrides)
        self.cfg = cfg
        self.split = check_split(split)
        self.seed = int(seed)
        self.t_in, self.t_out = cfg.t_in, cfg.t_out
        self.frames = cfg.t_in + cfg.t_out

        root = root if root not in (None, "") else cfg.root
        if root in (None, ""):
            raise DataError(f"no pedestrian data folder given (data.root is empty). {_WHERE_TO_GET}")
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise DataError(f"data.root = {str(root)!r}: no such folder ({self.root.resolve()}). {_WHERE_TO_GET}")
        folders = find_sequence_folders(self.root)
        if not folders:
            raise DataError(f"no seq_* folders under {self.root.resolve()} (searched all sub-folders). "
                            f"{_WHERE_TO_GET}")
        train, test = split_folders(folders)
        self.folders = train if split == "train" else test
        if not self.folders:
            raise DataError(f"{self.root}: only {len(folders)} seq_* folder(s), none left for the {split} split; "
                            "train and test need separate folders")

        cache = cache_dir if cache_dir not in (None, "") else (cfg.cache_dir or self.root / ".dive_cache")
        self.cache_dir = Path(cache).expanduser()
        self._files: list[tuple[Path, Path]] = []  # (frames .npy, sizes .npy) per folder
        self._runs: list[tuple[int, int]] = []  # (folder, first row) per item
        for f_idx, folder in enumerate(self.folders):
            frames = list_frames(folder, cfg.frame_stride)
            self._files.append(self._ensure_cache(folder, frames))
            self._runs += [(f_idx, row) for row in self._run_starts(frames)]
        if not self._runs:
            raise DataError(
                f"{self.root}: no runs of {self.frames} frames (t_in + t_out) in the {split} folders "
                f"({', '.join(f.name for f in self.folders)}) with frame numbers divisible by "
                f"{cfg.frame_stride} following each other within one permutation id"
            )
        self._arrays: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    # -- index and cache ---------------------------------------------------

    def _run_starts(self, frames: list[tuple[int, str, Path]]) -> list[int]:
        stride, t = self.cfg.frame_stride, self.frames
        starts = []
        for row in range(len(frames) - t + 1):
            window = frames[row: row + t]
            if all(w[1] == window[0][1] for w in window) and all(
                    b[0] - a[0] == stride for a, b in zip(window, window[1:])):
                starts.append(row)
        return starts

    def _ensure_cache(self, folder: Path, frames: list[tuple[int, str, Path]]) -> tuple[Path, Path]:
        size = self.cfg.image_size
        key = hashlib.sha256(json.dumps({
            "version": _CACHE_VERSION, "size": size, "stride": self.cfg.frame_stride,
            "files": [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for _, _, p in frames],
        }).encode()).hexdigest()[:16]
        name = folder.relative_to(self.root).as_posix().replace("/", "__")
        frames_path = self.cache_dir / f"{name}-{size}-{key}.frames.npy"
        sizes_path = self.cache_dir / f"{name}-{size}-{key}.sizes.npy"
        if frames_path.is_file() and sizes_path.is_file():
            return frames_path, sizes_path

        from PIL import Image, UnidentifiedImageError

        pixels = np.zeros((len(frames), size, size), dtype=np.uint8)
        sizes = np.zeros((len(frames), 2), dtype=np.int64)
        for row, (_, _, path) in enumerate(frames):
            try:
                with Image.open(path) as im:
                    pixels[row], sizes[row] = fit_square(im, size)
            except (OSError, UnidentifiedImageError) as e:
                raise DataError(f"{path}: cannot read image ({e})") from None
        atomic_write(frames_path, lambda f: np.save(f, pixels))
        atomic_write(sizes_path, lambda f: np.save(f, sizes))
        return frames_path, sizes_path

    def _folder_arrays(self, f_idx: int) -> tuple[np.ndarray, np.ndarray]:
        # opened lazily so each DataLoader worker maps the files itself
        if f_idx not in self._arrays:
            frames_path, sizes_path = self._files[f_idx]
            self._arrays[f_idx] = (np.load(frames_path, mmap_mode="r"), np.load(sizes_path))
        return self._arrays[f_idx]

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_arrays"] = {}
        return state

    def __len__(self) -> int:
        return len(self._runs)

    def __repr__(self) -> str:
        return (f"Pedestrians(root={str(self.root)!r}, split={self.split!r}, seed={self.seed}, "
                f"{len(self.folders)} folders, {len(self)} sequences of {self.frames} frames)")

    def settings(self) -> dict[str, Any]:
        c = self.cfg
        return {"dataset": "pedestrians", "root": str(self.root), "split": self.split, "seed": self.seed,
                "size": len(self), "image_size": c.image_size, "channels": c.channels, "t_in": c.t_in,
                "t_out": c.t_out, "frame_stride": c.frame_stride, "max_drift": c.max_drift,
                "num_blanked": c.num_blanked, "folders": [f.name for f in self.folders]}

    # -- generation --------------------------------------------------------

    def _padded_sequence(self, index: int, placement: int) -> torch.Tensor:
        """(T, S, S) uint8 frames of run `index`, padding placed at start (0), centre (1) or end (2)."""
        f_idx, row = self._runs[index]
        pixels, sizes = self._folder_arrays(f_idx)
        s = self.cfg.image_size
        seq = torch.from_numpy(np.array(pixels[row: row + self.frames]))
        for t, (h, w) in enumerate(sizes[row: row + self.frames].tolist()):
            shift_rows = (0, (s - h) // 2, s - h)[placement]
            shift_cols = (0, (s - w) // 2, s - w)[placement]
            # content sits at the top-left with black after it, so rolling never wraps content
            if shift_rows or shift_cols:
                seq[t] = torch.roll(seq[t], (shift_rows, shift_cols), dims=(0, 1))
        return seq

    def batch(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        """The items at `indices`, stacked with a leading batch dim B."""
        indices = check_indices(indices, len(self))
        cfg = self.cfg
        b, t_all, t_in, s, c = len(indices), self.frames, self.t_in, cfg.image_size, cfg.channels
        u = per_item_uniforms(_STREAM, self.split, self.seed, indices, 5 + t_in)
        placement = (u[:, 0] * 3).long().clamp_(max=2)
        reverse = u[:, 1] < 0.5
        flip = u[:, 2] < 0.5
        angle = u[:, 3] * (2 * math.pi)
        speed = u[:, 4] * cfg.max_drift

        seqs = []
        for j, i in enumerate(indices):
            seq = self._padded_sequence(i, int(placement[j]))
            if self.split == "train":
                if reverse[j]:
                    seq = seq.flip(0)
                if flip[j]:
                    seq = seq.flip(-1)
            seqs.append(seq)
        video = torch.stack(seqs).to(torch.float32).div_(255)  # (B, T, S, S)

        if cfg.max_drift > 0:
            t = torch.arange(t_all, dtype=torch.float64).view(1, t_all)
            shift = torch.stack([torch.cos(angle), torch.sin(angle)], dim=-1).unsqueeze(1) * (
                speed.view(b, 1, 1) * t.unsqueeze(-1))  # (B, T, 2) as (x, y)
            theta = torch.zeros(b * t_all, 2, 3, dtype=torch.float32)
            theta[:, 0, 0] = 1
            theta[:, 1, 1] = 1
            # the sampling grid moves against the shift, so the content moves with it
            theta[:, :, 2] = -shift.reshape(b * t_all, 2).to(torch.float32)
            frames = video.reshape(b * t_all, 1, s, s)
            grid = F.affine_grid(theta, list(frames.shape), align_corners=False)
            video = F.grid_sample(frames, grid, mode="bilinear", padding_mode="zeros",
                                  align_corners=False).view(b, t_all, s, s)

        present = torch.ones(b, t_in, 1)
        if cfg.num_blanked > 0:
            blanked = u[:, 5:].argsort(dim=1)[:, : cfg.num_blanked]  # distinct input frames
            present.scatter_(1, blanked.unsqueeze(-1), 0.0)
        video = video.unsqueeze(2)  # (B, T, 1, S, S)
        if c > 1:
            video = video.repeat(1, 1, c, 1, 1)
        full_in = video[:, :t_in]
        return {
            "input": full_in * present.view(b, t_in, 1, 1, 1),
            "target": video[:, t_in:].clone(),
            "input_full": full_in.clone(),
            "target_full": video[:, t_in:].clone(),
            "present": present,
            "visible": torch.ones(b, c, s, s),
            "positions": torch.zeros(b, t_all, 0, 2),
        }

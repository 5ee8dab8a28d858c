"""Your own videos: a folder of clips, cut into windows of T = t_in + t_out frames.

Layout. `root` is walked (at any depth, hidden entries skipped) for clips:

* ``NAME.npy``: one array of frames (T, H, W) or (T, H, W, C);
* ``NAME.npz``: the same, as its only array or its array named ``frames``;
* a folder of PNG frames (``NAME/000.png``, ``NAME/001.png``, ...), ordered
  by the last number in each file name; every PNG in the folder must carry
  one and the numbers must differ.

Values are uint8 (0..255) or floats in [0, 1]; C is 1 or 3. Colour clips
become grey (the mean of the channels) when ``data.channels = 1``; grey
clips cannot feed a 3-channel model. Every frame is fitted into an S x S
square (S = ``data.image_size``): scaled with area averaging (bilinear when
enlarged) so that its longest side is S, aspect kept, centred, black around.

Split, fixed and by name. If `root` has folders ``train``, ``val`` and
``test``, each clip belongs to the one it lies in. Otherwise a clip's path
relative to `root` is hashed (SHA-256) to a number u in [0, 1): u < 0.1 is
test, u < 0.2 val, the rest train, so adding a clip never moves another.
A split with no clip is an error that says so.

Windows. A clip of L >= T frames gives the L - T + 1 windows that start at
each of its frames; the items of a split are all windows of all its clips,
clip by clip in path order.

Missing data, optional (both off in configs/videos.toml): ``data.num_blanked``
input frames per item, chosen at random but never the first, are set to
zero (``present`` 0 there), as if everything had left the scene;
``data.hidden_rows`` rows at the top of every frame, input and future, are
never observed (``visible`` 0 there), as in Moving MNIST's s1. The random
choice depends only on (split, seed, index).

Items are dicts as for Moving MNIST: input / target / input_full /
target_full (T, C, S, S), present (T_in, 1), visible (C, S, S), positions
(T, 0, 2) (no object positions are known).

Every clip is read and checked when the dataset is built, before training
starts: a file that cannot be read, has the wrong rank, too few frames,
frames of different sizes, a dtype other than uint8 or float, NaN or values
outside [0, 1] raises a DataError naming the file. The fitted frames are
kept in memory as uint8 (S x S bytes per frame).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..config import DataConfig
from .common import (BatchedDataset, DataError, check_indices, check_split, from_uint8, per_item_uniforms,
                     resolve_config, to_uint8)

SPLIT_FOLDERS = ("train", "val", "test")
TEST_FRACTION, VAL_FRACTION = 0.1, 0.1
_STREAM = "videos"
_NUMBER = re.compile(r"(\d+)(?!.*\d)")  # the last run of digits in a name


def hash_split(name: str) -> str:
    """The split of a clip whose path relative to the root is `name` (without split folders)."""
    u = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") / 2**64
    return "test" if u < TEST_FRACTION else "val" if u < TEST_FRACTION + VAL_FRACTION else "train"


def find_clips(root: Path) -> dict[str, list[Path]]:
    """Every clip under `root` by split: .npy and .npz files, and folders that hold .png files."""
    if not root.is_dir():
        raise DataError(f"data.root = {str(root)!r} is not a folder; point it at the folder that holds your "
                        f"clips (.npy, .npz, or folders of numbered .png frames)")
    explicit = all((root / s).is_dir() for s in SPLIT_FOLDERS)
    found: dict[str, list[Path]] = {s: [] for s in SPLIT_FOLDERS}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if any(part.startswith(".") for part in rel.parts):
            continue
        is_clip = (path.is_file() and path.suffix.lower() in (".npy", ".npz")) or (
            path.is_dir() and any(p.suffix.lower() == ".png" for p in path.iterdir() if p.is_file()))
        if not is_clip:
            continue
        if explicit:
            if rel.parts[0] in SPLIT_FOLDERS and len(rel.parts) > 1:
                found[rel.parts[0]].append(path)
        else:
            found[hash_split(rel.as_posix())].append(path)
    return found


def _read_array(path: Path) -> np.ndarray:
    try:
        data = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:  # pickled (object) arrays are refused here, unread
        raise DataError(f"{path}: not a plain array of numbers ({e})") from None
    if isinstance(data, np.lib.npyio.NpzFile):
        with data:
            names = list(data.files)
            if "frames" in names:
                key = "frames"
            elif len(names) == 1:
                key = names[0]
            else:
                raise DataError(f"{path}: holds {len(names)} arrays ({', '.join(names)}); expected one, or one "
                                f"named 'frames'")
            try:
                return data[key]
            except (ValueError, OSError, EOFError) as e:
                raise DataError(f"{path}: array {key!r} is not readable ({e})") from None
    return data


def _read_png_folder(folder: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    numbered = []
    for p in folder.iterdir():
        if p.is_file() and p.suffix.lower() == ".png":
            m = _NUMBER.search(p.stem)
            if m is None:
                raise DataError(f"{p}: no frame number in the file name; name PNG frames like 000.png, 001.png, ...")
            numbered.append((int(m.group(1)), p))
    numbered.sort()
    for (a, pa), (b, pb) in zip(numbered, numbered[1:]):
        if a == b:
            raise DataError(f"{folder}: {pa.name} and {pb.name} carry the same frame number {a}")
    frames = []
    for _, p in numbered:
        try:
            with Image.open(p) as im:
                im = im.convert("RGB") if im.mode not in ("L", "RGB") else im
                frames.append(np.asarray(im, dtype=np.uint8))
        except (UnidentifiedImageError, OSError, ValueError) as e:
            raise DataError(f"{p}: unreadable PNG ({e})") from None
        if frames[-1].shape != frames[0].shape:
            raise DataError(f"{p}: frame of size {frames[-1].shape} in a clip whose first frame is {frames[0].shape}")
    return np.stack(frames)


def fit_frames(frames: torch.Tensor, size: int) -> torch.Tensor:
    """Frames (T, C, H, W) float in [0, 1] fitted into (T, C, size, size): longest side `size`, centred."""
    h, w = frames.shape[-2:]
    scale = size / max(h, w)
    nh, nw = max(1, min(size, round(h * scale))), max(1, min(size, round(w * scale)))
    if (nh, nw) != (h, w):
        mode = "area" if nh <= h and nw <= w else "bilinear"
        kw = {} if mode == "area" else {"align_corners": False}
        frames = F.interpolate(frames, size=(nh, nw), mode=mode, **kw).clamp(0, 1)
    top, left = (size - nh) // 2, (size - nw) // 2
    return F.pad(frames, (left, size - nw - left, top, size - nh - top))


def read_clip(path: Path) -> np.ndarray:
    """The frames of a clip as stored: a folder of PNGs, an .npz or an .npy file (read without pickle)."""
    if path.is_dir():
        return _read_png_folder(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    return _read_array(path)


def clip_frames(arr: np.ndarray, where: Path | str, channels: int, size: int, min_frames: int = 1,
                channels_first: bool = False) -> torch.Tensor:
    """Frames (T, H, W) or (T, H, W, C) (or (T, C, H, W) with `channels_first`) checked and fitted into
    uint8 (T, channels, size, size); a DataError names `where` and the fault."""
    shape = tuple(arr.shape)
    layout = "(T, C, H, W)" if channels_first else "(T, H, W, C)"
    if arr.ndim not in (3, 4):
        raise DataError(f"{where}: expected frames of shape (T, H, W) or {layout}, got {shape}")
    if arr.ndim == 4 and channels_first:
        arr = np.moveaxis(arr, 1, -1)
    if arr.ndim == 4 and arr.shape[-1] not in (1, 3):
        raise DataError(f"{where}: expected 1 or 3 channels in {layout}, got shape {shape}")
    if arr.shape[0] < min_frames:
        raise DataError(f"{where}: {arr.shape[0]} frames, fewer than the {min_frames} needed")
    if min(arr.shape[1:3]) < 1:
        raise DataError(f"{where}: empty frames, shape {shape}")
    if arr.dtype == np.uint8:
        x = torch.from_numpy(np.ascontiguousarray(arr)).float().mul_(1 / 255)
    elif np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise DataError(f"{where}: contains NaN or infinite values")
        if arr.min() < 0 or arr.max() > 1:
            raise DataError(f"{where}: float values must lie in [0, 1], found [{arr.min():.3g}, {arr.max():.3g}]")
        x = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
    else:
        raise DataError(f"{where}: expected uint8 or float values, got dtype {arr.dtype}")
    x = x.unsqueeze(1) if x.dim() == 3 else x.permute(0, 3, 1, 2)  # (T, C, H, W)
    if x.shape[1] != channels:
        if x.shape[1] == 3 and channels == 1:
            x = x.mean(dim=1, keepdim=True)
        else:
            raise DataError(f"{where}: {x.shape[1]}-channel frames for a model of data.channels = {channels}")
    return to_uint8(fit_frames(x, size))


def load_clip(path: Path, channels: int, size: int, min_frames: int = 1) -> torch.Tensor:
    """One clip file or PNG folder as checked uint8 frames (T, channels, size, size)."""
    return clip_frames(read_clip(path), path, channels, size, min_frames)


class Videos(BatchedDataset):
    """The windows of the clips in one split of a folder (see the module docstring)."""

    def __init__(self, root: str | Path | None = None, split: str = "train", seed: int = 0,
                 config: DataConfig | None = None, **overrides):
        self.config = cfg = resolve_config(config, overrides)
        self.split, self.seed = check_split(split), seed
        self.root = Path(root if root is not None else cfg.root).expanduser()
        self.t_in, self.T = cfg.t_in, cfg.t_in + cfg.t_out
        self.hidden_rows, self.num_blanked = cfg.resolved("hidden_rows"), cfg.num_blanked
        clips = find_clips(self.root)
        if not clips[split]:
            counts = ", ".join(f"{s} {len(c)}" for s, c in clips.items())
            raise DataError(f"{self.root}: no clip in the {split} split (clips found: {counts}). Splits are by a "
                            f"hash of each clip's name, about 10 % test and 10 % val; with few clips, put them in "
                            f"folders train/, val/ and test/ under data.root")
        self.paths = clips[split]
        self.clips = [load_clip(p, cfg.channels, cfg.image_size, self.T) for p in self.paths]
        counts = torch.tensor([c.shape[0] - self.T + 1 for c in self.clips])
        self.starts = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])  # first item of each clip

    def __len__(self) -> int:
        return int(self.starts[-1])

    def window(self, index: int) -> tuple[int, int]:
        """(clip number, first frame) of item `index`."""
        clip = int(torch.searchsorted(self.starts, torch.tensor(index), right=True)) - 1
        return clip, index - int(self.starts[clip])

    def batch(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        indices = check_indices(indices, len(self))
        frames = []
        for i in indices:
            clip, start = self.window(i)
            frames.append(self.clips[clip][start:start + self.T])
        full = from_uint8(torch.stack(frames))  # (b T C S S)
        B, T, C, S, _ = full.shape
        visible = torch.ones(B, C, S, S)
        visible[:, :, : self.hidden_rows] = 0
        present = torch.ones(B, self.t_in, 1)
        if self.num_blanked > 0:
            u = per_item_uniforms(_STREAM, self.split, self.seed, indices, self.t_in - 1)
            blanked = u.argsort(dim=1)[:, : self.num_blanked] + 1  # never frame 0
            present.scatter_(1, blanked.unsqueeze(-1), 0.0)
        observed = full * visible.unsqueeze(1)
        return {
            "input": observed[:, : self.t_in] * present.unsqueeze(-1).unsqueeze(-1),
            "target": observed[:, self.t_in:],
            "input_full": full[:, : self.t_in],
            "target_full": full[:, self.t_in:],
            "present": present,
            "visible": visible,
            "positions": torch.zeros(B, T, 0, 2),
        }

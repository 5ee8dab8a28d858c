"""Moving MNIST with missing data (reference section 1), generated on the fly a batch at a time.

An item is a dict of float32 tensors (T = T_in + T_out, K = num_digits):

    input        (T_in, C, H, W)   observed: out-of-scene digits absent, hidden rows zero
    target       (T_out, C, H, W)  observed future (hidden rows zero in s1; nothing missing)
    input_full   (T_in, C, H, W)   everything drawn, nothing hidden
    target_full  (T_out, C, H, W)
    present      (T_in, K)         1 where digit k is drawn in observed input frame t
    visible      (C, H, W)         1 where pixels are observed (s1: 0 on the top rows)
    positions    (T, K, 2)         each digit's centre (x, y) in [-1, 1], affine_grid
                                   convention (x: -1 left edge .. +1 right edge,
                                   y: -1 top .. +1 bottom), as drawn (integer pixels)

Generation (reference section 1): each digit starts uniformly in [0, 1]^2
with a uniform direction and moves `step_length` per frame, bouncing off the
borders; its top-left pixel is the position times (H - digit_size),
truncated. Digits combine by pixel-wise maximum. Out of scene: from a first
frame drawn in 2 .. T_in - num_missing - 2, a digit is left out of
`num_missing` consecutive observed input frames. Elastic deformation (s3):
per digit and sequence one displacement field (uniform noise in [-1, 1],
Gaussian-smoothed with `elastic_sigma`, in pixels) scaled by
alpha_t = alpha (1 - t / T) for frame t, applied by bilinear resampling with
mirror reflection, vertical only ("rows", as the original) or 2-D.

All pixel values are k / 255 (stored as float32 k * (1/255)): deformed
digits are rounded back to 8 bits, as the source digits are. That keeps
pasting cheap (uint8) and, with the sub-pixel snapping in `elastic_warp`,
makes the items bit-identical across CPUs and kernel paths (checked against
torch's non-SIMD kernels); 2-D deformation can differ in rare pixels by one
level.

Determinism: an item depends only on (split, settings, seed, index). Each
item's random numbers (digit choice, start, direction, missing frames,
deformation noise) come from its own generator seeded by a fixed integer mix
of (split, seed, index); the heavy work (smoothing, warping, pasting) is done
for the whole batch at once and gives each item the same result whatever
else is in the batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange

from ..config import DataConfig
from .common import (BatchedDataset, DataError, check_indices, check_int, check_split, from_uint8,
                     per_item_uniforms, resolve_config, to_uint8, truncate_to_uint8)
from .mnist import digit_pools, load_digits

# Train items are independent draws keyed by index, so the length only bounds
# the indices: every index of a long multi-process run (step * batch * ranks)
# is a fresh sequence. Read it in order; do not shuffle (items are already
# random, and a shuffling sampler would try to permute 2**31 indices).
TRAIN_SIZE = 2**31 - 1

_STREAM = "moving_mnist"
_TRUNCATE = 4.0  # Gaussian kernel radius in sigmas, as scipy.ndimage.gaussian_filter


# ---------------------------------------------------------------------------
# building blocks (public so they can be tested on their own)


def bounce_trajectories(start: torch.Tensor, velocity: torch.Tensor, steps: int) -> torch.Tensor:
    """Positions in [0, 1]^2 over `steps` frames: (..., 2) start and velocity -> (..., steps, 2).

    Every frame, the first included, moves one step; a coordinate that leaves
    [0, 1] is clamped to the border and its velocity component flips.
    """
    pos = start.clone()
    vel = velocity.clone()
    out = []
    for _ in range(steps):
        pos = pos + vel
        outside = (pos < 0) | (pos > 1)
        pos = pos.clamp(0.0, 1.0)
        vel = torch.where(outside, -vel, vel)
        out.append(pos)
    return torch.stack(out, dim=-2)


def smoothing_matrix(size: int, sigma: float) -> torch.Tensor:
    """(size, size) float64 G with G @ x = x Gaussian-smoothed along dim 0, mirror-reflected at the border.

    Matches scipy's ``gaussian_filter(mode="reflect")`` (d c b a | a b c d),
    also when the kernel is wider than the field. A 2-D field is smoothed as
    ``G @ field @ G.T`` (the separable filter as two small matmuls).
    """
    radius = int(_TRUNCATE * sigma + 0.5)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    weights = torch.exp(-0.5 * (offsets / sigma) ** 2)
    weights = weights / weights.sum()
    rows = torch.arange(size).unsqueeze(1)
    src = (rows + torch.arange(-radius, radius + 1).unsqueeze(0)) % (2 * size)
    src = torch.where(src >= size, 2 * size - 1 - src, src)
    g = torch.zeros(size, size, dtype=torch.float64)
    g.scatter_add_(1, src, weights.expand(size, -1).contiguous())
    return g


def elastic_alphas(alpha: float, frames: int) -> torch.Tensor:
    """(frames,) alpha_t = alpha * (1 - t / frames): the deformation fades linearly."""
    return alpha * (1.0 - torch.arange(frames, dtype=torch.float64) / frames)


# Sampling positions are snapped to odd multiples of 1/512 pixel. An 8-bit
# value interpolated between two 8-bit neighbours at such a position is then at
# least 1/512 away from any rounding boundary, far more than the last-bit
# differences between grid_sample's scalar and vector kernels, so rows-mode
# digits round to the same 8-bit values on every CPU. The snap itself uses only
# separate IEEE multiplies and adds (no fused multiply-add), which give the
# same bits everywhere.
_SNAP = 256


def _sampling_coords(disp: torch.Tensor, alphas: torch.Tensor, base: torch.Tensor, size: int) -> torch.Tensor:
    """Normalised (align_corners=False) coordinates of base + alphas * disp, in pixels, snapped.

    All arguments broadcast against each other; the result has their common shape.
    """
    pixel = torch.mul(disp * _SNAP, alphas)
    pixel.add_(base * _SNAP).floor_()
    # (floor + 1/2) / SNAP pixels -> normalised: x = (2 p + 1) / size - 1
    return pixel.mul_(2.0 / (_SNAP * size)).add_((1.0 / _SNAP + 1.0) / size - 1.0)


def elastic_warp(images: torch.Tensor, field: torch.Tensor, alphas: torch.Tensor,
                 mode: str = "rows") -> torch.Tensor:
    """Warp each image by a displacement field at several strengths, bilinear, mirror-reflected at the border.

    images (N, h, w) float, any value scale; field (N, 2, h, w) displacement
    in pixels, channel 0 = dx (along columns), 1 = dy (along rows); alphas
    (T,) strengths. Returns (N, T, h, w) with
    out[n, t, y, x] = images[n, y + alphas[t] * dy, x + alphas[t] * dx]
    (sampling positions snapped to 1/256 pixel).

    mode "rows" ignores dx: pixels move only vertically, as in the original.
    It resamples every column as its own width-1 image, so columns cannot mix
    even by rounding (an image of vertical stripes comes out unchanged).
    mode "2d" is the true 2-D deformation. Either way it is one grid_sample.
    """
    n, h, w = images.shape
    t = alphas.shape[0]
    alphas = alphas.to(images.dtype)
    rows = torch.arange(h, dtype=images.dtype)
    if mode == "rows":
        # A column that is black stays black (nothing moves in sideways), so
        # only columns with content are sampled.
        ni, wi = images.ne(0).any(dim=1).nonzero(as_tuple=True)  # (M,) image and column of each
        m = ni.shape[0]
        cols = images[ni, :, wi].unsqueeze(1).expand(m, t, h).reshape(m * t, 1, h, 1)
        grid = images.new_zeros(m, t, h, 2)
        grid[..., 1] = _sampling_coords(field[ni, 1, :, wi].unsqueeze(1), alphas.view(1, t, 1), rows, h)
        sampled = F.grid_sample(cols, grid.view(m * t, h, 1, 2), mode="bilinear",
                                padding_mode="reflection", align_corners=False)
        out = images.new_zeros(n, w, t, h)
        out[ni, wi] = sampled.view(m, t, h)
        return rearrange(out, "n w t h -> n t h w")
    if mode == "2d":
        imgs = images.unsqueeze(1).expand(n, t, h, w).reshape(n * t, 1, h, w)
        grid = images.new_empty(n, t, h, w, 2)
        a = alphas.view(1, t, 1, 1)
        grid[..., 0] = _sampling_coords(field[:, 0].unsqueeze(1), a, torch.arange(w, dtype=images.dtype), w)
        grid[..., 1] = _sampling_coords(field[:, 1].unsqueeze(1), a, rows.view(h, 1), h)
        out = F.grid_sample(imgs, grid.view(n * t, h, w, 2), mode="bilinear",
                            padding_mode="reflection", align_corners=False)
        return out.view(n, t, h, w)
    raise ValueError(f"elastic mode {mode!r}: expected 'rows' or '2d'")


def paste_max(sprites: torch.Tensor, top_left: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Combine sprites on black canvases by pixel-wise maximum.

    sprites (B, K, T, h, w) uint8; top_left (B, K, T, 2) integer (row, col),
    sprites fully inside the canvas. Returns (B, T, height, width) uint8.
    """
    b, k, t, h, w = sprites.shape
    bi = torch.arange(b).view(b, 1, 1, 1, 1)
    ti = torch.arange(t).view(1, 1, t, 1, 1)
    rows = top_left[..., 0].view(b, k, t, 1, 1) + torch.arange(h).view(1, 1, 1, h, 1)
    cols = top_left[..., 1].view(b, k, t, 1, 1) + torch.arange(w).view(1, 1, 1, 1, w)
    flat = ((bi * t + ti) * height + rows) * width + cols
    canvas = torch.zeros(b * t * height * width, dtype=torch.uint8)
    canvas.scatter_reduce_(0, flat.reshape(-1), sprites.reshape(-1), "amax")
    return canvas.view(b, t, height, width)


def _frames_to_float(frames: torch.Tensor, channels: int) -> torch.Tensor:
    """(B, T, H, W) uint8 -> (B, T, C, H, W) float32 in [0, 1]."""
    out = from_uint8(frames.unsqueeze(2))
    return out if channels == 1 else out.repeat(1, 1, channels, 1, 1)


# ---------------------------------------------------------------------------
# dataset


class MovingMNIST(BatchedDataset):
    """Moving MNIST sequences with the scenario's corruption (see the module docstring for items).

    Args:
        scenario: "s1" | "s2" | "s3" | "none"; default the config's (s3).
        split: "train" draws digits from the first 80 % of the digit file,
            "test" and "val" from the last 20 %.
        seed: with split, settings and index, fixes every item.
        size: number of items; default `config.test_size` for test/val and
            TRAIN_SIZE for train.
        config: a DataConfig; defaults to DataConfig().
        digits: uint8 (N, h, w) digit images to use instead of `config.mnist`
            (all of them go to the pool of the chosen split).
        **overrides: DataConfig fields, e.g. ``num_missing=0``. Unknown names
            and bad values raise ConfigError naming the setting.
    """

    def __init__(self, scenario: str | None = None, split: str = "train", seed: int = 0,
                 size: int | None = None, config: DataConfig | None = None,
                 digits: torch.Tensor | None = None, **overrides: Any):
        cfg = resolve_config(config, overrides, scenario=scenario)
        self.cfg = cfg
        self.split = check_split(split)
        self.seed = check_int("seed", seed)
        if size is None:
            size = TRAIN_SIZE if split == "train" else cfg.test_size
        self.size = check_int("size", size, minimum=1)

        self.t_in, self.t_out = cfg.t_in, cfg.t_out
        self.frames = cfg.t_in + cfg.t_out
        self.hidden_rows = cfg.resolved("hidden_rows")
        self.num_missing = cfg.resolved("num_missing")
        self.alpha = float(cfg.resolved("elastic_alpha"))
        self.elastic_mode = cfg.elastic_mode
        d = cfg.digit_size

        if digits is None:
            train_pool, test_pool = digit_pools(load_digits(cfg.mnist, cfg.mnist_root))
            pool = train_pool if split == "train" else test_pool
        else:
            if not isinstance(digits, torch.Tensor):
                raise DataError(f"digits must be a uint8 tensor (N, h, w), got {type(digits).__name__}")
            if digits.dim() != 3 or digits.dtype != torch.uint8 or digits.numel() == 0:
                raise DataError(f"digits must be a non-empty uint8 tensor (N, h, w), got shape "
                                f"{tuple(digits.shape)} and dtype {digits.dtype}")
            pool = digits
        if pool.shape[-2:] != (d, d):
            # Other digit sizes come from resizing once here, not per item.
            pool = to_uint8(F.interpolate(pool.unsqueeze(1).float() / 255, size=(d, d), mode="bilinear",
                                          antialias=True, align_corners=False).squeeze(1))
        self.pool = pool.contiguous()
        if self.alpha > 0:
            self._smooth = smoothing_matrix(d, cfg.elastic_sigma)
            self._alphas = elastic_alphas(self.alpha, self.frames).to(torch.float32)

        # Layout of each item's uniforms; scalars first, so items of scenarios
        # with and without deformation share digits, paths and missing frames.
        k = cfg.num_digits
        self._layout = {"digit": k, "start": 2 * k, "angle": k, "missing": k,
                        "noise": 2 * k * d * d if self.alpha > 0 else 0}

    def __len__(self) -> int:
        return self.size

    def __repr__(self) -> str:
        return (f"MovingMNIST(scenario={self.cfg.scenario!r}, split={self.split!r}, seed={self.seed}, "
                f"size={self.size}, hidden_rows={self.hidden_rows}, num_missing={self.num_missing}, "
                f"elastic_alpha={self.alpha}, elastic_mode={self.elastic_mode!r})")

    def settings(self) -> dict[str, Any]:
        """The effective settings that shape the items (stored with a saved test set)."""
        c = self.cfg
        return {"dataset": "moving_mnist", "scenario": c.scenario, "split": self.split, "seed": self.seed,
                "size": self.size, "mnist": c.mnist, "num_digits": c.num_digits, "image_size": c.image_size,
                "digit_size": c.digit_size, "channels": c.channels, "t_in": c.t_in, "t_out": c.t_out,
                "step_length": c.step_length, "hidden_rows": self.hidden_rows,
                "num_missing": self.num_missing, "elastic_alpha": self.alpha,
                "elastic_sigma": c.elastic_sigma, "elastic_mode": self.elastic_mode}

    # -- random draws ------------------------------------------------------

    def _draw(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        """Per-item random quantities for a batch (B items)."""
        k, d = self.cfg.num_digits, self.cfg.digit_size
        u = per_item_uniforms(_STREAM, self.split, self.seed, indices, sum(self._layout.values()))
        parts = dict(zip(self._layout, u.split(list(self._layout.values()), dim=1)))
        b = len(indices)
        n_pool = self.pool.shape[0]
        draws = {
            "digit": (parts["digit"] * n_pool).long().clamp_(max=n_pool - 1),  # (B, K)
            "start": parts["start"].view(b, k, 2),  # (B, K, 2) as (x, y) in [0, 1]
            "angle": parts["angle"] * (2 * math.pi),  # (B, K)
        }
        if self.num_missing > 0:
            n_starts = self.t_in - self.num_missing - 3  # first missing frame in 2 .. t_in - num_missing - 2
            draws["missing_start"] = 2 + (parts["missing"] * n_starts).long().clamp_(max=n_starts - 1)
        if self.alpha > 0:
            draws["noise"] = parts["noise"].view(b, k, 2, d, d) * 2 - 1  # uniform in [-1, 1)
        return draws

    def elastic_fields(self, indices: Sequence[int]) -> torch.Tensor:
        """Displacement in pixels, (B, K, T, 2, d, d) with channel 0 = dx (columns), 1 = dy (rows).

        The smoothed field is drawn once per digit and sequence and scaled by
        alpha_t, so frame t's field is (1 - t/T) times frame 0's.
        """
        indices = check_indices(indices, len(self))
        if self.alpha <= 0:
            raise DataError(f"{self!r} has no elastic deformation (elastic_alpha = 0)")
        base = self._smoothed(self._draw(indices)["noise"])  # (B, K, 2, d, d)
        return base.unsqueeze(2) * self._alphas.view(1, 1, -1, 1, 1, 1)

    def _smoothed(self, noise: torch.Tensor) -> torch.Tensor:
        # float64 so that BLAS differences between machines cannot reach the rounded pixels
        g = self._smooth
        return (g @ noise.to(torch.float64) @ g.T).to(torch.float32)

    # -- generation --------------------------------------------------------

    def _sprites(self, indices: list[int]) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor]:
        """The draws of the items at `indices`, each digit's sprite on each frame (B, K, T, d, d) uint8,
        its top-left pixel (B, K, T, 2) as (row, col), and its centre (B, T, K, 2) normalised."""
        cfg = self.cfg
        b, k, d, size = len(indices), cfg.num_digits, cfg.digit_size, cfg.image_size
        t_all = self.frames
        draws = self._draw(indices)

        # trajectories, (B, K, T, 2) as (x, y) in [0, 1]
        angle = draws["angle"]
        velocity = torch.stack([torch.cos(angle), torch.sin(angle)], dim=-1) * cfg.step_length
        path = bounce_trajectories(draws["start"], velocity, t_all)
        corner_xy = (path * (size - d)).long()  # truncation: the digit's top-left pixel
        top_left = corner_xy.flip(-1)  # (row, col)
        positions = (corner_xy.to(torch.float32) + d / 2) * (2.0 / size) - 1
        positions = rearrange(positions, "b k t xy -> b t k xy")

        # the digits of each frame, (B, K, T, d, d) uint8
        digits = self.pool[draws["digit"]]  # (B, K, d, d)
        if self.alpha > 0:
            field = self._smoothed(draws["noise"]).view(b * k, 2, d, d)
            # warping 0..255 values lets "+ 0.5, truncate" do the rounding back to uint8
            warped = elastic_warp(digits.view(b * k, d, d).to(torch.float32), field, self._alphas,
                                  mode=self.elastic_mode)
            sprites = truncate_to_uint8(warped.add_(0.5)).view(b, k, t_all, d, d)
        else:
            sprites = digits.unsqueeze(2).expand(b, k, t_all, d, d)
        return draws, sprites, top_left, positions

    def digit_layers(self, indices: Sequence[int]) -> torch.Tensor:
        """Each digit drawn alone, (B, T, K, H, W) float32 in [0, 1]: the true segmentation of the items
        at `indices` (dive/object_metrics.py), out-of-scene frames included."""
        indices = check_indices(indices, len(self))
        _, sprites, top_left, _ = self._sprites(indices)
        size = self.cfg.image_size
        layers = [paste_max(sprites[:, j:j + 1], top_left[:, j:j + 1], size, size) for j in range(sprites.shape[1])]
        return from_uint8(torch.stack(layers, dim=2))

    def batch(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        """The items at `indices`, stacked: every value gets a leading batch dim B."""
        indices = check_indices(indices, len(self))
        cfg = self.cfg
        b, k, size = len(indices), cfg.num_digits, cfg.image_size
        t_in = self.t_in
        draws, sprites, top_left, positions = self._sprites(indices)
        full = paste_max(sprites, top_left, size, size)  # (B, T, H, W)
        observed = full.clone()

        present = torch.ones(b, t_in, k)
        if self.num_missing > 0:
            t = torch.arange(t_in).view(1, t_in, 1)
            first = draws["missing_start"].unsqueeze(1)  # (B, 1, K)
            present = ((t < first) | (t >= first + self.num_missing)).to(torch.float32)
            # only frames that lose a digit need drawing again
            bi, ti = (present == 0).any(dim=-1).nonzero(as_tuple=True)  # (M,), (M,)
            keep = present[bi, ti].to(torch.uint8).view(-1, k, 1, 1, 1)
            redrawn = paste_max(sprites[bi, :, ti].unsqueeze(2) * keep, top_left[bi, :, ti].unsqueeze(2),
                                size, size)  # (M, 1, H, W)
            observed[bi, ti] = redrawn[:, 0]
        visible = torch.ones(b, cfg.channels, size, size)
        if self.hidden_rows > 0:
            observed[:, :, : self.hidden_rows] = 0
            visible[:, :, : self.hidden_rows] = 0

        c = cfg.channels
        return {
            "input": _frames_to_float(observed[:, :t_in], c),
            "target": _frames_to_float(observed[:, t_in:], c),
            "input_full": _frames_to_float(full[:, :t_in], c),
            "target_full": _frames_to_float(full[:, t_in:], c),
            "present": present,
            "visible": visible,
            "positions": positions,
        }

"""Spatial transformer for poses without rotation: placing objects and cropping them.

A pose is (s, tx, ty): the affine map

    [x_obj, y_obj] = [s * x_img + tx, s * y_img + ty]

from normalised image coordinates to normalised object-canvas coordinates
(both in [-1, 1], pixel centres as ``F.affine_grid(..., align_corners=False)``
puts them). The object thus covers the image region of half-width 1/s
centred at (-tx/s, -ty/s).

* ``object_to_image`` places an object: every image pixel samples the object
  canvas at (s x + tx, s y + ty).
* ``compose`` places the k objects of a frame and sums them, each times a
  weight (the presence), without the k separate images in between.
* ``image_to_object`` crops it back: every canvas pixel samples the image at the
  inverse map, x_img = x_obj / s - tx / s, i.e. the pose (1/s, -tx/s, -ty/s).

Without rotation the map is separable, so bilinear sampling with zero padding
is ``out = W_y @ src @ W_x^T`` with one (out, in) interpolation matrix per axis
and item. That equals ``F.affine_grid`` + ``F.grid_sample(mode="bilinear",
padding_mode="zeros", align_corners=False)`` in values and gradients (the
``reference_*`` functions, kept for the tests), but it is two batched
matmuls instead of a gather per output pixel: placing objects (the larger
job: every slot of every frame at full image size) runs about 2.5x faster
forward + backward on CPU; cropping, whose output is smaller than its input,
is about as fast as grid_sample.

With a lower bound on the scale (``min_scale``; DIVE's pose constraint keeps
s >= scale_prior - 1) an object can only touch a window of the image, a
little over H / min_scale pixels on a side: placing then interpolates that
window and pastes it into zeros, cropping cuts that window out before
interpolating. Same values and gradients, less than half the matmul work at
the s3 sizes (window 35 of 64 pixels per axis).

Shapes: n is any flattened batch (the model passes (b t k) items in one
call); S is the object-canvas size, H = W the image size.
"""

from __future__ import annotations

import math

import torch
from einops import rearrange, repeat
from torch import Tensor

_S_MARGIN = 0.5  # translations keep the object centre at least this far (in object units) inside


def constrain_pose(raw: Tensor, scale_prior: float, scale_range: tuple[float, float] = (-1.0, 1.0),
                   position_margin: float = 0.0) -> Tensor:
    """Raw pose (... 3) -> pose (... 3): s clamped to [prior + lo, prior + hi], t = tanh(raw_t) * (s - 0.5).

    (lo, hi) = `scale_range`, (-1, 1) for Moving MNIST. With `position_margin` > 0, tanh(raw_t) is
    clamped to [-1 + margin, 1 - margin] first (the original's pedestrian setting: range (-1, 2.5),
    margin 1/8), which keeps a slot's box that much further inside the frame.
    """
    s = raw[..., :1].clamp(scale_prior + scale_range[0], scale_prior + scale_range[1])
    direction = torch.tanh(raw[..., 1:])
    if position_margin > 0:
        direction = direction.clamp(-1.0 + position_margin, 1.0 - position_margin)
    return torch.cat([s, direction * (s - _S_MARGIN)], dim=-1)


def invert_pose(pose: Tensor) -> Tensor:
    """(s, tx, ty) -> (1/s, -tx/s, -ty/s), the map from object to image coordinates (... 3)."""
    s, t = pose[..., :1], pose[..., 1:]
    return torch.cat([1.0 / s, -t / s], dim=-1)


def _pixel_centres(first: Tensor | int, count: int, size: int, like: Tensor) -> Tensor:
    """Normalised centres of pixels first .. first + count - 1 of a `size`-pixel axis: (count) or (n count)."""
    index = torch.arange(count, device=like.device, dtype=like.dtype)
    if isinstance(first, Tensor):
        index = first[:, None].to(like.dtype) + index
    return (index * 2 + 1) / size - 1


def _source_pixels(scale: Tensor, shift: Tensor, x_out: Tensor, in_size: int) -> Tensor:
    """(n out) positions, in pixels of the input axis, that outputs at normalised `x_out` sample."""
    x_src = scale[:, None] * x_out + shift[:, None]
    return ((x_src + 1) * in_size - 1) / 2


def _interp_matrix(pix: Tensor, in_size: int, in_first: Tensor | None = None, in_count: int | None = None) -> Tensor:
    """Bilinear weights (n out in_count) of input pixels in_first .. in_first + in_count - 1 for samples at `pix`.

    A sample at pixel position u gives weight 1 - frac(u) to pixel floor(u)
    and frac(u) to floor(u) + 1, as grid_sample does (so the gradients agree
    too, also at samples landing exactly on a pixel centre). Pixels outside
    [0, in_size) get no weight: that is the zero padding. The two weights are
    scattered into a zero matrix, which keeps every elementwise op, forward and
    backward, on (n out) tensors rather than (n out in) ones. By default the
    matrix covers the whole input axis; a window (`in_first` (n) long,
    `in_count`) covers part of it, and taps outside the window are dropped.
    """
    # A non-finite pose must give NaN output (for the trainer to skip the step), never an invalid index.
    left = torch.nan_to_num(torch.floor(pix).detach(), nan=-2.0, posinf=in_size + 1.0, neginf=-2.0)
    frac = pix - left
    index = torch.stack([left, left + 1], dim=-1)  # (n out 2)
    inside = (index >= 0) & (index <= in_size - 1)
    if in_first is None:
        in_count = in_size
    else:
        index = index - in_first[:, None, None]
        inside &= (index >= 0) & (index <= in_count - 1)
    weight = torch.stack([1 - frac, frac], dim=-1) * inside.to(frac.dtype)
    index = index.clamp(0, in_count - 1).long()  # out-of-range taps now carry weight 0
    zeros = pix.new_zeros(pix.shape[0], pix.shape[1], in_count)
    return torch.scatter_add(zeros, 2, index, weight)


def _separable(src: Tensor, w_y: Tensor, w_x: Tensor) -> Tensor:
    """w_y @ src @ w_x^T per item and channel: src (n c h w), w_y (n h_out h), w_x (n w_out w) -> (n c h_out w_out).

    Two 3-D batched matmuls with the channels folded into the matrices, so
    that forward and backward stay on contiguous bmm kernels.
    """
    c = src.shape[1]
    rows = torch.bmm(rearrange(src, "n c h w -> n (c h) w"), w_x.transpose(1, 2))  # (n (c h) w_out)
    rows = rearrange(rows, "n (c h) w -> n h (c w)", c=c)
    out = torch.bmm(w_y, rows)  # (n h_out (c w_out))
    return rearrange(out, "n h (c w) -> n c h w", c=c)


def _window(span: float, size: int) -> int | None:
    """Pixels a window must have to hold every non-zero tap of a sampled range `span` pixels long; None: all."""
    # +2: a partial pixel at each end; +1: rounding of the window's first pixel
    count = math.ceil(span) + 3
    return None if count >= size else count


def object_to_image(objects: Tensor, pose: Tensor, out_size: int, min_scale: float | None = None) -> Tensor:
    """Place objects (n c S S) with poses (n 3) into (n c H W) images, H = W = out_size.

    min_scale: a lower bound on every pose's s (DIVE's pose constraint gives
    one). An object then covers at most (1 + 1/S) H / min_scale image pixels
    per axis, and only that window of each image is interpolated, then pasted
    into zeros: the same values, a fraction of the work.
    """
    n, c, h_in, w_in = objects.shape
    count = _placement_window(objects, out_size, min_scale)
    if count is None:
        s, tx, ty = pose.unbind(-1)
        x_out = _pixel_centres(0, out_size, out_size, pose)
        w_y = _interp_matrix(_source_pixels(s, ty, x_out, h_in), h_in)
        w_x = _interp_matrix(_source_pixels(s, tx, x_out, w_in), w_in)
        return _separable(objects, w_y, w_x)
    window, flat = _place_window(objects, pose, out_size, count)
    # in place: the out-of-place scatter would first copy the zeros
    images = objects.new_zeros(n, c, out_size * out_size).scatter_(2, flat, rearrange(window, "n c h w -> n c (h w)"))
    return rearrange(images, "n c (h w) -> n c h w", h=out_size)


def compose(objects: Tensor, pose: Tensor, weight: Tensor, out_size: int, min_scale: float | None = None) -> Tensor:
    """The weighted sum of placed objects: objects (n k c S S), pose (n k 3), weight (n k) -> (n c H W).

    Equal to the sum over k of ``object_to_image(objects, pose) * weight``
    (placing is linear in the object, so the weight is applied to the
    smaller canvas) without the k full-size images in between: each window
    is added into its frame by one ``scatter_add``. On a training step this
    saves the (b T k c H W) slot images, their product with the presence,
    and the backward passes of both and of the sum (docs/studies/speed-round-intel-xeon.md).
    """
    n, k = objects.shape[:2]
    weighted = rearrange(objects * weight[..., None, None, None].to(objects.dtype), "n k c h w -> (n k) c h w")
    flat_pose = rearrange(pose, "n k p -> (n k) p")
    count = _placement_window(objects, out_size, min_scale)
    if count is None:
        return rearrange(object_to_image(weighted, flat_pose, out_size), "(n k) c h w -> n k c h w", k=k).sum(dim=1)
    window, flat = _place_window(weighted, flat_pose, out_size, count)
    # summed in float32 at least: under autocast the windows come out of bfloat16 matmuls
    dtype = torch.promote_types(window.dtype, torch.float32)
    index = rearrange(flat, "(n k) c p -> n c (k p)", k=k)
    values = rearrange(window.to(dtype), "(n k) c h w -> n c (k h w)", k=k)
    images = window.new_zeros(n, objects.shape[2], out_size * out_size, dtype=dtype).scatter_add_(2, index, values)
    return rearrange(images, "n c (h w) -> n c h w", h=out_size)


def _placement_window(objects: Tensor, out_size: int, min_scale: float | None) -> int | None:
    """Pixels per axis of the image window an object (... S S) can touch at scales >= min_scale; None: all."""
    if min_scale is None:
        return None
    return _window((1 + 1 / max(objects.shape[-2:])) * out_size / min_scale, out_size)


def _place_window(objects: Tensor, pose: Tensor, out_size: int, count: int) -> tuple[Tensor, Tensor]:
    """Each object (n c S S) interpolated into its `count` x `count` image window.

    Returns the windows (n c count count) and, for each window value, the
    index of its pixel in the flattened image, (n c (count count)).
    """
    c, h_in, w_in = objects.shape[1:]
    s, tx, ty = pose.unbind(-1)

    def first_pixel(shift: Tensor, in_size: int) -> Tensor:
        # output pixel o samples beyond input pixel -1 for o > ((x_first + 1) out - 1) / 2
        x_first = (-1 - 1 / in_size - shift.detach()) / s.detach()
        first = torch.floor(((x_first + 1) * out_size - 1) / 2)
        return torch.nan_to_num(first, nan=0.0).clamp(0, out_size - count).long()

    y0, x0 = first_pixel(ty, h_in), first_pixel(tx, w_in)
    w_y = _interp_matrix(_source_pixels(s, ty, _pixel_centres(y0, count, out_size, pose), h_in), h_in)
    w_x = _interp_matrix(_source_pixels(s, tx, _pixel_centres(x0, count, out_size, pose), w_in), w_in)
    window = _separable(objects, w_y, w_x)  # (n c count count)
    rows = y0[:, None] + torch.arange(count, device=pose.device)  # (n count)
    cols = x0[:, None] + torch.arange(count, device=pose.device)
    flat = repeat(rows[:, :, None] * out_size + cols[:, None, :], "n h w -> n c (h w)", c=c)
    return window, flat


def image_to_object(images: Tensor, pose: Tensor, obj_size: int, min_scale: float | None = None,
                    per_image: int = 1) -> Tensor:
    """Crop (n c S S) canvases, S = obj_size, out of images (m c H W) at poses (n 3), n = m * per_image.

    min_scale: a lower bound on every pose's s. A crop then reads at most
    (1 - 1/S) H / min_scale image pixels per axis, and only that window of
    each image is cut out (a gather) and interpolated: the same values, a
    fraction of the work.
    per_image: crops per image; poses i * per_image .. (i + 1) * per_image - 1
    crop image i (the k slots of a frame), without k copies of the frames.
    """
    m, c, h_in, w_in = images.shape
    n = pose.shape[0]
    if n != m * per_image:
        raise ValueError(f"image_to_object: expected {m} * {per_image} = {m * per_image} poses for {m} images, got {n}")
    s, tx, ty = invert_pose(pose).unbind(-1)
    x_out = _pixel_centres(0, obj_size, obj_size, pose)
    pix_y, pix_x = _source_pixels(s, ty, x_out, h_in), _source_pixels(s, tx, x_out, w_in)
    count = None if min_scale is None else _window((1 - 1 / obj_size) * max(h_in, w_in) / min_scale,
                                                   min(h_in, w_in))
    if count is None:
        if per_image > 1:
            images = images.repeat_interleave(per_image, dim=0)
        return _separable(images, _interp_matrix(pix_y, h_in), _interp_matrix(pix_x, w_in))

    def first_pixel(pix: Tensor, in_size: int) -> Tensor:
        # the samples grow along the axis (s > 0), so the first one has the leftmost tap
        first = torch.nan_to_num(torch.floor(pix[:, 0].detach()), nan=0.0)
        return first.clamp(0, in_size - count).long()

    y0, x0 = first_pixel(pix_y, h_in), first_pixel(pix_x, w_in)
    rows = y0[:, None] + torch.arange(count, device=pose.device)  # (n count)
    cols = x0[:, None] + torch.arange(count, device=pose.device)
    item = torch.div(torch.arange(n, device=pose.device), per_image, rounding_mode="floor")[:, None, None]
    window = rearrange(images[item, :, rows[:, :, None], cols[:, None, :]], "n h w c -> n c h w")
    return _separable(window, _interp_matrix(pix_y, h_in, y0, count), _interp_matrix(pix_x, w_in, x0, count))


# --------------------------------------------------------------------------- reference (tests only)


def _reference_sample(src: Tensor, pose: Tensor, out_h: int, out_w: int) -> Tensor:
    s, tx, ty = pose.unbind(-1)
    zero = torch.zeros_like(s)
    theta = torch.stack([torch.stack([s, zero, tx], -1), torch.stack([zero, s, ty], -1)], -2)  # (n 2 3)
    grid = torch.nn.functional.affine_grid(theta, [src.shape[0], src.shape[1], out_h, out_w], align_corners=False)
    return torch.nn.functional.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def reference_object_to_image(objects: Tensor, pose: Tensor, out_size: int) -> Tensor:
    """``object_to_image`` through affine_grid + grid_sample."""
    return _reference_sample(objects, pose, out_size, out_size)


def reference_image_to_object(images: Tensor, pose: Tensor, obj_size: int) -> Tensor:
    """``image_to_object`` through affine_grid + grid_sample."""
    return _reference_sample(images, invert_pose(pose), obj_size, obj_size)

"""Pictures for inspecting a model: sequence grids with object boxes, GIFs and line plots.

Everything is drawn with torch and PIL (no plotting library). Shapes: ``t``
frames, ``k`` slots, ``d`` digits, ``c h w`` an image with values in [0, 1];
``n`` any number of images. Colours are RGB triples of floats in [0, 1].

Boxes follow the pose convention of the spatial transformer: a pose
(s, tx, ty) maps normalised image coords p in [-1, 1] (x right, y down, the
``affine_grid`` convention with ``align_corners=False``) to object coords
s * p + t. The object canvas [-1, 1]^2 therefore covers the image square with
centre -t / s and half-size 1 / s.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from einops import rearrange, repeat
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from dive.slots import pose_centres

Color = tuple[float, float, float]

# Slot colours avoid pure red and green, which mean missing / present in the presence strip.
SLOT_COLORS: tuple[Color, ...] = (
    (0.0, 0.8, 1.0),  # cyan
    (1.0, 0.3, 0.85),  # magenta
    (1.0, 0.6, 0.0),  # orange
    (1.0, 1.0, 0.25),  # yellow
    (0.35, 0.45, 1.0),  # blue
    (0.6, 0.4, 0.2),  # brown
)
PRESENT: Color = (0.1, 0.85, 0.2)
MISSING: Color = (0.9, 0.1, 0.1)
BACKGROUND: Color = (0.18, 0.18, 0.18)
BOUNDARY: Color = (1.0, 1.0, 1.0)
LABEL_TAB: Color = (0.6, 0.6, 0.6)

PAD = 2  # between frames and between rows
BOUNDARY_GAP = 6  # between the last input frame and the first future frame
MARGIN = 6  # left column of row tabs (slot colour)
STRIP_H = 6  # height of one presence / label row
STRIP_GAP = 1

# tab10-like line colours for plots, as 0-255 RGB.
PLOT_COLORS = (
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
)


def slot_color(k: int) -> Color:
    return SLOT_COLORS[k % len(SLOT_COLORS)]


# --------------------------------------------------------------------------- boxes


def box_pixels(pose: Tensor, height: int, width: int) -> Tensor:
    """Inclusive pixel bounds of each object's box.

    pose: (n 3). Returns (n 4) long as (x0, y0, x1, y1): the first and last
    column and row the box covers, possibly outside the image. Normalised
    coordinate p becomes the pixel-edge coordinate (p + 1) * size / 2, so pixel
    i spans [i, i + 1); an edge is drawn in the pixel it rounds to.
    """
    centre = pose_centres(pose.float())  # (n 2) as (x, y)
    half = 1.0 / pose[:, :1].float()  # (n 1)
    size = torch.tensor([width, height], dtype=centre.dtype, device=centre.device)
    lo = torch.floor((centre - half + 1) * size / 2 + 0.5)
    hi = torch.floor((centre + half + 1) * size / 2 + 0.5) - 1
    return torch.cat([lo, hi], dim=1).long()


def _to_rgb(frames: Tensor) -> Tensor:
    """(n c h w) with c in {1, 3} -> (n 3 h w) float."""
    frames = frames.float()
    if frames.shape[1] == 1:
        return repeat(frames, "n 1 h w -> n 3 h w")
    if frames.shape[1] != 3:
        raise ValueError(f"expected 1 or 3 channels, got {frames.shape[1]}")
    return frames


def _color_tensor(color: Color | Tensor, n: int, device) -> Tensor:
    """A colour or one colour per image -> (n 3 1 1)."""
    c = torch.as_tensor(color, dtype=torch.float32, device=device)
    if c.dim() == 1:
        c = repeat(c, "rgb -> n rgb", n=n)
    return rearrange(c, "n rgb -> n rgb 1 1")


def draw_boxes(frames: Tensor, pose: Tensor, color: Color | Tensor = SLOT_COLORS[0]) -> Tensor:
    """Draw each object's bounding box as a 1-px rectangle.

    frames: (n c h w) in [0, 1], c = 1 or 3; pose: (n 3); color: one RGB triple
    or (n 3). Returns (n 3 h w); edges outside the image are not drawn.
    """
    rgb = _to_rgb(frames).clone()
    n, _, h, w = rgb.shape
    x0, y0, x1, y1 = (rearrange(v, "n -> n 1 1") for v in box_pixels(pose, h, w).to(rgb.device).unbind(1))
    rows = rearrange(torch.arange(h, device=rgb.device), "h -> 1 h 1")
    cols = rearrange(torch.arange(w, device=rgb.device), "w -> 1 1 w")
    in_rows = (rows >= y0) & (rows <= y1)
    in_cols = (cols >= x0) & (cols <= x1)
    edge = ((cols == x0) | (cols == x1)) & in_rows | ((rows == y0) | (rows == y1)) & in_cols  # (n h w)
    edge = rearrange(edge, "n h w -> n 1 h w")
    return torch.where(edge, _color_tensor(color, n, rgb.device).expand_as(rgb), rgb)


# --------------------------------------------------------------------------- grids


def _frame_x(t: int, t_in: int, width: int) -> int:
    """Left pixel of frame t in a grid row; future frames sit after the boundary gap."""
    return MARGIN + PAD + t * (width + PAD) + (BOUNDARY_GAP if t >= t_in else 0)


def _fill(canvas: Tensor, y: int, x: int, h: int, w: int, color: Color | Tensor) -> None:
    canvas[:, y : y + h, x : x + w] = torch.as_tensor(color, dtype=canvas.dtype).reshape(3, 1, 1)


def sequence_grid(
    gt: Tensor,
    slots: Tensor,
    output: Tensor,
    pose: Tensor,
    presence: Tensor | None = None,
    labels: Tensor | None = None,
    t_in: int | None = None,
    scale: int = 1,
) -> np.ndarray:
    """One picture of a sequence and its decomposition.

    gt: (t c h w) ground truth; slots: (t k c h w) each slot's rendering;
    output: (t c h w); pose: (t k 3); presence: (t_in k) in [0, 1] (hard or
    soft, drawn red = missing to green = present) or None; labels: (t_in d)
    true presence per digit or None; t_in: number of input frames (a white
    line separates them from the future ones; None = no future frames).

    Rows, top to bottom: ground truth, one row per slot with its box in the
    slot's colour (also the tab at the row's left), the output, then a strip of
    small cells per input frame: the slots' presence (tabbed by slot colour)
    and, below a gap, the labels (grey tabs). Returns uint8 (h' w' 3).
    """
    t, k = slots.shape[:2]
    h, w = gt.shape[-2:]
    t_in = t if t_in is None else t_in
    rows_img = 2 + k
    strip_rows = (0 if presence is None else presence.shape[1]) + (0 if labels is None else labels.shape[1])
    strip_h = 0
    if presence is not None:
        strip_h += presence.shape[1] * (STRIP_H + STRIP_GAP) + PAD
    if labels is not None:
        strip_h += labels.shape[1] * (STRIP_H + STRIP_GAP) + PAD
    height = PAD + rows_img * (h + PAD) + strip_h + (PAD if strip_rows else 0)
    width = _frame_x(t - 1, t_in, w) + w + PAD
    canvas = torch.empty(3, height, width)
    _fill(canvas, 0, 0, height, width, BACKGROUND)

    slot_rgb = [draw_boxes(slots[:, j], pose[:, j], slot_color(j)) for j in range(k)]  # each (t 3 h w)
    image_rows = [(_to_rgb(gt), None)] + [(slot_rgb[j], slot_color(j)) for j in range(k)] + [(_to_rgb(output), None)]
    y = PAD
    for frames, tab in image_rows:
        if tab is not None:
            _fill(canvas, y, 1, h, MARGIN - 2, tab)
        for i in range(t):
            x = _frame_x(i, t_in, w)
            canvas[:, y : y + h, x : x + w] = frames[i].clamp(0, 1).cpu()
        y += h + PAD

    def strip(values: Tensor, tab_of) -> None:
        nonlocal y
        values = values.float().clamp(0, 1).cpu()
        green = torch.tensor(PRESENT)
        red = torch.tensor(MISSING)
        for j in range(values.shape[1]):
            _fill(canvas, y, 1, STRIP_H, MARGIN - 2, tab_of(j))
            for i in range(min(values.shape[0], t)):
                p = float(values[i, j])
                _fill(canvas, y, _frame_x(i, t_in, w), STRIP_H, w, p * green + (1 - p) * red)
            y += STRIP_H + STRIP_GAP
        y += PAD

    if presence is not None:
        strip(presence, slot_color)
    if labels is not None:
        strip(labels, lambda j: LABEL_TAB)

    if t_in < t:
        line_x = _frame_x(t_in, t_in, w) - PAD - BOUNDARY_GAP // 2 - 1
        _fill(canvas, 0, line_x, height, 2, BOUNDARY)

    out = (rearrange(canvas, "c h w -> h w c") * 255).round().to(torch.uint8).numpy()
    if scale > 1:
        out = out.repeat(scale, axis=0).repeat(scale, axis=1)
    return out


def tensorboard_grid(*args, **kwargs) -> Tensor:
    """`sequence_grid` as a float (3 h' w') tensor in [0, 1], for ``SummaryWriter.add_image``."""
    arr = sequence_grid(*args, **kwargs)
    return rearrange(torch.from_numpy(arr).float() / 255.0, "h w c -> c h w")


def animation_frames(
    gt: Tensor, slots: Tensor, output: Tensor, pose: Tensor, t_in: int | None = None, scale: int = 2
) -> list[np.ndarray]:
    """One picture per time step: ground truth | each slot with its box | output, side by side.

    gt, output: (t c h w); slots: (t k c h w); pose: (t k 3). A bar above the
    images grows with time, grey over input frames and white over future ones,
    so a viewer can tell reconstruction from prediction. Returns t arrays
    uint8 (h' w' 3).
    """
    t, k = slots.shape[:2]
    h, w = gt.shape[-2:]
    t_in = t if t_in is None else t_in
    bar = 3
    panels = [_to_rgb(gt)] + [draw_boxes(slots[:, j], pose[:, j], slot_color(j)) for j in range(k)] + [_to_rgb(output)]
    n = len(panels)
    height = bar + 2 * PAD + h
    width = PAD + n * (w + PAD)
    frames = []
    for i in range(t):
        canvas = torch.empty(3, height, width)
        _fill(canvas, 0, 0, height, width, BACKGROUND)
        for j, panel in enumerate(panels):
            x = PAD + j * (w + PAD)
            canvas[:, bar + PAD : bar + PAD + h, x : x + w] = panel[i].clamp(0, 1).cpu()
        filled_in = round(width * min(i + 1, t_in) / t)
        _fill(canvas, 0, 0, bar, filled_in, (0.55, 0.55, 0.55))
        if i >= t_in:
            filled = round(width * (i + 1) / t)
            _fill(canvas, 0, filled_in, bar, filled - filled_in, BOUNDARY)
        arr = (rearrange(canvas, "c h w -> h w c") * 255).round().to(torch.uint8).numpy()
        frames.append(arr.repeat(scale, axis=0).repeat(scale, axis=1) if scale > 1 else arr)
    return frames


# --------------------------------------------------------------------------- files


def _as_uint8_hwc(array: np.ndarray | Tensor) -> np.ndarray:
    """uint8 (h w 3) / (h w), or a float tensor (c h w) in [0, 1] -> uint8 numpy."""
    if isinstance(array, Tensor):
        arr = array.detach().cpu()
        if arr.dim() == 3 and arr.shape[0] in (1, 3):
            arr = rearrange(arr, "c h w -> h w c")
        if arr.is_floating_point():
            arr = (arr.clamp(0, 1) * 255).round().to(torch.uint8)
        array = arr.numpy()
    array = np.asarray(array)
    if array.dtype != np.uint8:
        raise TypeError(f"expected uint8 pixels, got {array.dtype}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    return array


def save_png(array: np.ndarray | Tensor, path: str | Path) -> Path:
    """Write an image (uint8 h w 3 or h w, or a float c h w tensor) as PNG; parent folders are created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_as_uint8_hwc(array)).save(path, format="PNG")
    return path


def save_gif(frames: Sequence[np.ndarray], path: str | Path, fps: float = 4.0) -> Path:
    """Write uint8 (h w 3) frames as a looping animated GIF.

    GIF writers merge consecutive identical frames into one longer frame, so the
    stored frame count can be lower when the video stands still.
    """
    if not frames:
        raise ValueError("no frames to write")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    images = [Image.fromarray(_as_uint8_hwc(f)) for f in frames]
    images[0].save(
        path,
        format="GIF",
        save_all=True,
        append_images=images[1:],
        duration=max(1, round(1000 / fps)),
        loop=0,
    )
    return path


# --------------------------------------------------------------------------- line plots


def _font(size: int = 12) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()


def nice_ticks(lo: float, hi: float, target: int = 6) -> list[float]:
    """Round tick values (1, 2, 2.5 or 5 times a power of ten) covering [lo, hi]."""
    if not math.isfinite(lo) or not math.isfinite(hi):
        return [0.0, 1.0]
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / max(1, target - 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw - 1e-12)
    start = math.floor(lo / step + 1e-9) * step
    ticks = []
    v = start
    while v < hi + step * 0.999:
        ticks.append(round(v, 12))
        v += step
    return ticks


def _tick_label(v: float, step: float) -> str:
    decimals = max(0, -math.floor(math.log10(step) + 1e-9)) if step > 0 else 0
    if step * 10**decimals % 1 > 1e-6:  # steps such as 2.5 need one more digit
        decimals += 1
    return f"{v:.{decimals}f}"


def plot_curves(
    curves: dict[str, Sequence[float] | tuple[Sequence[float], Sequence[float]]],
    path: str | Path,
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
    x: Sequence[float] | None = None,
    vline: float | None = None,
    vline_label: str | None = None,
    size: tuple[int, int] = (640, 400),
) -> Path:
    """Line plot of named curves, written as PNG.

    curves: name -> y values, all the same length, at the shared `x` (default
    0, 1, ...); or name -> (xs, ys), a curve with its own x values (then `x`
    is not used for it). vline: x position of a dashed vertical line (e.g.
    between reconstruction and prediction frames), labelled with
    ``vline_label``. NaN values break a line.
    """
    if not curves:
        raise ValueError("no curves to plot")
    shared = [v for v in curves.values() if not isinstance(v, tuple)]
    lengths = {len(v) for v in shared}
    if len(lengths) > 1:
        raise ValueError(f"curves differ in length: {sorted(lengths)}")
    n_shared = lengths.pop() if lengths else 0
    xs_shared = [float(v) for v in (x if x is not None else range(n_shared))]
    if shared and len(xs_shared) != n_shared:
        raise ValueError(f"{len(xs_shared)} x values for curves of length {n_shared}")
    series: dict[str, tuple[list[float], list[float]]] = {}
    for name, vals in curves.items():
        if isinstance(vals, tuple):
            cx, cy = vals
            if len(cx) != len(cy):
                raise ValueError(f"curve {name!r}: {len(cx)} x values for {len(cy)} y values")
            series[name] = ([float(v) for v in cx], [float(v) for v in cy])
        else:
            series[name] = (xs_shared, [float(v) for v in vals])
    xs = [v for cx, _ in series.values() for v in cx]
    if not xs:
        raise ValueError("the curves have no points")
    n = max(len(cx) for cx, _ in series.values())

    width, height = size
    font, title_font = _font(12), _font(14)
    left, right, top, bottom = 70, 20, 34 if title else 16, 48 if xlabel else 32
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)

    finite = [v for _, ys in series.values() for v in ys if math.isfinite(v)]
    y_lo, y_hi = (min(finite), max(finite)) if finite else (0.0, 1.0)
    if y_hi - y_lo < 1e-12:
        pad = abs(y_lo) * 0.1 or 1.0
        y_lo, y_hi = y_lo - pad, y_hi + pad
    y_ticks = nice_ticks(y_lo, y_hi)
    y_lo, y_hi = y_ticks[0], y_ticks[-1]
    x_lo, x_hi = min(xs), max(xs)
    if vline is not None:
        x_lo, x_hi = min(x_lo, vline), max(x_hi, vline)
    if x_hi - x_lo < 1e-12:
        x_lo, x_hi = x_lo - 1, x_hi + 1
    x_ticks = [v for v in nice_ticks(x_lo, x_hi, target=min(11, max(2, n))) if x_lo - 1e-9 <= v <= x_hi + 1e-9]

    px0, px1, py0, py1 = left, width - right, top, height - bottom

    def to_px(xv: float, yv: float) -> tuple[float, float]:
        return (
            px0 + (xv - x_lo) / (x_hi - x_lo) * (px1 - px0),
            py1 - (yv - y_lo) / (y_hi - y_lo) * (py1 - py0),
        )

    # Grid, ticks and tick labels.
    y_step = y_ticks[1] - y_ticks[0] if len(y_ticks) > 1 else 1.0
    for v in y_ticks:
        _, py = to_px(x_lo, v)
        draw.line([(px0, py), (px1, py)], fill=(230, 230, 230))
        draw.line([(px0 - 4, py), (px0, py)], fill="black")
        label = _tick_label(v, y_step)
        draw.text((px0 - 6, py), label, fill="black", font=font, anchor="rm")
    x_step = x_ticks[1] - x_ticks[0] if len(x_ticks) > 1 else 1.0
    for v in x_ticks:
        px, _ = to_px(v, y_lo)
        draw.line([(px, py0), (px, py1)], fill=(240, 240, 240))
        draw.line([(px, py1), (px, py1 + 4)], fill="black")
        draw.text((px, py1 + 6), _tick_label(v, x_step), fill="black", font=font, anchor="mt")
    draw.rectangle([px0, py0, px1, py1], outline="black")

    if vline is not None:
        vx, _ = to_px(vline, y_lo)
        y = py0
        while y < py1:
            draw.line([(vx, y), (vx, min(y + 6, py1))], fill=(90, 90, 90), width=1)
            y += 10
        if vline_label:
            draw.text((vx + 4, py0 + 4), vline_label, fill=(90, 90, 90), font=font, anchor="lt")

    for i, (name, (cx, cy)) in enumerate(series.items()):
        color = PLOT_COLORS[i % len(PLOT_COLORS)]
        segment: list[tuple[float, float]] = []
        for xv, yv in zip(cx, cy):
            if not math.isfinite(yv):
                if len(segment) > 1:
                    draw.line(segment, fill=color, width=2)
                segment = []
                continue
            point = to_px(xv, yv)
            segment.append(point)
            if n <= 40:
                draw.ellipse([point[0] - 2, point[1] - 2, point[0] + 2, point[1] + 2], fill=color)
        if len(segment) > 1:
            draw.line(segment, fill=color, width=2)

    # Legend in the top-right corner of the plot area.
    names = list(curves)
    line_h = 16
    text_w = max(draw.textlength(name, font=font) for name in names)
    lw, lh = 30 + text_w + 10, line_h * len(names) + 8
    lx1, ly0 = px1 - 8, py0 + 8
    lx0 = lx1 - lw
    draw.rectangle([lx0, ly0, lx1, ly0 + lh], fill="white", outline=(160, 160, 160))
    for i, name in enumerate(names):
        cy = ly0 + 4 + line_h * i + line_h / 2
        color = PLOT_COLORS[i % len(PLOT_COLORS)]
        draw.line([(lx0 + 6, cy), (lx0 + 26, cy)], fill=color, width=2)
        draw.text((lx0 + 32, cy), name, fill="black", font=font, anchor="lm")

    if title:
        draw.text(((px0 + px1) / 2, 8), title, fill="black", font=title_font, anchor="mt")
    if xlabel:
        draw.text(((px0 + px1) / 2, height - 8), xlabel, fill="black", font=font, anchor="mb")
    if ylabel:
        tw = int(draw.textlength(ylabel, font=font)) + 4
        label_img = Image.new("RGB", (tw, 16), "white")
        ImageDraw.Draw(label_img).text((2, 8), ylabel, fill="black", font=font, anchor="lm")
        label_img = label_img.rotate(90, expand=True)
        img.paste(label_img, (4, int((py0 + py1) / 2 - tw / 2)))

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="PNG")
    return path

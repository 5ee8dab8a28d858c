import numpy as np
import pytest
import torch
from PIL import Image

from dive import viz


def test_box_pixels_for_known_poses():
    # s = 2: the object covers half the image; centre 0 -> pixels 16..47 of 64.
    # tx = -0.5 moves the centre to x = 0.25 -> columns 24..55.
    pose = torch.tensor([[2.0, 0.0, 0.0], [2.0, -0.5, 0.0]])
    assert viz.box_pixels(pose, 64, 64).tolist() == [[16, 16, 47, 47], [24, 16, 55, 47]]


def test_draw_boxes_marks_expected_pixels():
    frames = torch.zeros(2, 1, 64, 64)
    pose = torch.tensor([[2.0, 0.0, 0.0], [2.0, -0.5, 0.0]])
    out = viz.draw_boxes(frames, pose, (1.0, 0.0, 0.0))
    assert out.shape == (2, 3, 64, 64) and out.dtype == torch.float32
    red = (out[:, 0] == 1) & (out[:, 1] == 0)  # (n h w)
    expected = torch.zeros(64, 64, dtype=torch.bool)
    expected[16, 16:48] = expected[47, 16:48] = True
    expected[16:48, 16] = expected[16:48, 47] = True
    assert torch.equal(red[0], expected)
    assert red[1, 16, 24] and red[1, 30, 55] and red[1, 47, 40]
    assert not red[1, 30, 23] and not red[1, 30, 56] and not red[1, 30, 40]
    # Box edges outside the image are skipped, the rest is drawn.
    part = viz.draw_boxes(frames[:1], torch.tensor([[2.0, -1.5, 0.0]]), (1.0, 0.0, 0.0))
    assert part[0, 0, 16, 63] == 1 and part[0, 0, 30, 63] == 0 and part[0, 0, 30, 47] == 0


def _sequence(t=6, k=2, h=32, w=32):
    torch.manual_seed(0)
    gt = torch.rand(t, 1, h, w)
    slots = torch.rand(t, k, 1, h, w)
    output = torch.rand(t, 1, h, w)
    pose = torch.tensor([2.0, 0.0, 0.0]).expand(t, k, 3)
    return gt, slots, output, pose


def test_sequence_grid_shape_and_dtype():
    gt, slots, output, pose = _sequence()
    t, k, h, w, t_in = 6, 2, 32, 32, 4
    presence = torch.ones(t_in, k)
    presence[2, 1] = 0
    labels = torch.ones(t_in, 3)
    grid = viz.sequence_grid(gt, slots, output, pose, presence, labels, t_in=t_in)
    width = viz.MARGIN + viz.PAD + t * (w + viz.PAD) + viz.BOUNDARY_GAP
    height = viz.PAD + (k + 2) * (h + viz.PAD) + (k + 3) * (viz.STRIP_H + viz.STRIP_GAP) + 3 * viz.PAD
    assert grid.dtype == np.uint8 and grid.shape == (height, width, 3)
    # The missing cell is red, a present one green.
    strip_y = viz.PAD + (k + 2) * (h + viz.PAD) + (viz.STRIP_H + viz.STRIP_GAP) + 1
    x_missing = viz.MARGIN + viz.PAD + 2 * (w + viz.PAD) + 5
    assert tuple(grid[strip_y, x_missing]) == tuple(round(255 * c) for c in viz.MISSING)
    assert tuple(grid[strip_y, x_missing - (w + viz.PAD)]) == tuple(round(255 * c) for c in viz.PRESENT)

    plain = viz.sequence_grid(gt, slots, output, pose, None, None, t_in=t_in, scale=2)
    assert plain.shape == (2 * (viz.PAD + (k + 2) * (h + viz.PAD)), 2 * width, 3)

    tb = viz.tensorboard_grid(gt, slots, output, pose, presence, labels, t_in=t_in)
    assert tb.shape == (3, height, width) and tb.dtype == torch.float32
    assert 0 <= tb.min() and tb.max() <= 1


def test_save_png_and_gif(tmp_path):
    gt, slots, output, pose = _sequence()
    grid = viz.sequence_grid(gt, slots, output, pose, t_in=4)
    png = viz.save_png(grid, tmp_path / "sub" / "grid.png")
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size == (grid.shape[1], grid.shape[0])
    viz.save_png(torch.rand(3, 10, 12), tmp_path / "tensor.png")
    with Image.open(tmp_path / "tensor.png") as im:
        assert im.size == (12, 10)

    frames = viz.animation_frames(gt, slots, output, pose, t_in=4, scale=2)
    assert len(frames) == 6
    assert frames[0].dtype == np.uint8 and frames[0].shape[2] == 3
    assert frames[0].shape[1] == 2 * (viz.PAD + 4 * (32 + viz.PAD))  # gt | 2 slots | output
    gif = viz.save_gif(frames, tmp_path / "seq.gif", fps=5)
    with Image.open(gif) as im:
        assert im.format == "GIF" and im.n_frames == 6
        assert im.size == (frames[0].shape[1], frames[0].shape[0])
        assert im.info["duration"] == 200


def test_plot_curves(tmp_path):
    curves = {"rec": [30.0, 28.0, 27.5, float("nan"), 26.0], "pred": [60.0, 62.0, 65.0, 70.0, 71.0]}
    path = viz.plot_curves(curves, tmp_path / "mse.png", "MSE", "frame", "MSE", x=[1, 2, 3, 4, 5], vline=2.5)
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == (640, 400)
        arr = np.asarray(im.convert("RGB"))
    assert (arr != 255).any(axis=2).mean() > 0.01  # something was drawn
    # The first curve's colour is present.
    assert (np.abs(arr.astype(int) - np.array(viz.PLOT_COLORS[0])).sum(axis=2) == 0).any()
    with pytest.raises(ValueError):
        viz.plot_curves({"a": [1.0], "b": [1.0, 2.0]}, tmp_path / "bad.png")


def test_nice_ticks():
    assert viz.nice_ticks(0.0, 10.0) == [0.0, 2.0, 4.0, 6.0, 8.0, 10.0]
    ticks = viz.nice_ticks(0.13, 0.91)
    assert ticks[0] <= 0.13 and ticks[-1] >= 0.91

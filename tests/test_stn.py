"""Separable spatial transformer against the affine_grid + grid_sample reference."""

import pytest
import torch

from dive.nn.stn import (
    constrain_pose,
    image_to_object,
    invert_pose,
    object_to_image,
    reference_image_to_object,
    reference_object_to_image,
)

ATOL = 1e-5


def random_poses(n: int, generator: torch.Generator, scale=(1.2, 4.5), shift=3.0) -> torch.Tensor:
    """Poses (n 3) with scales in `scale` and shifts up to `shift`: many lie partly or wholly outside."""
    s = torch.empty(n, 1, dtype=torch.float64).uniform_(*scale, generator=generator)
    t = torch.empty(n, 2, dtype=torch.float64).uniform_(-shift, shift, generator=generator)
    return torch.cat([s, t], dim=-1)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("direction", ["place", "crop"])
def test_matches_grid_sample_in_values_and_gradients(direction, channels):
    g = torch.Generator().manual_seed(channels)
    n = 48
    pose = random_poses(n, g).requires_grad_()
    if direction == "place":
        src = torch.rand(n, channels, 32, 32, dtype=torch.float64, generator=g).requires_grad_()
        out, ref = object_to_image(src, pose, 64), reference_object_to_image(src, pose, 64)
    else:
        src = torch.rand(n, channels, 64, 64, dtype=torch.float64, generator=g).requires_grad_()
        out, ref = image_to_object(src, pose, 32), reference_image_to_object(src, pose, 32)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=0)

    upstream = torch.randn(out.shape, dtype=torch.float64, generator=g)
    grads = torch.autograd.grad(out, (src, pose), upstream)
    ref_grads = torch.autograd.grad(ref, (src, pose), upstream)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=1e-5)
    assert grads[1].abs().sum() > 0


def test_float32_matches_reference():
    g = torch.Generator().manual_seed(3)
    pose = random_poses(32, g).float()
    obj = torch.rand(32, 1, 32, 32, generator=g)
    torch.testing.assert_close(object_to_image(obj, pose, 64), reference_object_to_image(obj, pose, 64),
                               atol=ATOL, rtol=0)


def test_zero_padding_outside_the_canvas():
    obj = torch.ones(2, 1, 32, 32, dtype=torch.float64)
    # s = 4: the object covers a quarter of the width; centred at x = -tx / s.
    pose = torch.tensor([[4.0, 0.0, 0.0], [4.0, 3.5, 0.0]], dtype=torch.float64)
    img = object_to_image(obj, pose, 64)
    # Centred object: rows/columns 24..39 are inside (half-width 64 / 8 = 8 px), the rest is 0.
    assert img[0, 0, 32, 32] == 1 and img[0, 0, 0, 0] == 0 and img[0, 0, 32, 5] == 0
    assert torch.equal(img[0, 0, :, :23], torch.zeros(64, 23, dtype=torch.float64))
    # Centre at x = -0.875: the object hangs over the left border; the right part of the image is empty.
    assert img[1, 0, 32, 0] == 1 and torch.equal(img[1, 0, :, 16:], torch.zeros(64, 48, dtype=torch.float64))
    # Cropping fully outside the image gives zeros.
    crop = image_to_object(torch.ones(1, 1, 64, 64), torch.tensor([[2.0, 5.0, 5.0]]), 32)
    assert torch.equal(crop, torch.zeros(1, 1, 32, 32))


def test_crop_of_placement_is_identity_for_aligned_poses():
    g = torch.Generator().manual_seed(4)
    obj = torch.rand(6, 1, 32, 32, dtype=torch.float64, generator=g)
    # s = 2 maps object pixels 1:1 onto image pixels; shifts of whole object pixels (2/32)
    # with |tx| <= s - 1 keep the object inside the frame.
    steps = torch.tensor([0, 3, -5, 8, -16, 16], dtype=torch.float64)
    pose = torch.stack([torch.full((6,), 2.0, dtype=torch.float64), steps * 2 / 32, -steps.flip(0) * 2 / 32], -1)
    back = image_to_object(object_to_image(obj, pose, 64), pose, 32)
    torch.testing.assert_close(back, obj, atol=1e-12, rtol=0)


def test_crop_of_placement_is_close_for_smooth_objects():
    g = torch.Generator().manual_seed(5)
    n = 16
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 32), torch.linspace(-1, 1, 32), indexing="ij")
    centres = torch.rand(n, 2, generator=g) - 0.5
    obj = torch.exp(-((xx - centres[:, :1, None]) ** 2 + (yy - centres[:, 1:, None]) ** 2) / 0.3)[:, None]
    s = torch.empty(n, 1).uniform_(1.5, 2.0, generator=g)  # object drawn at least as large as its canvas
    t = (torch.rand(n, 2, generator=g) * 2 - 1) * (s - 1)  # object entirely inside the frame
    pose = torch.cat([s, t], -1)
    back = image_to_object(object_to_image(obj, pose, 64), pose, 32)
    # The outermost canvas pixels are blended with the zero padding on the way in.
    inner = (slice(None), slice(None), slice(2, -2), slice(2, -2))
    assert (back - obj)[inner].abs().max() < 0.02


def test_non_finite_pose_gives_nan_not_an_index_error():
    pose = torch.tensor([[float("nan"), 0.0, 0.0], [2.0, float("inf"), 0.0], [2.0, 0.0, 0.0]])
    out = object_to_image(torch.rand(3, 1, 32, 32), pose, 64)
    assert out[0].isnan().all() and out[1].isnan().any() and out[2].isfinite().all()


def test_invert_pose_round_trip():
    pose = torch.tensor([[3.0, 0.5, -1.0], [2.5, -2.0, 0.25]])
    torch.testing.assert_close(invert_pose(invert_pose(pose)), pose)


def test_constrain_pose_ranges():
    raw = torch.tensor([[10.0, 100.0, -100.0], [-10.0, 0.0, 0.3], [3.2, 0.1, 0.0]])
    pose = constrain_pose(raw, scale_prior=3.0)
    assert pose[0, 0] == 4.0 and pose[1, 0] == 2.0 and pose[2, 0] == pytest.approx(3.2)
    torch.testing.assert_close(pose[0, 1:], torch.tensor([3.5, -3.5]))  # |t| <= s - 0.5
    torch.testing.assert_close(pose[1, 1:], torch.tanh(torch.tensor([0.0, 0.3])) * 1.5)
    assert (pose[:, 1:].abs() <= pose[:, :1] - 0.5 + 1e-6).all()


def test_constrain_pose_pedestrian_range_and_margin():
    # the original's pedestrian constraint: s in [prior - 1, prior + 2.5], tanh clamped to +-(1 - 1/8)
    raw = torch.tensor([[10.0, 100.0, -100.0], [-10.0, 0.0, 0.3], [4.0, 0.1, -0.2]], requires_grad=True)
    pose = constrain_pose(raw, 3.5, scale_range=(-1.0, 2.5), position_margin=0.125)
    assert pose[0, 0] == 6.0 and pose[1, 0] == 2.5 and pose[2, 0] == 4.0
    torch.testing.assert_close(pose[0, 1:], torch.tensor([0.875, -0.875]) * 5.5)
    torch.testing.assert_close(pose[2, 1:], torch.tanh(torch.tensor([0.1, -0.2])) * 3.5)
    pose[:, 1:].sum().backward()
    assert (raw.grad[0, 1:] == 0).all() and (raw.grad[2, 1:] != 0).all()  # the clamp passes no gradient
    # no margin and the default range: exactly the Moving MNIST constraint
    torch.testing.assert_close(constrain_pose(raw, 3.0, (-1.0, 1.0), 0.0), constrain_pose(raw, 3.0))

"""The windowed spatial transformer (min_scale given) computes exactly what the full one computes, and
compose exactly what placing every object and summing computes."""

import pytest
import torch
from einops import rearrange

from dive.nn.stn import compose, image_to_object, object_to_image


def poses(n: int, min_scale: float, generator: torch.Generator) -> torch.Tensor:
    """Scales from min_scale (the tightest window) up; shifts that put many objects across or beyond the border."""
    s = min_scale + torch.rand(n, 1, dtype=torch.float64, generator=generator) * 2
    s[: n // 4] = min_scale
    t = (torch.rand(n, 2, dtype=torch.float64, generator=generator) * 2 - 1) * (s + 1)
    return torch.cat([s, t], dim=-1)


@pytest.mark.parametrize("min_scale", [2.0, 2.5, 1.2])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("direction", ["place", "crop"])
def test_window_matches_full_transform(direction, channels, min_scale):
    g = torch.Generator().manual_seed(channels)
    n = 64
    pose = poses(n, min_scale, g).requires_grad_()
    if direction == "place":
        src = torch.rand(n, channels, 32, 32, dtype=torch.float64, generator=g).requires_grad_()
        full, windowed = object_to_image(src, pose, 64), object_to_image(src, pose, 64, min_scale=min_scale)
    else:
        src = torch.rand(n, channels, 64, 64, dtype=torch.float64, generator=g).requires_grad_()
        full, windowed = image_to_object(src, pose, 32), image_to_object(src, pose, 32, min_scale=min_scale)
    torch.testing.assert_close(windowed, full, atol=1e-12, rtol=0)
    upstream = torch.randn(full.shape, dtype=torch.float64, generator=g)
    for a, b in zip(torch.autograd.grad(windowed, (src, pose), upstream),
                    torch.autograd.grad(full, (src, pose), upstream)):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


def test_window_keeps_non_finite_poses_visible():
    pose = torch.tensor([[float("nan"), 0.0, 0.0], [2.0, float("inf"), 0.0], [2.0, 0.0, 0.0]])
    out = object_to_image(torch.rand(3, 1, 32, 32), pose, 64, min_scale=2.0)
    assert out[0].isnan().any() and out[1].isnan().any() and out[2].isfinite().all()
    crop = image_to_object(torch.rand(3, 1, 64, 64), pose, 32, min_scale=2.0)
    assert crop[0].isnan().any() and crop[1].isnan().any() and crop[2].isfinite().all()


@pytest.mark.parametrize("min_scale", [None, 2.0])
@pytest.mark.parametrize("channels", [1, 3])
def test_compose_is_the_weighted_sum_of_placed_objects(channels, min_scale):
    g = torch.Generator().manual_seed(3)
    n, k = 16, 3
    objects = torch.rand(n, k, channels, 32, 32, dtype=torch.float64, generator=g).requires_grad_()
    pose = rearrange(poses(n * k, min_scale or 2.0, g), "(n k) p -> n k p", k=k).requires_grad_()
    weight = torch.rand(n, k, dtype=torch.float64, generator=g).requires_grad_()
    placed = object_to_image(rearrange(objects, "n k c h w -> (n k) c h w"), rearrange(pose, "n k p -> (n k) p"),
                             64, min_scale=min_scale)
    want = (rearrange(placed, "(n k) c h w -> n k c h w", k=k) * weight[..., None, None, None]).sum(dim=1)
    got = compose(objects, pose, weight, 64, min_scale=min_scale)
    assert got.shape == (n, channels, 64, 64) and got.abs().max() > 0.1
    torch.testing.assert_close(got, want, atol=1e-12, rtol=0)
    upstream = torch.randn(want.shape, dtype=torch.float64, generator=g)
    for a, b in zip(torch.autograd.grad(got, (objects, pose, weight), upstream),
                    torch.autograd.grad(want, (objects, pose, weight), upstream)):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("min_scale", [None, 2.0])
def test_crops_per_image_match_crops_of_repeated_images(min_scale):
    """per_image = k crops image i at poses i k .. i k + k - 1, as k copies of the images would."""
    g = torch.Generator().manual_seed(5)
    m, k = 12, 3
    images = torch.rand(m, 2, 64, 64, dtype=torch.float64, generator=g).requires_grad_()
    pose = poses(m * k, 2.0, g).requires_grad_()
    got = image_to_object(images, pose, 32, min_scale=min_scale, per_image=k)
    want = image_to_object(images.repeat_interleave(k, dim=0), pose, 32, min_scale=min_scale)
    assert got.shape == (m * k, 2, 32, 32) and got.abs().max() > 0.1
    torch.testing.assert_close(got, want, atol=1e-12, rtol=0)
    upstream = torch.randn(got.shape, dtype=torch.float64, generator=g)
    for a, b in zip(torch.autograd.grad(got, (images, pose), upstream), torch.autograd.grad(want, (images, pose), upstream)):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)
    with pytest.raises(ValueError, match="expected 12 \\* 2 = 24 poses for 12 images, got 36"):
        image_to_object(images, pose, 32, min_scale=min_scale, per_image=2)

"""DCGAN-style conv stacks: frame encoder, object encoder, object decoder.

An encoder halves the map with 4x4 stride-2 convs, doubling the width from
`conv_width`, until the map is 4x4; a 4x4 valid conv then maps it to a vector.
The decoder is its mirror image. The depth therefore follows the input size:
a 64x64 frame takes 4 stride-2 layers, a 32x32 object canvas 3, a 256x256
frame 6. Convs carry no bias because batch norm follows most of them.

The conv weights are stored channels-last, which makes the convolutions
(and so their outputs) run channels-last: on CPU that made a training step
about 10 % faster (docs/model.md, "Speed"); on GPU it is the layout the
tensor-core kernels prefer under autocast.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from .init import dcgan_init_


def num_halvings(size: int) -> int:
    """Stride-2 layers that take a `size` x `size` map down to 4x4."""
    n = math.log2(size / 4) if size >= 8 else -1.0
    if n < 1 or not n.is_integer():
        raise ValueError(f"image/object size must be 4 * 2**n with n >= 1 (8, 16, 32, 64, ...), got {size}")
    return int(n)


class _MapToVector(nn.Conv2d):
    """The encoders' last layer: a 4x4 valid conv of a 4x4 map, which is a linear map of the flattened map.

    Run as one matmul: the conv kernels take several times longer for this
    shape, forward and backward. The parameter is the conv's, so checkpoints
    and initialisation do not change. Flattening in (h w c) order keeps both
    the channels-last input and the channels-last weight views, not copies.
    """

    def forward(self, x: Tensor) -> Tensor:
        """x (n c 4 4) -> (n d 1 1)."""
        flat = F.linear(rearrange(x, "n c h w -> n (h w c)"), rearrange(self.weight, "d c h w -> d (h w c)"))
        return rearrange(flat, "n d -> n d 1 1")


class _VectorToMap(nn.ConvTranspose2d):
    """The decoder's first layer: a 4x4 transposed conv of a 1x1 map, i.e. a linear map to a 4x4 map.

    Run as one matmul, like `_MapToVector`; the (h w c) order makes the
    output a channels-last view.
    """

    def forward(self, z: Tensor) -> Tensor:
        """z (n a 1 1) -> (n c 4 4)."""
        h, w = self.kernel_size
        flat = rearrange(z, "n a 1 1 -> n a") @ rearrange(self.weight, "a c h w -> a (h w c)")
        return rearrange(flat, "n (h w c) -> n c h w", h=h, w=w)


class _UpsampleToImage(nn.ConvTranspose2d):
    """The decoder's last layer (4x4, stride 2, padding 1), computed as a stride-1 transposed conv and a pixel shuffle.

    Output pixel 2i - 1 + k receives input pixel i through kernel tap k, so
    the taps split by parity into a 2x2 kernel per output phase: a stride-1
    transposed conv with 4x the output channels, one per phase (p, q),
    interleaved by `pixel_shuffle`; cropping one pixel per side is the
    padding. Same parameter, same values. Used when the output has a single
    channel: oneDNN's strided kernel for that shape took 31 ms forward at
    batch 64 on the 2-core benchmark machine, this form 13 ms (forward +
    backward 39 -> 26 ms); with 3 channels the strided kernel is faster.
    """

    def forward(self, x: Tensor) -> Tensor:
        """x (n c h w) -> (n c_out 2h 2w)."""
        phases = rearrange(self.weight, "c_in c_out (ky p) (kx q) -> c_in (c_out p q) ky kx", p=2, q=2)
        return F.pixel_shuffle(F.conv_transpose2d(x, phases), 2)[..., 1:-1, 1:-1]


def _conv_stack(channels: int, size: int, out_dim: int, width: int) -> nn.Sequential:
    """(N, channels, size, size) -> (N, out_dim, 1, 1)."""
    layers: list[nn.Module] = []
    c_in, c_out = channels, width
    for i in range(num_halvings(size)):
        layers.append(nn.Conv2d(c_in, c_out, 4, 2, 1, bias=False))
        if i > 0:
            layers.append(nn.BatchNorm2d(c_out))
        layers.append(nn.LeakyReLU(0.2, inplace=True))
        c_in, c_out = c_out, c_out * 2
    layers.append(_MapToVector(c_in, out_dim, 4, 1, 0, bias=False))
    return nn.Sequential(*layers)


class _Encoder(nn.Module):
    def __init__(self, channels: int, size: int, out_dim: int, width: int):
        super().__init__()
        self.size = size
        self.net = _conv_stack(channels, size, out_dim, width)
        dcgan_init_(self)
        self.to(memory_format=torch.channels_last)

    def forward(self, x: Tensor) -> Tensor:
        """x (n c h w) with h = w = size -> (n d)."""
        return rearrange(self.net(x), "n d 1 1 -> n d")


class FrameEncoder(_Encoder):
    """Whole frames (n c h w), h = w = image_size -> features (n feat_dim) for the pose path."""

    def __init__(self, channels: int, image_size: int, feat_dim: int, width: int = 8):
        super().__init__(channels, image_size, feat_dim, width)


class ObjectEncoder(_Encoder):
    """Object crops (n c s s), s = image_size / 2 -> features (n app_dim) for the appearance path."""

    def __init__(self, channels: int, obj_size: int, app_dim: int, width: int = 8):
        super().__init__(channels, obj_size, app_dim, width)


class ObjectDecoder(nn.Module):
    """Appearance latents (n app_dim) -> object canvases (n c s s) in (0, 1)."""

    def __init__(self, channels: int, obj_size: int, app_dim: int, width: int = 8):
        super().__init__()
        n = num_halvings(obj_size)
        c_in = width * 2 ** (n - 1)
        layers: list[nn.Module] = [
            _VectorToMap(app_dim, c_in, 4, 1, 0, bias=False),
            nn.BatchNorm2d(c_in),
            nn.ReLU(inplace=True),
        ]
        for i in range(n):
            last = i == n - 1
            c_out = channels if last else c_in // 2
            upsample = _UpsampleToImage if last and c_out == 1 else nn.ConvTranspose2d
            layers.append(upsample(c_in, c_out, 4, 2, 1, bias=False))
            if not last:
                layers += [nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
            c_in = c_out
        layers.append(nn.Sigmoid())
        self.net = nn.Sequential(*layers)
        dcgan_init_(self)
        self.to(memory_format=torch.channels_last)

    def forward(self, z: Tensor) -> Tensor:
        """z (n a) -> (n c s s)."""
        return self.net(rearrange(z, "n a -> n a 1 1"))

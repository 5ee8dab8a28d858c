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
from .phase_conv import conv_transpose4x4_stride2


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


class _SpaceToDepthConv(nn.Conv2d):
    """An encoder's first layer (4x4, stride 2, padding 1) on one input channel, as a 2x2 conv of 2x2 pixel blocks.

    Output pixel (i, j) reads padded input pixels 2i + a, 2j + b for taps
    a, b < 4; with a = 2 ky + p, b = 2 kx + q these are pixel (p, q) of the
    2x2 blocks (i + ky, j + kx). So padding by one pixel, `pixel_unshuffle`
    into 4 channels (one per block position) and a 2x2 stride-1 conv with
    the taps regrouped the same way is the same layer. Same parameter, same
    values. oneDNN's kernels for a one-channel channels-last input are slow:
    forward + backward at batch 64 on a 2-core Intel Xeon, 34 -> 15 ms for
    the frame encoder (64 x 64, no input gradient), 28 -> 14 ms for the
    object encoder (32 x 32, with one) (docs/studies/speed-round-intel-xeon.md).
    """

    def forward(self, x: Tensor) -> Tensor:
        """x (n 1 h w) -> (n c_out h/2 w/2)."""
        if x.device.type != "cpu":  # measured on CPU only; cuDNN has kernels of its own for this shape
            return super().forward(x)
        kernel = rearrange(self.weight, "c_out c_in (ky p) (kx q) -> c_out (c_in p q) ky kx", p=2, q=2)
        blocks = F.pixel_unshuffle(F.pad(x, (1, 1, 1, 1)), 2)
        return F.conv2d(blocks, kernel.contiguous(memory_format=torch.channels_last))


class _FewChannelBatchNorm(nn.BatchNorm2d):
    """Batch norm for channels-last maps with few channels (the decoder's 8), in training mode.

    The native channels-last kernels vectorise across channels and fall back
    to slow loops when there are fewer channels than one vector holds: at
    batch 64 the decoder's 8-channel batch norm took 48 ms forward +
    backward on a 2-core Intel Xeon, more than any conv. Here the (n h w c)
    memory is read as a matrix of `fold` pixels x c columns per row (wide
    rows vectorise), column sums are folded back to per-channel sums, and the
    backward is the textbook one. Same statistics, running-buffer update
    (unbiased variance, as torch) and gradients to float rounding; eval mode,
    other devices, layouts and settings go to torch's kernel.
    """

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and self.track_running_stats and self.momentum is not None and self.affine
                and x.device.type == "cpu" and x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
                and x.shape[0] * x.shape[2] * x.shape[3] > 1 and not torch.compiler.is_compiling()):
            return super().forward(x)
        y, mean, var = _BatchNormChannelsLast.apply(x, self.weight, self.bias, self.eps)
        m = x.shape[0] * x.shape[2] * x.shape[3]
        with torch.no_grad():
            self.running_mean.lerp_(mean.to(self.running_mean.dtype), self.momentum)
            self.running_var.lerp_((var * (m / (m - 1))).to(self.running_var.dtype), self.momentum)
            self.num_batches_tracked.add_(1)
        return y


def _fold(rows: int, channels: int, width: int = 128) -> int:
    """How many pixels to read per matrix row: rows of about `width` values, dividing the pixel count."""
    fold = max(1, width // channels)
    while rows % fold:
        fold //= 2
    return fold


class _BatchNormChannelsLast(torch.autograd.Function):
    """Training-mode batch norm of a channels-last x (n c h w): returns y, batch mean and biased variance (c)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor, eps: float):
        n, c, h, w = x.shape
        m = n * h * w
        fold = _fold(m, c)
        dtype = torch.promote_types(x.dtype, torch.float32)  # bfloat16 under autocast: statistics in float32
        rows = rearrange(x.to(dtype), "n c h w -> n h w c").reshape(m // fold, fold * c)  # a view: x is channels-last

        def per_channel(matrix: Tensor) -> Tensor:
            return matrix.sum(dim=0).view(fold, c).sum(dim=0)

        mean = per_channel(rows) / m
        centred = rows - mean.repeat(fold)
        var = per_channel(centred * centred) / m
        inv_std = torch.rsqrt(var + eps)
        x_hat = centred.mul_(inv_std.repeat(fold))
        # Written through a row view into a tensor of its own: the next layer's in-place ReLU must not
        # modify a view made inside this function.
        y = torch.empty(x.shape, dtype=dtype, device=x.device, memory_format=torch.channels_last)
        torch.addcmul(bias.to(dtype).repeat(fold), x_hat, weight.to(dtype).repeat(fold),
                      out=rearrange(y, "n c h w -> n h w c").view(m // fold, fold * c))
        ctx.save_for_backward(x_hat, inv_std, weight)
        ctx.mark_non_differentiable(mean, var)
        ctx.dims = (n, c, h, w, fold)
        return y.to(x.dtype), mean, var

    @staticmethod
    def backward(ctx, grad_y: Tensor, _grad_mean, _grad_var):
        x_hat, inv_std, weight = ctx.saved_tensors
        n, c, h, w, fold = ctx.dims
        m = n * h * w
        grad = rearrange(grad_y.to(x_hat.dtype), "n c h w -> n h w c").reshape(m // fold, fold * c)
        sum_grad = grad.sum(dim=0).view(fold, c).sum(dim=0)  # the bias gradient
        sum_grad_x_hat = (grad * x_hat).sum(dim=0).view(fold, c).sum(dim=0)  # the weight gradient
        scale = inv_std * weight.to(x_hat.dtype)
        # dx = scale (dy - mean(dy) - x_hat mean(dy x_hat))
        grad_x = torch.addcmul((-scale * sum_grad / m).repeat(fold), x_hat, (-scale * sum_grad_x_hat / m).repeat(fold))
        grad_x = grad_x.addcmul_(grad, scale.repeat(fold))
        grad_x = rearrange(grad_x.view(n, h, w, c), "n h w c -> n c h w").to(grad_y.dtype)
        return grad_x, sum_grad_x_hat.to(weight.dtype), sum_grad.to(weight.dtype), None


class _FewChannelConvTranspose(nn.ConvTranspose2d):
    """A 4x4 stride-2 transposed conv (padding 1) to few channels, run as forward convs on CPU (dive/nn/phase_conv.py).

    Forward + backward at batch 64 on a 2-core AMD EPYC: the decoder's
    16 -> 8 layer 31 -> 22 ms, its 8 -> 1 layer 38 -> 19 ms (36 ms as the
    stride-1 transposed conv of the phases used before). To 16 channels
    oneDNN's kernel is faster (15 vs 18 ms). Same parameter, same values.
    Compiled (`--compile --amp`), the autograd function made the step 2 %
    slower and took 0.16-0.19 GiB more memory than inductor's graph around
    torch's kernels: there, and on other devices, the layer runs torch's
    transposed conv (to one channel in the stride-1 phase form it ran before).
    """

    def forward(self, x: Tensor) -> Tensor:
        if x.device.type == "cpu" and not torch.compiler.is_compiling():
            return conv_transpose4x4_stride2(x, self.weight)
        if self.out_channels == 1:
            # To one channel, a stride-1 transposed conv of the four phases and a pixel shuffle: what this
            # layer ran before on every device, and under torch.compile on CPU still the faster form.
            phases = rearrange(self.weight, "c_in c_out (ky p) (kx q) -> c_in (c_out p q) ky kx", p=2, q=2)
            return F.pixel_shuffle(F.conv_transpose2d(x, phases), 2)[..., 1:-1, 1:-1]
        return super().forward(x)


_FEW_CHANNELS = 16  # below this many channels: _FewChannelBatchNorm, _FewChannelConvTranspose


def _conv_stack(channels: int, size: int, out_dim: int, width: int) -> nn.Sequential:
    """(N, channels, size, size) -> (N, out_dim, 1, 1)."""
    layers: list[nn.Module] = []
    c_in, c_out = channels, width
    for i in range(num_halvings(size)):
        conv = _SpaceToDepthConv if i == 0 and c_in == 1 else nn.Conv2d
        layers.append(conv(c_in, c_out, 4, 2, 1, bias=False))
        if i > 0:
            layers.append(_FewChannelBatchNorm(c_out) if c_out < _FEW_CHANNELS else nn.BatchNorm2d(c_out))
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
            upsample = _FewChannelConvTranspose if c_out < _FEW_CHANNELS else nn.ConvTranspose2d
            layers.append(upsample(c_in, c_out, 4, 2, 1, bias=False))
            if not last:
                norm = _FewChannelBatchNorm if c_out < _FEW_CHANNELS else nn.BatchNorm2d
                layers += [norm(c_out), nn.ReLU(inplace=True)]
            c_in = c_out
        layers.append(nn.Sigmoid())
        self.net = nn.Sequential(*layers)
        dcgan_init_(self)
        self.to(memory_format=torch.channels_last)

    def forward(self, z: Tensor) -> Tensor:
        """z (n a) -> (n c s s)."""
        return self.net(rearrange(z, "n a -> n a 1 1"))

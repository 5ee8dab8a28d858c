"""The 4x4 stride-2 transposed convolution (padding 1) through forward convolutions, for CPU.

The decoder (dive/nn/convnets.py) doubles its map with these layers. On CPU
oneDNN serves a forward convolution well and a transposed one (its
backward-data kernel) slowly when the output has few channels: at batch 64
on a 2-core AMD EPYC the decoder's 16 -> 8 transposed conv took 22 ms
forward, and an encoder conv of the same size 4-5 ms (docs/studies/2026-12-06-speed-round-amd-epyc.md).
Here it runs as forward convolutions only.

The transposed conv by output phase. Its output pixel 2m + p - 1 (padding
1) receives input pixel m - r through kernel tap 2r + p, r in {0, 1}. So
each of the four output phases (p, q) is a 2x2 correlation of the
once-padded input with the flipped taps weight[..., 2(1 - r) + p, 2(1 - s)
+ q]: one stride-1 conv with 4x the output channels gives all four. The
phases are then interleaved into the output, each written in place by one
strided copy that also drops the one-pixel border of the padding. Channels
come out in (p q c) order, so that each copy moves runs of c values
(interleaving (c p q) channels, the order `pixel_shuffle` reads, was 6-8x
slower on channels-last maps).

The backward is forward convs too: the input gradient is the strided conv of
the output gradient with the same weight (the adjoint), the weight gradient
that conv's weight gradient, from oneDNN's weight-gradient kernel (not one
of the slow ones).

Shapes: x (n c_in h w), channels-last; weight (c_in c_out 4 4), as the torch
layer's. Under autocast the forward computes in the autocast dtype
(bfloat16) and the backward in the same dtype; the gradients come back in
each input's dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor


def phase_kernel(weight: Tensor) -> Tensor:
    """Transposed-conv weight (c_in c_out 4 4) -> stride-1 conv weight ((p q c_out) c_in 2 2)."""
    taps = rearrange(weight, "c_in c_out (r p) (s q) -> p q c_out c_in r s", p=2, q=2).flip(-2, -1)
    return rearrange(taps, "p q c_out c_in r s -> (p q c_out) c_in r s").contiguous(memory_format=torch.channels_last)


def transposed_conv(x: Tensor, weight: Tensor) -> Tensor:
    """conv_transpose2d(x, weight, stride=2, padding=1), no autograd: x (n c_in h w) -> (n c_out 2h 2w)."""
    n, _, h, w = x.shape
    c = weight.shape[1]
    phases = F.conv2d(F.pad(x, (1, 1, 1, 1)), phase_kernel(weight))  # (n (p q c) h+1 w+1)
    z = rearrange(phases, "n (p q c) h w -> n h w p q c", p=2, q=2)  # a view of the channels-last memory
    out = phases.new_empty(n, h, 2, w, 2, c)  # output row 2i + a, column 2j + b
    # output row 2i is padded row 2i + 1 (phase p = 1, block i); row 2i + 1 is phase 0 of block i + 1
    out[:, :, 0, :, 0] = z[:, :h, :w, 1, 1]
    out[:, :, 0, :, 1] = z[:, :h, 1:, 1, 0]
    out[:, :, 1, :, 0] = z[:, 1:, :w, 0, 1]
    out[:, :, 1, :, 1] = z[:, 1:, 1:, 0, 0]
    return rearrange(out, "n h a w b c -> n c (h a) (w b)")  # channels-last, no copy


def _weight_grad(grad_out: Tensor, x: Tensor, weight: Tensor) -> Tensor:
    """Weight gradient of conv2d(x, weight, stride 2, padding 1) for output gradient grad_out."""
    return torch.ops.aten.convolution_backward(grad_out, x, weight, None, [2, 2], [1, 1], [1, 1], False, [0, 0], 1,
                                               [False, True, False])[1]


class _TransposedConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor) -> Tensor:
        dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype
        y = transposed_conv(x.to(dtype), weight.to(dtype))
        ctx.save_for_backward(x, weight)
        return y

    @staticmethod
    def backward(ctx, grad_y: Tensor):
        x, weight = ctx.saved_tensors
        grad_y = grad_y.contiguous(memory_format=torch.channels_last)
        w = weight.to(grad_y.dtype)
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = F.conv2d(grad_y, w, stride=2, padding=1).to(x.dtype)
        if ctx.needs_input_grad[1]:  # y = conv_transpose(x) is the adjoint of x = conv(y): the roles swap
            grad_w = _weight_grad(x.to(grad_y.dtype), grad_y, w).to(weight.dtype)
        return grad_x, grad_w


def conv_transpose4x4_stride2(x: Tensor, weight: Tensor) -> Tensor:
    """conv_transpose2d(x, weight, stride=2, padding=1), weight (c_in c_out 4 4): (n c_in h w) -> (n c_out 2h 2w)."""
    return _TransposedConv.apply(x, weight)

"""The conv stacks' fast layers compute what the plain torch layers compute: values, gradients, buffers."""

import pytest
import torch
from torch import nn

from dive.nn.convnets import (
    FrameEncoder,
    ObjectDecoder,
    ObjectEncoder,
    _FewChannelBatchNorm,
    _FewChannelConvTranspose,
    _SpaceToDepthConv,
)
from dive.nn.phase_conv import conv_transpose4x4_stride2


@pytest.mark.parametrize("size", [64, 32, 8])
@pytest.mark.parametrize("input_grad", [False, True])
def test_space_to_depth_conv_is_the_strided_conv(size, input_grad):
    torch.manual_seed(0)
    conv = _SpaceToDepthConv(1, 8, 4, 2, 1, bias=False).double().to(memory_format=torch.channels_last)
    x = torch.rand(5, 1, size, size, dtype=torch.float64, requires_grad=input_grad)
    fast, plain = conv(x), nn.Conv2d.forward(conv, x)
    assert fast.shape == (5, 8, size // 2, size // 2) and fast.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(fast, plain, atol=1e-12, rtol=0)
    upstream = torch.randn_like(plain)
    wrt = (x, conv.weight) if input_grad else (conv.weight,)
    for a, b in zip(torch.autograd.grad(fast, wrt, upstream), torch.autograd.grad(plain, wrt, upstream)):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)


@pytest.mark.parametrize("channels", [(8, 1), (5, 3)])
@pytest.mark.parametrize("size", [16, 4, 1])
@pytest.mark.parametrize("compiling", [False, True])
def test_transposed_conv_through_forward_convs_is_the_transposed_conv(channels, size, compiling, monkeypatch):
    # compiling: the form the layer takes inside torch.compile (and, to one channel, on other devices)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: compiling)
    torch.manual_seed(2)
    c_in, c_out = channels
    up = _FewChannelConvTranspose(c_in, c_out, 4, 2, 1, bias=False).double().to(memory_format=torch.channels_last)
    x = torch.randn(5, c_in, size, size, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    fast, plain = up(x), nn.ConvTranspose2d.forward(up, x)
    assert fast.shape == (5, c_out, 2 * size, 2 * size)
    assert compiling or fast.is_contiguous(memory_format=torch.channels_last)  # the autograd function's output
    torch.testing.assert_close(fast, plain, atol=1e-12, rtol=0)
    upstream = torch.randn_like(plain)
    want = torch.autograd.grad(plain, (x, up.weight), upstream)
    for a, b in zip(torch.autograd.grad(fast, (x, up.weight), upstream), want):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)
    # only the weight gradient, as for a first layer
    (grad_w,) = torch.autograd.grad(conv_transpose4x4_stride2(x.detach(), up.weight), up.weight, upstream)
    torch.testing.assert_close(grad_w, want[1], atol=1e-12, rtol=0)


@pytest.mark.parametrize("input_dtype", [torch.float32, torch.bfloat16])
def test_transposed_conv_under_autocast(input_dtype):
    torch.manual_seed(3)
    up = _FewChannelConvTranspose(16, 8, 4, 2, 1, bias=False).to(memory_format=torch.channels_last)
    x = torch.randn(4, 16, 8, 8).to(input_dtype).contiguous(memory_format=torch.channels_last).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = up(x)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), nn.ConvTranspose2d.forward(up, x.detach().float()), atol=0.05, rtol=0.02)
    y.float().square().sum().backward()
    assert x.grad.dtype == input_dtype and up.weight.grad.dtype == torch.float32
    assert torch.isfinite(x.grad.float()).all() and up.weight.grad.abs().sum() > 0


def _batch_norms(channels: int, dtype=torch.float64):
    torch.manual_seed(1)
    fast = _FewChannelBatchNorm(channels).to(dtype)
    with torch.no_grad():
        fast.weight.uniform_(0.5, 1.5)
        fast.bias.uniform_(-1, 1)
        fast.running_mean.uniform_(-1, 1)
    plain = nn.BatchNorm2d(channels).to(dtype)
    plain.load_state_dict(fast.state_dict())
    return fast, plain


@pytest.mark.parametrize("shape", [(6, 8, 5, 7), (64, 8, 16, 16), (3, 4, 2, 2), (2, 24, 3, 3)])
def test_few_channel_batch_norm_trains_as_torch_does(shape):
    fast, plain = _batch_norms(shape[1])
    x = (torch.randn(shape, dtype=torch.float64) * 3 + 1).contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    for _ in range(2):  # the running buffers after two updates
        y_fast, y_plain = fast(x), plain(x)
    torch.testing.assert_close(y_fast, y_plain, atol=1e-12, rtol=0)
    assert y_fast.is_contiguous(memory_format=torch.channels_last)
    for name, buffer in plain.named_buffers():
        torch.testing.assert_close(getattr(fast, name), buffer, atol=1e-12, rtol=0, msg=name)
    upstream = torch.randn_like(y_plain)
    for a, b in zip(torch.autograd.grad(y_fast, (x, fast.weight, fast.bias), upstream),
                    torch.autograd.grad(y_plain, (x, plain.weight, plain.bias), upstream)):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


def test_few_channel_batch_norm_in_eval_mode_and_bfloat16():
    fast, plain = _batch_norms(8, torch.float32)
    x = torch.randn(4, 8, 6, 6).contiguous(memory_format=torch.channels_last)
    fast.eval(), plain.eval()
    torch.testing.assert_close(fast(x), plain(x))  # the running statistics, through torch's kernel
    fast.train(), plain.train()
    x16 = x.to(torch.bfloat16).requires_grad_()
    y = fast(x16)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), plain(x16).float(), atol=0.02, rtol=0.02)
    y.float().sum().backward()
    assert x16.grad.dtype == torch.bfloat16 and torch.isfinite(x16.grad.float()).all()


def test_a_wrong_batch_norm_would_be_caught():
    # The comparison above sees a batch norm that forgot the unbiased running variance.
    fast, plain = _batch_norms(8)
    x = torch.randn(6, 8, 5, 7, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    fast(x), plain(x)
    with torch.no_grad():
        plain.running_var.copy_(plain.running_var * 0.9 + 0.1 * x.var(dim=(0, 2, 3), unbiased=False))
    assert not torch.allclose(fast.running_var, plain.running_var, atol=1e-6)


def test_the_stacks_use_the_fast_layers_where_they_were_measured():
    frame, obj, dec = FrameEncoder(1, 64, 256), ObjectEncoder(1, 32, 128), ObjectDecoder(1, 32, 128)
    assert isinstance(frame.net[0], _SpaceToDepthConv) and isinstance(obj.net[0], _SpaceToDepthConv)
    assert not isinstance(FrameEncoder(3, 64, 256).net[0], _SpaceToDepthConv)  # measured for one channel only
    few = [m.num_features for m in dec.modules() if isinstance(m, _FewChannelBatchNorm)]
    plain = [m.num_features for m in dec.modules() if type(m) is nn.BatchNorm2d]
    assert few == [8] and sorted(plain) == [16, 32]
    few_up = [m.out_channels for m in dec.modules() if isinstance(m, _FewChannelConvTranspose)]
    plain_up = [m.out_channels for m in dec.modules() if type(m) is nn.ConvTranspose2d]
    assert few_up == [8, 1] and plain_up == [16]

"""nn.LSTM that also runs under bfloat16 autocast on CPUs whose oneDNN has no bfloat16 LSTM.

On such CPUs (seen on a 2-core AMD EPYC without AVX512-BF16) torch's LSTM
under CPU autocast fails with "could not create a primitive descriptor for
the LSTM forward propagation primitive", so `--amp` could not train at all.
There this layer steps out of autocast and runs in float32, as autocast does
for any op without a bfloat16 kernel. Elsewhere, and under torch.compile, it
is torch's LSTM unchanged. Same parameters and state-dict names.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor, nn


@functools.cache
def cpu_bf16_lstm_supported() -> bool:
    """Whether torch's LSTM runs under bfloat16 autocast on this CPU (tried once per process)."""
    probe = nn.LSTM(4, 4, batch_first=True)
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            probe(torch.zeros(1, 1, 4))
    except RuntimeError:
        return False
    return True


class LSTM(nn.LSTM):
    def forward(self, input: Tensor, hx: tuple[Tensor, Tensor] | None = None):
        if (input.device.type == "cpu" and not torch.compiler.is_compiling()
                and torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
                and not cpu_bf16_lstm_supported()):
            with torch.autocast("cpu", enabled=False):
                hx = None if hx is None else (hx[0].float(), hx[1].float())
                return super().forward(input.float(), hx)
        return super().forward(input, hx)

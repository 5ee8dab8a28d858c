"""dive.nn.lstm.LSTM: torch's LSTM, stepping out of bfloat16 autocast where the CPU has no bf16 LSTM kernel."""

from __future__ import annotations

import torch
from torch import nn

from dive.nn import lstm as lstm_mod
from dive.nn.lstm import LSTM


def _pair():
    torch.manual_seed(0)
    ours = LSTM(3, 4, num_layers=2, batch_first=True)
    ref = nn.LSTM(3, 4, num_layers=2, batch_first=True)
    ref.load_state_dict(ours.state_dict())
    return ours, ref


def test_float32_inside_autocast_where_bf16_lstm_is_missing(monkeypatch):
    ours, ref = _pair()
    x = torch.randn(2, 5, 3).bfloat16()
    monkeypatch.setattr(lstm_mod, "cpu_bf16_lstm_supported", lambda: False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, (h, c) = ours(x, (torch.zeros(2, 2, 4).bfloat16(), torch.zeros(2, 2, 4).bfloat16()))
    assert out.dtype == h.dtype == torch.float32
    torch.testing.assert_close(out, ref(x.float())[0])


def test_torchs_lstm_elsewhere(monkeypatch):
    ours, ref = _pair()
    x = torch.randn(2, 5, 3)
    torch.testing.assert_close(ours(x)[0], ref(x)[0])  # no autocast: unchanged
    assert list(ours.state_dict()) == list(ref.state_dict())
    monkeypatch.setattr(lstm_mod, "cpu_bf16_lstm_supported", lambda: True)
    called = []
    monkeypatch.setattr(nn.LSTM, "forward", lambda self, x, hx=None: called.append(x.dtype) or (x, None))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours(x.bfloat16())
    assert called == [torch.bfloat16]  # where the kernel exists, torch's LSTM gets the autocast input as it is

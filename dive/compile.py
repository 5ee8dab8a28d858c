"""torch.compile for DIVE, with the settings that make it one graph compiled once.

* ``torch._dynamo.config.allow_rnn``: without it Dynamo refuses to trace
  ``nn.LSTM`` and breaks the graph at every call (the pose and appearance
  paths call LSTMs inside Python loops over the slots and frames), leaving
  dozens of small graphs with eager code in between. With it the whole
  forward is one graph.
* ``fullgraph``: the forward then has no graph break, so asking for a full
  graph turns any future break into an error instead of a silent slowdown.
  DistributedDataParallel compiles in pieces (its optimiser splits the graph
  at bucket boundaries), so a DDP-wrapped model is compiled without it.
* The ink tracker of the tracking pose inference (dive/nn/tracker.py) stays
  out of the graph (``torch.compiler.disable``): it has no parameters and
  runs without gradients, and inductor's CPU code for it corrupts memory
  (torch 2.14.1). A model with one is compiled in two graphs, before and
  after it, without ``fullgraph``.
* The schedule values (``temperature``, ``gamma_app``, ``gamma_imp``) reach
  the model as 0-d tensors. As Python floats Dynamo guards on their values,
  and the temperature changes at every step of its decay: each new value
  would recompile the graph (over a minute each on a 2-core CPU), and the
  halving of ``gamma_app`` at ``switch_step`` once more.

Compiling takes minutes on a small CPU (the LSTM loops are unrolled); the
graph of eval mode (``model.eval()``), which takes other branches, is
compiled on its first use.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .nn.tracker import InkTracker

SCHEDULE_ARGS = ("temperature", "gamma_app", "gamma_imp")


class CompiledModel(nn.Module):
    """A compiled DIVE (or DDP-wrapped DIVE) called like the model itself."""

    def __init__(self, model: nn.Module, **compile_kwargs):
        super().__init__()
        self.compiled = torch.compile(model, **compile_kwargs)
        self.fullgraph = bool(compile_kwargs.get("fullgraph", False))

    def forward(self, input: Tensor, **kwargs):
        for name in SCHEDULE_ARGS:
            value = kwargs.get(name)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                kwargs[name] = torch.tensor(float(value), device=input.device)
        return self.compiled(input, **kwargs)


COMPILE_MODES = ("auto", "default", "reduce-overhead", "max-autotune")


def resolve_mode(mode: str, device: torch.device) -> str | None:
    """The torch.compile mode for `mode` on `device` (None: inductor's default).

    "auto" is "reduce-overhead" on CUDA: the step is hundreds of small
    kernels (LSTM loops over frames and slots), so launching them costs more
    than running them, and CUDA graphs replay the whole graph in one launch.
    On CPU there is nothing to replay: inductor's default mode.
    """
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile mode must be one of {', '.join(COMPILE_MODES)}, got {mode!r}")
    if mode == "auto":
        return "reduce-overhead" if torch.device(device).type == "cuda" else None
    return None if mode == "default" else mode


def compile_model(model: nn.Module, *, fullgraph: bool | None = None, dynamic: bool | None = None,
                  mode: str | None = None) -> CompiledModel:
    """`model` compiled with the settings above; call the result as the model.

    fullgraph: default True unless `model` is DistributedDataParallel or holds an ink tracker
    (the tracking pose inference), which runs eagerly between the compiled parts.
    dynamic, mode: passed on to torch.compile (defaults: shapes specialised
    until one changes; inductor's default mode).
    """
    torch._dynamo.config.allow_rnn = True
    if fullgraph is None:
        fullgraph = not (isinstance(model, nn.parallel.DistributedDataParallel)
                         or any(isinstance(m, InkTracker) for m in model.modules()))
    return CompiledModel(model, fullgraph=fullgraph, dynamic=dynamic, mode=mode)

"""The loss of one training batch: the forward pass at one step's schedule, the ELBO and the training-only terms.

``batch_loss`` is the one place where a training batch becomes the number the
optimiser minimises; the training loop (dive/engine.py) and the benchmarks
(bench/train_step.py, bench/profile_step.py) all call it through
``dive.engine.train_step``. What it adds up:

    loss = -ELBO / n  -  track_future / n        n = B T C H W

where the ELBO is dive/elbo.py's (its terms weighted by the step's KL
warm-up, its likelihood blurred by the step's curriculum, the s1 future mask
from the switch step on) and track_future is the tracker's teacher term
(dive/teacher.py), present only with ``loss.future_track_std > 0``: a
training-only departure, returned and logged by name and never part of the
ELBO or of any evaluation figure.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import Tensor

from .config import Config
from .elbo import ELBO, elbo
from .model import DIVE, DIVEOutput, forward_batch
from .schedules import Schedule
from .teacher import future_track_term


def autocast(device: torch.device, enabled: bool):
    """bfloat16 autocast on `device` when `enabled` (the `--amp` switch), else a null context."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


@dataclass
class BatchLoss:
    loss: Tensor  # what the optimiser minimises (a scalar)
    elbo: ELBO  # the ELBO and its named terms
    extra: dict[str, Tensor]  # training-only terms by name ("term/track_future"), added to the loss
    out: DIVEOutput

    def scalars(self) -> dict[str, float]:
        """Plain floats for logging: every ELBO term and weight, the extra terms, the loss."""
        return {**self.elbo.scalars(), **{k: float(v.detach()) for k, v in self.extra.items()},
                "loss": float(self.loss.detach())}


def batch_loss(step_model, model: DIVE, batch: dict[str, Tensor], cfg: Config, sched: Schedule,
               noise: dict[str, Tensor], *, amp: bool = False, render_slots: bool = False,
               check_values: bool = False) -> BatchLoss:
    """The loss of `batch` at schedule `sched`, with the forward pass's `noise`.

    step_model: `model`, or its compiled or DistributedDataParallel wrapper, which runs the forward.
    render_slots: also render each slot's image (the training loop does without: the ELBO reads the
    composites only). check_values: check the batch's values (the package's own batches need not).
    """
    with autocast(batch["input"].device, amp):
        out = forward_batch(step_model, batch, temperature=sched.temperature, gamma_app=sched.gamma_app,
                            gamma_imp=sched.gamma_imp, noise=noise, future_poses_only=sched.future_poses_only,
                            render_slots=render_slots)
    e = elbo(out, batch, cfg.loss, kl_weight=sched.kl_weight, future_mask=sched.future_mask,
             check_values=check_values, blur=sched.blur)
    loss, extra = e.loss, {}
    if cfg.loss.future_track_std > 0:  # a departure from the ELBO (dive/teacher.py)
        track = future_track_term(model.pose.tracker, batch, out.pose, cfg.data.image_size,
                                  cfg.loss.future_track_std)
        loss = loss - track / e.n_elements
        extra["term/track_future"] = track
    return BatchLoss(loss=loss, elbo=e, extra=extra, out=out)

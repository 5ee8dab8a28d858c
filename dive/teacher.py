"""The ink tracker as a teacher for the predicted poses (``loss.future_track_std > 0``, training only).

A departure from the published objective, off in every published config. The
ELBO trains the future poses only through the spatial transformer: the
gradient of the future frames' likelihood with respect to a pose says
something only while the drawn digit overlaps the true one, so the rollout
learns the motion (bounces off the walls included) slowly, and until it has,
its digits are drawn in the wrong places (docs/studies/tracking-recipe-screening.md). In training the
future frames are known, so the tracker (dive/nn/tracker.py) can follow the
digits through them as well. This term treats its centres as noisy
observations of the future poses' centres:

    track_future = sum_{b, t >= T_in, k} seen[t,k] log N(c_track[t,k]; centre(pose[t,k]), std^2)

in pixels, with the sampled poses, where the tracker sees its digit (mean of
ink share and template match above 0.6), and it is added to the ELBO. The
tracker follows the last 3 input frames and the future frames in one pass,
and its slots are matched to the model's on those 3 input frames.
Evaluation (NELBO, metrics) never includes it.

Why the 3 input frames are tracked a second time: the pose inference's track
of the input frames cannot simply be continued into the future. The tracker
runs both ways over its clip and takes each slot's template from the slot's
best frame, so adding the future frames to its clip would change the
positions it gives on the input frames, which must come from the input
alone, as at evaluation. The overlap (13 frames tracked here instead of 10)
is what ties this pass's slots to the model's.
"""

from __future__ import annotations

import torch
from einops import repeat
from torch import Tensor

from .distributions import gaussian_log_prob
from .slots import match_slots, pose_centres
from .nn.tracker import InkTracker

_OVERLAP = 3  # input frames the teacher also tracks, to match its slots to the model's


@torch.no_grad()
def future_targets(tracker: InkTracker, batch: dict[str, Tensor], pose: Tensor) -> tuple[Tensor, Tensor]:
    """The tracker's centres on the future frames, in the model's slot order, and where it sees them.

    batch: ``input`` (b t_in c h w) and ``target`` (b t_out c h w), the observed frames;
    pose (b T k 3): the model's poses, whose input-frame centres fix the slot order.
    Returns centres (b t_out k 2) and seen (b t_out k) in {0, 1}.
    """
    t_in = batch["input"].shape[1]
    track = tracker(torch.cat([batch["input"][:, -_OVERLAP:], batch["target"]], dim=1))
    # perm[b, j]: the model's slot that follows the tracker's slot j on the last input frames
    perm = match_slots(pose_centres(pose[:, t_in - _OVERLAP:t_in].float()), track.centres[:, :_OVERLAP])
    future = track.centres.shape[1] - _OVERLAP
    order = repeat(perm.argsort(dim=1), "b k -> b t k", t=future)  # the tracker's slot of each model slot
    centres = torch.gather(track.centres[:, _OVERLAP:], 2, repeat(order, "b t k -> b t k xy", xy=2))
    return centres, torch.gather(track.seen()[:, _OVERLAP:], 2, order).to(centres.dtype)


def future_track_term(tracker: InkTracker, batch: dict[str, Tensor], pose: Tensor, image_size: int,
                      std_px: float) -> Tensor:
    """track_future (a scalar, summed over the batch) for the model's poses (b T k 3)."""
    t_in = batch["input"].shape[1]
    targets, seen = future_targets(tracker, batch, pose.detach())
    px = image_size / 2  # normalised units -> pixels
    centres = pose_centres(pose[:, t_in:].float()) * px
    std = torch.tensor(std_px, dtype=centres.dtype, device=centres.device)
    return (gaussian_log_prob(targets * px, centres, std).sum(-1) * seen).sum()

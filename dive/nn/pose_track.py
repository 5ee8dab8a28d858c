"""Pose inference that starts from an ink tracker: every slot carries an explicit position estimate.

Selected with ``model.pose_inference = "track"``; the default, "sequential",
is DIVE's own pose path (dive/nn/pose.py), whose stages this module reuses.
It changes the inference network only: the posterior has the same form
(Gaussian pose increments and initial pose, relaxed-Bernoulli presence) and
the generative model and the ELBO are the published ones, so likelihoods
stay comparable (docs/model.md, "Tracking pose inference").

Why: in DIVE's pose path every slot regresses its increments from one global
feature per frame. To follow "its" digit a slot must first learn an order of
the digits, and until it has (17k-30k steps on s2) both slots draw a blur of
the pair at its midpoint (docs/studies/s2-fast-recipe.md). Here an ink tracker
(dive/nn/tracker.py) gives every slot k a centre c[t, k] on every input
frame, and:

1. the centres set the translation part of the posterior means, in raw-pose
   units r(c) (the inverse of ``constrain_pose`` at the frame's posterior
   mean scale): init_mu += r(c[0]) and beta_mu[t] += r(c[t]) - r(c[t-1]) on
   the input frames. From the first step each slot follows its object; the
   LSTM head adds a learned correction (scale, offsets, imputation);
2. the imputation LSTM also reads [c, 4 x velocity, ink share, template
   match] at every frame (the tracker's two cues that the object is in
   view), so its state knows where its object is and how it moves;
3. the future increments come from a head of their own on the rollout LSTM
   (whole increments, not corrections), which reads back the centre its
   increments have reached and its motion: the motion, bounces included, is
   learned. Constant velocity would be worse than standing still, since
   Moving MNIST digits bounce off the walls several times in 10 frames;
4. presence logits: those of dive/nn/pose.py plus a learned linear function
   of the two cues, started at 10 (mean of share and match - 0.6): a digit
   out of scene leaves its slot with little ink and no match (that
   threshold alone tells the missing digits of s2 with F1 0.96).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from ..distributions import hard_decision
from .init import dcgan_init_
from .pose import POSE_DIM, PosePosterior, PoseStages, positive_scale
from .stn import _S_MARGIN
from .tracker import InkTracker

_VELOCITY_GAIN = 4.0  # the LSTM reads 4 x velocity: per-frame motion is ~0.2 normalised units
# starting presence term: GAIN * (mean of ink share and template match - AT)
_PRESENCE_GAIN, _PRESENCE_AT = 10.0, 0.6
TRACK_FEATURES = 6  # centre (2), velocity (2), ink share, template match


def raw_translation(centres: Tensor, scale: float | Tensor) -> Tensor:
    """Raw pose translation (... 2) whose constrained pose at scale s has centre `centres` (... 2);
    `scale` is a number or a tensor of shape (...).

    ``constrain_pose`` gives t = tanh(raw) (s - 0.5) and the centre is -t / s,
    so raw = atanh(-c s / (s - 0.5)), clipped just inside the reachable range.
    """
    if isinstance(scale, Tensor):
        scale = scale.unsqueeze(-1)
    ratio = (-centres * scale / (scale - _S_MARGIN)).clamp(-0.999, 0.999)
    return torch.atanh(ratio)


def translation_centre(raw: Tensor, scale: Tensor) -> Tensor:
    """The inverse of `raw_translation`: the centre (... 2) of raw translation `raw` (... 2) at
    scale (...)."""
    scale = scale.unsqueeze(-1)
    return -torch.tanh(raw) * (scale - _S_MARGIN) / scale


class TrackingPoseInference(PoseStages):
    def __init__(self, feat_dim: int, hidden: int, n_slots: int, t_out: int, scale_prior: float, *,
                 image_size: int, use_imputation: bool = True, straight_through: bool = False,
                 bounce_gaps: bool = False, walls: float | None = None, future_fit: bool = False):
        # The imputation LSTM also reads the track features; the prediction LSTM also reads the
        # centre its own increments have reached, and its motion.
        super().__init__(feat_dim, hidden, n_slots, t_out, scale_prior, use_imputation=use_imputation,
                         straight_through=straight_through, impute_inputs=TRACK_FEATURES, rollout_inputs=4)
        self.scale_prior = scale_prior
        self.tracker = InkTracker(n_slots, image_size, scale_prior, bounce_gaps, walls)
        if future_fit and walls is None:
            raise ValueError("future_fit needs the tracker's walls (model.tracker_motion_fit)")
        self.future_fit = future_fit
        self.presence_track = nn.Linear(2, 1)
        self.future_mu = nn.Linear(hidden, POSE_DIM)
        dcgan_init_(self.future_mu)
        with torch.no_grad():
            self.presence_track.weight.fill_(_PRESENCE_GAIN / 2)
            self.presence_track.bias.fill_(-_PRESENCE_GAIN * _PRESENCE_AT)

    def rollout_tracked(self, state: tuple[Tensor, Tensor], centre: Tensor, velocity: Tensor,
                        scale: Tensor, guide: Tensor | None = None) -> tuple[list[Tensor], Tensor]:
        """The prediction LSTM, fed back where its own increments have moved the slot.

        state: the imputation LSTM's final state (((b k) h) each); centre, velocity (b k 2): the
        slot's last tracked centre and motion; scale (b k): its posterior mean scale there. Returns
        the outputs, t_out x ((b k) h), and the increment means (b t_out k 3). Knowing its position,
        the LSTM has a simple function to learn where an object bounces off a wall.

        guide (b t_out k 2): centres the future increments start from (the tracker's motion fit,
        extrapolated); the LSTM's translation increments are then corrections to the guide's steps.
        """
        B = centre.shape[0]
        h, c = state
        s = rearrange(scale, "b k -> (b k)")
        position, motion = (rearrange(x, "b k xy -> (b k) xy").float() for x in (centre, velocity))
        raw = raw_translation(position, s)
        base = raw  # where the guide was at the previous frame (first: the last tracked centre)
        outputs, means = [], []
        for t in range(self.t_out):
            h, c = self.predict_cell(torch.cat([h, position.to(h.dtype), _VELOCITY_GAIN * motion.to(h.dtype)], -1),
                                     (h, c))
            mu = self.future_mu(h)  # ((b k) 3)
            if guide is not None:
                target = raw_translation(rearrange(guide[:, t], "b k xy -> (b k) xy").float(), s)
                mu = torch.cat([mu[:, :1].float(), mu[:, 1:].float() + target - base], dim=-1)
                base = target
            raw = raw + mu[:, 1:].float()
            reached = translation_centre(raw, s)
            position, motion = reached, reached - position
            outputs.append(h)
            means.append(mu)
        return outputs, rearrange(torch.stack(means, dim=1), "(b k) t p -> b t k p", b=B)

    def forward(self, feats: Tensor, frames: Tensor, *, temperature: float | Tensor = 1.0,
                presence_u: Tensor | None = None, imp_keep: Tensor | None = None,
                true_centres: Tensor | None = None) -> PosePosterior:
        """Frame features (b t_in d) and the frames (b t_in c h w) -> PosePosterior.

        The other arguments as ``PoseInference.forward``; true_centres (b t_in k 2): diagnostic
        only, the true centres replace the tracked ones.
        """
        B, T_in = feats.shape[:2]
        track = self.tracker(frames, true_centres, ahead=self.t_out if self.future_fit else 0)
        centres, seen = track.centres, torch.stack([track.share, track.match], dim=-1)  # (b t k 2), (b t k 2)
        velocity = centres.diff(dim=1, prepend=centres[:, :1])  # (b t k 2), 0 at frame 0

        e = self.encode_slots(feats)
        logits = self.presence_logits(e) + self.presence_track(seen.to(e.dtype)).squeeze(-1)
        m = self.sample_presence(logits, temperature, presence_u)
        weight = m if imp_keep is None else m * imp_keep
        features = torch.cat([centres, _VELOCITY_GAIN * velocity, seen], dim=-1).to(e.dtype)  # (b t k 6)
        outputs, state = self.impute(e, weight, features)
        init_mu, init_sigma = self.initial_pose(outputs[0], B)
        hidden_in = rearrange(torch.stack(outputs), "t (b k) h -> b t k h", b=B)
        correction = self.beta_mu(hidden_in)  # (b t_in k 3)
        # The translation that puts the centre at c depends on the scale: take the posterior mean
        # scale of each frame (as a constant: the tracker sets where, not how large).
        scale = (init_mu[..., None, :, 0] + correction[..., 0].cumsum(dim=1)).detach()  # (b t_in k)
        scale = scale.float().clamp(self.scale_prior - 1, self.scale_prior + 1)
        raw = raw_translation(centres, scale)  # (b t_in k 2)
        steps = F.pad(raw.diff(dim=1), (1, 0, 0, 0, 1, 0))  # (b t_in k 3): scale unchanged, none at frame 0

        # with future_fit: the straight motion with bounces that fits the input frames, continued
        future, future_mu = self.rollout_tracked(state, centres[:, -1], velocity[:, -1], scale[:, -1], track.ahead)
        hidden = torch.cat([hidden_in, rearrange(torch.stack(future), "t (b k) h -> b t k h", b=B)], dim=1)
        return PosePosterior(
            encoding=e,
            presence_logits=logits,
            presence=m,
            presence_hard=hard_decision(logits),
            beta_mu=torch.cat([correction + steps, future_mu], dim=1),
            beta_sigma=positive_scale(self.beta_sigma(hidden)),
            init_mu=init_mu + F.pad(raw[:, 0], (1, 0)),
            init_sigma=init_sigma,
        )

"""Pose and presence inference: from frame features to the posterior of every pose latent.

Five stages (reference section 2, "Pose and missingness inference"):

1. ``encode_slots``: slot-sequential bidirectional encoding of the frame
   features into e (b t k h). Slot k's LSTMs read slot k-1's hidden states, so
   later slots learn to explain what earlier ones left out.
2. ``presence_logits``: an LSTM across the slots of each frame gives the
   logits of the presence m[t, k] (1 = object visible). In training m is a
   relaxed Bernoulli sample, in eval mode the hard decision.
3. ``impute``: an LSTM over time per slot whose input at a missing frame is a
   regression g of its own previous state instead of e.
4. ``rollout``: a prediction LSTM continues each slot's state for t_out steps;
   shared linear heads give mean and scale of every per-frame pose increment.
5. ``initial_pose``: the imputation LSTM's output after frame 0, read across
   slots, gives mean and scale of the initial pose.

Stages 1, 2, 3 and 5 are methods of ``PoseStages``, which both variants build
on; stage 4 and the order of the stages are the variant's (``PoseInference``
here, ``TrackingPoseInference`` in dive/nn/pose_track.py).

The model (dive/model.py) samples the Gaussian pose latents; this module only
samples the presence, because imputation needs it on the way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from ..distributions import hard_decision, relaxed_bernoulli_rsample
from .init import dcgan_init_
from .lstm import LSTM

POSE_DIM = 3  # (s, tx, ty)
MIN_SCALE = 1e-4  # added to every softplus scale so that log(sigma) stays finite


def positive_scale(raw: Tensor) -> Tensor:
    """Posterior standard deviation from an unconstrained head output."""
    return F.softplus(raw) + MIN_SCALE


def inverse_positive_scale(std: float) -> float:
    """The head output at which `positive_scale` gives `std` (for initialising a head's bias)."""
    y = std - MIN_SCALE
    if not y > 0:
        raise ValueError(f"std must exceed {MIN_SCALE}, got {std}")
    return math.log(math.expm1(y))


@dataclass
class PosePosterior:
    """What pose inference hands to the model (shapes with t = t_in + t_out where marked T)."""

    encoding: Tensor  # e (b t_in k h)
    presence_logits: Tensor  # (b t_in k)
    presence: Tensor  # m actually used (b t_in k): relaxed sample in training, hard in eval
    presence_hard: Tensor  # (b t_in k) 0/1
    beta_mu: Tensor  # pose-increment mean (b T k 3)
    beta_sigma: Tensor  # (b T k 3)
    init_mu: Tensor  # initial-pose mean (b k 3)
    init_sigma: Tensor  # (b k 3)


class PoseStages(nn.Module):
    """The layers and stages that both pose inference variants are made of (stages 1, 2, 3 and 5).

    A variant (``PoseInference`` below, ``TrackingPoseInference`` in dive/nn/pose_track.py) adds
    its own rollout and its ``forward``; it replaces nothing built here. The layers sit on the
    variant itself, not on a submodule, so that parameter names (``pose.enc_fwd.weight_ih_l0``,
    ...) stay those of checkpoints, of tests/golden and of the conformance mapping
    (dive/convert_original.py).

    impute_inputs: width of further per-frame inputs the imputation LSTM reads beside e and its
    presence weight (0 for DIVE's own); rollout_inputs: the same for the prediction LSTM.
    """

    def __init__(self, feat_dim: int, hidden: int, n_slots: int, t_out: int, scale_prior: float, *,
                 use_imputation: bool = True, straight_through: bool = False, impute_inputs: int = 0,
                 rollout_inputs: int = 0):
        super().__init__()
        self.hidden, self.n_slots, self.t_out = hidden, n_slots, t_out
        self.use_imputation, self.straight_through = use_imputation, straight_through

        self.enc_fwd = LSTM(feat_dim + hidden, hidden, batch_first=True)
        self.enc_bwd = LSTM(feat_dim + hidden, hidden, batch_first=True)
        self.enc_out = nn.Linear(2 * hidden, hidden)

        self.presence_rnn = LSTM(hidden, hidden, batch_first=True)
        self.presence_head = nn.Linear(hidden, 1)

        # With imputation the LSTM also reads the presence weight it mixed with.
        self.impute_cell = nn.LSTMCell(hidden + (1 if use_imputation else 0) + impute_inputs, hidden)
        if use_imputation:
            self.impute_regression = nn.Linear(hidden, hidden)
        self.predict_cell = nn.LSTMCell(hidden + rollout_inputs, hidden)
        self.beta_mu = nn.Linear(hidden, POSE_DIM)
        self.beta_sigma = nn.Linear(hidden, POSE_DIM)

        self.init_rnn = LSTM(hidden, hidden, batch_first=True)
        self.init_mu = nn.Linear(hidden, POSE_DIM)
        self.init_sigma = nn.Linear(hidden, POSE_DIM)

        dcgan_init_(self)
        # Start every slot at the prior scale, centred: with zero bias the
        # clamp would put s at prior - 1 (objects drawn too large) and the
        # first updates would be spent on finding the scale.
        with torch.no_grad():
            self.init_mu.bias.copy_(torch.tensor([scale_prior, 0.0, 0.0]))

    # ----------------------------------------------------------------- stages

    def encode_slots(self, feats: Tensor) -> Tensor:
        """Frame features (b t d) -> e (b t k h)."""
        B, T, _ = feats.shape
        feats_rev = feats.flip(1)
        prev_fwd = feats.new_zeros(B, T, self.hidden)
        prev_bwd = feats.new_zeros(B, T, self.hidden)  # in reversed time, as enc_bwd reads it
        encodings = []
        for _ in range(self.n_slots):
            out_fwd, _ = self.enc_fwd(torch.cat([feats, prev_fwd], dim=-1))  # (b t h)
            out_bwd, _ = self.enc_bwd(torch.cat([feats_rev, prev_bwd], dim=-1))  # (b t h), reversed time
            encodings.append(self.enc_out(torch.cat([out_fwd, out_bwd.flip(1)], dim=-1)))
            prev_fwd, prev_bwd = out_fwd, out_bwd
        return torch.stack(encodings, dim=2)

    def presence_logits(self, e: Tensor) -> Tensor:
        """e (b t k h) -> logits (b t k)."""
        B = e.shape[0]
        out, _ = self.presence_rnn(rearrange(e, "b t k h -> (b t) k h"))
        return rearrange(self.presence_head(out), "(b t) k 1 -> b t k", b=B)

    def sample_presence(self, logits: Tensor, temperature: float | Tensor, u: Tensor | None) -> Tensor:
        """m (b t k): relaxed Bernoulli sample in training (uniforms `u`), hard decision in eval."""
        if not self.training:
            return hard_decision(logits)
        return relaxed_bernoulli_rsample(logits, temperature, u=u, straight_through=self.straight_through)

    def impute(self, e: Tensor, weight: Tensor, inputs: Tensor | None = None) -> tuple[list[Tensor], tuple[Tensor, Tensor]]:
        """Imputation LSTM over the input frames, all slots batched.

        e (b t k h); weight (b t k): how much of e enters at each frame (the
        presence, times the imputation-dropout keep mask), the rest coming
        from the regression g of the previous state. Frame 0 always reads e.
        inputs (b t k f): further per-frame inputs (f = impute_inputs), appended
        as they are.
        Returns the outputs, one ((b k) h) per frame, and the final state.
        """
        B, T, K, H = e.shape
        e = rearrange(e, "b t k h -> t (b k) h")
        weight = rearrange(weight, "b t k -> t (b k) 1")
        if inputs is not None:
            inputs = rearrange(inputs, "b t k f -> t (b k) f")
        weight = torch.cat([torch.ones_like(weight[:1]), weight[1:]])
        h = c = e.new_zeros(B * K, H)
        outputs = []
        for t in range(T):
            x = e[t]
            if self.use_imputation:
                if t > 0:
                    x = weight[t] * x + (1 - weight[t]) * self.impute_regression(h)
                x = torch.cat([x, weight[t]], dim=-1)
            if inputs is not None:
                x = torch.cat([x, inputs[t]], dim=-1)
            h, c = self.impute_cell(x, (h, c))
            outputs.append(h)
        return outputs, (h, c)

    def initial_pose(self, first: Tensor, batch: int) -> tuple[Tensor, Tensor]:
        """Imputation output after frame 0 ((b k) h) -> initial-pose mean and scale (b k 3)."""
        out, _ = self.init_rnn(rearrange(first, "(b k) h -> b k h", b=batch))
        return self.init_mu(out), positive_scale(self.init_sigma(out))


class PoseInference(PoseStages):
    """DIVE's own pose inference (``model.pose_inference = "sequential"``): the five stages in order."""

    def __init__(self, feat_dim: int, hidden: int, n_slots: int, t_out: int, scale_prior: float, *,
                 use_imputation: bool = True, straight_through: bool = False, slot_spread: float = 0.0):
        super().__init__(feat_dim, hidden, n_slots, t_out, scale_prior, use_imputation=use_imputation,
                         straight_through=straight_through)
        # Optional learned per-slot offset of the initial-pose mean, started with the slots spread
        # evenly on a circle of raw radius `slot_spread` around the centre. Without it every slot
        # starts at the same pose, receives nearly the same gradient and tends to stay on top of
        # the others (docs/studies/s2-fast-screening.md).
        if slot_spread > 0:
            angle = 2 * math.pi * torch.arange(n_slots) / n_slots
            offset = torch.stack([torch.zeros(n_slots), slot_spread * torch.cos(angle),
                                  slot_spread * torch.sin(angle)], dim=-1)
            self.init_slot_offset = nn.Parameter(offset)  # (k 3)
        else:
            self.init_slot_offset = None

    def rollout(self, state: tuple[Tensor, Tensor]) -> list[Tensor]:
        """Prediction LSTM from each slot's own imputation state, fed its own output; t_out x ((b k) h)."""
        h, c = state
        outputs = []
        for _ in range(self.t_out):
            h, c = self.predict_cell(h, (h, c))
            outputs.append(h)
        return outputs

    def forward(self, feats: Tensor, *, temperature: float | Tensor = 1.0,
                presence_u: Tensor | None = None, imp_keep: Tensor | None = None) -> PosePosterior:
        """Frame features (b t_in d) -> PosePosterior.

        presence_u (b t_in k): uniforms for the relaxed presence sample
        (training only; drawn if None). imp_keep (b t_in k): 0/1 mask, 0 where
        an observed frame is to be treated as missing (imputation dropout);
        None keeps every frame.
        """
        B = feats.shape[0]
        e = self.encode_slots(feats)
        logits = self.presence_logits(e)
        m = self.sample_presence(logits, temperature, presence_u)
        weight = m if imp_keep is None else m * imp_keep

        outputs, state = self.impute(e, weight)
        outputs = outputs + self.rollout(state)
        hidden = rearrange(torch.stack(outputs), "t (b k) h -> b t k h", b=B)
        init_mu, init_sigma = self.initial_pose(outputs[0], B)
        if self.init_slot_offset is not None:
            init_mu = init_mu + self.init_slot_offset
        return PosePosterior(
            encoding=e,
            presence_logits=logits,
            presence=m,
            presence_hard=hard_decision(logits),
            beta_mu=self.beta_mu(hidden),
            beta_sigma=positive_scale(self.beta_sigma(hidden)),
            init_mu=init_mu,
            init_sigma=init_sigma,
        )

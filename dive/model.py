"""DIVE: encode a video into per-slot pose, presence and appearance latents, decode them back.

``DIVE.forward`` is the training and evaluation pass (posterior parameters,
samples and renderings, returned as a ``DIVEOutput`` for dive/elbo.py);
``DIVE.predict`` is the entry point for users: input frames in, imputed
reconstruction, prediction and decomposition out.

All randomness of a forward pass comes in through one dict of named noise
tensors (``sample_noise``), so that a pass can be repeated exactly, on any
device, and compiled without random ops inside. In eval mode no noise is used:
latents are their posterior means, presence decisions are hard and both gamma
dropouts are off, so eval passes are deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange
from torch import Tensor, nn

from .config import DataConfig, ModelConfig
from .distributions import at_least_float32, gaussian_rsample
from .errors import InputError
from .nn.appearance import AppearanceInference
from .nn.convnets import FrameEncoder, ObjectDecoder
from .nn.pose import POSE_DIM, PoseInference, inverse_positive_scale
from .nn.pose_track import TrackingPoseInference
from .nn.stn import compose, constrain_pose, object_to_image


@dataclass
class DIVEOutput:
    """One forward pass. T = t_in + t_out; S = image_size / 2 (object canvas)."""

    input_masked: Tensor  # (b t_in c h w) slots times presence, summed, clamped at 1: compare with the observed input
    input_rec: Tensor | None  # (b t_in c h w) slots summed unmasked: the imputed reconstruction (None: not rendered)
    pred: Tensor  # (b t_out c h w) future frames
    slots: Tensor | None  # (b T k c h w) each slot placed in the frame, unmasked (None: not rendered)
    objects: Tensor  # (b T k c S S) decoded object canvases
    pose: Tensor  # (b T k 3) constrained poses (s, tx, ty)
    presence_logits: Tensor  # (b t_in k)
    presence: Tensor  # (b t_in k) the m used: relaxed (or straight-through) sample in training, hard in eval
    presence_hard: Tensor  # (b t_in k) 0/1 decisions, logits > 0
    app_mu: Tensor  # (b T k a) appearance posterior
    app_sigma: Tensor  # (b T k a)
    pose_mu: Tensor  # (b T k 3) pose-increment posterior
    pose_sigma: Tensor  # (b T k 3)
    init_mu: Tensor  # (b k 3) initial-pose posterior (before constrain_pose)
    init_sigma: Tensor  # (b k 3)


_NEIGHBOUR_OFFSETS = (-1, -2, 1, 2)  # order of preference when filling a missing frame


def fill_missing_appearance(z: Tensor, observed: Tensor) -> Tensor:
    """Copy appearance into frames marked missing from the nearest observed neighbour.

    z (b t k a), observed (b t k) 0/1. A missing (t, k) takes z[t + o, k] for
    the first offset o in (-1, -2, +1, +2) whose frame exists and is observed;
    with none, it keeps its own value. Batched with one gather.
    """
    B, T, K, A = z.shape
    t = torch.arange(T, device=z.device)
    offsets = torch.tensor(_NEIGHBOUR_OFFSETS, device=z.device)
    source = t[:, None] + offsets  # (t o)
    inside = (source >= 0) & (source < T)
    source = source.clamp(0, T - 1)
    valid = (observed[:, source] > 0) & inside[None, :, :, None]  # (b t o k)
    first = valid.to(z.dtype).argmax(dim=2)  # (b t k): argmax returns the first maximum
    chosen = torch.gather(source[None, :, :, None].expand(B, T, -1, K), 2, first.unsqueeze(2)).squeeze(2)
    replace = (observed <= 0) & valid.any(dim=2)
    index = torch.where(replace, chosen, t[None, :, None])  # (b t k)
    return torch.gather(z, 1, index.unsqueeze(-1).expand(-1, -1, -1, A))


def forward_batch(module: nn.Module, batch: dict[str, Tensor], **kwargs) -> DIVEOutput:
    """Run a DIVE, or its compiled or DistributedDataParallel wrapper, on a data batch.

    The one place where a batch becomes `forward`'s arguments: its ``input`` and, with
    ``model.diagnostic_true_positions``, the digits' true centres (`DIVE.diagnostic_inputs`);
    `kwargs` go to `forward` as they are. Training (dive/objective.py), evaluation, the
    pictures and evaluate.py all come through here.
    """
    model = module
    while not isinstance(model, DIVE):  # torch.compile's wrapper holds it as _orig_mod, DDP as module,
        # dive.compile.CompiledModel as compiled
        inner = next((getattr(model, name) for name in ("_orig_mod", "module", "compiled") if hasattr(model, name)),
                     None)
        if inner is None:
            raise InputError(f"forward_batch needs a DIVE model or a wrapper of one, got {type(module).__name__}")
        model = inner
    return module(batch["input"], **model.diagnostic_inputs(batch), **kwargs)


class DIVE(nn.Module):
    def __init__(self, model_cfg: ModelConfig, data_cfg: DataConfig):
        super().__init__()
        m, d = model_cfg, data_cfg
        self.image_size, self.channels = d.image_size, d.channels
        self.t_in, self.t_out = d.t_in, d.t_out
        self.n_slots, self.app_dim, self.scale_prior = m.n_slots, m.app_dim, m.scale_prior
        self.scale_range, self.position_margin = tuple(m.scale_range), m.position_margin
        self.obj_size = d.image_size // 2
        # constrain_pose keeps s >= scale_prior + scale_range[0], which bounds how much of a frame an
        # object can touch: placing and cropping then work on that window only (dive/nn/stn.py)
        self.min_scale = m.scale_prior + m.scale_range[0] if m.scale_prior + m.scale_range[0] > 0 else None

        self.frame_encoder = FrameEncoder(d.channels, d.image_size, m.feat_dim, m.conv_width)
        if m.pose_inference == "track":
            self.pose = TrackingPoseInference(m.feat_dim, m.hidden, m.n_slots, d.t_out, m.scale_prior,
                                              image_size=d.image_size, use_imputation=m.use_imputation,
                                              straight_through=m.straight_through,
                                              bounce_gaps=m.tracker_bounce_gaps,
                                              walls=1 - d.digit_size / d.image_size if m.tracker_motion_fit else None,
                                              future_fit=m.tracker_future_fit)
        else:
            self.pose = PoseInference(m.feat_dim, m.hidden, m.n_slots, d.t_out, m.scale_prior,
                                      use_imputation=m.use_imputation, straight_through=m.straight_through,
                                      slot_spread=m.slot_spread)
        self.diagnostic_true_positions = m.diagnostic_true_positions
        self.appearance = AppearanceInference(d.channels, self.obj_size, m.app_dim, m.hidden, m.dyn_dim,
                                              m.n_slots, d.t_out, m.conv_width,
                                              use_dynamic=m.use_dynamic_appearance, min_scale=self.min_scale)
        self.decoder = ObjectDecoder(d.channels, self.obj_size, m.app_dim, m.conv_width)
        with torch.no_grad():
            if m.pose_std_init > 0:
                self.pose.beta_sigma.bias.fill_(inverse_positive_scale(m.pose_std_init))
                self.pose.init_sigma.bias.fill_(inverse_positive_scale(m.pose_std_init))
            if m.app_std_init > 0:
                self.appearance.z_head.bias[m.app_dim:].fill_(inverse_positive_scale(m.app_std_init))

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        """(t_in, c, h, w) of one input video."""
        return self.t_in, self.channels, self.image_size, self.image_size

    def sample_noise(self, batch_size: int, device: torch.device | str | None = None,
                     generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """All the randomness of one training pass, as named float32 tensors.

        app (b T k a), pose (b T k 3), init (b k 3): N(0, 1) for the Gaussian latents;
        presence (b t_in k): U(0, 1) for the relaxed Bernoulli;
        imp_drop (b t_in k), app_drop (1,): U(0, 1) for the two gamma dropouts.
        """
        B, K, T = batch_size, self.n_slots, self.t_in + self.t_out
        kw = dict(device=device, generator=generator)
        return {
            "app": torch.randn(B, T, K, self.app_dim, **kw),
            "pose": torch.randn(B, T, K, POSE_DIM, **kw),
            "init": torch.randn(B, K, POSE_DIM, **kw),
            "presence": torch.rand(B, self.t_in, K, **kw),
            "imp_drop": torch.rand(B, self.t_in, K, **kw),
            "app_drop": torch.rand(1, **kw),
        }

    def diagnostic_inputs(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Keyword arguments of `forward` taken from a data batch: the true centres when the model is
        configured with model.diagnostic_true_positions, nothing otherwise."""
        if not self.diagnostic_true_positions:
            return {}
        if "positions" not in batch:
            raise InputError("model.diagnostic_true_positions needs batches with digit positions (Moving MNIST)")
        return {"true_centres": batch["positions"][:, : self.t_in]}

    def forward(self, input: Tensor, *, temperature: float | Tensor = 1.0, gamma_app: float = 0.0,
                gamma_imp: float = 0.0, noise: dict[str, Tensor] | None = None,
                fill_missing: bool | None = None, true_centres: Tensor | None = None,
                future_poses_only: bool = False, render_slots: bool = True) -> DIVEOutput:
        """input (b t_in c h w) in [0, 1] -> DIVEOutput.

        Training mode: latents are sampled with `noise` (drawn if None), the
        presence is relaxed at `temperature`, an observed frame is treated as
        missing with probability `gamma_imp` and the dynamic appearance is
        dropped for the whole batch with probability `gamma_app`.
        Eval mode: posterior means, hard presence, no dropout; `noise`,
        `temperature` and the gammas are ignored.
        fill_missing (default: on in eval mode only): give frames decided
        missing the appearance of their nearest observed neighbour.
        true_centres (b t_in k 2): diagnostic only (see `diagnostic_inputs`),
        the tracking pose inference uses these centres instead of its own.
        future_poses_only: the future frames' renderings pass gradients to
        their poses only, not to the appearance and the decoder (a training
        warm-up, schedule.future_poses_only_steps; the values are unchanged).
        render_slots: False renders only what the ELBO reads, the composites
        input_masked and pred, each in one pass over the slots
        (dive/nn/stn.py: compose); slots and input_rec are then None. The
        training loop's setting: same values, a faster step.
        A wrong shape or dtype raises InputError; values are checked by `predict`, not here.
        """
        self.check_input(input, values=False)
        self._check_placement(input)
        B, T_in = input.shape[:2]
        K, T = self.n_slots, self.t_in + self.t_out
        train = self.training
        if train:
            if isinstance(temperature, (int, float)) and not temperature > 0:
                raise InputError(f"temperature must be > 0, got {temperature!r}")
            for name, gamma in (("gamma_app", gamma_app), ("gamma_imp", gamma_imp)):
                if isinstance(gamma, (int, float)) and not 0 <= gamma <= 1:
                    raise InputError(f"{name} must be a probability in [0, 1], got {gamma!r}")
            if noise is not None:
                self._check_noise(noise, B)
        if fill_missing is None:
            fill_missing = not train
        if train and noise is None:
            noise = self.sample_noise(B, input.device)

        feats = rearrange(self.frame_encoder(rearrange(input, "b t c h w -> (b t) c h w")),
                          "(b t) d -> b t d", b=B)
        imp_keep = (noise["imp_drop"] >= gamma_imp).to(input.dtype) if train else None
        sampling = dict(temperature=temperature, presence_u=noise["presence"] if train else None, imp_keep=imp_keep)
        if isinstance(self.pose, TrackingPoseInference):  # it also reads the frames
            post = self.pose(feats, input, true_centres=true_centres, **sampling)
        elif true_centres is not None:
            raise InputError("true_centres is read only by the tracking pose inference "
                             "(model.pose_inference = \"track\")")
        else:
            post = self.pose(feats, **sampling)

        if train:
            beta = gaussian_rsample(post.beta_mu, post.beta_sigma, noise["pose"])
            init = gaussian_rsample(post.init_mu, post.init_sigma, noise["init"])
        else:
            beta, init = post.beta_mu, post.init_mu
        # In float32 even under autocast: bf16 would quantise positions to a fraction of a pixel.
        raw_pose = at_least_float32(init).unsqueeze(1) + at_least_float32(beta).cumsum(dim=1)
        pose = constrain_pose(raw_pose, self.scale_prior, self.scale_range, self.position_margin)  # (b T k 3)

        dyn_keep = (noise["app_drop"] >= gamma_app).to(input.dtype) if train else 1.0
        app_mu, app_sigma = self.appearance(input, pose[:, :T_in], post.presence, dyn_keep)
        z = gaussian_rsample(app_mu, app_sigma, noise["app"]) if train else app_mu
        if fill_missing:
            z = torch.cat([fill_missing_appearance(z[:, :T_in], post.presence_hard), z[:, T_in:]], dim=1)

        objects = rearrange(self.decoder(rearrange(z, "b t k a -> (b t k) a")), "(b t k) c h w -> b t k c h w",
                            b=B, t=T)
        if future_poses_only:
            # Decoded together (batch norm sees the same batch), cut after: while the future poses are
            # still wrong, their frames would teach the appearance and the decoder to blur.
            objects_in, objects_out = objects.split([T_in, self.t_out], dim=1)
            objects = torch.cat([objects_in, objects_out.detach()], dim=1)
        if render_slots:
            slots = object_to_image(rearrange(objects, "b t k c h w -> (b t k) c h w"),
                                    rearrange(pose, "b t k p -> (b t k) p"), self.image_size, min_scale=self.min_scale)
            slots = rearrange(slots, "(b t k) c h w -> b t k c h w", b=B, t=T)
            # split, not slicing: slice backward would zero-fill a full-size gradient per slice
            slots_in, slots_out = slots.split([T_in, self.t_out], dim=1)
            m = rearrange(post.presence, "b t k -> b t k 1 1 1")
            input_masked, input_rec = (slots_in * m).sum(dim=2), slots_in.sum(dim=2)
            pred = slots_out.sum(dim=2)
        else:
            weight = torch.cat([post.presence, post.presence.new_ones(B, self.t_out, K)], dim=1)  # (b T k)
            frames = compose(rearrange(objects, "b t k c h w -> (b t) k c h w"),
                             rearrange(pose, "b t k p -> (b t) k p"), rearrange(weight, "b t k -> (b t) k"),
                             self.image_size, min_scale=self.min_scale)
            input_masked, pred = rearrange(frames, "(b t) c h w -> b t c h w", b=B).split([T_in, self.t_out], dim=1)
            slots = input_rec = None
        return DIVEOutput(
            input_masked=input_masked.clamp(max=1),
            input_rec=None if input_rec is None else input_rec.clamp(max=1),
            pred=pred.clamp(max=1),
            slots=slots,
            objects=objects,
            pose=pose,
            presence_logits=post.presence_logits,
            presence=post.presence,
            presence_hard=post.presence_hard,
            app_mu=app_mu,
            app_sigma=app_sigma,
            pose_mu=post.beta_mu,
            pose_sigma=post.beta_sigma,
            init_mu=post.init_mu,
            init_sigma=post.init_sigma,
        )

    def _check_placement(self, input: Tensor) -> None:
        # forward does not convert (predict does): say so before a conv layer fails with a dtype error.
        # Under autocast any floating dtype is cast for us. Skipped while compiling: the compiled
        # graph is guarded on dtype and device anyway.
        if torch.compiler.is_compiling():
            return
        param = next(self.parameters())
        if input.device != param.device:
            raise InputError(f"expected input on {param.device} (where the model is), got {input.device}")
        if input.dtype != param.dtype and not torch.is_autocast_enabled(input.device.type):
            raise InputError(f"expected {param.dtype} input (the model's dtype), got {input.dtype}; "
                             "predict() converts for you, forward() does not")

    def _check_noise(self, noise: dict[str, Tensor], batch_size: int) -> None:
        if not isinstance(noise, dict):
            raise InputError(f"noise must be a dict as returned by sample_noise, got {type(noise).__name__}")
        K, T, B = self.n_slots, self.t_in + self.t_out, batch_size
        expected = {"app": (B, T, K, self.app_dim), "pose": (B, T, K, POSE_DIM), "init": (B, K, POSE_DIM),
                    "presence": (B, self.t_in, K), "imp_drop": (B, self.t_in, K), "app_drop": (1,)}
        for key, shape in expected.items():
            got = noise.get(key)
            if not isinstance(got, Tensor) or tuple(got.shape) != shape:
                found = tuple(got.shape) if isinstance(got, Tensor) else type(got).__name__
                raise InputError(f"noise[{key!r}]: expected a tensor of shape {shape} "
                                 f"(see sample_noise), got {found}")

    # ----------------------------------------------------------------- inference entry point

    def check_input(self, input: Tensor, values: bool = True) -> None:
        """Raise InputError unless `input` is a floating (b t_in c h w) tensor, b >= 1, and (with
        `values`) finite with values in [0, 1]. The value checks read the whole tensor (a host sync
        on CUDA), so the training pass does without them."""
        t, c, h, w = self.input_shape
        expected = f"(B, {t}, {c}, {h}, {w})"
        if not isinstance(input, Tensor):
            raise InputError(f"expected a torch.Tensor of shape {expected}, got {type(input).__name__}")
        if input.dim() != 5 or tuple(input.shape[1:]) != (t, c, h, w):
            got = "(" + ", ".join(["B", *map(str, input.shape[1:])]) + ")" if input.dim() >= 1 else "()"
            raise InputError(f"expected input of shape {expected}, got {got} (full shape {tuple(input.shape)})")
        if input.shape[0] < 1:
            raise InputError(f"expected input of shape {expected} with B >= 1, got B = 0")
        if not input.is_floating_point():
            raise InputError(f"expected a floating-point input with values in [0, 1], got dtype {input.dtype}")
        if values:
            if not torch.isfinite(input).all():
                raise InputError("input contains NaN or infinite values")
            lo, hi = input.min().item(), input.max().item()
            if lo < 0 or hi > 1:
                raise InputError(f"expected input values in [0, 1], found [{lo:.4g}, {hi:.4g}]")

    @torch.no_grad()
    def predict(self, input: Tensor) -> dict[str, Tensor]:
        """Eval-mode pass for users: input (b t_in c h w) in [0, 1] -> dict of

        reconstruction (b t_in c h w, imputed and unmasked), prediction
        (b t_out c h w), slots (b T k c h w), pose (b T k 3), presence_prob
        (b t_in k, sigmoid of the logits), presence (b t_in k, hard 0/1).
        """
        self.check_input(input)
        # Users hand in float64 arrays or CPU tensors; converting is what they mean, and conv layers refuse both.
        param = next(self.parameters())
        input = input.to(device=param.device, dtype=param.dtype)
        was_training = self.training
        self.eval()
        try:
            out = self(input)
        finally:
            self.train(was_training)
        return {
            "reconstruction": out.input_rec,
            "prediction": out.pred,
            "slots": out.slots,
            "pose": out.pose,
            "presence_prob": torch.sigmoid(out.presence_logits),
            "presence": out.presence_hard,
        }

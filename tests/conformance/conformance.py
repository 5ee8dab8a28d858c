"""Number for number against the original: this code and the authors' Pyro code on the same weights, input and noise.

    python tests/conformance/conformance.py --original PATH/TO/DIVE            # check, write the report
    python tests/conformance/conformance.py --original PATH/TO/DIVE --write    # also rewrite original.npz

Needs a git checkout of github.com/Rose-STL-Lab/DIVE at commit `COMMIT` and a
Python environment with pyro-ppl (checked with `PYRO_VERSION`) beside this
package. Nothing of the original is copied here: the script imports the
checkout the user points it to.

For each setting in `SETTINGS` (s1, s2, s3, the DDPAE ablation, pedestrians;
all at small sizes, seconds each) it

1. builds this code's model from the published config at small sizes, with
   random weights at a scale where every layer matters, and the original's
   `DiveModel` on the CPU (the `COMPAT` patches: CUDA calls as no-ops, no
   tensorboardX), and loads the same weights into both
   (`dive.convert_original.to_original`);
2. runs an eval pass and a training pass of both on the same input
   sequences, feeding the original this code's noise: its Gaussian sample
   sites get the same standard normals (a Normal whose sample is
   loc + scale * eps), its two dropouts read the same uniforms
   (`random.random` and the Bernoulli of the imputation dropout);
3. compares every output (poses and their posterior parameters, presence,
   appearance posterior, decoded objects, slot renderings, reconstruction,
   prediction), each sample site's log q and log p at the shared sample, the
   two likelihood terms, the ELBO, and the gradient of every parameter of
   the ELBO (the original's loss is -ELBO, unscaled; this code's is
   -ELBO / (B T C H W), so its gradients are compared times B T C H W).

Each documented departure of this code from the original
(docs/model.md, "Differences from the original") is applied to the
original as a named edit in `EDITS`: a runtime patch of the imported
original (a wrapped method or module attribute), never a change of the
checkout's files. With every edit applied all numbers must match to
`RTOL`; with any single edit left out, the comparison must fail for at
least one setting, which shows that the list is complete and each edit
necessary. The script also undoes, on this code's side, each fix made to
match the original (`FIXES`): each must fail too.

`--write` stores the original's numbers (with every edit) as plain arrays
in tests/conformance/original.npz, with their provenance; tests/test_conformance.py
checks this code against them in CI, without pyro. The report
(tests/conformance/report.md) lists the largest relative difference per
output family, for every setting, with all edits and with each left out.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib
import math
import platform
import shlex
import subprocess
import sys
import types
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE.parent / "golden"))

from dive import config as config_mod  # noqa: E402
from dive.convert_original import from_original, to_original  # noqa: E402
from dive.data import MovingMNIST  # noqa: E402
from dive.distributions import gaussian_log_prob, relaxed_bernoulli_logit_log_prob, relaxed_bernoulli_rsample_logit  # noqa: E402
from dive.elbo import elbo  # noqa: E402
from dive.engine import build_optimizer  # noqa: E402
from dive.model import DIVE  # noqa: E402
from make_golden import randomize_  # noqa: E402  (tests/golden/make_golden.py)

COMMIT = "9db175b2c5b6743f559cc3ddacc6d0e74c8fb9ce"
REPOSITORY = "https://github.com/Rose-STL-Lab/DIVE"
PYRO_VERSION = "1.9.2"  # the version the stored numbers were made with; others are tried with a warning
RTOL = 1e-8  # both codes run in float64 (main); the differences are ~1e-12
STORE = HERE / "original.npz"
SAVED = HERE / "original_s3_checkpoint"  # the original's own save() of the s3 setting's weights
REPORT = HERE / "report.md"

SMALL = ["data.t_in=7", "data.t_out=2", "model.feat_dim=16", "model.app_dim=8", "model.hidden=8",
         "model.dyn_dim=4", "model.conv_width=2", "train.batch_size=2"]


@dataclass
class Setting:
    name: str
    config: str  # file in configs/
    overrides: list[str]  # the batch size is train.batch_size (Adam's eps depends on it)
    # schedule values of the training pass; app_drop is the uniform the gamma_app dropout reads
    temperature: float = 0.7
    gamma_app: float = 0.3
    gamma_imp: float = 0.25
    app_drop: float = 0.9
    future_mask: bool = False  # s1 from the switch step on


SETTINGS = {
    "s1": Setting("s1", "s1.toml", SMALL, future_mask=True),
    "s2": Setting("s2", "s2.toml", SMALL),
    "s3": Setting("s3", "s3.toml", SMALL),
    "ddpae": Setting("ddpae", "ddpae.toml", SMALL),
    # 64 x 64 instead of 256 x 256 (the original then needs its pedestrian switch set by hand, see
    # OriginalRun): the same model, constraint and priors at a size whose outputs can be stored.
    "pedestrian": Setting("pedestrian", "pedestrian.toml", SMALL + ["data.image_size=64"], app_drop=0.1),
}

FIELDS = ("pose", "pose_mu", "pose_sigma", "init_mu", "init_sigma", "presence_logits", "presence",
          "app_mu", "app_sigma", "objects", "slots", "input_masked", "input_rec", "pred")
SITES = ("input_beta", "pred_beta", "initial_pose", "appearance", "mask")


# ----------------------------------------------------------------------------- this code's side


def setting_config(s: Setting) -> config_mod.Config:
    return config_mod.load(ROOT / "configs" / s.config, s.overrides)


def make_batch(s: Setting, cfg: config_mod.Config) -> dict[str, torch.Tensor]:
    """Input sequences of the setting: its test set (Moving MNIST), or for pedestrians s2 digits at the
    setting's image size with one input frame blanked."""
    n = cfg.train.batch_size
    if cfg.data.dataset == "moving_mnist":
        b = MovingMNIST(config=cfg.data, split="test", seed=0).batch(list(range(n)))
        return {k: b[k].to(torch.get_default_dtype()) for k in ("input", "target", "visible")}
    small = config_mod.load(ROOT / "configs" / "s2.toml", [f"data.t_in={cfg.data.t_in}", f"data.t_out={cfg.data.t_out}"])
    b = MovingMNIST(config=small.data, split="test", seed=0).batch(list(range(n)))
    b = {k: v.to(torch.get_default_dtype()) for k, v in b.items() if k in ("input", "target")}
    size = cfg.data.image_size

    def up(x):
        return F.interpolate(x.flatten(0, 1), size=(size, size), mode="bilinear", align_corners=False).view(
            *x.shape[:3], size, size).clamp(0, 1)

    x = up(b["input"])
    x[:, 3] = 0  # one blanked input frame, as the pedestrian loader's missing data
    return {"input": x, "target": up(b["target"]), "visible": torch.ones(n, 1, size, size)}


@contextlib.contextmanager
def default_dtype(dtype):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def make_model(cfg: config_mod.Config, seed: int = 0) -> DIVE:
    """Random weights drawn in float32 (so that the stored float32 copy is exact), the model in float64."""
    with default_dtype(torch.float32):
        model = _random_model(cfg, seed)
    return model.to(torch.float64)


def _random_model(cfg: config_mod.Config, seed: int) -> DIVE:
    torch.manual_seed(seed)
    model = DIVE(cfg.model, cfg.data)
    randomize_(model)  # weights at a scale where every layer matters, as tests/golden's
    return model


def split_presence(model: DIVE, batch) -> None:
    """Shift the presence head's bias so that the eval pass decides about half of the first slot's frames
    missing (the test-time fill then has neighbours to copy from) and no logit lies within rounding of the
    threshold."""
    model.eval()
    with torch.no_grad():
        logits = model(batch["input"]).presence_logits[..., 0].flatten().sort().values
        n = logits.numel()
        middle = range(n // 3, max(n // 3 + 1, 2 * n // 3))
        i = max(middle, key=lambda j: float(logits[j + 1] - logits[j]))
        bias = model.pose.presence_head.bias
        bias.copy_((bias - (logits[i] + logits[i + 1]) / 2).float())  # float32-exact, as every stored weight


def make_noise(model: DIVE, cfg: config_mod.Config, s: Setting) -> dict[str, torch.Tensor]:
    with default_dtype(torch.float32):  # float32 draws, so that the stored copy is exact
        noise = model.sample_noise(cfg.train.batch_size, "cpu", generator=torch.Generator().manual_seed(1))
        noise["app_drop"] = torch.tensor([s.app_drop])
    return {k: v.double() for k, v in noise.items()}


def ours(model: DIVE, state, cfg, s: Setting, batch, noise, mlp_slope: float | None = None,
         eps: float | None = None) -> dict[str, np.ndarray]:
    """Every compared number of this code: eval pass, training pass, sites, ELBO, gradients (times B T C H W),
    and the change of every parameter in one optimiser step. `mlp_slope`, `eps`: undo a fix (FIXES)."""
    res: dict[str, np.ndarray] = {}
    if mlp_slope is not None:  # undoing a fix (FIXES)
        for m in model.modules():
            if isinstance(m, nn.LeakyReLU) and m.negative_slope == 0.01:
                m.negative_slope = mlp_slope
    model.load_state_dict(state)
    model.eval()
    with torch.no_grad():
        out = model(batch["input"])
    for f in FIELDS:
        res[f"eval/{f}"] = getattr(out, f).numpy()

    model.load_state_dict(state)
    model.train()
    model.zero_grad(set_to_none=True)
    sched = dict(temperature=s.temperature, gamma_app=s.gamma_app, gamma_imp=s.gamma_imp)
    out = model(batch["input"], noise=noise, fill_missing=False, **sched)
    e = elbo(out, batch, cfg.loss, future_mask=s.future_mask)
    e.loss.backward()
    for f in FIELDS:
        res[f"train/{f}"] = getattr(out, f).detach().numpy()
    res["ll_input"] = e.terms["ll_input"].detach().double().numpy()
    res["ll_future"] = e.terms["ll_future"].detach().double().numpy()
    res["elbo"] = e.total.detach().double().numpy()
    for name, p in model.named_parameters():
        g = p.grad if p.grad is not None else torch.zeros_like(p)
        res[f"grad/{name}"] = (g * e.n_elements).numpy()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = build_optimizer(model, cfg)
    if eps is not None:
        opt.param_groups[0]["eps"] = eps
    opt.step()
    for name, p in model.named_parameters():
        res[f"step/{name}"] = (p.detach() - before[name]).numpy()

    # log q and log p of every sample site at the shared sample
    t_in, loss_cfg = cfg.data.t_in, cfg.loss
    with torch.no_grad():
        beta = out.pose_mu + out.pose_sigma * noise["pose"]
        init = out.init_mu + out.init_sigma * noise["init"]
        z = out.app_mu + out.app_sigma * noise["app"]
        prior_init = torch.tensor(loss_cfg.init_pose_prior_mean), torch.tensor(loss_cfg.init_pose_prior_std)
        gauss = {
            "input_beta": (beta[:, :t_in], out.pose_mu[:, :t_in], out.pose_sigma[:, :t_in], 0.0, loss_cfg.pose_prior_std),
            "pred_beta": (beta[:, t_in:], out.pose_mu[:, t_in:], out.pose_sigma[:, t_in:], 0.0, loss_cfg.pose_prior_std),
            "initial_pose": (init, out.init_mu, out.init_sigma, *prior_init),
            "appearance": (z, out.app_mu, out.app_sigma, 0.0, loss_cfg.app_prior_std),
        }
        for site, (x, mu, sigma, pm, ps) in gauss.items():
            res[f"site/{site}/log_q"] = gaussian_log_prob(x, mu, sigma).sum().double().numpy()
            res[f"site/{site}/log_p"] = gaussian_log_prob(x, torch.as_tensor(pm), torch.as_tensor(ps)).sum().double().numpy()
        y = relaxed_bernoulli_rsample_logit(out.presence_logits, s.temperature, u=noise["presence"])
        prior_logit = torch.tensor(math.log(loss_cfg.presence_prior / (1 - loss_cfg.presence_prior)))
        res["site/mask/log_q"] = relaxed_bernoulli_logit_log_prob(y, out.presence_logits, s.temperature).sum().double().numpy()
        res["site/mask/log_p"] = relaxed_bernoulli_logit_log_prob(y, prior_logit, s.temperature).sum().double().numpy()
    kl = {"input_beta": "kl_pose_input", "pred_beta": "kl_pose_future", "initial_pose": "kl_init",
          "appearance": "kl_app", "mask": "kl_presence"}
    for site, term in kl.items():  # not compared with the original's arrays: see monte_carlo_kl
        res[f"kl/{site}"] = e.terms[term].detach().double().numpy()
    return res


# ----------------------------------------------------------------------------- the original's side

COMPAT = {
    "cpu": "Tensor.cuda, Module.cuda are no-ops and torch.cuda.FloatTensor makes a CPU tensor of the default "
           "dtype (the original moves everything to CUDA); DataParallel without GPUs calls the module itself",
    "no_tensorboardX": "utils/visualizer.py imports tensorboardX, used only for logging: a stub module",
    "pyro_validation_off": "pyro >= 0.3 checks that every batch dimension of a site is declared (plates or "
                           "to_event); the original, written for pyro 0.2, declares none. The log-densities are "
                           "summed over all elements either way",
}


class OriginalError(RuntimeError):
    pass


def check_checkout(path: Path) -> None:
    if not path.is_dir():
        raise OriginalError(f"{path} is not a folder. Get the original with:\n"
                            f"  git clone {REPOSITORY} {path} && git -C {path} checkout {COMMIT}")
    if not (path / "models" / "DiveModel.py").is_file():
        raise OriginalError(f"{path} has no models/DiveModel.py: not a checkout of {REPOSITORY}")
    try:
        head = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        raise OriginalError(f"{path} is not a git checkout (git rev-parse HEAD failed); the commit must be "
                            f"checked: git clone {REPOSITORY} {path} && git -C {path} checkout {COMMIT}") from None
    if head != COMMIT:
        raise OriginalError(f"{path} is at commit {head}, the comparison is made against {COMMIT}: "
                            f"git -C {path} checkout {COMMIT}")
    dirty = subprocess.run(["git", "-C", str(path), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    if dirty:
        raise OriginalError(f"{path} has local changes ({dirty.splitlines()[0]} ...): the comparison runs on the "
                            f"original as published; git -C {path} stash")


def import_pyro():
    try:
        import pyro
    except ImportError:
        raise OriginalError("pyro is not installed in this Python environment: pip install pyro-ppl=="
                            f"{PYRO_VERSION} (in a scratch environment; the package itself does not need it)") from None
    if pyro.__version__ != PYRO_VERSION:
        warnings.warn(f"pyro {pyro.__version__} installed; the stored numbers were made with {PYRO_VERSION}")
    return pyro


@contextlib.contextmanager
def patched(obj, name, value):
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


def import_original(checkout: Path):
    """The original's modules, imported from the checkout under the COMPAT patches (kept for the process)."""
    sys.modules.setdefault("tensorboardX", types.SimpleNamespace(SummaryWriter=object))
    torch.Tensor.cuda = lambda self, *a, **k: self
    nn.Module.cuda = lambda self, *a, **k: self
    torch.cuda.FloatTensor = lambda data: torch.tensor(data, dtype=torch.get_default_dtype())
    sys.path.insert(0, str(checkout))
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=SyntaxWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    mods = types.SimpleNamespace(
        DiveModel=importlib.import_module("models.DiveModel"),
        pose=importlib.import_module("models.pose"),
        base_model=importlib.import_module("models.base_model"),
    )
    return mods


def original_opt(cfg: config_mod.Config, s: Setting) -> argparse.Namespace:
    d, m = cfg.data, cfg.model
    hidden_rows = d.resolved("hidden_rows") if d.dataset == "moving_mnist" else 0
    return argparse.Namespace(
        is_train=True, image_size=[d.image_size, d.image_size], n_channels=d.channels, n_components=m.n_slots,
        batch_size=cfg.train.batch_size, n_frames_input=d.t_in, n_frames_output=d.t_out, image_latent_size=m.feat_dim,
        appearance_latent_size=m.app_dim, pose_latent_size=3, hidden_size=m.hidden, ngf=m.conv_width,
        var_app_size=m.dyn_dim, with_imputation=m.use_imputation, with_var_appearance=m.use_dynamic_appearance,
        lr_init=1e-3, lr_decay=1, soft_labels=False, gamma_p_app=s.gamma_app, gamma_p_imp=s.gamma_imp,
        gamma_switch_step=3 if s.future_mask else 10**9, stn_scale_prior=m.scale_prior,
        crop_size=[d.image_size, d.image_size - hidden_rows], use_crop_size=hidden_rows > 0)


GAMMA_STEPS = 10  # the original's step counter during the compared passes: past s1's switch (3), not a multiple of 2000


def _wrap(obj, name, fn):
    """obj.name(*a, **k) becomes fn(original, *a, **k) (instance attribute: this object only)."""
    original = getattr(obj, name)

    def wrapper(*a, **k):
        return fn(original, *a, **k)

    setattr(obj, name, wrapper)


class OriginalRun:
    """One original DiveModel with a chosen set of edits, fed this code's weights and noise."""

    def __init__(self, mods, pyro, cfg, s: Setting, state, batch, noise, edits: set[str]):
        self.mods, self.pyro, self.cfg, self.s, self.edits = mods, pyro, cfg, s, edits
        self.batch, self.noise = batch, noise
        self.t_in, self.k = cfg.data.t_in, cfg.model.n_slots
        pyro.clear_param_store()
        with contextlib.redirect_stdout(None):
            self.model = mods.DiveModel.DiveModel(original_opt(cfg, s))
        # The original picks its pedestrian pose constraint by image_size == 256; here it runs at 64.
        self.model.pedestrian = cfg.data.dataset == "pedestrians"
        for name, net in to_original(state, cfg).items():
            self.net(name).load_state_dict(net)
        self.pose_net = self.net("pose_model")
        self.training = False
        self.in_guide = False
        self.capture: dict[str, torch.Tensor] = {}
        self._install()

    def net(self, name):
        net = self.model.nets[name]
        return net.module if isinstance(net, nn.DataParallel) else net

    # ------------------------------------------------------------ the patches of this instance

    def _install(self):
        pn, an = self.pose_net, self.net("appearance_model")
        T = self.t_in
        run = self

        def seq_rnn(orig, x, hidden=None):
            n = run.counter["seq"]
            run.counter["seq"] += 1
            i, j = divmod(n, T)
            if "imputation_weight_input" in run.edits and run.cfg.model.use_imputation:
                w = torch.ones_like(x[..., -1:]) if j == 0 else x[..., -1:] * (run.keep(i, j) if run.training else 1)
                x = torch.cat([x[..., :-1], w], dim=-1)
            out, state = orig(x, hidden)
            if j == T - 1:
                run.slot_states.append(state)
            return out, state

        def bwd_rnn(orig, x, hidden=None):
            n = run.counter["bwd"]
            run.counter["bwd"] += 1
            if "zero_backward_start" in run.edits and n % T == 0:
                hidden = None
            return orig(x, hidden)

        def predict(orig, encoder_outputs, hidden_states):
            if "own_rollout_state" in run.edits:
                hidden_states = list(run.slot_states)
            return orig(encoder_outputs, hidden_states)

        def pose_forward(orig, x, sample):
            run.counter = {"seq": 0, "bwd": 0}
            run.slot_states = []
            out = orig(x, sample)
            run.capture["pose_out"] = out
            return out

        def md_labels(orig, repr):
            mu, sigma = orig(repr)
            run.capture["mask_mu"] = mu
            return mu, sigma

        def app_encoder(orig, x, hidden=None):
            out, state = orig(x, hidden)
            run.app_state = state
            return out, state

        def app_predictor(orig, x, hidden=None):
            if "carried_app_predictor" in run.edits and hidden is None:
                hidden = run.app_state
            out, state = orig(x, hidden)
            run.app_state = state
            return out, state

        def sample_latent(orig, input, *a):
            a = list(a)
            if "ddpae_presence" in run.edits and not run.cfg.model.use_imputation:
                a[-2] = run.presence().view_as(a[-2])  # masks: the presence instead of ones
            return orig(input, *a)

        def decode(orig, latent):
            output, masked_output, components = orig(latent)
            run.capture.update(pose=latent["pose"], output=output, masked=masked_output, components=components)
            return output, masked_output, components

        _wrap(pn.sequence_rnn, "forward", seq_rnn)
        _wrap(pn.encode_rnn_reverse, "forward", bwd_rnn)
        _wrap(pn, "predict", predict)
        _wrap(pn, "forward", pose_forward)
        _wrap(pn, "get_md_labels", md_labels)
        _wrap(an.encoder, "forward", app_encoder)
        _wrap(an.predictor, "forward", app_predictor)
        _wrap(self.model, "sample_latent", sample_latent)
        _wrap(self.model, "decode", decode)
        self.net("object_decoder").register_forward_hook(lambda mod, inp, out: run.capture.__setitem__("objects", out))

    def keep(self, i, j):
        """Keep mask of the imputation dropout for slot i, frame j: (b 1 1)."""
        return (self.noise["imp_drop"][:, j, i] >= self.s.gamma_imp).to(torch.get_default_dtype()).view(-1, 1, 1)

    def presence(self) -> torch.Tensor:
        """The presence this code's departure uses, from the original's mask mean: (b t k 1)."""
        logits = (self.capture["mask_mu"] - 0.5).view(-1, self.t_in, self.k, 1)
        if not self.training:
            return (logits >= 0).to(logits.dtype)
        if "relaxed_presence" in self.edits:
            return torch.sigmoid(self.capture["mask_value"].view_as(logits))
        return (self.capture["mask_value"].view_as(logits) >= 0.5).to(logits.dtype)

    @contextlib.contextmanager
    def global_patches(self):
        """Patches of the original's modules (not of one instance), for the duration of a pass."""
        mods, run, pyro = self.mods, self, self.pyro
        dist = pyro.distributions

        def pyro_sample(_self, name, fn, mu, sigma, sample=True):
            if run.in_guide or not run.training:
                run.capture[f"{name}_params"] = (mu, sigma)
            if not sample:
                return mu.contiguous()
            if name == "mask":
                if "relaxed_presence" in run.edits:
                    if run.in_guide:
                        d = RelaxedPresence(mu - 0.5, run.s.temperature, run.noise["presence"].reshape(mu.shape))
                    else:
                        pi = run.cfg.loss.presence_prior
                        d = RelaxedPresence(torch.full_like(mu, math.log(pi / (1 - pi))), run.s.temperature)
                elif run.in_guide:
                    d = FixedNoiseNormal(mu, sigma, torch.special.ndtri(run.noise["presence"]).reshape(mu.shape))
                else:
                    d = dist.Normal(mu, sigma)
                value = pyro.sample(name, d)
                run.capture["mask_value"] = value
                return value
            if run.in_guide:
                return pyro.sample(name, FixedNoiseNormal(mu, sigma, run.eps(name, mu.shape)))
            return pyro.sample(name, dist.Normal(mu, sigma))

        class SamplingProxy:
            """pyro as models/DiveModel.py sees it: the two observation sites may get a visibility mask."""

            def __getattr__(self, attr):
                return getattr(pyro, attr)

            def sample(self, name, d, *a, obs=None, **k):
                v = run.batch["visible"].bool()
                if name == "masked_obs" and "input_visible_rows" in run.edits:
                    d = d.mask(v.unsqueeze(1).expand(d.batch_shape))
                if name == "obs" and "future_visible_rows" in run.edits and run.s.future_mask:
                    d = d.mask(v.unsqueeze(1).expand(d.batch_shape))
                if name in ("obs", "masked_obs"):
                    run.capture[name] = d.log_prob(obs).sum()
                return pyro.sample(name, d, *a, obs=obs, **k)

        class FunctionalProxy:
            """torch.nn.functional as the original sees it: softplus scales with this code's floor."""

            def __getattr__(self, attr):
                return getattr(F, attr)

            @staticmethod
            def softplus(x, *a, **k):
                return F.softplus(x, *a, **k) + 1e-4

        class Dropout:
            """random.random for the gamma_app dropout reads this code's uniform."""

            @staticmethod
            def random():
                return float(run.noise["app_drop"])

        class Bernoulli:
            """The imputation dropout's Bernoulli returns this code's keep masks, slot by slot, frame by frame."""

            def __init__(self, p):
                n = run.counter["seq"]
                self.keep = run.keep(*divmod(n, run.t_in))

            def sample(self, shape):
                return self.keep.expand(shape)

        def copy_appearance(_self, latent):
            latent["appearance"] = fill_nearest_observed(latent["appearance"], latent["mask"], run.t_in, run.k)

        with contextlib.ExitStack() as stack:
            for cls in (mods.base_model.BaseModel, mods.pose.PoseEncoder):
                stack.enter_context(patched(cls, "pyro_sample", pyro_sample))
            stack.enter_context(patched(mods.DiveModel, "pyro", SamplingProxy()))
            stack.enter_context(patched(mods.DiveModel, "random", Dropout()))
            stack.enter_context(patched(torch.distributions.bernoulli, "Bernoulli", Bernoulli))
            if "scale_floor" in self.edits:
                stack.enter_context(patched(mods.pose, "F", FunctionalProxy()))
                stack.enter_context(patched(mods.DiveModel, "F", FunctionalProxy()))
            if "fill_nearest_observed" in self.edits:
                stack.enter_context(patched(mods.DiveModel.DiveModel, "copy_appearance", copy_appearance))
            yield

    def values(self) -> dict[str, dict[str, torch.Tensor]]:
        return {n: {k: v.detach().clone() for k, v in self.net(n).state_dict().items()} for n in self.model.nets}

    def eps(self, name, shape):
        n = self.noise
        if name == "input_beta":
            return n["pose"][:, : self.t_in].reshape(shape)
        if name == "pred_beta":
            return n["pose"][:, self.t_in:].reshape(shape)
        if name == "initial_pose":
            return n["init"].reshape(shape)
        if name == "appearance":
            return n["app"].reshape(shape)
        raise KeyError(name)

    # ------------------------------------------------------------ passes

    def set_mode(self, training: bool):
        self.training = training
        m = self.model
        m.is_train = self.pose_net.is_train = training
        m.gamma_steps = GAMMA_STEPS
        m.gamma_p_app = self.s.gamma_app
        soft = training and "relaxed_presence" in self.edits
        m.soft_labels = self.pose_net.soft_labels = soft
        m.setup(is_train=training)

    def guide(self, x, y):
        self.model.gamma_steps = GAMMA_STEPS
        self.in_guide = True
        try:
            return self.model.guide(x, y)
        finally:
            self.in_guide = False

    def model_fn(self, x, y):
        return self.model.model(x, y)

    def outputs(self, prefix: str) -> dict[str, np.ndarray]:
        c, T_in, K = self.capture, self.t_in, self.k
        b = self.batch["input"].shape[0]
        ib_mu, ib_sigma, pb_mu, pb_sigma, init_mu, init_sigma, _ = c["pose_out"]

        def btk(x, t):
            return x.reshape(b, t, K, -1)

        T_out = self.cfg.data.t_out
        res = {
            "pose": c["pose"],
            "pose_mu": torch.cat([btk(ib_mu, T_in), btk(pb_mu, T_out)], dim=1),
            "pose_sigma": torch.cat([btk(ib_sigma, T_in), btk(pb_sigma, T_out)], dim=1),
            "init_mu": init_mu.reshape(b, K, 3),
            "init_sigma": init_sigma.reshape(b, K, 3),
            "presence_logits": (c["mask_mu"] - 0.5).reshape(b, T_in, K),
            "presence": self.presence().reshape(b, T_in, K),
            "app_mu": c["appearance_params"][0].reshape(b, T_in + T_out, K, -1),
            "app_sigma": c["appearance_params"][1].reshape(b, T_in + T_out, K, -1),
            "objects": c["objects"].reshape(b, T_in + T_out, K, *c["objects"].shape[1:]),
            "slots": c["components"],
            "input_masked": c["masked"],
            "input_rec": c["output"][:, :T_in],
            "pred": c["output"][:, T_in:],
        }
        return {f"{prefix}/{k}": v.detach().numpy() for k, v in res.items()}

    def run(self) -> dict[str, np.ndarray]:
        pyro, x, y = self.pyro, self.batch["input"], self.batch["target"]
        res: dict[str, np.ndarray] = {}
        with self.global_patches():
            # eval: is_train=False, hard labels, posterior means, the test-time fill
            self.set_mode(False)
            with torch.no_grad():
                latent, _ = self.model.encode(x, sample=False)
                self.model.copy_appearance(latent)
                self.model.decode(latent)
            res.update(self.outputs("eval"))

            # training: one guide pass and the model replayed on its samples
            state = {n: {k: v.clone() for k, v in self.net(n).state_dict().items()} for n in self.model.nets}
            self.set_mode(True)
            guide_trace = pyro.poutine.trace(self.guide).get_trace(x, y)
            model_trace = pyro.poutine.trace(pyro.poutine.replay(self.model_fn, trace=guide_trace)).get_trace(x, y)
            res.update(self.outputs("train"))
            for site in SITES:
                value = guide_trace.nodes[site]["value"]
                res[f"site/{site}/log_q"] = guide_trace.nodes[site]["fn"].log_prob(value).sum().double().detach().numpy()
                res[f"site/{site}/log_p"] = model_trace.nodes[site]["fn"].log_prob(value).sum().double().detach().numpy()
            self.monte_carlo = monte_carlo_kl(guide_trace, model_trace)
            res["ll_input"] = self.capture["masked_obs"].double().detach().numpy()
            res["ll_future"] = self.capture["obs"].double().detach().numpy()

            # the ELBO and its gradients, computed by pyro's own estimators
            for n in self.model.nets:
                self.net(n).load_state_dict(state[n])
            estimator = pyro.infer.TraceMeanField_ELBO() if "analytic_kl" in self.edits else pyro.infer.Trace_ELBO()
            params = {n: dict(self.net(n).named_parameters()) for n in self.model.nets}
            for group in params.values():
                for p in group.values():
                    p.grad = None
            loss = estimator.differentiable_loss(self.model_fn, self.guide, x, y)
            loss.backward()
            res["elbo"] = (-loss).double().detach().numpy()
            grads = {n: {k: (p.grad if p.grad is not None else torch.zeros_like(p)) for k, p in group.items()}
                     for n, group in params.items()}
            grads_ours = from_original(grads, self.cfg, gradients=True)
            for name, g in grads_ours.items():
                res[f"grad/{name}"] = g.numpy()

            # one step of the original's optimiser (DiveModel.setup_training: Adam on the unscaled loss)
            if "ddpae_bias_column" in self.edits and not self.cfg.model.use_imputation:
                params["pose_model"]["sequence_rnn.weight_ih_l0"].grad[:, -1] = 0
            with contextlib.redirect_stdout(None):
                self.model.setup_training()
            before = from_original(self.values(), self.cfg)
            self.model.optimizer.step()
            for name, value in from_original(self.values(), self.cfg).items():
                if name in grads_ours:
                    res[f"step/{name}"] = (value - before[name]).numpy()
        return res


MC_DRAWS = 4096


def monte_carlo_kl(guide_trace, model_trace) -> dict[str, tuple[float, float]]:
    """The original's estimator, log q - log p at a sample, averaged over MC_DRAWS fresh samples of each
    Gaussian site's posterior (the site's own distributions from the traces): mean and standard error."""
    out = {}
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for site in SITES[:4]:
            q, p = guide_trace.nodes[site]["fn"], model_trace.nodes[site]["fn"]
            loc, scale = q.loc.detach(), q.scale.detach()
            draws = []
            for _ in range(MC_DRAWS // 256):
                x = loc + scale * torch.randn((256, *loc.shape), generator=g, dtype=loc.dtype)
                draws.append((torch.distributions.Normal(loc, scale).log_prob(x)
                              - torch.distributions.Normal(p.loc, p.scale).log_prob(x)).flatten(1).sum(1))
            d = torch.cat(draws)
            out[site] = (float(d.mean()), float(d.std() / math.sqrt(d.numel())))
    return out


def fill_nearest_observed(appearance, mask, t_in, k):
    """This code's test-time fill (docs/model.md), written as a plain loop: a missing (t, k) takes the appearance
    of the first of t-1, t-2, t+1, t+2 that exists and is observed, else keeps its own."""
    z = appearance.reshape(mask.shape[0], -1, k, appearance.shape[-1]).clone()
    src = z.clone()
    observed = mask.reshape(mask.shape[0], t_in, k) > 0
    for b in range(z.shape[0]):
        for i in range(k):
            for t in range(t_in):
                if observed[b, t, i]:
                    continue
                for o in (-1, -2, 1, 2):
                    if 0 <= t + o < t_in and observed[b, t + o, i]:
                        z[b, t, i] = src[b, t + o, i]
                        break
    return z.reshape(appearance.shape)


def _distributions(pyro):
    dist = pyro.distributions
    global FixedNoiseNormal, RelaxedPresence

    class FixedNoiseNormal(dist.Normal):
        """A Normal whose (reparameterised) sample is loc + scale * eps for a given eps."""

        def __init__(self, loc, scale, eps):
            super().__init__(loc, scale)
            self.eps = eps

        def rsample(self, sample_shape=torch.Size()):
            return self.loc + self.scale * self.eps

        def sample(self, sample_shape=torch.Size()):
            return self.rsample().detach()

    class RelaxedPresence(dist.TorchDistribution):
        """The presence departure as a pyro site: the logit-space binary Concrete sample (logits + L) / lambda
        with L standard logistic from given uniforms; its density is a Logistic(logits / lambda, 1 / lambda)."""

        arg_constraints = {}
        support = torch.distributions.constraints.real
        has_rsample = True

        def __init__(self, logits, temperature, u=None):
            self.logits, self.temperature, self.u = logits, temperature, u
            super().__init__(batch_shape=logits.shape, event_shape=torch.Size(), validate_args=False)

        def rsample(self, sample_shape=torch.Size()):
            u = self.u.clamp(1e-6, 1 - 1e-6)
            return (self.logits + torch.log(u) - torch.log1p(-u)) / self.temperature

        def log_prob(self, y):
            return dist.Logistic(self.logits / self.temperature, 1.0 / self.temperature).log_prob(y)

    @torch.distributions.kl.register_kl(RelaxedPresence, RelaxedPresence)
    def _kl_presence(q, p):
        # the KL of the discrete latent: Bernoulli(sigmoid(q.logits)) from Bernoulli(sigmoid(p.logits))
        return torch.distributions.kl_divergence(torch.distributions.Bernoulli(logits=q.logits),
                                                 torch.distributions.Bernoulli(logits=p.logits))


# ----------------------------------------------------------------------------- the edits


EDITS = {
    "zero_backward_start": "quirk 2: the backward encoder LSTM starts each slot from zeros, not from the forward "
                           "LSTM's state after the first frame",
    "own_rollout_state": "quirk 3: each slot's future-pose LSTM starts from that slot's final imputation state, "
                         "not from the last encoder state of the last slot",
    "carried_app_predictor": "quirk 4: the appearance predictor LSTM carries its state between steps, starting "
                             "from the slot's final appearance-encoder state",
    "relaxed_presence": "quirk 6: presence is a binary Concrete latent, m = sigmoid((mu - 0.5 + L) / lambda), in "
                        "guide and model alike (soft in training, hard at mu >= 0.5 in eval), instead of a "
                        "Gaussian thresholded in the guide and used raw in the model",
    "analytic_kl": "every KL in closed form (pyro's TraceMeanField_ELBO; the presence KL is the Bernoulli KL), "
                   "not log q - log p at the sample (Trace_ELBO)",
    "scale_floor": "every softplus posterior scale gets + 1e-4",
    "imputation_weight_input": "the imputation LSTM reads the weight it mixed with: 1 at frame 0, presence times "
                               "the dropout keep mask after, not the presence alone",
    "fill_nearest_observed": "test-time fill: a frame decided missing takes the appearance of the first of "
                             "t-1, t-2, t+1, t+2 that is observed, for any batch size",
    "input_visible_rows": "s1: the input likelihood counts visible pixels only, not the hidden rows against "
                          "the zeroed input",
    "future_visible_rows": "s1 after the switch step: the future likelihood counts visible pixels only, not the "
                           "hidden rows of zeroed renderings against zeroed frames (a constant: same gradient)",
    "ddpae_presence": "DDPAE ablation: the presence still weights the appearance features and masks the input "
                      "rendering (the original uses ones there)",
    "ddpae_bias_column": "DDPAE ablation: the original's imputation LSTM reads a constant 1 through a weight column "
                         "that the optimiser moves beside the LSTM's input bias (together twice the bias's step); "
                         "here the bias alone: the edit zeroes that column's gradient before the original's step",
}

# Fixes made here to match the original; each is undone on this code's side to show that it matters.
FIXES = {
    "leaky_relu_slope": "dynamic-appearance MLPs: LeakyReLU slope 0.01 (torch's default, as the original); "
                        "this code had 0.2",
    "pedestrian_constraint": "pedestrians: s in [prior - 1, prior + 2.5] and the translation's tanh clamped to "
                             "+-(1 - 1/8), as the original's constrain_pose_pedestrian; this code had one "
                             "constraint for every dataset",
    "adam_eps": "Adam's eps 1e-8 / (B T C H W) on the loss per element, the original's steps (eps 1e-8 on the "
                "unscaled loss); this code had 1e-8 on the loss per element",
}


# ----------------------------------------------------------------------------- comparing


def family(key: str) -> str:
    if key.startswith(("grad/", "step/")):
        return key.split("/", 1)[0]
    if key.startswith("site/"):
        return key.rsplit("/", 1)[0]
    return key


def compare(ours_res: dict[str, np.ndarray], orig: dict[str, np.ndarray]) -> dict[str, float]:
    """Largest relative difference per output family: max |a - b| / max |b| over each array, then the max
    over the family's arrays (a family: one output field of one pass, one site, the gradients)."""
    out: dict[str, float] = {}
    for key, want in orig.items():
        got = ours_res[key]
        if got.shape != want.shape:
            raise AssertionError(f"{key}: this code gives shape {got.shape}, the original {want.shape}")
        scale = float(np.abs(want).max()) if want.size else 0.0
        diff = float(np.abs(got.astype(np.float64) - want.astype(np.float64)).max()) if want.size else 0.0
        rel = diff / scale if scale > 0 else diff
        out[family(key)] = max(out.get(family(key), 0.0), rel)
    return out


def worst(diffs: dict[str, float]) -> tuple[str, float]:
    key = max(diffs, key=diffs.get)
    return key, diffs[key]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--original", type=Path, required=True, help=f"git checkout of {REPOSITORY} at {COMMIT}")
    p.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated subset of "
                   f"{', '.join(SETTINGS)}")
    p.add_argument("--write", action="store_true", help=f"rewrite {STORE.relative_to(ROOT)} with the original's numbers")
    p.add_argument("--report", type=Path, default=REPORT, help="where to write the report (markdown)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    # Both codes in float64: the comparison is of the maths, and in float32 the rounding of sums over
    # 10^5 pixels, which the two codes order differently, reaches 1e-4 of some gradients.
    torch.set_default_dtype(torch.float64)
    try:
        check_checkout(args.original)
        pyro = import_pyro()
        mods = import_original(args.original)
    except OriginalError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    _distributions(pyro)
    pyro.enable_validation(False)  # COMPAT pyro_validation_off
    names = [n for n in args.settings.split(",") if n]
    unknown = [n for n in names if n not in SETTINGS]
    if unknown:
        print(f"error: unknown settings {unknown}; choose from {', '.join(SETTINGS)}", file=sys.stderr)
        return 2

    store: dict[str, np.ndarray] = {}
    table_all: dict[str, dict[str, float]] = {}
    left_out: dict[str, dict[str, tuple[str, float]]] = {e: {} for e in [*EDITS, "(all edits left out)"]}
    fixes: dict[str, dict[str, tuple[str, float]]] = {f: {} for f in FIXES}
    monte_carlo: dict[str, dict[str, tuple[float, float, float]]] = {n: {} for n in SETTINGS}
    ok = True
    for name in names:
        s = SETTINGS[name]
        cfg = setting_config(s)
        model = make_model(cfg)
        batch = make_batch(s, cfg)
        split_presence(model, batch)
        state = {k: v.clone() for k, v in model.state_dict().items()}
        noise = make_noise(model, cfg, s)
        mine = ours(model, state, cfg, s, batch, noise)

        def original(edits):
            run = OriginalRun(mods, pyro, cfg, s, state, batch, noise, set(edits))
            return run.run(), run

        ref, ref_run = original(EDITS)
        for site, (mean, se) in ref_run.monte_carlo.items():
            analytic = float(mine[f"kl/{site}"])
            monte_carlo[name][site] = (analytic, mean, se)
            if abs(analytic - mean) > 5 * se:
                ok = False
                print(f"{name}/{site}: analytic KL {analytic:.4f}, the sampled estimator's mean {mean:.4f} +- {se:.4f}")
        diffs = compare(mine, ref)
        table_all[name] = diffs
        fam, rel = worst(diffs)
        status = "ok" if rel <= RTOL else "MISMATCH"
        ok &= rel <= RTOL
        print(f"{name}: all edits: largest relative difference {rel:.2e} ({fam}) {status}")
        for edit in EDITS:
            d = compare(mine, original(set(EDITS) - {edit})[0])
            left_out[edit][name] = worst(d)
        left_out["(all edits left out)"][name] = worst(compare(mine, original(set())[0]))
        # undo each fix on this code's side
        fixes["leaky_relu_slope"][name] = worst(compare(ours(make_model(cfg), state, cfg, s, batch, noise,
                                                             mlp_slope=0.2), ref))
        fixes["adam_eps"][name] = worst(compare(ours(make_model(cfg), state, cfg, s, batch, noise, eps=1e-8), ref))
        if name == "pedestrian":
            old = config_mod.load(ROOT / "configs" / s.config, s.overrides + ["model.scale_range=[-1.0, 1.0]",
                                                                              "model.position_margin=0.0"])
            fixes["pedestrian_constraint"][name] = worst(compare(ours(make_model(old), state, old, s, batch, noise),
                                                                 ref))
        store.update(pack(name, cfg, s, state, batch, noise, ref))
        if name == "s3" and args.write:
            save_original_checkpoint(mods, pyro, cfg, s, state, batch, noise)

    for edit, per in left_out.items():
        caught = [n for n, (_, rel) in per.items() if rel > RTOL]
        if edit in EDITS and not caught:
            ok = False
            print(f"edit {edit}: leaving it out changes nothing in {', '.join(per)}: not needed, or untested")
    for fix, per in fixes.items():
        if per and not any(rel > RTOL for _, rel in per.values()):
            ok = False
            print(f"fix {fix}: undoing it changes nothing: untested")

    command = "python " + " ".join(shlex.quote(a) for a in [str(Path(sys.argv[0])), *(argv or sys.argv[1:])])
    provenance = {
        "commit": COMMIT, "repository": REPOSITORY, "pyro": pyro.__version__, "torch": torch.__version__,
        "python": platform.python_version(), "command": command,
        "date": datetime.date.today().isoformat(), "edits": ", ".join(EDITS), "compat": ", ".join(COMPAT),
        "rtol": str(RTOL),
    }
    write_report(args.report, names, table_all, left_out, fixes, monte_carlo, provenance)
    print(f"wrote {args.report}")
    if args.write:
        if not ok:
            print("error: not writing the store: the comparison failed", file=sys.stderr)
            return 1
        store.update({f"provenance/{k}": np.array(v) for k, v in provenance.items()})
        np.savez_compressed(STORE, **store)
        print(f"wrote {STORE} ({STORE.stat().st_size / 1024:.0f} KiB)")
    return 0 if ok else 1


STORED_RTOL = 1e-6  # tests/test_conformance.py: the original's arrays are stored in float32


def save_original_checkpoint(mods, pyro, cfg, s, state, batch, noise) -> None:
    """Write the setting's weights with the original's own BaseModel.save (in float32, as a real run would),
    and check that dive.convert_original reads them back as this code's weights."""
    from dive.convert_original import read_original

    with default_dtype(torch.float32):
        state32 = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
        run = OriginalRun(mods, pyro, cfg, s, state32, batch, noise, set(EDITS))
        for old in SAVED.glob("net_*.pth"):
            old.unlink()
        SAVED.mkdir(exist_ok=True)
        run.model.save(str(SAVED), 1)
        nets, epoch = read_original(SAVED)
        back = from_original(nets, cfg)
    # exact but for the presence bias, shifted by 0.5 and back in float32
    bad = [k for k in state32 if not torch.allclose(back[k], state32[k], rtol=0, atol=1e-7)]
    if bad:
        raise AssertionError(f"converted back from the original's files, these differ: {bad[:5]}")
    print(f"wrote {SAVED} with the original's save() (epoch {epoch}); read back equal")


def pack(name, cfg, s: Setting, state, batch, noise, ref) -> dict[str, np.ndarray]:
    """What tests/test_conformance.py needs to rerun this code on the setting, and the original's numbers.

    Weights, noise and inputs are float32 numbers (drawn so), stored exactly; the original's arrays are
    rounded to float32 (relative error below 6e-8, so STORED_RTOL), its scalars (sums) kept in float64.
    """

    def f32(t):
        a = t.detach().contiguous().numpy() if isinstance(t, torch.Tensor) else t
        if a.dtype == np.float64:
            stored = a.astype(np.float32)
            assert np.array_equal(stored.astype(np.float64), a), "not a float32 number: the stored copy would differ"
            return stored
        return a

    out = {f"{name}/config": np.array(config_mod.dumps_toml(cfg))}
    out.update({f"{name}/param/{k}": f32(v) for k, v in state.items()})
    out.update({f"{name}/{k}": f32(v) for k, v in batch.items()})
    out.update({f"{name}/noise/{k}": f32(v) for k, v in noise.items()})
    out[f"{name}/schedule"] = np.array([s.temperature, s.gamma_app, s.gamma_imp], dtype=np.float64)
    out[f"{name}/future_mask"] = np.array(s.future_mask)
    out.update({f"{name}/original/{k}": (v if v.ndim == 0 else v.astype(np.float32)) for k, v in ref.items()})
    return out


def write_report(path: Path, names, table_all, left_out, fixes, monte_carlo, provenance) -> None:
    fams = sorted({f for d in table_all.values() for f in d})
    lines = [
        "# Conformance with the original Pyro code",
        "",
        f"Made by `tests/conformance/conformance.py` ({provenance['date']}): {provenance['repository']} at "
        f"{provenance['commit']}, pyro {provenance['pyro']}, torch {provenance['torch']}, Python "
        f"{provenance['python']}.",
        f"Command: `{provenance['command']}`.",
        "",
        "Each number is the largest relative difference max |ours - original| / max |original| over the arrays "
        f"of one output family; the tolerance is {provenance['rtol']}.",
        "",
        "## Every edit applied",
        "",
        "| family | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for f in fams:
        lines.append(f"| {f} | " + " | ".join(f"{table_all[n].get(f, float('nan')):.1e}" for n in names) + " |")
    lines += ["", "## Each edit left out (the family that differs most)", "",
              "| edit left out | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for edit, per in left_out.items():
        cells = []
        for n in names:
            fam, rel = per[n]
            cells.append(f"{rel:.1e} ({fam})" if rel > RTOL else f"{rel:.1e} (no effect here)")
        lines.append(f"| {edit} | " + " | ".join(cells) + " |")
    lines += ["", "## Each fix of this code undone", "", "| fix undone | setting | largest difference |",
              "|---|---|---|"]
    for fix, per in fixes.items():
        for n, (fam, rel) in per.items():
            lines.append(f"| {fix} | {n} | {rel:.1e} ({fam}) |")
    lines += ["", f"## Closed-form KLs against the original's sampled estimator ({MC_DRAWS} draws)", "",
              "This code's KL of each Gaussian site (the ELBO's term) and the mean of log q - log p over fresh "
              "samples of the original's posterior, with its standard error; z = difference / standard error.", "",
              "| setting | site | closed form | sampled mean | standard error | z |", "|---|---|---|---|---|---|"]
    for n in names:
        for site, (analytic, mean, se) in monte_carlo[n].items():
            lines.append(f"| {n} | {site} | {analytic:.4f} | {mean:.4f} | {se:.4f} | {(analytic - mean) / se:+.2f} |")
    lines += ["", "## The edits", ""]
    lines += [f"* `{k}`: {v}" for k, v in EDITS.items()]
    lines += ["", "## The fixes", ""]
    lines += [f"* `{k}`: {v}" for k, v in FIXES.items()]
    lines += ["", "## Running the original here (not departures)", ""]
    lines += [f"* `{k}`: {v}" for k, v in COMPAT.items()]
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())

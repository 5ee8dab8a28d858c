"""Video metrics, presence scores, slot-to-digit matching and trivial baselines.

Shapes: ``b`` sequences, ``t`` frames, ``c h w`` an image, ``k`` object slots,
``d`` ground-truth digits. Images are floats in [0, 1] (data range 1).

Conventions (reference section 4, "Evaluation"):

* **MSE / BCE** are per-frame *sums* over the scored pixels, then averaged over
  frames and sequences. Unmasked, that is the mean per pixel times ``C*H*W``.
  With a mask (scenario s1 scores only the visible rows) the sum runs over the
  scored pixels only, so a half-visible frame sums over half the pixels; it is
  *not* rescaled to a full frame. BCE clips the prediction to
  ``[1e-4, 1 - 1e-4]``.
* **PSNR** is ``10 log10(1 / mse)`` with ``mse`` the per-pixel MSE over a
  sequence's scored pixels (``psnr``) or over one frame's (``psnr_per_frame``).
  ``mse`` is floored at ``1e-10``, so PSNR is capped at **100 dB**: identical
  images score exactly 100, never ``inf``, which keeps averages finite.
* **SSIM** follows Wang et al. (2004) as ``skimage.metrics.structural_similarity``
  computes it with ``gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=1``: an 11 x 11 Gaussian window
  (sigma 1.5), ``K1 = 0.01``, ``K2 = 0.03``, 'valid' filtering (only window
  positions that lie fully inside the image, so the map is
  ``(H - 10) x (W - 10)``), channels averaged. With a mask, the map is averaged
  over the positions whose *window centre* is a scored pixel; windows near the
  edge of the scored region still see a few unscored pixels.
* **Presence**: labels and decisions are 1 = object present, 0 = missing. The
  *missing* class is the positive class of precision, recall and F1, as the
  tables report "presence F1 (missing class)".

A frame (or sequence) with no scored pixel gets MSE = BCE = 0, PSNR = 100 and
SSIM = 0; masks that hide whole frames are not expected.

A prediction may be a still frame, (b 1 c h w): it is scored against every
target frame, as that frame repeated (the baselines are still frames).
`frame_metrics` scores several predictions of one target in one pass, which
computes the target's share of the work once.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
from einops import rearrange, reduce
from torch import Tensor

BCE_CLIP = 1e-4
PSNR_MSE_FLOOR = 1e-10  # caps PSNR at 10 * log10(1 / 1e-10) = 100 dB
PSNR_MAX_DB = 100.0

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


# --------------------------------------------------------------------------- masks


def _expand_mask(mask: Tensor | None, like: Tensor) -> Tensor:
    """A mask broadcast to ``like``'s shape (b t c h w), in ``like``'s dtype; all ones if None."""
    if mask is None:
        return torch.ones_like(like)
    return torch.as_tensor(mask, device=like.device).to(like.dtype).expand_as(like)


def visible_rows_mask(
    height: int, width: int, hidden_top: int, channels: int = 1, device: torch.device | str | None = None
) -> Tensor:
    """Mask (c h w) that scores every row except the top ``hidden_top`` ones (scenario s1)."""
    mask = torch.ones(channels, height, width, device=device)
    mask[:, :hidden_top] = 0.0
    return mask


# --------------------------------------------------------------------------- pixel errors


def _sum_per_frame(values: Tensor, mask: Tensor | None) -> Tensor:
    """(b t) sums of (b t c h w) values over each frame's scored pixels."""
    if mask is not None:
        values = values * torch.as_tensor(mask, device=values.device).to(values.dtype)
    return reduce(values, "b t c h w -> b t", "sum")


def _count_per_frame(like: Tensor, mask: Tensor | None) -> Tensor:
    """(b t) number of scored pixels of each frame of ``like`` (b t c h w)."""
    if mask is None:
        return like.new_full(like.shape[:2], float(like[0, 0].numel()))
    return reduce(_expand_mask(mask, like), "b t c h w -> b t", "sum")


def mse_per_frame(pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """Sum of squared errors over each frame's scored pixels.

    pred, target: (b t c h w); mask: broadcastable to them. Returns (b t).
    """
    return _sum_per_frame((pred - target).square_(), mask)


def bce_per_frame(pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """Sum of binary cross-entropy over each frame's scored pixels, prediction clipped to [1e-4, 1-1e-4].

    pred, target: (b t c h w); mask: broadcastable to them. Returns (b t).
    """
    p = pred.clamp(BCE_CLIP, 1.0 - BCE_CLIP)
    # log(1 - p), not log1p(-p): the clip keeps 1 - p >= 1e-4, where the two agree to float32
    # rounding, and torch's log1p is several times slower than log on CPU (evaluation's hot loop).
    log_q = (1.0 - p).log_()
    # -(y log p + (1 - y) log(1 - p)) written as -(log(1 - p) + y (log p - log(1 - p))): one product fewer
    return -_sum_per_frame(torch.addcmul(log_q, target, p.log_().sub_(log_q)), mask)


def _psnr_from_mse(mse: Tensor) -> Tensor:
    return 10.0 * torch.log10(1.0 / mse.clamp_min(PSNR_MSE_FLOOR))


def psnr_per_frame(pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """PSNR (dB, data range 1, capped at 100) of each frame from its per-pixel MSE. Returns (b t)."""
    return _psnr_from_mse(mse_per_frame(pred, target, mask) / _count_per_frame(pred, mask).clamp_min(1.0))


def psnr(pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """PSNR (dB, data range 1, capped at 100) of each sequence from the per-pixel MSE over all its
    scored pixels (all frames pooled). pred, target: (b t c h w). Returns (b).
    """
    sse = mse_per_frame(pred, target, mask).sum(dim=1)
    count = _count_per_frame(pred, mask).sum(dim=1).clamp_min(1.0)
    return _psnr_from_mse(sse / count)


# --------------------------------------------------------------------------- SSIM


def gaussian_window_1d(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA, dtype=torch.float32) -> Tensor:
    """Normalised 1-D Gaussian taps (size); the 2-D window is their outer product."""
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return (g / g.sum()).to(dtype)


def _valid_filter_matrix(size: int, taps: Tensor) -> Tensor:
    """Banded (size-s+1, size) matrix whose row i holds the taps at columns i .. i+s-1."""
    s = taps.shape[0]
    rows = torch.arange(size - s + 1, device=taps.device)
    cols = rearrange(rows, "m -> m 1") + torch.arange(s, device=taps.device)
    mat = taps.new_zeros(size - s + 1, size)
    mat[rearrange(rows, "m -> m 1").expand_as(cols), cols] = taps.expand_as(cols)
    return mat


@functools.lru_cache(maxsize=8)
def _filter_matrices(h: int, w: int, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
    """The two banded matrices of `_filter_valid` for (h w) images: (h-s+1 h) and (w w-s+1).

    Cached: evaluation filters thousands of chunks of the same size. Read-only.
    """
    taps = gaussian_window_1d(dtype=dtype).to(device)
    return _valid_filter_matrix(h, taps), _valid_filter_matrix(w, taps).T.contiguous()


def _filter_valid(x: Tensor) -> Tensor:
    """Separable 'valid' Gaussian filter (the SSIM window) of (n h w) images -> (n h-s+1 w-s+1).

    Written as two products with banded matrices rather than a convolution:
    batched matmul is about 2.5x faster than two 1-D conv2d passes on CPU (float32, 64 x 64 frames).
    """
    left, right = _filter_matrices(*x.shape[-2:], x.dtype, x.device)
    return left @ x @ right


def ssim_map(pred: Tensor, target: Tensor) -> Tensor:
    """Local SSIM at every 'valid' window position.

    pred, target: (b t c h w); pred may also be (b 1 c h w), one frame compared
    with each target frame. Returns (b t c h-10 w-10); entry (i, j) belongs to
    the window centred on pixel (i + 5, j + 5).
    """
    return _ssim_maps([pred], target)[0]


def _ssim_maps(preds: Sequence[Tensor], target: Tensor) -> list[Tensor]:
    """`ssim_map` of several predictions of the same target frames, sharing the target's work.

    target: (b t c h w). Each prediction is (b t c h w), or (b 1 c h w): a still
    frame, compared with every target frame, whose own statistics are filtered
    once per sequence instead of once per target frame.
    """
    b, t, c, h, w = target.shape
    if h < SSIM_WINDOW or w < SSIM_WINDOW:
        raise ValueError(f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW}, got {h}x{w}")
    _check_predictions(preds, target)
    # float32 (float64 if given), on frames shifted by their own mean: variances and covariances
    # do not change under a shift, and E[x^2] - E[x]^2 then cancels far less (a constant frame
    # is exact). float32 matmuls run about twice as fast as float64 on CPU; tests/test_metrics.py
    # checks the result against float64 on near-constant bright patches.
    dtype = torch.promote_types(target.dtype, torch.float32)
    for pred in preds:
        dtype = torch.promote_types(dtype, pred.dtype)
    y = target.to(dtype)
    shift_y = y.mean(dim=(-2, -1), keepdim=True)
    y = y - shift_y
    mu_y = _filter_frames(y)
    e_yy = None  # local E[y^2], filtered only if a still prediction needs it
    maps = []
    for pred in preds:
        x = pred.to(dtype)
        shift_x = x.mean(dim=(-2, -1), keepdim=True)
        if pred.shape[1] == t:
            # The variances enter only as var_x + var_y, so E[x^2] + E[y^2] is one map: 3 maps
            # per prediction, 4 with the target's mean (as a lone pair of frames needs).
            stats = x.new_empty((3, b, t, c, h, w))
            xs, sq, xy = stats.unbind(0)
            torch.sub(x, shift_x, out=xs)
            torch.mul(xs, xs, out=sq).addcmul_(y, y)
            torch.mul(xs, y, out=xy)
            mu_x, e_sq, e_xy = _filter_frames(stats)
        else:
            if e_yy is None:
                e_yy = _filter_frames(y.square())
            x = x - shift_x
            mu_x, e_xx = _filter_frames(torch.stack([x, x.square()]))  # (b 1 ...): once per sequence
            e_xy = _filter_frames(x * y)
            e_sq = e_yy + e_xx
        maps.append(_ssim_from_moments(mu_x, mu_y, e_sq, e_xy, shift_x, shift_y).to(pred.dtype))
    return maps


def _check_predictions(preds: Sequence[Tensor], target: Tensor) -> None:
    """Each prediction must be (b t c h w) like the target, or a still frame (b 1 c h w)."""
    b, t, c, h, w = target.shape
    for pred in preds:
        if pred.dim() != 5 or pred.shape[0] != b or pred.shape[1] not in (1, t) or pred.shape[2:] != target.shape[2:]:
            raise ValueError(f"expected a prediction of shape ({b}, {t} or 1, {c}, {h}, {w}) "
                             f"for a target of shape {tuple(target.shape)}, got {tuple(pred.shape)}")


def _filter_frames(x: Tensor) -> Tensor:
    """`_filter_valid` of (... h w) frames of any leading shape -> (... h-10 w-10)."""
    h, w = x.shape[-2:]
    return _filter_valid(x.reshape(-1, h, w)).reshape(*x.shape[:-2], h - SSIM_WINDOW + 1, w - SSIM_WINDOW + 1)


def _ssim_from_moments(mu_x: Tensor, mu_y: Tensor, e_sq: Tensor, e_xy: Tensor, shift_x: Tensor,
                       shift_y: Tensor) -> Tensor:
    """SSIM from the local moments of mean-shifted frames x, y (shapes broadcast to b t c h' w').

    mu_x, mu_y: local means; e_sq: local E[x^2] + E[y^2]; e_xy: local E[xy];
    shift_x, shift_y: the per-frame shifts. Overwrites e_sq and e_xy (this is
    the hot loop of evaluation); mu_x and mu_y are left as they are.
    """
    c1 = (SSIM_K1 * 1.0) ** 2
    c2 = (SSIM_K2 * 1.0) ** 2
    # structure: (2 cov + c2) / (var_x + var_y + c2), with cov = E[xy] - mu_x mu_y
    cs_num = e_xy.sub_(mu_x * mu_y).mul_(2.0).add_(c2)
    cs_den = e_sq.sub_(mu_x.square()).sub_(mu_y.square()).add_(c2)
    # luminance: (2 mu_x mu_y + c1) / (mu_x^2 + mu_y^2 + c1) on the unshifted means (the taps
    # sum to 1, so a frame's shift comes back unchanged)
    mean_x, mean_y = mu_x + shift_x, mu_y + shift_y
    l_num = (mean_x * mean_y).mul_(2.0).add_(c1)
    l_den = mean_y.square_().add_(mean_x.square_()).add_(c1)
    return l_num.mul_(cs_num).div_(l_den.mul_(cs_den))


SSIM_CHUNK = 32  # target frames per pass


def ssim_per_frame(pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean SSIM of each frame (channels averaged). With a mask, only window positions whose
    centre pixel is scored count. pred, target: (b t c h w); pred may also be (b 1 c h w), one
    frame compared with each target frame. Returns (b t).
    """
    return ssim_per_frame_many([pred], target, mask)[0]


def ssim_per_frame_many(preds: Sequence[Tensor], target: Tensor, mask: Tensor | None = None) -> list[Tensor]:
    """`ssim_per_frame` of several predictions of the same target: the target's local statistics
    are filtered once for all of them. Each pred (b t c h w) or (b 1 c h w); returns (b t) each.

    Sequences are scored a few at a time (about SSIM_CHUNK target frames): the
    statistic maps of a chunk stay in cache, which made evaluation's SSIM 1.5x
    faster at batch 64 than one pass over the batch (and bounds its memory).
    """
    _check_predictions(preds, target)
    b, t = target.shape[:2]
    if mask is not None:
        mask = _expand_mask(mask, target)
    per_chunk = max(1, SSIM_CHUNK // t)
    scores: list[list[Tensor]] = [[] for _ in preds]
    for start in range(0, b, per_chunk):
        sl = slice(start, start + per_chunk)
        maps = _ssim_maps([p[sl] for p in preds], target[sl])
        for out, smap in zip(scores, maps):
            out.append(_mean_over_centres(smap, None if mask is None else mask[sl]))
    return [torch.cat(s, dim=0) for s in scores]


def _mean_over_centres(smap: Tensor, mask: Tensor | None) -> Tensor:
    """(b t) mean of SSIM maps (b t c h' w') over the windows whose centre pixel is scored."""
    if mask is None:
        return reduce(smap, "b t c h w -> b t", "mean")
    r = SSIM_WINDOW // 2
    h, w = mask.shape[-2:]
    centres = mask[..., r : h - r, r : w - r]
    total = reduce(smap * centres, "b t c h w -> b t", "sum")
    count = reduce(centres, "b t c h w -> b t", "sum").clamp_min(1.0)
    return total / count


# --------------------------------------------------------------------------- presence


def presence_counts(decisions: Tensor, labels: Tensor) -> dict[str, int]:
    """Confusion counts with *missing* (0) as the positive class.

    decisions, labels: 0/1 tensors of one shape (e.g. b t d, slots already matched
    to digits). Returns ints tp, fp, fn, tn.
    """
    if decisions.shape != labels.shape:
        raise ValueError(f"decisions {tuple(decisions.shape)} and labels {tuple(labels.shape)} differ in shape")
    pred_missing = decisions.round() == 0
    true_missing = labels.round() == 0
    return {
        "tp": int((pred_missing & true_missing).sum()),
        "fp": int((pred_missing & ~true_missing).sum()),
        "fn": int((~pred_missing & true_missing).sum()),
        "tn": int((~pred_missing & ~true_missing).sum()),
    }


def scores_from_counts(tp: int, fp: int, fn: int, tn: int) -> dict[str, float]:
    """Accuracy, and precision / recall / F1 of the missing class, from confusion counts.

    When nothing is missing and nothing is predicted missing, precision, recall and
    F1 are 1 (a perfect, if vacuous, answer). Otherwise a ratio with a zero
    denominator is 0: predicting "missing" where nothing is gives precision 0,
    F1 0 and recall 0.
    """
    total = tp + fp + fn + tn
    accuracy = (tp + tn) / total if total else 1.0
    pred_pos, true_pos = tp + fp, tp + fn
    if pred_pos == 0 and true_pos == 0:
        return {"accuracy": accuracy, "f1": 1.0, "precision": 1.0, "recall": 1.0}
    precision = tp / pred_pos if pred_pos else 0.0
    recall = tp / true_pos if true_pos else 0.0
    f1 = 2 * tp / (pred_pos + true_pos)
    return {"accuracy": accuracy, "f1": f1, "precision": precision, "recall": recall}


def presence_scores(decisions: Tensor, labels: Tensor) -> dict[str, float]:
    """Accuracy and missing-class precision / recall / F1 of 0/1 presence decisions."""
    return scores_from_counts(**presence_counts(decisions, labels))


# --------------------------------------------------------------------------- aggregation


def frame_metrics(preds: Sequence[Tensor], target: Tensor, mask: Tensor | None = None) -> list[dict[str, Tensor]]:
    """Per-frame metrics of several predictions of the same target frames.

    target: (b t c h w). Each prediction is (b t c h w), or (b 1 c h w): a still
    frame, compared with every target frame (the baselines). Work that depends
    on the target alone (its SSIM statistics) is done once for all predictions.
    Returns, per prediction, a dict of (b t) tensors: ``mse``, ``bce``, ``psnr``,
    ``ssim``, and ``pixels``, the number of scored pixels of each frame (for the
    pooled per-sequence PSNR).
    """
    target = target.float()
    preds = [p.float() for p in preds]
    pixels = _count_per_frame(target, mask)
    ssims = ssim_per_frame_many(preds, target, mask)
    out = []
    for pred, ssim in zip(preds, ssims):
        mse = mse_per_frame(pred, target, mask)
        out.append({"mse": mse, "bce": bce_per_frame(pred, target, mask),
                    "psnr": _psnr_from_mse(mse / pixels.clamp_min(1.0)), "ssim": ssim, "pixels": pixels})
    return out


class MetricAccumulator:
    """Running sums of the metrics over batches of sequences of a fixed length.

    Feed (b t c h w) batches with `update` (and presence with `update_presence`);
    `result` gives what `sequence_metrics` would give on all sequences at once:

    * ``mse``, ``bce``, ``ssim``: per-frame values averaged over frames and sequences;
    * ``psnr``: per-sequence PSNR (all frames pooled) averaged over sequences;
    * ``psnr_frames``: per-frame PSNR averaged over frames and sequences;
    * ``per_frame``: dict of curves (lists over t) of mse, bce, psnr, ssim,
      each averaged over sequences;
    * ``num_sequences``; and, if presence was fed, ``presence`` (accuracy,
      missing-class f1 / precision / recall pooled over everything fed).
    """

    NAMES = ("mse", "bce", "psnr", "ssim")

    def __init__(self) -> None:
        self.num_sequences = 0
        self.frame_sums: dict[str, Tensor] | None = None  # name -> (t) float64
        self.psnr_seq_sum = 0.0
        self.counts = {"tp": 0, "fp": 0, "fn": 0, "tn": 0}
        self.has_presence = False

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor, mask: Tensor | None = None) -> None:
        """Score a batch: pred (b t c h w) or a still frame (b 1 c h w), target (b t c h w)."""
        self.add(frame_metrics([pred], target, mask)[0])

    @torch.no_grad()
    def add(self, per_frame: dict[str, Tensor]) -> None:
        """Feed one prediction's entry of `frame_metrics` (to score several predictions of one
        target at once, each into its own accumulator)."""
        sums = {name: per_frame[name].double().sum(dim=0).cpu() for name in self.NAMES}
        if self.frame_sums is None:
            self.frame_sums = sums
        else:
            if sums["mse"].shape != self.frame_sums["mse"].shape:
                raise ValueError("all batches fed to one accumulator must have the same number of frames")
            for name in self.NAMES:
                self.frame_sums[name] += sums[name]
        # per-sequence PSNR pools all scored pixels of a sequence's frames
        sse, pixels = per_frame["mse"].sum(dim=1), per_frame["pixels"].sum(dim=1).clamp_min(1.0)
        self.psnr_seq_sum += float(_psnr_from_mse(sse / pixels).double().sum())
        self.num_sequences += per_frame["mse"].shape[0]

    @torch.no_grad()
    def update_presence(self, decisions: Tensor, labels: Tensor) -> None:
        for key, value in presence_counts(decisions, labels).items():
            self.counts[key] += value
        self.has_presence = True

    def result(self) -> dict:
        out: dict = {"num_sequences": self.num_sequences}
        if self.frame_sums is not None:
            n = self.num_sequences
            curves = {name: (self.frame_sums[name] / n).tolist() for name in self.NAMES}
            for name in ("mse", "bce", "ssim"):
                out[name] = float(sum(curves[name]) / len(curves[name]))
            out["psnr"] = self.psnr_seq_sum / n
            out["psnr_frames"] = float(sum(curves["psnr"]) / len(curves["psnr"]))
            out["per_frame"] = curves
        if self.has_presence:
            out["presence"] = scores_from_counts(**self.counts)
        return out


def sequence_metrics(pred: Tensor, target: Tensor, mask: Tensor | None = None) -> dict:
    """All metrics of one batch of sequences (b t c h w); keys as `MetricAccumulator.result`."""
    acc = MetricAccumulator()
    acc.update(pred, target, mask)
    return acc.result()


# --------------------------------------------------------------------------- baselines


def copy_last_baseline(input_observed: Tensor) -> tuple[Tensor, Tensor]:
    """Reconstruction = the observed input itself; prediction = its last frame held still.

    input_observed: (b t_in c h w), as the model sees it (occlusions and missing
    digits included, so the reconstruction shows what was hidden as hidden).
    Returns rec (b t_in c h w) and pred (b 1 c h w): one still frame, which the
    metrics compare with every future frame.
    """
    return input_observed, input_observed[:, -1:]


def mean_frame_baseline(input_observed: Tensor) -> tuple[Tensor, Tensor]:
    """Every frame, input and future, is the temporal mean of the observed input frames.

    input_observed: (b t_in c h w). Returns rec and pred, both that mean as one
    still frame (b 1 c h w), which the metrics compare with every frame.
    """
    mean = reduce(input_observed, "b t c h w -> b 1 c h w", "mean")
    return mean, mean

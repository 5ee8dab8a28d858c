"""Evaluation of a model on a fixed set of sequences (what evaluate.py and the validation loop run).

What is scored (reference section 4, with quirk 7 fixed):

* ``rec``: the unmasked, imputed reconstruction of the input frames against the
  full input frames (everything drawn);
* ``pred``: the predicted future frames against the full future frames;
* ``masked_rec``: the presence-masked reconstruction against the observed input;
* ``imputation``: on exactly the (frame, digit) pairs that were missing, the
  squared error summed over that digit's box (digit_size x digit_size pixels at
  its true position), between the imputed reconstruction and the full frame;
* ``missing``: presence decisions against the true labels after matching slots
  to digits (the assignment that keeps slot centres closest to digit centres
  on the observed frames); for datasets without digit positions (pedestrians)
  a frame counts as present when any slot is;
* ``tracking_px``: mean pixel distance from each digit's centre to the centre
  of its matched slot (same matching), on input frames where the digit is
  visible and on the predicted future frames: how well the poses follow the
  digits, whatever the slots look like;
* ``objects``: the slots scored as object tracks (MOTA, MOTP, IDF1, identity
  switches) and as segmentations (FG-ARI, mIoU), on the input and on the
  predicted frames (dive/object_metrics.py); absent without digit positions;
* ``nelbo``: -ELBO per element. The model is in eval mode, so the latents are at
  their posterior means and presence decisions are hard: this is the ELBO's
  value at the mean, deterministic, with every KL in closed form;
* ``baselines``: the same ``rec`` / ``pred`` for copy-last-observed-frame and
  mean-frame predictors on the same sequences.

In scenario s1 (and on your own videos with hidden rows) only the visible rows
are scored (`visible`), as the original does in s1.
"""

from __future__ import annotations


import torch
from torch import Tensor

from .config import Config
from .elbo import elbo
from .metrics import MetricAccumulator, copy_last_baseline, frame_metrics, mean_frame_baseline
from .object_metrics import ObjectScores
from .model import forward_batch
from .slots import gather_slots, match_slots, pose_centres


def _score_mask(batch: dict[str, Tensor], cfg: Config) -> Tensor | None:
    """(b 1 c h w) mask of scored pixels: the visible rows where rows are hidden (s1, or your own videos
    with data.hidden_rows), everything otherwise."""
    if cfg.data.dataset in ("moving_mnist", "videos") and cfg.data.resolved("hidden_rows") > 0:
        return batch["visible"].unsqueeze(1)
    return None


def _digit_boxes(positions: Tensor, image_size: int, digit_size: int) -> Tensor:
    """(b t d h w) 0/1 masks of each digit's box, from centres in normalised coordinates."""
    centre_px = (positions + 1) / 2 * image_size  # continuous pixel coordinates
    top_left = torch.round(centre_px - digit_size / 2)
    grid = torch.arange(image_size, device=positions.device, dtype=positions.dtype)
    in_x = (grid >= top_left[..., 0:1]) & (grid < top_left[..., 0:1] + digit_size)  # b t d w
    in_y = (grid >= top_left[..., 1:2]) & (grid < top_left[..., 1:2] + digit_size)  # b t d h
    return (in_y.unsqueeze(-1) & in_x.unsqueeze(-2)).to(positions.dtype)


def match_digits(out, batch: dict[str, Tensor]) -> Tensor | None:
    """perm (b d): the slot matched to each digit (the assignment that keeps slot centres closest to
    digit centres on the input frames where the digit is visible); None without digit positions."""
    positions = batch.get("positions")
    labels = batch["present"]
    if positions is None or positions.shape[2] == 0 or positions.shape[2] != labels.shape[2]:
        return None
    t_in = labels.shape[1]
    return match_slots(pose_centres(out.pose[:, :t_in].float()), positions[:, :t_in].float(), weights=labels.float())


def tracking_errors(out, batch: dict[str, Tensor], image_size: int,
                    perm: Tensor | None = None) -> tuple[Tensor, Tensor] | None:
    """Pixel distance between each digit's centre and the centre of the slot matched to it.

    perm: the matching (`match_digits`, computed if not given). Returns
    (input, future): distances (b t_in d) on the input frames, with NaN where
    the digit is missing, and (b t_out d) on the future frames; None for
    datasets without digit positions.
    """
    perm = match_digits(out, batch) if perm is None else perm
    if perm is None:
        return None
    positions, labels = batch["positions"].float(), batch["present"]
    t_in = labels.shape[1]
    matched = gather_slots(pose_centres(out.pose.float()), perm)  # (b T d 2)
    dist = torch.linalg.vector_norm(matched - positions[:, : matched.shape[1]], dim=-1) * image_size / 2
    inside = torch.where(labels > 0.5, dist[:, :t_in], torch.full_like(dist[:, :t_in], float("nan")))
    return inside, dist[:, t_in:]


def presence_alignment(out, batch: dict[str, Tensor], perm: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Decisions and labels of the same shape: per digit (slots matched by `perm`, computed if not
    given) or, without digit positions, per frame (present when any slot is)."""
    labels = batch["present"]
    decisions = out.presence_hard
    perm = match_digits(out, batch) if perm is None else perm
    if perm is None:
        return decisions.amax(dim=2, keepdim=True), labels.amin(dim=2, keepdim=True)
    return gather_slots(decisions, perm), labels


@torch.no_grad()
def evaluate(model, dataset, cfg: Config, *, n: int | None = None, batch_size: int = 64,
             device: torch.device | str = "cpu", baselines: bool = True, amp: bool = False,
             objects: bool = True) -> dict:
    """Score `model` on the first `n` sequences of `dataset` (all of them by default).

    objects: also the object-level scores (dive/object_metrics.py; needs digit positions, and for
    FG-ARI and mIoU a dataset that draws each digit alone, as MovingMNIST does).
    """
    device = torch.device(device)
    n = len(dataset) if n is None else min(n, len(dataset))
    was_training = model.training
    model.eval()
    acc = {"rec": MetricAccumulator(), "pred": MetricAccumulator(), "masked_rec": MetricAccumulator()}
    base = {name: {"rec": MetricAccumulator(), "pred": MetricAccumulator()}
            for name in ("copy_last", "mean_frame")} if baselines else {}
    accumulators = {"model": acc, **base}
    presence = MetricAccumulator()
    neg_elbo, n_elements = 0.0, 0
    imp_sum, imp_count = 0.0, 0
    track = {"input": [0.0, 0], "future": [0.0, 0]}  # sum of pixel distances, count
    object_scores = ObjectScores(max_px=cfg.data.digit_size / 4) if objects else None
    for start in range(0, n, batch_size):
        idx = list(range(start, min(start + batch_size, n)))
        batch = {k: v.to(device) for k, v in dataset.batch(idx).items()}
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
            out = forward_batch(model, batch)
        mask = _score_mask(batch, cfg)
        # The model's and the baselines' frames against the same targets in one call each: the
        # targets' SSIM statistics are computed once, and the baselines' still frames once per sequence.
        recs, preds = {"model": out.input_rec}, {"model": out.pred}
        if baselines:
            for name, fn in (("copy_last", copy_last_baseline), ("mean_frame", mean_frame_baseline)):
                recs[name], preds[name] = fn(batch["input"])
        for key, frames, target in (("rec", recs, batch["input_full"]), ("pred", preds, batch["target_full"])):
            for name, scores in zip(frames, frame_metrics(list(frames.values()), target, mask)):
                accumulators[name][key].add(scores)
        acc["masked_rec"].update(out.input_masked, batch["input"], batch["visible"].unsqueeze(1))
        # the datasets (generated, or load_test_set) have already checked their values
        e = elbo(out, batch, cfg.loss, future_mask=mask is not None, check_values=False)
        neg_elbo += -float(e.total)
        n_elements += e.n_elements
        perm = match_digits(out, batch)
        presence.update_presence(*presence_alignment(out, batch, perm))
        errors = tracking_errors(out, batch, cfg.data.image_size, perm)
        if errors is not None:
            for key, d in zip(("input", "future"), errors):
                seen = ~torch.isnan(d)
                track[key][0] += float(d[seen].sum())
                track[key][1] += int(seen.sum())
        if object_scores is not None and perm is not None:
            layers = dataset.digit_layers(idx) if hasattr(dataset, "digit_layers") else None
            object_scores.update(out, batch, perm, cfg.data.image_size, layers)

        if "positions" in batch and batch["positions"].shape[2] == batch["present"].shape[2]:
            boxes = _digit_boxes(batch["positions"][:, : cfg.data.t_in].float(), cfg.data.image_size,
                                 cfg.data.digit_size)  # b t d h w
            missing = (batch["present"] < 0.5).float()  # b t d
            err = ((out.input_rec.float() - batch["input_full"]) ** 2).sum(dim=2)  # b t h w
            per_digit = (err.unsqueeze(2) * boxes).sum(dim=(-2, -1))  # b t d
            imp_sum += float((per_digit * missing).sum())
            imp_count += int(missing.sum())

    model.train(was_training)

    def summary(a: MetricAccumulator) -> dict:
        r = a.result()
        return {k: r[k] for k in ("bce", "mse", "psnr", "ssim")}

    rec, pred = acc["rec"].result(), acc["pred"].result()
    result = {
        "rec": summary(acc["rec"]),
        "pred": summary(acc["pred"]),
        "masked_rec": summary(acc["masked_rec"]),
        "nelbo": neg_elbo / max(n_elements, 1),
        "imputation": {"mse_per_missing_digit": imp_sum / imp_count if imp_count else None,
                       "num_missing": imp_count},
        "missing": presence.result().get("presence", {}),
        # mean distance (pixels) from each digit's centre to its matched slot's centre: input frames
        # where the digit is visible, and predicted future frames; None without digit positions
        "tracking_px": {key: (total / count if count else None) for key, (total, count) in track.items()},
        "per_frame": {"rec": rec["per_frame"], "pred": pred["per_frame"]},
        "num_sequences": n,
    }
    if object_scores is not None and object_scores.tracks["input"].objects:
        result["objects"] = object_scores.result()
    if baselines:
        result["baselines"] = {name: {"rec": summary(b["rec"]), "pred": summary(b["pred"])}
                               for name, b in base.items()}
    return result


def picture_inputs(batch: dict[str, Tensor], out, i: int, with_future: bool = True) -> dict:
    """Keyword arguments of `viz.sequence_grid` for sequence `i` of a batch.

    Ground-truth row: the observed input frames (what the model saw), then the
    full future frames; output row: the imputed reconstruction, then the prediction.
    """
    gt = batch["input"][i]
    output = out.input_rec[i]
    if with_future and "target_full" in batch:
        gt = torch.cat([gt, batch["target_full"][i]])
        output = torch.cat([output, out.pred[i]])
    elif with_future:
        output = torch.cat([output, out.pred[i]])
        gt = torch.cat([gt, torch.zeros_like(out.pred[i])])
    t = gt.shape[0]
    return {
        "gt": gt.float().cpu(), "slots": out.slots[i, :t].float().cpu(), "output": output.float().cpu(),
        "pose": out.pose[i, :t].float().cpu(), "presence": out.presence_hard[i].float().cpu(),
        "labels": batch["present"][i].float().cpu() if "present" in batch else None,
        "t_in": batch["input"].shape[1],
    }

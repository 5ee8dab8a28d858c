"""Slots against objects: where a slot's object is, and which slot explains which object.

Used by training (dive/teacher.py matches the tracker's slots to the model's),
by evaluation (dive/metrics.py, dive/evaluation.py: tracking errors, per-digit
scores) and by the pictures (dive/viz.py).
"""

from __future__ import annotations

import itertools

import torch
from einops import rearrange, reduce, repeat
from torch import Tensor


def pose_centres(pose: Tensor) -> Tensor:
    """Object centre in normalised image coordinates ([-1, 1], x right, y down).

    A pose (s, tx, ty) maps image coords p to object coords s * p + t; the object
    centre is object coord 0, i.e. p = -t / s. The box half-size is 1 / s.
    pose: (... 3). Returns (... 2) as (x, y).
    """
    s = pose[..., :1]
    return -pose[..., 1:3] / s


def match_slots(slot_centres: Tensor, digit_centres: Tensor, weights: Tensor | None = None) -> Tensor:
    """Assign each digit its own slot, minimising the mean slot-digit centre distance over frames.

    slot_centres: (b t k 2); digit_centres: (b t d 2), same coordinates;
    weights: broadcastable to (b t d), e.g. 0 on frames where a digit should not
    count. Returns perm (b d) long: ``perm[b, j]`` is the slot that explains digit j.
    All injective digit->slot maps are enumerated (k!/(k-d)! of them), fine for
    the handful of slots used here.
    """
    b, t, k, _ = slot_centres.shape
    d = digit_centres.shape[2]
    if k < d:
        raise ValueError(f"cannot match {d} digits to {k} slots: need at least as many slots as digits")
    dist = torch.linalg.vector_norm(
        rearrange(slot_centres, "b t k xy -> b t k 1 xy") - rearrange(digit_centres, "b t d xy -> b t 1 d xy"),
        dim=-1,
    )  # (b t k d)
    if weights is None:
        cost = reduce(dist, "b t k d -> b k d", "mean")
    else:
        wt = torch.as_tensor(weights, dtype=dist.dtype, device=dist.device).expand(b, t, d)
        wt = rearrange(wt, "b t d -> b t 1 d")
        cost = reduce(dist * wt, "b t k d -> b k d", "sum") / reduce(wt, "b t 1 d -> b 1 d", "sum").clamp_min(1e-12)
    perms = torch.tensor(list(itertools.permutations(range(k), d)), device=cost.device)  # (p d)
    digit_idx = repeat(torch.arange(d, device=cost.device), "d -> p d", p=perms.shape[0])
    totals = reduce(cost[:, perms, digit_idx], "b p d -> b p", "sum")
    return perms[totals.argmin(dim=1)]


def gather_slots(x: Tensor, perm: Tensor) -> Tensor:
    """Reorder per-slot values by a matching: x (b t k ...), perm (b d) -> (b t d ...)."""
    b, t = x.shape[:2]
    idx = perm.reshape(b, 1, -1, *([1] * (x.dim() - 3))).expand(b, t, perm.shape[1], *x.shape[3:])
    return torch.gather(x, 2, idx)

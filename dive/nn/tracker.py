"""An ink tracker: where each of K objects is in every frame of a video, from where the ink is.

Used by the tracking pose inference (dive/nn/pose_track.py). It has no
parameters and runs without gradients: a fixed search that hands the learned
networks a position estimate for every slot. It assumes objects brighter
than a dark background, as in Moving MNIST.

Positions are normalised image coordinates (x, y) in [-1, 1], as
``pose_centres`` gives them; lengths are relative to the half-extent
``1 / scale_prior`` of an object drawn at the prior scale (10.7 px of a 64-px
Moving MNIST frame at scale 3). The "ink" is the frame's intensity (mean over
channels), average-pooled to a coarse 16 x 16 map for the search and a fine
map of up to 64 x 64 for the template matching.

1. discovery, first frame, slot after slot: a slot takes the soft peak of
   the blurred ink that earlier slots left, then removes the ink within 1.5
   half-extents of it, so two slots cannot start on one object (explaining
   away);
2. following, every frame: a slot predicts its centre at constant velocity
   and moves to the centroid of the ink it claims. Each pixel is shared
   among the slots by a softmax over their Gaussian densities at it (the
   nearest slot takes it). A slot trusts its centroid in proportion to the
   ink it claims against what it claimed at the first frame; a slot that
   claims little (its object is out of scene or hidden) coasts, its
   Gaussian widening with every frame it coasts, so that it wins back ink
   that appears far from it but farther from every slot sure of its own.
   Velocity is measured from the last trusted centre, so that re-finding an
   object after coasting is not taken for a jump;
3. both ways: the video is followed forwards from its first frame and
   backwards from its last, the two passes' slots matched (where both
   trust what they see) and averaged, each weighted by exp(-frames it has
   coasted);
4. templates: each slot's template is the ink it claims at its best frame
   (most ink, away from the other slots), and at every frame the slot moves
   to where its template matches best (normalised cross-correlation,
   soft-argmax over offsets within 0.85 half-extents). A centroid is
   pulled by an object that overlaps; a template match much less so;
5. gaps: a frame where a slot's object is not seen (mean of ink share and
   template match below 0.6) is interpolated linearly between the nearest
   frames where it is seen or, with ``bounce_gaps``, with a bounce off a
   wall where the object's motion turned across the gap (fill_gaps);
6. motion fit (with ``walls``, Moving MNIST only): every frame takes the
   straight motion, bouncing off the walls as the digits do, that best fits
   the frames where the slot's object is seen (fit_motion). It places a
   digit where it is not seen (gaps, a clip's ends, s1's hidden half) and
   smooths the template's noise where it is.

The ink share (ink claimed at t over the most at any frame) and the
template match are returned too: both tell a slot whose object is missing.
Measured on the first 512 s2 test sequences: docs/model.md.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import Tensor, nn

# Lengths, in half-extents 1 / scale_prior (normalised image units).
_RADIUS = 3.0  # window within which a slot claims ink while following
_DISCOVER_RADIUS = 1.5  # ink a discovered slot removes from what the next one searches
_EDGE = 0.15  # softness of the windows' edges
_COMPETE = 0.5  # std of a slot's Gaussian in the softmax over slots
_BLUR = 0.4  # std of the discovery blur
_TEMPLATE, _SEARCH = 1.5, 0.85  # template half-size and search radius
_ISOLATED = 2.25  # a slot farther than this from every other one is alone (its template frame)
# Unitless.
_SHARPNESS = 50.0  # discovery softmax: logits = sharpness * heat / the frame's peak heat
_TRUST_AT, _TRUST_WIDTH = 0.3, 0.08  # trust = sigmoid((claimed / expected - AT) / WIDTH)
_WIDEN = 1.0  # a slot's Gaussian variance grows by this factor per frame it coasts
_AGE_DECAY = 1.0  # weight of a pass in the both-ways average: exp(-DECAY * frames coasted)
_MATCH_TEMPERATURE = 0.02  # soft-argmax over normalised cross-correlations in [-1, 1]
_SEEN_SHARE, _SEEN_AT = 0.5, 0.6  # seen: 0.5 ink share + 0.5 template match > 0.6
_COARSE, _FINE = 16, 64  # map sizes (pixels) of the search and of the template matching
# The motion fit's grid: starting centres across the walls, velocities (normalised units per frame)
# within +-_FIT_SPEED; a Moving MNIST digit moves at most 0.17 per frame at the default step length.
_FIT_CENTRES, _FIT_VELOCITIES, _FIT_SPEED = 128, 129, 0.25
_EPS = 1e-6


@dataclass
class Track:
    """The tracker's estimates on the frames of a video."""

    centres: Tensor  # (b t k 2) normalised (x, y)
    share: Tensor  # (b t k) ink a slot claims at frame t over its most at any frame, in [0, 1]
    match: Tensor  # (b t k) how well the slot's template matches frame t (normalised cross-correlation)
    # (b ahead k 2): the motion fit continued over the frames after the clip (forward's `ahead`);
    # a slot whose object is never seen stands at its last centre
    ahead: Tensor | None = None

    def seen(self) -> Tensor:
        """(b t k) bool: where the slot's digit is seen (the mean of ink share and template match > 0.6)."""
        return _seen(self.share, self.match)


def _seen(share: Tensor, match: Tensor) -> Tensor:
    return _SEEN_SHARE * share + (1 - _SEEN_SHARE) * match > _SEEN_AT


def _sq_dist(grid: Tensor, centres: Tensor) -> Tensor:
    """Squared distances (... P) from points centres (... 2) to every point of grid (P 2).

    As dx * dx + dy * dy rather than a sum over a last dim of 2: torch's reductions over so short a
    dim took 13 % of the tracker's time (bench/tracker_speed.py --profile); the values are the same.
    """
    dx = grid[:, 0] - centres[..., 0:1]
    dy = grid[:, 1] - centres[..., 1:2]
    return dx * dx + dy * dy


def _grid(size: int) -> Tensor:
    """Pixel centres of a size x size map, (size*size 2) as (x, y), row-major."""
    axis = (torch.arange(size, dtype=torch.float32) * 2 + 1) / size - 1
    return rearrange(torch.stack(torch.meshgrid(axis, axis, indexing="xy"), dim=-1), "h w xy -> (h w) xy")


class InkTracker(nn.Module):
    """Follows `n_slots` objects through videos (b t c h w) of `image_size` frames; no parameters."""

    def __init__(self, n_slots: int, image_size: int, scale_prior: float, bounce_gaps: bool = False,
                 walls: float | None = None):
        super().__init__()
        self.n_slots = n_slots
        self.bounce_gaps = bounce_gaps  # how gaps are filled (fill_gaps)
        self.walls = walls  # centres bounce at +-walls (fit_motion); None: no motion fit
        half = 1.0 / scale_prior
        self.radius, self.discover_radius, self.edge = _RADIUS * half, _DISCOVER_RADIUS * half, _EDGE * half
        self.compete_var = (_COMPETE * half) ** 2
        self.reach = (scale_prior - 0.5) / scale_prior  # centres a pose can reach at the prior scale
        self.coarse, self.fine = min(_COARSE, image_size), min(_FINE, image_size)
        half_px = self.fine / 2 * half  # the half-extent in pixels of the fine map
        self.template_size, self.search = 2 * round(_TEMPLATE * half_px), round(_SEARCH * half_px)
        self.isolated = _ISOLATED * half
        pixels = torch.arange(self.template_size, dtype=torch.float32)
        self.register_buffer("template_grid", torch.stack(torch.meshgrid(pixels, pixels, indexing="xy"), -1),
                             persistent=False)  # (W W 2): (x, y) of each template pixel
        offsets = torch.arange(2 * self.search + 1)[:, None]
        pixels_in = torch.arange(self.template_size + 2 * self.search)[None, :]
        box = ((pixels_in >= offsets) & (pixels_in < offsets + self.template_size)).float()
        self.register_buffer("box", box, persistent=False)  # (2S+1 W+2S): which pixels each offset covers
        span = torch.arange(-self.search, self.search + 1, dtype=torch.float32)
        self.register_buffer("search_grid", rearrange(torch.stack(torch.meshgrid(span, span, indexing="xy"), -1),
                                                      "h w xy -> (h w) xy"), persistent=False)
        for name, size in (("grid", self.coarse), ("fine_grid", self.fine)):
            self.register_buffer(name, _grid(size), persistent=False)
        axis = self.grid[: self.coarse, 0]
        blur = torch.exp(-(axis[:, None] - axis[None, :]) ** 2 / (2 * (_BLUR * half) ** 2))
        self.register_buffer("blur", blur, persistent=False)  # (g g), separable
        self.register_buffer("perms", torch.tensor(list(itertools.permutations(range(n_slots)))),
                             persistent=False)  # (k! k): every matching of two passes' slots

    @staticmethod
    def ink(frames: Tensor, size: int) -> Tensor:
        """frames (b t c h w) -> ink maps (b t P), P = size * size."""
        B, _, _, h, w = frames.shape
        x = rearrange(frames, "b t c h w -> (b t) c h w").mean(1, keepdim=True)
        if (h, w) != (size, size):  # a plain average pool where the size divides (adaptive pooling is slow)
            x = F.avg_pool2d(x, h // size) if h % size == 0 and h == w else F.adaptive_avg_pool2d(x, size)
        return rearrange(x, "(b t) 1 h w -> b t (h w)", b=B)

    def claim(self, ink: Tensor, centres: Tensor, grid: Tensor, age: Tensor | None = None) -> Tensor:
        """The ink each slot claims (b k P) from ink (b P) on `grid` (P 2), slots at centres (b k 2).

        Pixels are shared by a softmax over the slots' Gaussian densities, cut to a window
        around each slot; age (b k 1), frames a slot has coasted, widens its Gaussian.
        """
        d2 = _sq_dist(grid, centres)  # (b k P)
        window = torch.sigmoid((self.radius - torch.sqrt(d2 + _EPS)) / self.edge)
        var = self.compete_var * (1 + _WIDEN * age) if age is not None else d2.new_full((1, 1, 1), self.compete_var)
        share = torch.softmax(-d2 / (2 * var) - torch.log(var), dim=1)
        return ink.unsqueeze(1) * share * window

    @staticmethod
    def trust(mass: Tensor, expected: Tensor) -> Tensor:
        """How far a slot trusts the centroid of its claim (in [0, 1]): little when it claims much less
        ink than it `expected` (its object is out of scene or hidden)."""
        return torch.sigmoid((mass / (expected + _EPS) - _TRUST_AT) / _TRUST_WIDTH)

    def discover(self, ink: Tensor) -> Tensor:
        """ink (b P) of a first frame -> starting centres (b k 2), slot after slot."""
        g = self.coarse

        def heat(q: Tensor) -> Tensor:
            return rearrange(self.blur @ rearrange(q, "b (h w) -> b h w", h=g) @ self.blur, "b h w -> b (h w)")

        # Normalised by the whole frame's peak: ink left at the edge of a removed window stays a
        # weak peak instead of becoming the next slot's target.
        peak = heat(ink).amax(dim=-1, keepdim=True) + _EPS
        free, centres = ink, []
        for _ in range(self.n_slots):
            c = torch.softmax(_SHARPNESS * heat(free) / peak, dim=-1) @ self.grid  # (b 2)
            centres.append(c)
            d = torch.sqrt(_sq_dist(self.grid, c) + _EPS)  # (b P)
            free = free * (1 - torch.sigmoid((self.discover_radius - d) / self.edge))
        return torch.stack(centres, dim=1)

    def follow(self, ink: Tensor) -> tuple[Tensor, Tensor]:
        """One pass through ink maps (b t P) from their first frame: centres (b t k 2) and frames
        coasted (b t k; 0 where a slot trusts what it sees)."""
        c = self.discover(ink[:, 0])
        expected = self.claim(ink[:, 0], c, self.grid).sum(-1)  # (b k)
        velocity = torch.zeros_like(c)
        anchor, age = c, torch.zeros_like(c[..., :1])  # last trusted centre, frames since
        centres, ages = [], []
        for t in range(ink.shape[1]):
            prediction = (c + velocity).clamp(-self.reach, self.reach)
            claimed = self.claim(ink[:, t], prediction, self.grid, age)
            mass = claimed.sum(-1)
            centroid = (claimed @ self.grid) / (mass + _EPS).unsqueeze(-1)
            trust = self.trust(mass, expected).unsqueeze(-1)
            c = prediction + trust * (centroid - prediction)
            if t > 0:
                velocity = trust * (c - anchor) / (age + 1) + (1 - trust) * velocity
            anchor = trust * c + (1 - trust) * anchor
            age = (1 - trust) * (age + 1)
            centres.append(c)
            ages.append(age)
        return torch.stack(centres, dim=1), torch.stack(ages, dim=1).squeeze(-1)

    def both_ways(self, ink: Tensor) -> Tensor:
        """Centres (b t k 2): forward and backward passes, matched and averaged."""
        B, T = ink.shape[:2]
        centres, age = self.follow(torch.cat([ink, ink.flip(1)]))  # both passes as one batch
        fwd, bwd = centres[:B], centres[B:].flip(1)
        conf_f, conf_b = torch.exp(-_AGE_DECAY * age[:B]), torch.exp(-_AGE_DECAY * age[B:].flip(1))
        # cost (b k j): mean distance of forward slot k from backward slot j where both are sure
        w = conf_f.unsqueeze(-1) * conf_b.unsqueeze(-2)  # (b t k j)
        cost = (w * (fwd.unsqueeze(3) - bwd.unsqueeze(2)).norm(dim=-1)).sum(1) / (w.sum(1) + _EPS)
        slots = torch.arange(self.n_slots, device=ink.device)
        best = self.perms[cost[:, slots, self.perms].sum(-1).argmin(dim=1)]  # (b k)
        index = best[:, None, :].expand(-1, T, -1)  # (b t k)
        bwd = torch.gather(bwd, 2, index.unsqueeze(-1).expand(-1, -1, -1, 2))
        conf_b = torch.gather(conf_b, 2, index)
        return (conf_f.unsqueeze(-1) * fwd + conf_b.unsqueeze(-1) * bwd) / (conf_f + conf_b).unsqueeze(-1)

    def share(self, ink: Tensor, centres: Tensor) -> Tensor:
        """Ink share (b t k): the ink each slot claims at frame t, slots at centres (b t k 2), over its
        most at any frame of the video."""
        B = ink.shape[0]
        claimed = self.claim(rearrange(ink, "b t p -> (b t) p"), rearrange(centres, "b t k xy -> (b t) k xy"),
                             self.grid)
        mass = rearrange(claimed.sum(-1), "(b t) k -> b t k", b=B)
        return mass / (mass.amax(dim=1, keepdim=True) + _EPS)

    def match_templates(self, fine: Tensor, centres: Tensor, share: Tensor) -> tuple[Tensor, Tensor]:
        """Template matching on the fine maps (b t G G): matched centres (b t k 2) and match scores (b t k).

        Each slot's template is the ink around its centre at its best frame (the most ink
        share, away from the other slots); at every frame it is compared, by normalised
        cross-correlation, with the ink at every offset within `search` pixels of the slot's
        centre, and the soft-argmax of the scores gives the offset. Unlike a centroid, the
        match is not pulled by a second object that overlaps the first.
        """
        B, T, K, _ = centres.shape
        G, W, S = self.fine, self.template_size, self.search
        px = (centres + 1) / 2 * G - 0.5  # pixel-index coordinates
        if K > 1:
            gap = torch.cdist(rearrange(centres, "b t k xy -> (b t) k xy"), rearrange(centres, "b t k xy -> (b t) k xy"))
            gap = rearrange(gap + 4 * torch.eye(K, device=gap.device), "(b t) k j -> b t k j", b=B).amin(-1)
            alone = torch.sigmoid((gap - self.isolated) / self.edge)
        else:
            alone = torch.ones_like(share)
        best = (share * alone).argmax(dim=1)  # (b k)
        b_idx = torch.arange(B, device=fine.device)[:, None]
        k_idx = torch.arange(K, device=fine.device)[None, :]
        # the ink the slot claims at its best frame (other objects' ink taken out), around it
        others = centres[b_idx, best]  # (b k k' 2): every slot's centre at slot k's best frame
        claimed = self.claim(rearrange(fine[b_idx, best], "b k h w -> (b k) (h w)"),
                             rearrange(others, "b k j xy -> (b k) j xy"), self.fine_grid)
        own = rearrange(claimed, "(b k) j (h w) -> b k j h w", b=B, h=G)[b_idx, k_idx, k_idx]  # (b k G G)
        template = _crop(own, px[b_idx, best, k_idx], W)[0]  # (b k W W)
        # the object's centre within its template: the ink's centroid (pixel-index coordinates)
        centroid = torch.einsum("bkhw,hwx->bkx", template, self.template_grid) / (
            template.sum(dim=(-2, -1)).unsqueeze(-1) + _EPS)
        frame = repeat(torch.arange(B * T, device=fine.device), "(b t) -> (b t k)", b=B, k=K)
        window, w_corner = _crop(rearrange(fine, "b t h w -> (b t) h w"), rearrange(px, "b t k xy -> (b t k) xy"),
                                 W + 2 * S, frame)  # ((b t k) W+2S W+2S)
        # one group per slot of a sequence, the frames as the batch: each template is read once
        corr = F.conv2d(rearrange(window, "(b t k) h w -> t (b k) h w", b=B, t=T),
                        rearrange(template, "b k h w -> (b k) 1 h w"), groups=B * K)
        corr = rearrange(corr, "t (b k) h w -> (b t k) h w", b=B)  # ((b t k) 2S+1 2S+1)
        # the ink energy under the template at every offset: a box sum, as two banded matmuls
        energy = self.box @ window.pow(2) @ self.box.T
        norm = repeat(template.pow(2).sum(dim=(-2, -1)).sqrt(), "b k -> (b t k) 1 1", t=T)
        score = corr / (energy.sqrt() * norm + _EPS)
        weights = torch.softmax(rearrange(score, "n h w -> n (h w)") / _MATCH_TEMPERATURE, dim=-1)
        shift = weights @ self.search_grid  # (n 2) as (x, y) pixels
        top_left = w_corner.float() + S + shift
        matched = rearrange(top_left, "(b t k) xy -> b t k xy", b=B, t=T) + centroid.unsqueeze(1)
        return (matched + 0.5) / G * 2 - 1, rearrange(score.amax(dim=(1, 2)), "(b t k) -> b t k", b=B, t=T)

    @staticmethod
    def fill_gaps(centres: Tensor, seen: Tensor, bounce: bool = False) -> Tensor:
        """centres (b t k 2): frames not `seen` (b t k bool) between two seen ones are filled in from
        those two; others keep their centres.

        Linearly, by default. With `bounce`, a coordinate whose motion has turned across the gap
        (its velocity into the gap, from the two seen frames before it, and out of it, from the
        two after, have opposite signs) bounced off a wall in it: it follows the velocity in from
        the frame before the gap and the velocity out back from the frame after it, whichever is
        nearer the start side, a tent whose peak is the wall, wherever the wall is. Linear
        interpolation puts such an object near where it entered and left, up to half a gap's
        travel short of the wall. Where a velocity is not known (the frame before the gap's
        first seen neighbour, or after its last, is outside the clip or not seen), linear.
        """
        B, T, K, _ = centres.shape
        index = torch.arange(T, device=centres.device)[None, :, None].expand(B, T, K)
        before = torch.where(seen, index, -1).cummax(dim=1).values
        after = torch.where(seen, index, T).flip(1).cummin(dim=1).values.flip(1)
        inside = (before >= 0) & (after < T) & ~seen

        def at(frames: Tensor) -> Tensor:  # centres (b t k 2) at frame indices (b t k), clamped into the clip
            return torch.gather(centres, 1, repeat(frames.clamp(0, T - 1), "b t k -> b t k xy", xy=2))

        a, b = at(before), at(after)
        frac = ((index - before) / (after - before).clamp(min=1)).unsqueeze(-1)
        filled = a + frac * (b - a)
        if bounce:
            def seen_at(frames: Tensor) -> Tensor:  # (b t k) bool, False outside the clip
                return torch.gather(seen, 1, frames.clamp(0, T - 1)) & (frames >= 0) & (frames < T)

            known = (seen_at(before - 1) & seen_at(after + 1)).unsqueeze(-1)  # (b t k 1)
            v_in, v_out = a - at(before - 1), at(after + 1) - b  # (b t k 2) per frame
            forward = a + v_in * (index - before).unsqueeze(-1)
            backward = b - v_out * (after - index).unsqueeze(-1)
            tent = torch.where(v_in > 0, torch.minimum(forward, backward), torch.maximum(forward, backward))
            filled = torch.where(known & (v_in * v_out < 0), tent, filled)
        return torch.where(inside.unsqueeze(-1), filled, centres)

    @staticmethod
    @torch.compiler.disable  # as forward: no parameters, no gradients; kept out of compiled graphs
    @torch.no_grad()
    def fit_motion(centres: Tensor, weight: Tensor, walls: float, frames: int | None = None) -> tuple[Tensor, Tensor]:
        """The straight motion bouncing off walls at +-walls (bounce_paths) that best fits centres
        (b t k 2), frame t weighted by weight (b t k) >= 0: its centres (b frames k 2) on the first
        `frames` frames (default t; more extrapolate), and the total weight (b k).

        Each coordinate on its own (a Moving MNIST digit's x and y move independently), by weighted
        least squares over every start and velocity of a grid (start 0.28 px apart at 64 px, velocity
        0.12 px per frame). With one weighted frame no velocity is known: the object stands where
        it was seen. Where the total weight is 0 the fit means nothing; the caller keeps its own
        centres there.
        """
        B, T, K, _ = centres.shape
        frames = T if frames is None else frames
        start = torch.linspace(-walls, walls, _FIT_CENTRES, device=centres.device)
        speed = torch.linspace(-_FIT_SPEED, _FIT_SPEED, _FIT_VELOCITIES, device=centres.device)
        start, speed = start.repeat_interleave(_FIT_VELOCITIES), speed.repeat(_FIT_CENTRES)  # (n): every pair
        paths = bounce_paths(start, speed, max(frames, T), walls)  # (frames n)
        w = rearrange(weight.float(), "b t k -> (b k) t")
        c = rearrange(centres.float(), "b t k xy -> (b k) xy t")
        with torch.autocast(device_type=centres.device.type, enabled=False):  # float32 sums, also under AMP
            # sum_t w (path - c)^2, less sum_t w c^2 (the same for every candidate)
            cost = (w @ paths[:T].square()).unsqueeze(1) - 2 * (w.unsqueeze(1) * c) @ paths[:T]  # ((b k) xy n)
        total = w.sum(-1)  # ((b k))
        best = cost.argmin(dim=-1)  # ((b k) xy)
        fitted = paths[:frames].T[best]  # ((b k) xy frames)
        still = ((w > 0).sum(-1) < 2)[:, None, None]  # one frame (or none): no velocity
        fitted = torch.where(still, (w.unsqueeze(1) * c).sum(-1, keepdim=True) / (total[:, None, None] + _EPS), fitted)
        return (rearrange(fitted, "(b k) xy t -> b t k xy", b=B), rearrange(total, "(b k) -> b k", b=B))

    # Left out of torch.compile graphs (dive.compile): it has no parameters and no gradients, so
    # nothing is lost, and inductor's CPU code for it corrupts memory (torch 2.14.1: "double free
    # or corruption" within a few calls).
    @torch.compiler.disable
    @torch.no_grad()
    def forward(self, frames: Tensor, centres: Tensor | None = None, ahead: int = 0) -> Track:
        """Track the slots through frames (b t c h w).

        centres (b t k 2): given centres (a diagnostic oracle) instead of tracked ones; the ink
        share and the template match are measured at them. ahead > 0 (with walls): also the motion
        fit continued over that many frames after the clip. Always float32, also under autocast.
        """
        with torch.autocast(device_type=frames.device.type, enabled=False):
            frames = frames.float()
            coarse = self.ink(frames, self.coarse)  # (b t P)
            given = centres is not None
            centres = centres.float() if given else self.both_ways(coarse)
            share = self.share(coarse, centres)
            fine = rearrange(self.ink(frames, self.fine), "b t (h w) -> b t h w", h=self.fine)
            matched, match = self.match_templates(fine, centres, share)
            if not given:
                centres = centres + self.trust(share, torch.ones_like(share)).unsqueeze(-1) * (matched - centres)
                centres = self.fill_gaps(centres, _seen(share, match), self.bounce_gaps)
            path = None
            if self.walls is not None and (ahead or not given):
                T = centres.shape[1]
                fitted, total = self.fit_motion(centres, fit_weight(share, match), self.walls, T + ahead)
                found = (total > _EPS)[:, None, :, None]  # where a slot's object is seen at all
                if not given:
                    centres = torch.where(found, fitted[:, :T], centres)
                if ahead:
                    path = torch.where(found, fitted[:, T:], centres[:, -1:])
        return Track(centres=centres, share=share, match=match, ahead=path)


def fit_weight(share: Tensor, match: Tensor) -> Tensor:
    """(b t k) weight of a frame in the motion fit: 0 where the slot's object is not seen, rising to 1
    where all of its ink and template are, squared so that frames seen in part count little (their
    centroid is pulled towards the part that is seen)."""
    q = _SEEN_SHARE * share + (1 - _SEEN_SHARE) * match
    return ((q - _SEEN_AT) / (1 - _SEEN_AT)).clamp(0, 1).square()


def bounce_paths(start: Tensor, velocity: Tensor, frames: int, walls: float) -> Tensor:
    """Centres (frames n) of points at `start` (n) on the first frame, moving by `velocity` (n) per
    frame and bouncing off walls at +-walls as Moving MNIST's digits do: a point that would pass a
    wall is put on it and its velocity turns (dive/data/moving_mnist.py, bounce_trajectories)."""
    position, out = start, [start]
    for _ in range(frames - 1):
        position = position + velocity
        velocity = torch.where(position.abs() > walls, -velocity, velocity)
        position = position.clamp(-walls, walls)
        out.append(position)
    return torch.stack(out)


def _crop(images: Tensor, centres: Tensor, size: int, index: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """size x size crops of images (n h w) around pixel coordinates centres (m 2, as (x, y)), zero outside
    the image: crops (m size size) and their top-left pixels (m 2 long). Crop i is cut from image
    index[i] (default: image i; leading dims of images and centres may then be any, and are kept)."""
    lead, (h, w) = centres.shape[:-1], images.shape[-2:]
    centres = centres.reshape(-1, 2)
    if index is None:
        images = images.reshape(-1, h, w)
        index = torch.arange(images.shape[0], device=images.device)
    corner = torch.round(centres).long() - size // 2
    span = torch.arange(size, device=images.device)
    cols, rows = corner[:, 0:1] + span, corner[:, 1:2] + span  # (m size)
    # One flat gather, and the pixels outside zeroed by a row and a column mask: faster than
    # indexing with three broadcast index tensors and multiplying by a full-size boolean mask.
    flat = (index[:, None, None] * h + rows.clamp(0, h - 1)[:, :, None]) * w + cols.clamp(0, w - 1)[:, None, :]
    crops = torch.take(images, flat)
    crops.mul_(((rows >= 0) & (rows < h)).to(crops.dtype)[:, :, None])
    crops.mul_(((cols >= 0) & (cols < w)).to(crops.dtype)[:, None, :])
    return crops.reshape(*lead, size, size), corner.reshape(*lead, 2)

"""Object-level scores: the slots as tracks (CLEAR MOT, IDF1) and as segmentations (FG-ARI, mIoU).

Tracks. Every frame has ground-truth objects (the digits in scene, at their
true centres) and hypotheses (the slots the model decides present, at their
pose centres). A hypothesis can explain an object only within `max_px`
pixels of it. Per sequence, frame by frame (Bernardin and Stiefelhagen,
"Evaluating multiple object tracking performance: the CLEAR MOT metrics",
2008, as the ``motmetrics`` package reads it): an object stays with the last
hypothesis it was matched to, on any earlier frame, while that one is
within reach; the other objects and hypotheses are paired by the assignment
with the most pairs within reach and, among those, the least total
distance; an object matched to another hypothesis than the last one it was
matched to counts an identity switch. Then

    MOTA = 1 - (misses + false positives + switches) / objects
    MOTP = mean distance (pixels) of the matched pairs
    IDF1 = 2 IDTP / (objects + hypotheses)

where IDTP counts the frames on which an object and the hypothesis assigned
to it for the whole sequence (the one-to-one assignment with the most such
frames; Ristani et al., 2016) are within reach. Written here rather than
taken from the ``motmetrics`` package, which would bring pandas and scipy
for a few lines over at most a handful of objects; tests/test_object_metrics.py
checks it on worked cases; on 500 random sequences it gave motmetrics
1.4.0's MOTA, MOTP, IDF1 and switches exactly
(docs/studies/2026-12-07-object-metrics.md).

Segmentations. Each slot's rendering is a layer, each digit drawn alone
the true one. The true segmentation gives a pixel to the digit drawn
brightest there, if at least `ink` (0.5); those pixels are the foreground.
FG-ARI is the adjusted Rand index, over the foreground pixels of all frames
of a sequence together (so a slot must keep its object over time), between
the true labels and the slot that draws each pixel brightest (the usual
argmax of the slots' masks), averaged over sequences. mIoU is, for each
digit and the slot matched to it, the intersection over union of the
digit's pixels and the pixels the slot draws brightest and at least `ink`,
summed over the frames, averaged over digits and sequences.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torch import Tensor

from .slots import pose_centres


@dataclass
class TrackCounts:
    """Sums over sequences; ``scores`` turns them into MOTA, MOTP, IDF1."""

    objects: int = 0
    hypotheses: int = 0
    matches: int = 0
    distance: float = 0.0  # summed over matches, pixels
    misses: int = 0
    false_positives: int = 0
    switches: int = 0
    id_true_positives: int = 0

    def add(self, other: "TrackCounts") -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def scores(self) -> dict[str, float]:
        objects = max(self.objects, 1)
        return {
            "mota": 1.0 - (self.misses + self.false_positives + self.switches) / objects,
            "motp_px": self.distance / self.matches if self.matches else float("nan"),
            "idf1": 2 * self.id_true_positives / max(self.objects + self.hypotheses, 1),
            "id_switches": self.switches,
            "misses": self.misses,
            "false_positives": self.false_positives,
            "objects": self.objects,
        }


def _assignments(rows: int, cols: int):
    """Every one-to-one pairing of rows with columns that pairs min(rows, cols) of each, as (r, c) lists.
    Enumerated: rows and columns are a handful of objects."""
    small, large = (rows, cols) if rows <= cols else (cols, rows)
    for chosen in itertools.permutations(range(large), small):
        yield [(i, j) if rows <= cols else (j, i) for i, j in enumerate(chosen)]


def _best_assignment(cost: Tensor, allowed: Tensor) -> list[tuple[int, int]]:
    """The allowed pairs (row, col) of an assignment with as many allowed pairs as possible and, among
    those, the least total cost; cost and allowed (r c)."""
    best, best_key = [], (0, 0.0)
    for pairs in _assignments(*cost.shape):
        pairs = [(r, c) for r, c in pairs if allowed[r, c]]
        key = (len(pairs), -sum(float(cost[r, c]) for r, c in pairs))
        if key > best_key:
            best, best_key = pairs, key
    return best


def track_counts(objects: Tensor, object_on: Tensor, hyps: Tensor, hyp_on: Tensor, max_px: float) -> TrackCounts:
    """CLEAR MOT and IDF1 counts of one sequence.

    objects (t d 2) and hyps (t k 2): centres in pixels; object_on (t d), hyp_on (t k): bool, where
    each exists on each frame.
    """
    T, D, K = objects.shape[0], objects.shape[1], hyps.shape[1]
    dist = torch.cdist(objects.double(), hyps.double())  # (t d k)
    reach = (dist <= max_px) & object_on.unsqueeze(-1) & hyp_on.unsqueeze(-2)
    c = TrackCounts(objects=int(object_on.sum()), hypotheses=int(hyp_on.sum()))
    last: dict[int, int] = {}  # object -> the last hypothesis it was matched to, on any earlier frame
    for t in range(T):
        matched: dict[int, int] = {}
        for d, k in sorted(last.items()):  # a correspondence stays while it is within reach
            if reach[t, d, k] and k not in matched.values():
                matched[d] = k
        free_d = [d for d in range(D) if object_on[t, d] and d not in matched]
        free_k = [k for k in range(K) if hyp_on[t, k] and k not in matched.values()]
        for i, j in _best_assignment(dist[t][free_d][:, free_k], reach[t][free_d][:, free_k]):
            d, k = free_d[i], free_k[j]
            if d in last and last[d] != k:
                c.switches += 1
            matched[d] = k
        for d, k in matched.items():
            last[d] = k
            c.distance += float(dist[t, d, k])
        c.matches += len(matched)
        c.misses += int(object_on[t].sum()) - len(matched)
        c.false_positives += int(hyp_on[t].sum()) - len(matched)
    together = reach.sum(0).tolist()  # [d][k]: frames on which object d and hypothesis k are within reach
    c.id_true_positives = max((sum(together[d][k] for d, k in pairs) for pairs in _assignments(D, K)), default=0)
    return c


def adjusted_rand_index(true: Tensor, pred: Tensor) -> float:
    """ARI of two labellings (n) of the same points, labels >= 0; 1 for identical partitions."""
    n = true.numel()
    if n < 2:
        return float("nan")
    pairs = torch.stack([true.long(), pred.long()])
    _, joint = torch.unique(pairs, dim=1, return_counts=True)
    _, a = torch.unique(true, return_counts=True)
    _, b = torch.unique(pred, return_counts=True)

    def comb2(x: Tensor) -> float:
        x = x.double()
        return float((x * (x - 1) / 2).sum())

    index, sum_a, sum_b, total = comb2(joint), comb2(a), comb2(b), n * (n - 1) / 2
    expected = sum_a * sum_b / total
    maximum = (sum_a + sum_b) / 2
    if maximum == expected:  # both labellings put every point in one cluster (or each in its own)
        return 1.0
    return (index - expected) / (maximum - expected)


def labels_from_layers(layers: Tensor, ink: float | None = None) -> Tensor:
    """layers (... k h w) intensities -> labels (... h w): the brightest layer; with `ink`, -1 where even
    that is below `ink`."""
    value, index = layers.max(dim=-3)
    return index if ink is None else torch.where(value >= ink, index, torch.full_like(index, -1))


def segmentation_scores(true_layers: Tensor, slot_layers: Tensor, perm: Tensor | None, ink: float) -> dict:
    """FG-ARI and mIoU of one batch: true_layers (b t d h w) each digit drawn alone, slot_layers (b t k h w)
    each slot's rendering (one channel), perm (b d) the slot matched to each digit (None: no mIoU).
    Returns lists of per-sequence FG-ARI and per-(sequence, digit) IoU."""
    true = labels_from_layers(true_layers, ink)  # (b t h w)
    owner, drawn = labels_from_layers(slot_layers), labels_from_layers(slot_layers, ink)
    ari, iou = [], []
    for b in range(true.shape[0]):
        fg = true[b] >= 0
        if int(fg.sum()) >= 2:
            ari.append(adjusted_rand_index(true[b][fg], owner[b][fg]))
        if perm is None:
            continue
        for d in range(true_layers.shape[2]):
            t_mask, p_mask = true[b] == d, drawn[b] == perm[b, d]
            union = int((t_mask | p_mask).sum())
            if union:
                iou.append(int((t_mask & p_mask).sum()) / union)
    return {"fg_ari": ari, "iou": iou}


@dataclass
class ObjectScores:
    """Accumulates the object-level scores of a model over batches, on the input and the future frames."""

    max_px: float
    ink: float = 0.5

    def __post_init__(self):
        self.tracks = {"input": TrackCounts(), "future": TrackCounts()}
        self.segments: dict[str, dict[str, list[float]]] = {p: {"fg_ari": [], "iou": []} for p in self.tracks}

    def update(self, out, batch: dict[str, Tensor], perm: Tensor, image_size: int,
               layers: Tensor | None = None) -> None:
        """One batch: the model's output `out`, its batch (positions, present), the slot of each digit
        `perm` (b d), and each digit drawn alone (b T d h w; None: no segmentation scores). In s1 only
        the visible rows are segmented."""
        def px(centres: Tensor) -> Tensor:  # normalised -> pixel coordinates
            return (centres.float().cpu() + 1) * (image_size / 2)

        t_in = batch["present"].shape[1]
        objects, hyps = px(batch["positions"]), px(pose_centres(out.pose))
        present, decided = batch["present"].cpu() > 0.5, out.presence_hard.cpu() > 0.5
        object_on = torch.cat([present, torch.ones_like(present[:, :1]).expand(-1, objects.shape[1] - t_in, -1)], 1)
        # a slot exists in the future frames if it was decided present on the last input frame
        hyp_on = torch.cat([decided, decided[:, -1:].expand(-1, hyps.shape[1] - t_in, -1)], 1)
        for part, frames in (("input", slice(0, t_in)), ("future", slice(t_in, None))):
            for b in range(objects.shape[0]):
                self.tracks[part].add(track_counts(objects[b, frames], object_on[b, frames], hyps[b, frames],
                                                   hyp_on[b, frames], self.max_px))
        if layers is None:
            return
        visible = batch["visible"].amin(dim=1).cpu() > 0.5  # (b h w)
        slots = out.slots.float().mean(dim=3).cpu() * visible[:, None, None]  # (b T k h w), one channel
        true = layers.float().cpu() * visible[:, None, None]
        for part, frames in (("input", slice(0, t_in)), ("future", slice(t_in, None))):
            got = segmentation_scores(true[:, frames], slots[:, frames], perm.cpu(), self.ink)
            for key, values in got.items():
                self.segments[part][key] += values

    def result(self) -> dict:
        def mean(v: list[float]) -> float | None:
            return sum(v) / len(v) if v else None

        return {part: {**self.tracks[part].scores(), "fg_ari": mean(self.segments[part]["fg_ari"]),
                       "miou": mean(self.segments[part]["iou"])}
                | {"max_px": self.max_px, "ink": self.ink} for part in self.tracks}

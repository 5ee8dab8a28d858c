"""Object-level scores (dive/object_metrics.py) on worked cases, and through evaluate() on a model that
is exactly right."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from dive import config
from dive.data import MovingMNIST
from dive.evaluation import match_digits
from dive.object_metrics import ObjectScores, adjusted_rand_index, segmentation_scores, track_counts

T = 10


def line(x0: float, y0: float, vx: float = 1.0, vy: float = 0.0, frames: int = T) -> torch.Tensor:
    t = torch.arange(frames, dtype=torch.float64)
    return torch.stack([x0 + vx * t, y0 + vy * t], dim=-1)  # (t 2)


def on(*shape: int) -> torch.Tensor:
    return torch.ones(*shape, dtype=torch.bool)


def test_perfect_tracks():
    objects = torch.stack([line(10, 10), line(40, 40)], dim=1)  # (t 2 2)
    c = track_counts(objects, on(T, 2), objects + torch.tensor([0.6, 0.8]), on(T, 2), max_px=5).scores()
    assert c["mota"] == 1 and c["idf1"] == 1 and c["id_switches"] == 0 and c["objects"] == 2 * T
    assert c["motp_px"] == pytest.approx(1.0)


def test_identity_swap_counts_two_switches_and_halves_idf1():
    objects = torch.stack([line(10, 10), line(40, 40)], dim=1)
    hyps = objects.clone()
    hyps[5:] = hyps[5:].flip(1)  # from frame 5 on, each hypothesis follows the other object
    c = track_counts(objects, on(T, 2), hyps, on(T, 2), max_px=5).scores()
    assert c["id_switches"] == 2 and c["misses"] == 0 and c["false_positives"] == 0
    assert c["mota"] == pytest.approx(1 - 2 / 20)
    assert c["idf1"] == pytest.approx(2 * 10 / (20 + 20))  # each hypothesis right on 5 of its 10 frames


def test_misses_false_positives_and_reach():
    objects = torch.stack([line(10, 10), line(40, 40)], dim=1)
    object_on = on(T, 2)
    object_on[3:5, 1] = False  # object 1 out of scene on frames 3 and 4; its hypothesis stays
    hyps = objects.clone()
    hyps[0, 0] += torch.tensor([6.0, 0.0])  # frame 0: hypothesis 0 beyond reach of object 0
    c = track_counts(objects, object_on, hyps, on(T, 2), max_px=5)
    assert (c.misses, c.false_positives, c.switches) == (1, 1 + 2, 0)
    assert c.scores()["mota"] == pytest.approx(1 - 4 / 18)
    assert c.id_true_positives == 9 + 8 and c.scores()["idf1"] == pytest.approx(2 * 17 / (18 + 20))


def test_a_match_is_kept_while_in_reach_even_if_another_hypothesis_comes_closer():
    objects = line(10, 10).unsqueeze(1)  # one object
    hyps = torch.stack([line(13, 10), line(30, 30)], dim=1)
    hyps[4:, 1] = objects[4:, 0] + torch.tensor([1.0, 0.0])  # from frame 4 hypothesis 1 is closer
    c = track_counts(objects, on(T, 1), hyps, on(T, 2), max_px=5)
    assert c.switches == 0 and c.matches == T and c.false_positives == T  # hypothesis 0 keeps it
    gone = hyp_on = on(T, 2)
    gone[6, 0] = False  # hypothesis 0 missing on frame 6: hypothesis 1 takes over...
    c = track_counts(objects, on(T, 1), hyps, hyp_on, max_px=5)
    assert c.switches == 1 and c.matches == T  # ...and keeps the object when hypothesis 0 is back
    object_on = on(T, 1)
    object_on[6] = False  # the object missing on frame 6 instead: it goes back to hypothesis 0, its last
    c = track_counts(objects, object_on, hyps, on(T, 2), max_px=5)
    assert c.switches == 0 and c.matches == T - 1


def test_adjusted_rand_index_worked_cases():
    true = torch.tensor([0, 0, 0, 1, 1, 1])
    assert adjusted_rand_index(true, torch.tensor([5, 5, 5, 2, 2, 2])) == pytest.approx(1.0)  # names do not matter
    # contingency (0,0)=2 (0,1)=1 (1,1)=1 (1,2)=2: index 2, rows 6, columns 3, pairs 15
    assert adjusted_rand_index(true, torch.tensor([0, 0, 1, 1, 2, 2])) == pytest.approx((2 - 1.2) / (4.5 - 1.2))
    assert adjusted_rand_index(true, torch.tensor([0, 1, 0, 1, 0, 1])) < 0  # worse than chance


def test_segmentation_scores_of_a_swapped_half():
    layers = torch.zeros(1, 2, 2, 4, 4)  # (b t d h w): digit 0 on the left half, digit 1 on the right
    layers[:, :, 0, :, :2], layers[:, :, 1, :, 2:] = 1, 1
    slots = layers.clone()
    got = segmentation_scores(layers, slots, torch.tensor([[0, 1]]), ink=0.5)
    assert got["fg_ari"] == [pytest.approx(1.0)] and got["iou"] == [1.0, 1.0]
    slots[:, 1] = slots[:, 1].flip(1)  # frame 1: the slots swap digits
    got = segmentation_scores(layers, slots, torch.tensor([[0, 1]]), ink=0.5)
    assert got["iou"] == [pytest.approx(8 / 24), pytest.approx(8 / 24)]
    assert got["fg_ari"][0] < 0.2  # a slot that changes object over time is not one object


def test_a_model_that_is_exactly_right_scores_one():
    cfg = config.load(None, ["data.scenario=s2"])
    ds = MovingMNIST(split="test", seed=0, config=cfg.data)
    idx = list(range(8))
    batch = ds.batch(idx)
    layers = ds.digit_layers(idx)  # (b T d h w)
    full = torch.cat([batch["input_full"], batch["target_full"]], 1)[:, :, 0]
    torch.testing.assert_close(layers.amax(dim=2), full)  # the layers are the frame, one digit at a time
    s = 3.0
    pose = torch.cat([torch.full_like(batch["positions"][..., :1], s), -batch["positions"] * s], -1)
    out = SimpleNamespace(pose=pose, presence_hard=batch["present"], slots=layers.unsqueeze(3))
    perm = match_digits(out, batch)
    scores = ObjectScores(max_px=7.0)
    scores.update(out, batch, perm, 64, layers)
    r = scores.result()
    for part in ("input", "future"):
        assert r[part]["mota"] == 1 and r[part]["idf1"] == 1 and r[part]["id_switches"] == 0, r[part]
        assert r[part]["motp_px"] == pytest.approx(0, abs=1e-5)
        assert r[part]["fg_ari"] == pytest.approx(1) and r[part]["miou"] == pytest.approx(1)
    assert r["input"]["objects"] == int(batch["present"].sum())  # out-of-scene digits are not objects

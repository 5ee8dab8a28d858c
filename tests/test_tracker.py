"""The ink tracker (dive/nn/tracker.py) and the tracking pose inference (dive/nn/pose_track.py)."""

import pytest
import torch
from einops import rearrange

from dive.config import DataConfig, ModelConfig, load
from dive.data import build_dataset
from dive.errors import InputError
from dive.slots import gather_slots, match_slots, pose_centres
from dive.model import DIVE, forward_batch
from dive.nn.stn import constrain_pose
from dive.nn.pose_track import raw_translation, translation_centre
from dive.data.moving_mnist import bounce_trajectories
from dive.nn.tracker import InkTracker, _crop, _sq_dist, bounce_paths, fit_weight

from test_model import check_shapes, simple_loss, video


def tracker(n_slots=2, scale_prior=3.0, image_size=64) -> InkTracker:
    return InkTracker(n_slots, image_size, scale_prior)


def blobs(centres_px: torch.Tensor, size=64, half=5) -> torch.Tensor:
    """Frames (1 t 1 h w) with object k at each (t k 2) pixel centre (nan: none), drawn with a maximum
    as Moving MNIST does, as strokes 2 pixels wide: object 0 the outline of a square of side 2 * half + 1,
    object 1 a plus sign of the same size."""
    T, K, _ = centres_px.shape
    frames = torch.zeros(1, T, 1, size, size)
    for t in range(T):
        for k in range(K):
            if torch.isnan(centres_px[t, k]).any():
                continue
            x, y = centres_px[t, k].round().long().tolist()
            box = frames[0, t, 0, y - half:y + half + 1, x - half:x + half + 1]
            if k % 2 == 0:
                box[:2], box[-2:], box[:, :2], box[:, -2:] = 1.0, 1.0, 1.0, 1.0
            else:
                box[half - 1:half + 1, :] = 1.0
                box[:, half - 1:half + 1] = 1.0
    return frames


def to_px(centres: torch.Tensor, size=64) -> torch.Tensor:
    return (centres + 1) / 2 * size - 0.5  # normalised -> pixel index coordinates


def test_raw_translation_inverts_the_pose_constraint():
    g = torch.Generator().manual_seed(0)
    for scale in (2.0, 3.0, 3.5):
        reach = (scale - 0.5) / scale
        centres = (torch.rand(100, 2, generator=g) * 2 - 1) * 0.95 * reach
        raw = torch.cat([torch.full((100, 1), scale), raw_translation(centres, scale)], dim=-1)
        torch.testing.assert_close(pose_centres(constrain_pose(raw, scale)), centres, atol=1e-5, rtol=0)
    scales = 2 + 2 * torch.rand(100, generator=g)  # one scale per centre, within the clamp of prior 3
    centres = (torch.rand(100, 2, generator=g) * 2 - 1) * 0.55
    raw = torch.cat([scales[:, None], raw_translation(centres, scales)], dim=-1)
    torch.testing.assert_close(pose_centres(constrain_pose(raw, 3.0)), centres, atol=1e-5, rtol=0)
    # and translation_centre maps a raw translation back to the centre constrain_pose gives it
    raw_t = torch.randn(100, 2, generator=g)
    expected = pose_centres(constrain_pose(torch.cat([scales[:, None], raw_t], dim=-1), 3.0))
    torch.testing.assert_close(translation_centre(raw_t, scales), expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(translation_centre(raw_translation(centres, scales), scales), centres, atol=1e-5, rtol=0)


def test_crops_match_slices_of_the_zero_padded_image():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(3, 12, 10, generator=g)
    padded = torch.nn.functional.pad(images, (8, 8, 8, 8))
    # centres inside, on the border and past every edge, as (x, y) pixel coordinates
    centres = torch.tensor([[4.2, 5.7], [0.0, 0.0], [-3.4, 11.6], [9.5, -2.2], [12.0, 14.0], [6.0, 3.0]])
    index = torch.tensor([0, 1, 2, 2, 1, 0])
    for size in (4, 5):
        crops, corner = _crop(images, centres, size, index)
        assert crops.shape == (6, size, size) and corner.dtype == torch.long
        for i in range(6):
            x0, y0 = corner[i].tolist()
            assert (x0, y0) == (round(centres[i, 0].item()) - size // 2, round(centres[i, 1].item()) - size // 2)
            expected = padded[index[i], y0 + 8:y0 + 8 + size, x0 + 8:x0 + 8 + size]
            assert torch.equal(crops[i], expected), (size, i)
    # without an index, crop i comes from image i, and leading dims are kept
    crops, corner = _crop(images[:2], centres[:2].reshape(2, 1, 2), 4)
    assert crops.shape == (2, 1, 4, 4) and corner.shape == (2, 1, 2)
    assert torch.equal(crops[1, 0], _crop(images, centres[1:2], 4, torch.tensor([1]))[0][0])


def test_squared_distances_to_a_grid():
    grid = torch.rand(7, 2)
    centres = torch.randn(3, 2, 2)
    expected = ((grid[None, None] - centres[:, :, None]) ** 2).sum(-1)
    torch.testing.assert_close(_sq_dist(grid, centres), expected)


def test_gaps_are_filled_linearly_or_with_a_bounce():
    # x bounces off a wall at 10 inside the gap (frames 3 and 4), y moves steadily, slot 1 is seen
    # throughout; unseen frames hold garbage the filling must replace
    x = torch.tensor([0.0, 3.0, 6.0, 9.0, 8.0, 5.0, 2.0])
    y = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0])
    centres = torch.stack([torch.stack([x, y], -1), torch.stack([-x, y], -1)], dim=1)[None]  # (1 t k 2)
    seen = torch.ones(1, 7, 2, dtype=torch.bool)
    seen[0, 3:5, 0] = False
    garbage = centres.clone()
    garbage[0, 3:5, 0] = 99.0
    linear = InkTracker.fill_gaps(garbage, seen)
    bounced = InkTracker.fill_gaps(garbage, seen, bounce=True)
    torch.testing.assert_close(bounced, centres)  # a mirror bounce is followed exactly
    torch.testing.assert_close(linear[0, 3:5, 0, 0], torch.tensor([6 - 1 / 3, 6 - 2 / 3]))  # short of the wall
    torch.testing.assert_close(linear[0, :, :, 1], centres[0, :, :, 1])  # steady motion: both exact
    assert torch.equal(linear[0, :, 1], centres[0, :, 1]) and torch.equal(linear[0, :3], centres[0, :3])
    # no velocity into the gap when the frame before its seen neighbour is not seen: here frame 1
    # holds garbage that, read as a velocity (6 - (-99) > 0 against -3 out), would make a tent
    unknown = seen.clone()
    unknown[0, 1, 0] = False
    early = garbage.clone()
    early[0, 1, 0] = -99.0
    torch.testing.assert_close(InkTracker.fill_gaps(early, unknown, bounce=True)[0, 3:5, 0],
                               InkTracker.fill_gaps(early, unknown)[0, 3:5, 0])
    # a gap that reaches the clip's end keeps its (coasted) centres
    seen_end = torch.ones(1, 7, 2, dtype=torch.bool)
    seen_end[0, 5:, 0] = False
    assert torch.equal(InkTracker.fill_gaps(garbage, seen_end, bounce=True), garbage)


WALLS = 1 - 28 / 64  # centres of 28-pixel digits in 64-pixel frames


def test_bounce_paths_move_as_the_moving_mnist_digits():
    torch.manual_seed(0)
    start, velocity = torch.rand(50, 2) * 0.6 + 0.2, (torch.rand(50, 2) - 0.5) * 0.3
    truth = bounce_trajectories(start, velocity, 20)  # (n t 2) in [0, 1], bouncing at 0 and 1
    assert ((truth == 0) | (truth == 1)).any()  # some bounce
    # the data's frame 0 has moved one step from `start`: that step bounces for none of these
    assert ((start + velocity > 0) & (start + velocity < 1)).all()
    paths = bounce_paths((2 * truth[:, 0] - 1).flatten() * WALLS, velocity.flatten() * 2 * WALLS, 20, WALLS)
    torch.testing.assert_close(paths, rearrange(2 * truth - 1, "n t xy -> t (n xy)") * WALLS)


def test_the_motion_fit_finds_a_bounce_it_does_not_see():
    # x bounces off the right wall at frame 5, y off the top wall at frame 3; frames 3-6 are not seen
    start, velocity = torch.tensor([0.12, -0.3]), torch.tensor([0.09, -0.1])
    truth = rearrange(bounce_paths(start, velocity, 10, WALLS), "t xy -> 1 t 1 xy")
    assert truth[0, 5, 0, 0] == WALLS and truth[0, 3, 0, 1] == -WALLS
    weight = torch.ones(1, 10, 1)
    weight[0, 3:7] = 0
    garbage = truth.clone()
    garbage[0, 3:7] = 0.9
    fitted, total = InkTracker.fit_motion(garbage, weight, WALLS)
    assert total.item() == 6
    assert (fitted - truth).abs().max() < 0.01  # within the grid's spacing (0.3 px at 64 px)
    linear = InkTracker.fill_gaps(garbage, weight > 0)
    assert (linear - truth).abs().max() > 0.1  # the corner a straight line cuts
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the sums stay float32
        torch.testing.assert_close(InkTracker.fit_motion(garbage, weight, WALLS)[0], fitted)
    # extrapolated: the frames after the clip, bounces included
    future, _ = InkTracker.fit_motion(garbage, weight, WALLS, frames=20)
    torch.testing.assert_close(future[:, :10], fitted)
    assert (future - rearrange(bounce_paths(start, velocity, 20, WALLS), "t xy -> 1 t 1 xy")).abs().max() < 0.02
    # one frame seen: no velocity, the object stands where it was seen
    one = torch.zeros(1, 10, 1)
    one[0, 2] = 1
    still, _ = InkTracker.fit_motion(garbage, one, WALLS)
    torch.testing.assert_close(still, truth[:, 2:3].expand(-1, 10, -1, -1))


def test_one_object_is_followed_and_coasts_through_a_gap():
    # a square moving right and down at constant velocity, out of scene in frames 4 and 5
    t = torch.arange(10, dtype=torch.float32)
    truth = torch.stack([14 + 3 * t, 20 + 2 * t], dim=-1)[:, None]  # (t 1 2) pixels
    seen = truth.clone()
    seen[4:6] = float("nan")
    track = tracker(n_slots=1)(blobs(seen))
    error = (to_px(track.centres[0]) - truth).norm(dim=-1)[:, 0]
    visible = torch.ones(10, dtype=torch.bool)
    visible[4:6] = False
    assert error[visible].max() < 1.0, error
    assert error[~visible].max() < 2.0, error  # interpolated between the two passes
    assert track.share[0, ~visible, 0].max() < 0.1 and track.share[0, visible, 0].min() > 0.9


def test_two_objects_get_one_slot_each_and_keep_it_when_they_cross():
    t = torch.arange(10, dtype=torch.float32)
    a = torch.stack([10 + 4.5 * t, 28 + 0 * t], dim=-1)  # left to right
    b = torch.stack([52 - 4.5 * t, 38 + 0 * t], dim=-1)  # right to left, overlapping a around frame 5
    truth = torch.stack([a, b], dim=1)  # (t k 2)
    centres = tracker()(blobs(truth)).centres[0]
    first = to_px(centres[0])
    order = [int((first - truth[0, k]).norm(dim=-1).argmin()) for k in range(2)]
    assert sorted(order) == [0, 1]  # one slot per object
    error = (to_px(centres[:, order]) - truth).norm(dim=-1)
    assert error.max() < 3.0, error  # and nobody swaps at the crossing


def test_untrained_tracker_finds_the_digits_of_s2():
    # on the first 512 test sequences: 1.2 px on visible frames (median 0.9), 2.4 px where a digit is
    # out of scene; 64 here (1.1, 0.8 and 2.4)
    ds = build_dataset(DataConfig(scenario="s2", test_size=64), "test")
    batch = ds.batch(list(range(64)))
    track = tracker()(batch["input"])
    positions, present = batch["positions"][:, :10], batch["present"]
    perm = match_slots(track.centres, positions, weights=present)
    error = (gather_slots(track.centres, perm) - positions).norm(dim=-1) * 32
    visible = present > 0.5
    assert error[visible].median() < 1.2 and error[visible].mean() < 1.6 and error[~visible].mean() < 3.5
    for score in (track.share, track.match):  # both tell a slot whose digit is out of scene
        score = gather_slots(score, perm)
        assert score[visible].median() > 0.8 and score[~visible].median() < 0.2
    # filling the gaps with bounces (model.tracker_bounce_gaps): 1.4 px out of scene here (1.55 on 512)
    bounced = InkTracker(2, 64, 3.0, bounce_gaps=True)(batch["input"]).centres
    error_b = (gather_slots(bounced, perm) - positions).norm(dim=-1) * 32
    assert (error_b[visible] - error[visible]).abs().mean() < 0.01  # only what the tracker does not see moves
    assert error_b[~visible].mean() < 0.7 * error[~visible].mean()


@pytest.mark.parametrize("scenario", ["s2", "s1"])
def test_the_motion_fit_places_the_digits_the_tracker_does_not_see(scenario):
    # model.tracker_motion_fit, on the first 512 test sequences (bench/tracker_accuracy.py --motion-fit):
    # s2 out of scene 1.05 px instead of 2.42, s1 hidden entirely 15.0 instead of 23.3; on every
    # frame 1.08 instead of 1.16 (s2), 7.4 instead of 10.0 (s1). The 64 here: 1.07 against 2.38,
    # 15.7 against 23.0
    ds = build_dataset(DataConfig(scenario=scenario, test_size=64), "test")
    idx = list(range(64))
    batch = ds.batch(idx)
    positions, present = batch["positions"][:, :10], batch["present"]
    if scenario == "s1":  # "not seen": none of the digit's ink is in the visible rows
        ink = ds.digit_layers(idx)[:, :10]
        unseen = (ink * batch["visible"].mean(1)[:, None, None]).sum((-2, -1)) < 0.01 * ink.sum((-2, -1))
    else:
        unseen = present < 0.5
    errors = []
    for walls in (None, WALLS):
        centres = InkTracker(2, 64, 3.0, walls=walls)(batch["input"]).centres
        perm = match_slots(centres, positions, weights=present)
        errors.append((gather_slots(centres, perm) - positions).norm(dim=-1) * 32)
    plain, fitted = errors
    assert unseen.float().mean() > 0.05
    assert fitted[unseen].mean() < {"s2": 0.6, "s1": 0.8}[scenario] * plain[unseen].mean()
    assert fitted.mean() < plain.mean()


def model_with_silent_heads(**model_kw) -> DIVE:
    """A tracking model whose learned pose corrections are zero: its poses are the tracker's alone."""
    torch.manual_seed(0)
    model = DIVE(ModelConfig(pose_inference="track", **model_kw), DataConfig(scenario="s2")).eval()
    with torch.no_grad():
        for head in (model.pose.beta_mu, model.pose.init_mu):
            head.weight.zero_()
        model.pose.beta_mu.bias.zero_()
    return model


@pytest.mark.parametrize("scale", [3.0, 2.4, 3.7])
def test_poses_follow_the_tracker_on_the_input_frames(scale):
    model = model_with_silent_heads()
    with torch.no_grad():  # whatever scale the posterior has learned, the centres stay the tracker's
        model.pose.init_mu.bias[0] = scale
    x = build_dataset(DataConfig(scenario="s2", test_size=4), "test").batch([0, 1, 2, 3])["input"]
    out = model(x)
    track = model.pose.tracker(x)
    torch.testing.assert_close(pose_centres(out.pose[:, :10]), track.centres, atol=1e-4, rtol=0)
    assert (out.pose[:, :10, :, 0] - scale).abs().max() < 1e-5


def test_future_poses_follow_the_motion_fit_with_silent_heads():
    # model.tracker_future_fit: with the prediction head silent too, the future centres are the
    # motion fitted to the input frames, continued
    model = model_with_silent_heads(tracker_motion_fit=True, tracker_future_fit=True)
    with torch.no_grad():
        model.pose.future_mu.weight.zero_()
        model.pose.future_mu.bias.zero_()
    x = build_dataset(DataConfig(scenario="s2", test_size=4), "test").batch([0, 1, 2, 3])["input"]
    out = model(x)
    track = model.pose.tracker(x)
    fitted, _ = InkTracker.fit_motion(track.centres, fit_weight(track.share, track.match), WALLS, frames=20)
    torch.testing.assert_close(pose_centres(out.pose[:, 10:]), fitted[:, 10:], atol=1e-4, rtol=0)
    assert (pose_centres(out.pose[:, 10:]).diff(dim=1).abs() > 0.01).any()  # they move
    with pytest.raises(ValueError, match="tracker_motion_fit"):
        model_with_silent_heads(tracker_future_fit=True)


def test_true_centres_replace_the_tracked_ones():
    model = model_with_silent_heads(diagnostic_true_positions=True)
    batch = build_dataset(DataConfig(scenario="s2", test_size=4), "test").batch([0, 1, 2, 3])
    out = forward_batch(model, batch)
    torch.testing.assert_close(pose_centres(out.pose[:, :10]), batch["positions"][:, :10], atol=1e-4, rtol=0)

    class Wrapper(torch.nn.Module):  # as DistributedDataParallel holds the model
        def __init__(self, module):
            super().__init__()
            self.module = module

        def forward(self, *args, **kwargs):
            return self.module(*args, **kwargs)

    torch.testing.assert_close(forward_batch(Wrapper(model), batch).pose, out.pose)
    with pytest.raises(InputError, match="needs a DIVE model"):
        forward_batch(torch.nn.Linear(2, 2), batch)
    with pytest.raises(InputError, match="positions"):
        model.diagnostic_inputs({"input": batch["input"]})
    plain = DIVE(ModelConfig(), DataConfig())
    assert plain.diagnostic_inputs(batch) == {}
    with pytest.raises(InputError, match="tracking pose inference"):
        plain(batch["input"], true_centres=batch["positions"][:, :10])


def test_the_model_tracker_fills_gaps_as_configured():
    for bounce in (False, True):
        cfg = load(overrides=["model.pose_inference=track", f"model.tracker_bounce_gaps={str(bounce).lower()}"])
        assert DIVE(cfg.model, cfg.data).pose.tracker.bounce_gaps is bounce
    for fit, walls in (("false", None), ("true", WALLS)):
        cfg = load(overrides=["model.pose_inference=track", f"model.tracker_motion_fit={fit}"])
        assert DIVE(cfg.model, cfg.data).pose.tracker.walls == walls


def test_the_tracker_has_no_parameters_and_no_gradient():
    pose = DIVE(ModelConfig(pose_inference="track"), DataConfig()).pose
    assert not list(pose.tracker.parameters())
    x = torch.rand(2, 10, 1, 64, 64, requires_grad=True)
    assert not pose.tracker(x).centres.requires_grad


def test_shapes_with_three_slots_on_large_frames():
    data = DataConfig(dataset="pedestrians", image_size=256, t_out=5)
    torch.manual_seed(0)
    model = DIVE(ModelConfig(n_slots=3, hidden=32, scale_prior=3.5, pose_inference="track"), data)
    x = video(model, batch=1)
    out = model(x, temperature=0.5)
    check_shapes(out, model, 1)
    simple_loss(out, x).backward()


def test_tracker_stays_float32_under_autocast():
    track_of = tracker()
    x = torch.rand(2, 10, 1, 64, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        track = track_of(x)
    assert track.centres.dtype == torch.float32 and track.share.dtype == torch.float32
    torch.testing.assert_close(track.centres, track_of(x).centres)


def test_the_prediction_lstm_reads_where_its_increments_lead():
    model = model_with_silent_heads()
    with torch.no_grad():  # no change of scale in the future, so that fed-back and drawn centres agree
        model.pose.future_mu.weight[0].zero_()
        model.pose.future_mu.bias[0] = 0.0
    fed = []
    hook = model.pose.predict_cell.register_forward_pre_hook(lambda module, args: fed.append(args[0][:, -4:-2]))
    try:
        x = build_dataset(DataConfig(scenario="s2", test_size=2), "test").batch([0, 1])["input"]
        out = model(x)
    finally:
        hook.remove()
    centres = pose_centres(out.pose)  # (b T k 2)
    t_in = model.t_in
    for j, position in enumerate(fed):  # step j reads the centre reached after frame t_in - 1 + j
        torch.testing.assert_close(position, centres[:, t_in - 1 + j].reshape(-1, 2), atol=1e-4, rtol=0)

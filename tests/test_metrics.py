import itertools
import math

import numpy as np
import pytest
import torch

from dive import metrics as M
from dive import slots as S


# --------------------------------------------------------------------------- pixel errors


def test_mse_bce_psnr_by_hand():
    # One 2x2 frame, written out pixel by pixel.
    target = torch.tensor([[0.0, 1.0], [0.5, 0.2]]).reshape(1, 1, 1, 2, 2)
    pred = torch.tensor([[0.1, 0.7], [0.5, 0.0]]).reshape(1, 1, 1, 2, 2)
    sq = [0.1**2, 0.3**2, 0.0, 0.2**2]
    assert M.mse_per_frame(pred, target).item() == pytest.approx(sum(sq), abs=1e-6)

    p0 = 1e-4  # pred 0.0 is clipped
    bce = [
        -math.log(1 - 0.1),
        -math.log(0.7),
        -(0.5 * math.log(0.5) + 0.5 * math.log(0.5)),
        -(0.2 * math.log(p0) + 0.8 * math.log(1 - p0)),
    ]
    assert M.bce_per_frame(pred, target).item() == pytest.approx(sum(bce), rel=1e-5)

    assert M.psnr_per_frame(pred, target).item() == pytest.approx(10 * math.log10(4 / sum(sq)), rel=1e-5)


def test_constant_error_gives_20db_and_sum_convention():
    target = torch.full((2, 3, 1, 8, 8), 0.4)
    pred = target + 0.1
    assert torch.allclose(M.psnr(pred, target), torch.full((2,), 20.0), atol=1e-4)
    assert torch.allclose(M.psnr_per_frame(pred, target), torch.full((2, 3), 20.0), atol=1e-4)
    # A per-frame sum: mean per pixel (0.01) times C*H*W (64).
    assert torch.allclose(M.mse_per_frame(pred, target), torch.full((2, 3), 0.64), atol=1e-5)


def test_psnr_pools_frames_per_sequence():
    target = torch.zeros(1, 2, 1, 4, 4)
    pred = target.clone()
    pred[:, 0] = 0.1  # frame 0 mse 0.01, frame 1 mse 0 -> sequence mse 0.005
    assert M.psnr(pred, target).item() == pytest.approx(10 * math.log10(1 / 0.005), rel=1e-5)
    per_frame = M.psnr_per_frame(pred, target)
    assert per_frame[0, 0].item() == pytest.approx(20.0, abs=1e-4)
    assert per_frame[0, 1].item() == M.PSNR_MAX_DB


def test_psnr_of_identical_images_is_capped():
    x = torch.rand(2, 3, 1, 16, 16)
    assert torch.all(M.psnr(x, x) == M.PSNR_MAX_DB)
    assert torch.all(M.psnr_per_frame(x, x) == M.PSNR_MAX_DB)
    # The cap is the limit: a tiny error stays below it.
    assert M.psnr(x, (x + 1e-4).clamp(0, 1))[0] < M.PSNR_MAX_DB


def test_masked_errors_ignore_hidden_rows():
    target = torch.rand(2, 3, 1, 8, 8)
    pred = target.clone()
    pred[..., :4, :] = 1.0 - target[..., :4, :]  # big errors, hidden rows only
    pred[..., 4:, :] += 0.1
    mask = M.visible_rows_mask(8, 8, hidden_top=4)
    assert torch.allclose(M.mse_per_frame(pred, target, mask), torch.full((2, 3), 32 * 0.01), atol=1e-5)
    assert torch.allclose(M.psnr(pred, target, mask), torch.full((2,), 20.0), atol=1e-4)
    assert torch.allclose(M.psnr_per_frame(pred, target, mask), torch.full((2, 3), 20.0), atol=1e-4)
    bce_visible = M.bce_per_frame(pred[..., 4:, :], target[..., 4:, :])
    assert torch.allclose(M.bce_per_frame(pred, target, mask), bce_visible, atol=1e-4)


def test_bce_matches_torch_in_float64_including_the_clip():
    """Oracle: torch's binary_cross_entropy in float64 on the clipped prediction, over the whole
    range of predictions (exact 0 and 1, both sides of the clip, tiny and near-one values) and
    soft as well as binary targets."""
    g = torch.Generator().manual_seed(2)
    edges = torch.tensor([0.0, 1e-6, 1e-4, 2e-4, 1e-3, 0.5, 1 - 1e-3, 1 - 2e-4, 1 - 1e-5, 1.0])
    pred = torch.cat([edges, torch.rand(54, generator=g)]).reshape(1, 1, 1, 8, 8).expand(2, 3, 1, 8, 8)
    target = torch.rand(2, 3, 1, 8, 8, generator=g)
    target[0] = (target[0] > 0.5).float()
    p64 = pred.double().clamp(M.BCE_CLIP, 1 - M.BCE_CLIP)
    oracle = torch.nn.functional.binary_cross_entropy(p64, target.double(), reduction="none").sum(dim=(2, 3, 4))
    got = M.bce_per_frame(pred, target)
    assert got.dtype == torch.float32
    assert torch.allclose(got.double(), oracle, rtol=1e-5, atol=0)


def test_psnr_of_a_sequence_skips_fully_hidden_frames():
    """Per-sequence PSNR pools the scored pixels: a frame with none adds nothing to the count."""
    target = torch.zeros(1, 2, 1, 4, 4)
    pred = torch.full_like(target, 0.1)  # every pixel off by 0.1: mse 0.01, 20 dB
    mask = torch.ones(1, 2, 1, 4, 4)
    mask[:, 1] = 0.0
    assert M.psnr(pred, target, mask).item() == pytest.approx(20.0, abs=1e-4)
    assert M.psnr_per_frame(pred, target, mask)[0].tolist() == pytest.approx([20.0, M.PSNR_MAX_DB], abs=1e-4)


# --------------------------------------------------------------------------- SSIM


def naive_ssim_map(x: np.ndarray, y: np.ndarray, centre_rows=None) -> float:
    """Mean SSIM by a direct loop over all window positions fully inside the image."""
    size, sigma, r = 11, 1.5, 5
    ax = np.arange(size) - r
    g = np.exp(-(ax[:, None] ** 2 + ax[None, :] ** 2) / (2 * sigma**2))
    g /= g.sum()
    c1, c2 = 0.01**2, 0.03**2
    values = []
    for i in range(x.shape[0] - size + 1):
        if centre_rows is not None and (i + r) not in centre_rows:
            continue
        for j in range(x.shape[1] - size + 1):
            px = x[i : i + size, j : j + size]
            py = y[i : i + size, j : j + size]
            mx, my = (g * px).sum(), (g * py).sum()
            vx = (g * (px - mx) ** 2).sum()
            vy = (g * (py - my) ** 2).sum()
            cxy = (g * (px - mx) * (py - my)).sum()
            values.append(((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
    return float(np.mean(values))


def test_ssim_identity_is_one():
    x = torch.rand(2, 3, 1, 16, 16)
    assert torch.allclose(M.ssim_per_frame(x, x), torch.ones(2, 3), atol=1e-6)


def test_ssim_of_constant_images_closed_form():
    a, b = 0.3, 0.7
    x = torch.full((1, 1, 1, 16, 16), a)
    y = torch.full((1, 1, 1, 16, 16), b)
    c1 = 0.01**2
    expected = (2 * a * b + c1) / (a**2 + b**2 + c1)
    assert M.ssim_per_frame(x, y).item() == pytest.approx(expected, abs=1e-6)


def test_ssim_matches_naive_loop():
    rng = np.random.default_rng(0)
    x = rng.random((16, 16))
    y = np.clip(x + 0.2 * rng.standard_normal((16, 16)), 0, 1)
    got = M.ssim_per_frame(
        torch.tensor(x, dtype=torch.float32).reshape(1, 1, 1, 16, 16),
        torch.tensor(y, dtype=torch.float32).reshape(1, 1, 1, 16, 16),
    ).item()
    expected = naive_ssim_map(x.astype(np.float32).astype(np.float64), y.astype(np.float32).astype(np.float64))
    assert got == pytest.approx(expected, abs=1e-5)
    assert M.ssim_map(torch.rand(1, 1, 1, 16, 20), torch.rand(1, 1, 1, 16, 20)).shape == (1, 1, 1, 6, 10)


def test_float32_ssim_agrees_with_float64():
    """The cancellation-prone case: near-constant bright patches (tiny variance) next to black."""
    g = torch.Generator().manual_seed(4)
    x = torch.zeros(3, 4, 1, 32, 32, dtype=torch.float64)
    x[..., 4:20, 6:24] = 0.9 + 1e-3 * torch.rand(3, 4, 1, 16, 18, generator=g, dtype=torch.float64)
    y = (x + 0.05 * torch.randn(x.shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    y[0] = x[0] + 1e-4  # almost identical frames: SSIM near 1, every term at its most sensitive
    x[1] = 0.6 + 1e-3 * torch.rand(x[1].shape, generator=g, dtype=torch.float64)  # bright, nearly flat frames
    y[1] = x[1] + 1e-3 * torch.rand(x[1].shape, generator=g, dtype=torch.float64)
    exact = M.ssim_per_frame(x, y)
    single = M.ssim_per_frame(x.float(), y.float())
    assert single.dtype == torch.float32
    assert (single.double() - exact).abs().max() < 1e-5


def test_ssim_leaves_its_inputs_and_filters_untouched():
    """ssim_map works in place on its own buffers only: the inputs and the cached filter matrices
    stay as they were, so a second call gives the same values."""
    g = torch.Generator().manual_seed(5)
    x, y = torch.rand(2, 3, 1, 24, 24, generator=g), torch.rand(2, 3, 1, 24, 24, generator=g)
    x0, y0 = x.clone(), y.clone()
    first = M.ssim_map(x, y)
    assert torch.equal(x, x0) and torch.equal(y, y0)
    assert torch.equal(M.ssim_map(x, y), first)
    expected = naive_ssim_map(x[1, 2, 0].double().numpy(), y[1, 2, 0].double().numpy())
    assert first[1, 2].mean().item() == pytest.approx(expected, abs=1e-5)


def test_masked_ssim_averages_scored_centres():
    rng = np.random.default_rng(1)
    x = rng.random((20, 16)).astype(np.float32)
    y = rng.random((20, 16)).astype(np.float32)
    mask = M.visible_rows_mask(20, 16, hidden_top=10)
    got = M.ssim_per_frame(
        torch.from_numpy(x).reshape(1, 1, 1, 20, 16), torch.from_numpy(y).reshape(1, 1, 1, 20, 16), mask
    ).item()
    expected = naive_ssim_map(x.astype(np.float64), y.astype(np.float64), centre_rows=set(range(10, 20)))
    assert got == pytest.approx(expected, abs=1e-5)


# --------------------------------------------------------------------------- presence


def test_presence_scores_by_hand():
    labels = torch.tensor([1, 1, 0, 0, 1, 0, 1, 1])
    decisions = torch.tensor([1, 0, 0, 1, 1, 0, 1, 1])
    # missing = positive: tp = 2 (idx 2, 5), fp = 1 (idx 1), fn = 1 (idx 3), tn = 4
    s = M.presence_scores(decisions, labels)
    assert s["accuracy"] == pytest.approx(6 / 8)
    assert s["precision"] == pytest.approx(2 / 3)
    assert s["recall"] == pytest.approx(2 / 3)
    assert s["f1"] == pytest.approx(2 / 3)


def test_presence_scores_without_missing():
    ones = torch.ones(4, 2)
    assert M.presence_scores(ones, ones) == {"accuracy": 1.0, "f1": 1.0, "precision": 1.0, "recall": 1.0}
    false_alarm = ones.clone()
    false_alarm[0, 0] = 0
    s = M.presence_scores(false_alarm, ones)
    assert s["f1"] == 0.0 and s["precision"] == 0.0
    missed = M.presence_scores(ones, false_alarm)
    assert missed["f1"] == 0.0 and missed["recall"] == 0.0
    with pytest.raises(ValueError):
        M.presence_scores(torch.ones(3), torch.ones(4))


# --------------------------------------------------------------------------- slots vs digits


def test_pose_centres():
    pose = torch.tensor([[2.0, 0.0, 0.0], [2.0, -0.5, 1.0], [4.0, 1.0, -2.0]])
    expected = torch.tensor([[0.0, 0.0], [0.25, -0.5], [-0.25, 0.5]])
    assert torch.allclose(S.pose_centres(pose), expected)


def test_match_slots_recovers_permutation():
    torch.manual_seed(0)
    b, t, k, d = 6, 5, 4, 3
    digits = torch.rand(b, t, d, 2) * 2 - 1
    true_perm = torch.stack([torch.randperm(k)[:d] for _ in range(b)])  # slot of each digit
    slots = torch.rand(b, t, k, 2) * 10 + 5  # unused slots far away
    for i in range(b):
        slots[i, :, true_perm[i]] = digits[i] + 0.01 * torch.randn(t, d, 2)
    perm = S.match_slots(slots, digits)
    assert perm.shape == (b, d)
    assert torch.equal(perm, true_perm)
    # Reordering slot values by the matching lines them up with the digits.
    assert torch.allclose(S.gather_slots(slots, perm), digits, atol=0.05)


def test_match_slots_weights_and_errors():
    # Digits stand still at x = 0 and x = 1; the slots sit on them in frame 0
    # and swapped in frames 1 and 2.
    digits = torch.tensor([[0.0, 0.0], [1.0, 0.0]]).expand(1, 3, 2, 2)
    slots = torch.tensor([[[0.0, 0.0], [1.0, 0.0]], [[1.0, 0.0], [0.0, 0.0]], [[1.0, 0.0], [0.0, 0.0]]])[None]
    assert S.match_slots(slots, digits).tolist() == [[1, 0]]
    # With frames 1 and 2 weighted out, frame 0 decides.
    weights = torch.tensor([1.0, 0.0, 0.0]).reshape(1, 3, 1)
    assert S.match_slots(slots, digits, weights).tolist() == [[0, 1]]
    with pytest.raises(ValueError):
        S.match_slots(torch.zeros(1, 3, 1, 2), digits)


def test_match_slots_against_brute_force():
    torch.manual_seed(3)
    slots, digits = torch.rand(4, 3, 3, 2), torch.rand(4, 3, 2, 2)
    perm = S.match_slots(slots, digits)
    for i in range(4):
        def cost(p):
            return sum((slots[i, :, p[j]] - digits[i, :, j]).norm(dim=-1).mean().item() for j in range(2))
        best = min(itertools.permutations(range(3), 2), key=cost)
        assert tuple(perm[i].tolist()) == best


# --------------------------------------------------------------------------- aggregation and baselines


def test_sequence_metrics_keys_and_values():
    target = torch.full((2, 4, 1, 16, 16), 0.4)
    pred = target + 0.1
    out = M.sequence_metrics(pred, target)
    assert out["psnr"] == pytest.approx(20.0, abs=1e-4)
    assert out["mse"] == pytest.approx(256 * 0.01, rel=1e-5)
    assert set(out["per_frame"]) == {"mse", "bce", "psnr", "ssim"}
    assert all(len(v) == 4 for v in out["per_frame"].values())
    assert isinstance(out["ssim"], float) and 0 < out["ssim"] <= 1


def test_accumulator_equals_one_shot():
    torch.manual_seed(0)
    target = torch.rand(7, 3, 1, 16, 16)
    pred = (target + 0.1 * torch.randn_like(target)).clamp(0, 1)
    mask = M.visible_rows_mask(16, 16, hidden_top=5)
    labels = (torch.rand(7, 3, 2) > 0.3).float()
    decisions = (torch.rand(7, 3, 2) > 0.3).float()

    acc = M.MetricAccumulator()
    for sl in (slice(0, 3), slice(3, 5), slice(5, 7)):
        acc.update(pred[sl], target[sl], mask)
        acc.update_presence(decisions[sl], labels[sl])
    got = acc.result()
    want = M.sequence_metrics(pred, target, mask)
    assert got["num_sequences"] == want["num_sequences"] == 7
    for key in ("mse", "bce", "psnr", "psnr_frames", "ssim"):
        assert got[key] == pytest.approx(want[key], rel=1e-6)
    for key in want["per_frame"]:
        assert got["per_frame"][key] == pytest.approx(want["per_frame"][key], rel=1e-6)
    assert got["presence"] == M.presence_scores(decisions, labels)
    # Headline numbers are means of the per-frame values.
    assert want["mse"] == pytest.approx(M.mse_per_frame(pred, target, mask).mean().item(), rel=1e-5)
    assert want["psnr"] == pytest.approx(M.psnr(pred, target, mask).mean().item(), rel=1e-5)


def test_baselines():
    x = torch.rand(2, 4, 1, 8, 8)
    rec, pred = M.copy_last_baseline(x)
    assert rec.shape == x.shape and torch.equal(rec, x)
    assert pred.shape == (2, 1, 1, 8, 8) and torch.equal(pred[:, 0], x[:, -1])

    rec, pred = M.mean_frame_baseline(x)
    assert rec.shape == pred.shape == (2, 1, 1, 8, 8)
    assert torch.allclose(rec[:, 0], x.mean(dim=1)) and torch.equal(pred, rec)


def test_still_frames_score_as_the_repeated_video():
    """A (b 1 c h w) prediction is scored as that frame repeated over every target frame."""
    g = torch.Generator().manual_seed(6)
    target = torch.rand(3, 5, 1, 20, 20, generator=g)
    still = torch.rand(3, 1, 1, 20, 20, generator=g)
    mask = (torch.rand(3, 1, 1, 20, 20, generator=g) > 0.3).float()
    for m in (None, mask):
        got = M.frame_metrics([still], target, m)[0]
        want = M.frame_metrics([still.expand_as(target).clone()], target, m)[0]
        for key in ("mse", "bce", "psnr", "ssim", "pixels"):
            assert got[key].shape == (3, 5)
            assert torch.allclose(got[key], want[key], rtol=1e-5, atol=1e-6), key


def test_scoring_several_predictions_at_once_equals_one_by_one(monkeypatch):
    """frame_metrics shares the target's work between predictions; the scores do not change,
    whatever the mix of full videos and still frames, and the SSIM chunking does not matter."""
    g = torch.Generator().manual_seed(7)
    target = torch.rand(5, 4, 1, 16, 16, generator=g)
    preds = [(target + 0.1 * torch.randn(target.shape, generator=g)).clamp(0, 1),
             torch.rand(5, 1, 1, 16, 16, generator=g), target.clone(), torch.rand(5, 4, 1, 16, 16, generator=g),
             torch.rand(5, 1, 1, 16, 16, generator=g)]
    mask = M.visible_rows_mask(16, 16, hidden_top=5)
    together = M.frame_metrics(preds, target, mask)
    for pred, scores in zip(preds, together):
        alone = M.frame_metrics([pred], target, mask)[0]
        assert torch.allclose(scores["ssim"], M.ssim_per_frame(pred.expand_as(target), target, mask), atol=1e-6)
        for key in alone:
            assert torch.allclose(scores[key], alone[key], rtol=1e-6, atol=1e-6), key
    assert torch.allclose(together[2]["ssim"], torch.ones(5, 4), atol=1e-6)
    monkeypatch.setattr(M, "SSIM_CHUNK", 8)  # two sequences per pass, the last pass holds one
    for chunked, whole in zip(M.frame_metrics(preds, target, mask), together):
        assert torch.allclose(chunked["ssim"], whole["ssim"], atol=1e-6)
    with pytest.raises(ValueError, match=r"expected a prediction of shape \(5, 4 or 1, 1, 16, 16\)"):
        M.frame_metrics([target[:, :3]], target)


def test_accumulator_add_equals_update():
    g = torch.Generator().manual_seed(8)
    target = torch.rand(4, 3, 1, 16, 16, generator=g)
    preds = [torch.rand(4, 3, 1, 16, 16, generator=g), torch.rand(4, 1, 1, 16, 16, generator=g)]
    mask = M.visible_rows_mask(16, 16, hidden_top=3)
    for pred, scores in zip(preds, M.frame_metrics(preds, target, mask)):
        one, other = M.MetricAccumulator(), M.MetricAccumulator()
        one.update(pred, target, mask)
        other.add(scores)
        a, b = one.result(), other.result()
        for key in ("mse", "bce", "psnr", "psnr_frames", "ssim"):
            assert a[key] == pytest.approx(b[key], rel=1e-6)
        assert a["psnr"] == pytest.approx(M.psnr(pred.expand_as(target), target, mask).mean().item(), rel=1e-5)


def test_tracking_errors_measure_pixels_after_matching():
    from types import SimpleNamespace

    from dive.evaluation import tracking_errors

    b, t_in, t_out, size = 2, 3, 2, 64
    T = t_in + t_out
    g = torch.Generator().manual_seed(0)
    positions = torch.rand(b, T, 2, 2, generator=g) - 0.5  # (b T d xy) digit centres
    present = torch.ones(b, t_in, 2)
    present[0, 1, 0] = 0  # digit 0 missing in frame 1 of sequence 0
    s = 3.0
    # slot 1 sits exactly on digit 0, slot 0 on digit 1 shifted 4 px to the right (pose = (s, -s c))
    centres = torch.stack([positions[:, :, 1] + torch.tensor([8 / size, 0.0]), positions[:, :, 0]], dim=2)
    pose = torch.cat([torch.full((b, T, 2, 1), s), -s * centres], dim=-1)
    out = SimpleNamespace(pose=pose, presence_hard=torch.ones(b, t_in, 2))
    inside, future = tracking_errors(out, {"positions": positions, "present": present}, size)
    assert inside.shape == (b, t_in, 2) and future.shape == (b, t_out, 2)
    assert torch.isnan(inside[0, 1, 0]) and torch.isnan(inside).sum() == 1
    torch.testing.assert_close(inside[..., 0].nan_to_num(0.0), torch.zeros(b, t_in))
    torch.testing.assert_close(inside[..., 1], torch.full((b, t_in), 4.0))
    torch.testing.assert_close(future[..., 1], torch.full((b, t_out), 4.0))
    no_digits = {"positions": torch.zeros(b, T, 0, 2), "present": present[..., :1]}
    assert tracking_errors(out, no_digits, size) is None

"""How far the ink tracker's centres are from the digits' true centres, before any training.

    python bench/tracker_accuracy.py [--scenarios s1 s2 s3 none] [--n 512] [--bounce-gaps] [--motion-fit] [--json]

On the first N sequences of each scenario's fixed test set, the untrained
tracker (dive/nn/tracker.py) follows the digits through the input frames, its
slots are matched to the digits as evaluation matches them
(dive.slots.match_slots), and the distance in pixels from each digit's centre
to its slot's is reported: on the frames where the digit is in scene (mean,
median, share above 4 px), where it is out of scene, and by how much of the
digit's ink is observed (all, part, none: rows are hidden in s1), with the
share of the frames in each of the last two classes. With --motion-fit also
how far the fitted path, continued over the future frames, is from the digits
there (what model.tracker_future_fit starts the future poses from).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dive.config import DataConfig, ModelConfig  # noqa: E402
from dive.data import build_dataset  # noqa: E402
from dive.nn.tracker import InkTracker, fit_weight  # noqa: E402
from dive.slots import gather_slots, match_slots  # noqa: E402


def measure(scenario: str, n: int, batch_size: int = 64, bounce_gaps: bool = False,
            motion_fit: bool = False) -> dict[str, float | None]:
    ds = build_dataset(DataConfig(scenario=scenario, test_size=n), "test")
    cfg = ds.cfg
    tracker = InkTracker(cfg.num_digits, cfg.image_size, ModelConfig().scale_prior,  # every Moving MNIST config's
                         bounce_gaps=bounce_gaps, walls=1 - cfg.digit_size / cfg.image_size if motion_fit else None)
    errors, present, observed, future = [], [], [], []
    for start in range(0, n, batch_size):
        idx = list(range(start, min(start + batch_size, n)))
        batch = ds.batch(idx)
        t_in = batch["input"].shape[1]
        track = tracker(batch["input"])
        positions, labels = batch["positions"][:, :t_in], batch["present"]
        perm = match_slots(track.centres, positions, weights=labels)
        errors.append((gather_slots(track.centres, perm) - positions).norm(dim=-1) * cfg.image_size / 2)
        if motion_fit:
            ahead = batch["positions"].shape[1]
            path, _ = tracker.fit_motion(track.centres, fit_weight(track.share, track.match), tracker.walls, ahead)
            future.append((gather_slots(path[:, t_in:], perm) - batch["positions"][:, t_in:]).norm(dim=-1)
                          * cfg.image_size / 2)
        present.append(labels > 0.5)
        ink = ds.digit_layers(idx)[:, :t_in]  # (b t k h w)
        seen = batch["visible"].mean(1)[:, None, None]  # (b 1 1 h w)
        observed.append((ink * seen).sum((-2, -1)) / ink.sum((-2, -1)).clamp(min=1e-6))
    error, present, observed = torch.cat(errors), torch.cat(present), torch.cat(observed)

    def mean(mask: torch.Tensor) -> float | None:
        return round(float(error[mask].mean()), 2) if mask.any() else None

    inside = error[present]
    part, hidden = present & (observed > 0.01) & (observed <= 0.99), present & (observed <= 0.01)
    rows = {
        "in_scene_mean": round(float(inside.mean()), 2),
        "in_scene_median": round(float(inside.median()), 2),
        "in_scene_over_4px": round(float((inside > 4).float().mean()), 3),
        "out_of_scene_mean": mean(~present),
        "all_observed_mean": mean(present & (observed > 0.99)),
        "part_observed_mean": mean(part),
        "none_observed_mean": mean(hidden),
        "frames_part_observed": round(float(part.float().mean()), 3),
        "frames_none_observed": round(float(hidden.float().mean()), 3),
    }
    if motion_fit:
        ahead = torch.cat(future)
        rows.update(future_fit_mean=round(float(ahead.mean()), 2), future_fit_median=round(float(ahead.median()), 2),
                    future_fit_over_4px=round(float((ahead > 4).float().mean()), 3))
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenarios", nargs="+", default=["s1", "s2", "s3", "none"], choices=["s1", "s2", "s3", "none"],
                   help="Moving MNIST scenarios (default: all four)")
    p.add_argument("--n", type=int, default=512, help="test sequences per scenario (default: 512)")
    p.add_argument("--bounce-gaps", action="store_true",
                   help="fill the gaps with a bounce where the motion turned (model.tracker_bounce_gaps)")
    p.add_argument("--motion-fit", action="store_true",
                   help="every frame takes the straight path with bounces fitted to the frames where the digit "
                        "is seen (model.tracker_motion_fit)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    args = p.parse_args(argv)
    if args.n < 1:
        p.error(f"--n must be at least 1, got {args.n}")
    rows = {s: measure(s, args.n, bounce_gaps=args.bounce_gaps, motion_fit=args.motion_fit) for s in args.scenarios}
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0

    def cell(v):
        return "-" if v is None else f"{v:g}"

    keys = list(next(iter(rows.values())))
    print("| scenario | " + " | ".join(keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    for name, r in rows.items():
        print(f"| {name} | " + " | ".join(cell(r[k]) for k in keys) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

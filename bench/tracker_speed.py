"""How long the ink tracker takes, alone, on the two clips a tracking recipe's training step gives it.

    python bench/tracker_speed.py [--config configs/s2_track.toml] [--batch 16] [--repeats 30]
                                  [--threads 2] [--profile] [--json]

The tracking recipe runs the tracker (dive/nn/tracker.py) twice per step: on
the input frames in the pose inference, and on the last 3 input frames and
the future frames in the teacher term (dive/teacher.py). This times each call
on a batch of the config's training data (median and quartiles of
`--repeats` calls after 3 warm-up calls), and with `--profile` prints
torch.profiler's table of the ops one input-frame call runs. The share of
the whole step: bench/profile_step.py.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dive import config as config_mod  # noqa: E402
from dive.data import build_dataset  # noqa: E402
from dive.nn.tracker import InkTracker  # noqa: E402
from dive.teacher import _OVERLAP  # noqa: E402


def time_calls(fn, repeats: int, warmup: int = 3) -> dict[str, float]:
    """Median and quartiles, in ms, of `repeats` calls of fn() after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - t0))
    q1, median, q3 = statistics.quantiles(times, n=4, method="inclusive") if repeats > 1 else (times[0],) * 3
    return {"median_ms": median, "q1_ms": q1, "q3_ms": q3}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--config", default="configs/s2_track.toml", help="a config whose data the tracker follows")
    ap.add_argument("--batch", type=int, default=16, help="sequences per call (the recipe's batch: 16)")
    ap.add_argument("--repeats", type=int, default=30, help="timed calls per clip")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--profile", action="store_true", help="also print the ops of one input-frame call")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args(argv)
    if args.batch < 1 or args.repeats < 1:
        ap.error(f"--batch and --repeats must be >= 1, got {args.batch} and {args.repeats}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    cfg = config_mod.load(args.config)
    batch = build_dataset(cfg.data, "train", seed=cfg.data.seed).batch(list(range(args.batch)))
    tracker = InkTracker(cfg.model.n_slots, cfg.data.image_size, cfg.model.scale_prior)
    clips = {"input": batch["input"],
             "teacher": torch.cat([batch["input"][:, -_OVERLAP:], batch["target"]], dim=1)}
    result = {"config": args.config, "batch": args.batch, "threads": torch.get_num_threads()}
    for name, frames in clips.items():
        result[name] = {"frames": frames.shape[1], **time_calls(lambda: tracker(frames), args.repeats)}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{args.config}, batch {args.batch}, {result['threads']} threads")
        for name in clips:
            r = result[name]
            print(f"  {name:8s} {r['frames']:3d} frames: {r['median_ms']:7.2f} ms "
                  f"(quartiles {r['q1_ms']:.2f}-{r['q3_ms']:.2f})")
    if args.profile:
        from torch.profiler import profile
        with profile() as prof:
            tracker(clips["input"])
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))
    return 0


if __name__ == "__main__":
    sys.exit(main())

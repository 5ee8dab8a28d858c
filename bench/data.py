"""Moving MNIST generation speed: sequences per second per scenario.

    python bench/data.py [--batch 64] [--repeats 20] [--threads 1] [--json]

Each repeat generates one fresh batch (new indices). Reported: the fastest
repeat (least disturbed by other work on the machine), the median, and
sequences per second of process CPU time over all repeats.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from dive.data import MovingMNIST

CASES = [
    ("s1", {}),
    ("s2", {}),
    ("s3", {}),
    ("s3-2d", {"scenario": "s3", "elastic_mode": "2d"}),
    ("none", {}),
]


def measure(ds: MovingMNIST, batch: int, repeats: int) -> dict[str, float]:
    ds.batch(range(batch))  # warm-up
    wall, cpu = [], []
    for r in range(repeats):
        start = (r + 1) * batch
        w0, c0 = time.perf_counter(), time.process_time()
        ds.batch(range(start, start + batch))
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
    return {"best_seq_per_s": round(batch / min(wall), 1),
            "median_seq_per_s": round(batch / statistics.median(wall), 1),
            "cpu_seq_per_s": round(batch * repeats / sum(cpu), 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    results = {}
    for name, kw in CASES:
        kw = dict(kw)
        scenario = kw.pop("scenario", name)
        ds = MovingMNIST(scenario, split="train", **kw)
        results[name] = measure(ds, args.batch, args.repeats)

    if args.json:
        print(json.dumps({"batch": args.batch, "threads": args.threads, "repeats": args.repeats,
                          "results": results}))
        return
    print(f"Moving MNIST generation, batch {args.batch}, {args.threads} thread(s), {args.repeats} repeats")
    print(f"{'scenario':10s} {'best seq/s':>12s} {'median seq/s':>14s} {'seq/CPU-s':>11s}")
    for name, r in results.items():
        print(f"{name:10s} {r['best_seq_per_s']:12.0f} {r['median_seq_per_s']:14.0f} {r['cpu_seq_per_s']:11.0f}")


if __name__ == "__main__":
    main()

"""Two (or more) checkouts of this project timed against each other: their training steps interleaved.

    git worktree add /tmp/before <commit>      # or any clone at the version to compare with
    python bench/ab.py before=/tmp/before now=. --modes malloc --batch 16,64 --rounds 20

Each checkout's own ``bench/train_step.py`` builds the workers (its model,
its step), so the comparison is of the code as each version has it. A
throwaway worker is built first (none with ``--no-throwaway``, which only
checks the script), and the checkouts' workers are built in the order given;
run a comparison in both orders (a second call with the checkouts swapped)
before trusting a difference of a few percent: on the 2-core machines of
docs/studies/speed-round-intel-xeon.md the first workers built in a run were
sometimes slower whatever their code. Rounds then ask every worker for one
step in turn, the order rotated every round. Reported per (mode, batch):
each checkout's median step, its ratio to the first checkout's, and its
peak and steady resident memory (train_step.py's definitions).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from train_step import GIB, Proc  # bench/ is the script's directory, first on sys.path


def worker(label: str, root: Path, mode: str, batch: int, warmup: int, threads: int, config: str) -> Proc:
    """A built and warmed-up train_step.py worker of the checkout at `root`."""
    spec = {"batch": batch, "mode": mode, "config": str(root / config), "threads": threads, "warmup": warmup,
            "eval_n": None, "flops": False, "device": "cpu"}
    p = Proc(spec, root)
    p.label = label
    p.receive()  # ready
    return p


def parse_checkout(text: str) -> tuple[str, Path]:
    label, sep, path = text.partition("=")
    root = Path(path).resolve()
    if not sep or not label:
        raise SystemExit(f"expected LABEL=PATH, got {text!r}")
    if not (root / "bench" / "train_step.py").is_file():
        raise SystemExit(f"{label}: no bench/train_step.py under {root}; give the root of a checkout of this project")
    return label, root


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkouts", nargs="+", help="LABEL=PATH of each checkout; the first is the reference")
    ap.add_argument("--modes", default="malloc", help="comma-separated train_step.py modes (default malloc)")
    ap.add_argument("--batch", default="16,64", help="comma-separated batch sizes (default 16,64)")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--config", default="configs/s3.toml", help="config path inside each checkout (default configs/s3.toml)")
    ap.add_argument("--json", action="store_true", help="print one JSON object per row instead of a table")
    ap.add_argument("--no-throwaway", dest="throwaway", action="store_false",
                    help="build no throwaway worker first (quicker; for checking the script, not for timings)")
    args = ap.parse_args(argv)
    checkouts = [parse_checkout(c) for c in args.checkouts]
    if len(checkouts) < 2:
        raise SystemExit("give at least two checkouts")
    labels = [label for label, _ in checkouts]
    if len(set(labels)) != len(labels):
        raise SystemExit(f"labels must differ, got {', '.join(labels)}")
    modes = [m for m in args.modes.split(",") if m]
    batches = [int(b) for b in args.batch.split(",") if b]

    throwaway = worker(*checkouts[0], modes[0], batches[0], args.warmup, args.threads, args.config) \
        if args.throwaway else None
    workers = []
    for mode in modes:
        for batch in batches:
            for label, root in checkouts:
                workers.append(worker(label, root, mode, batch, args.warmup, args.threads, args.config))
                print(f"ready: {label} {mode} batch {batch}", file=sys.stderr, flush=True)
    for r in range(args.rounds):
        for w in workers[r % len(workers):] + workers[:r % len(workers)]:
            w.times += w.ask("run 1")["times"]
    if throwaway is not None:
        throwaway.ask("quit")
        throwaway.p.wait()

    rows = []
    for w in workers:
        mem = w.ask("quit")
        w.p.wait()
        rows.append({"label": w.label, "mode": w.spec["mode"], "batch": w.spec["batch"],
                     "median_s": statistics.median(w.times),
                     "peak_gib": mem["peak_rss"] / GIB,
                     "steady_gib": None if mem["steady_rss"] is None else mem["steady_rss"] / GIB})
    for row in rows:
        ref = next(r for r in rows if (r["mode"], r["batch"], r["label"]) == (row["mode"], row["batch"], checkouts[0][0]))
        row["ratio"] = row["median_s"] / ref["median_s"]
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return
    print(f"{'mode':22s} {'batch':>5s} {'checkout':12s} {'median ms':>9s} {'ratio':>6s} {'peak GiB':>8s} {'steady':>6s}")
    for row in rows:
        steady = "-" if row["steady_gib"] is None else f"{row['steady_gib']:.2f}"
        print(f"{row['mode']:22s} {row['batch']:5d} {row['label']:12s} {row['median_s'] * 1e3:9.1f} "
              f"{row['ratio']:6.3f} {row['peak_gib']:8.2f} {steady:>6s}")


if __name__ == "__main__":
    main()

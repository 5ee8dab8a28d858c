"""Train DIVE.

    python train.py --config configs/s3.toml --out runs/s3
    python train.py --config configs/s2.toml --out runs/s2 --set train.batch_size=16 --set train.steps=5000
    python train.py --resume runs/s3                      # continue where latest.pt left off
    torchrun --nproc_per_node 2 train.py --config configs/s3.toml --out runs/s3-ddp

Precedence: dataclass defaults < --config FILE < --set section.key=value < --seed.
The run folder receives config.toml, latest.pt, best.pt and TensorBoard logs (tb/).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dive import checkpoint, config
from dive.compile import COMPILE_MODES
from dive.engine import Options, train
from dive.errors import DIVEError


def minutes_list(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated minutes such as 5,10,30, got {text!r}") from None
    if any(not 0 < v < float("inf") for v in values):
        raise argparse.ArgumentTypeError(f"minutes must be positive numbers, got {text!r}")
    return values


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Train DIVE on Moving MNIST with missing data (or MOTS pedestrians).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Overrides: --set section.key=value, repeatable; sections are "
               + ", ".join(config.SECTIONS) + ". Example: --set train.batch_size=16 --set data.scenario=s2",
    )
    p.add_argument("--config", type=Path, help="TOML config file (see configs/); default: built-in defaults (s3)")
    p.add_argument("--out", type=Path, help="run folder for checkpoints, logs and the resolved config")
    p.add_argument("--resume", type=Path, metavar="RUN_DIR",
                   help="continue the run in RUN_DIR from its latest.pt (with its stored config unless "
                        "--config/--set are given; architecture keys must not change)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config value (repeatable)")
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda or cuda:N (default: auto)")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=False,
                   help="bfloat16 autocast (default: off)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False,
                   help="torch.compile the model (default: off)")
    p.add_argument("--compile-mode", choices=COMPILE_MODES, default="auto",
                   help="torch.compile mode with --compile; auto: reduce-overhead (CUDA graphs) on CUDA, "
                        "inductor's default on CPU (default: auto)")
    p.add_argument("--seed", type=int, help="sets train.seed and data.seed")
    p.add_argument("--stop-after", type=int, metavar="N",
                   help="stop after N optimiser steps in this invocation (checkpoint saved; continue with --resume)")
    p.add_argument("--time-limit", type=float, metavar="MINUTES",
                   help="stop after MINUTES of training in this invocation (checkpoint saved)")
    p.add_argument("--snapshot-minutes", type=minutes_list, default=(), metavar="M1,M2,...",
                   help="also save snapshots/min_M.pt when the run's training time passes M minutes "
                        "(validation included; score them with bench/learning_curve.py)")
    p.add_argument("--threads", type=int, metavar="N",
                   help="CPU threads for torch (default: torch's choice, one per core)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    args = p.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        p.error(f"--threads must be at least 1, got {args.threads}")
    if args.resume is None and args.out is None:
        p.error("--out RUN_DIR is required (or --resume RUN_DIR)")
    if args.resume is not None and args.out is not None and args.out != args.resume:
        p.error("--out and --resume name different folders; a resumed run stays in its folder")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    try:
        overrides = list(args.overrides)
        if args.seed is not None:
            overrides += [f"train.seed={args.seed}", f"data.seed={args.seed}"]
        if args.resume is not None and args.config is None:
            # Continue with the stored config, changed only by the overrides given.
            latest = args.resume / "latest.pt"
            cfg = config.apply_overrides(checkpoint.config_of(checkpoint.load(latest), latest), overrides)
            config.validate(cfg)
        else:
            cfg = config.load(args.config, overrides)
        out = args.resume if args.resume is not None else args.out
        opts = Options(out=out, device=args.device, amp=args.amp, compile=args.compile, compile_mode=args.compile_mode,
                       resume=args.resume is not None, quiet=args.quiet,
                       stop_after=args.stop_after, snapshot_minutes=args.snapshot_minutes,
                       time_limit=args.time_limit * 60 if args.time_limit is not None else None)
        state = train(cfg, opts)
    except config.ConfigError as e:
        print(f"error: config: {e}", file=sys.stderr)
        return 2
    except DIVEError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # the run folder cannot be written (read-only, disk full) outside a checkpoint save
        where = f"{e.filename}: " if e.filename else ""
        print(f"error: cannot write the run folder: {where}{e.strerror or e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; resume with --resume", file=sys.stderr)
        return 130
    if state.step and (out / "latest.pt").exists():
        print(f"done: {state.step} steps; checkpoints in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

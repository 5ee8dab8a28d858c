"""Metrics against wall-clock training time, from the snapshots of one or more runs.

Train with time snapshots, then score every snapshot on the fixed test set:

    python train.py --config configs/s2_fast.toml --out runs/fast --time-limit 120 \\
        --snapshot-minutes 2,5,10,15,20,30,45,60,90,120
    python bench/learning_curve.py runs/fast --out runs/fast/curve

Snapshots already scored in an existing --out/curve.json (same run, minutes,
step and number of sequences) are not scored again, so the script can be
rerun while a run is still going. Writes curve.json (one record per snapshot: minutes, step, Rec/Pred MSE and
BCE, presence F1, tracking error, the imputation error per missing digit, MOTA and FG-ARI, and the copy-last
baseline's MSE on the same sequences), curve.md (the same as a table, after each run's split time: its first
validation in val.jsonl with tracking below 4 px) and curve.png (MSE against
minutes, with the published DIVE row and the copy-last baseline as horizontal lines and, for s2,
the original implementation's points from the issue tracker: same machine, batch 16, its own 256
test sequences).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dive import checkpoint, published  # noqa: E402
from dive.data import build_dataset  # noqa: E402
from dive.engine import build_model  # noqa: E402
from dive.evaluation import evaluate  # noqa: E402
from dive.viz import plot_curves  # noqa: E402

# The original Pyro code on this kind of 2-core machine, s2, batch 16 (issue tracker):
# minutes, Rec MSE, Pred MSE, presence F1 of the missing class.
ORIGINAL = [(10, 193.1, 194.2, 0.0), (20, 147.2, 153.6, 0.54), (30, 138.8, 148.1, 0.61),
            (60, 127.0, 140.5, 0.66), (90, 123.6, 138.2, 0.69)]


def snapshot_minutes(path: Path) -> float:
    match = re.fullmatch(r"min_([0-9.e+-]+)\.pt", path.name)
    if match is None:
        raise ValueError(f"{path}: not a snapshot (expected min_<minutes>.pt)")
    return float(match.group(1))


def score(path: Path, n: int, batch_size: int) -> dict:
    state = checkpoint.load(path, map_location="cpu")
    cfg = checkpoint.config_of(state, path)
    model = build_model(cfg)
    checkpoint.load_model_state(model, state, path)
    with torch.no_grad():
        m = evaluate(model, build_dataset(cfg.data, "test"), cfg, n=n, batch_size=batch_size)
    return {
        "scenario": cfg.data.scenario if cfg.data.dataset == "moving_mnist" else cfg.data.dataset,
        "minutes": snapshot_minutes(path), "elapsed_s": float(state.get("extra", {}).get("elapsed", float("nan"))),
        "step": int(state["step"]), "rec_mse": m["rec"]["mse"], "pred_mse": m["pred"]["mse"],
        "rec_bce": m["rec"]["bce"], "pred_bce": m["pred"]["bce"], "missing_f1": m["missing"]["f1"],
        "tracking_input_px": m["tracking_px"]["input"], "tracking_future_px": m["tracking_px"]["future"],
        "num_sequences": m["num_sequences"],
        # the imputed reconstruction's error in the box of each missing digit (None: none missing)
        "imputation_mse": m["imputation"]["mse_per_missing_digit"],
        "copy_last_rec_mse": m["baselines"]["copy_last"]["rec"]["mse"],
        "copy_last_pred_mse": m["baselines"]["copy_last"]["pred"]["mse"],
        **{f"{key}_{part}": m["objects"][part][key] for part in ("input", "future") for key in ("mota", "fg_ari")
           if "objects" in m},
    }


def _score(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


SPLIT_PX = 4.0  # a run's slots have split from the digits' midpoint once validation tracking is below this


def split_time(run: Path, threshold: float = SPLIT_PX) -> dict | None:
    """The first validation record (RUN/val.jsonl) whose tracking error on the input frames is below
    `threshold` pixels: {"minutes", "step", "tracking_input_px"}; None if there is none yet."""
    path = run / "val.jsonl"
    if not path.is_file():
        return None
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:  # a torn last line
            continue
        px = record.get("tracking_input_px")
        if px is not None and px < threshold:
            return {"minutes": record["time"] / 60, "step": record["step"], "tracking_input_px": px}
    return None


def _px(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"  # None: a dataset without digit positions


def table(runs: dict[str, list[dict]], splits: dict[str, dict | None] | None = None) -> str:
    lines = []
    for name, split in (splits or {}).items():
        lines.append(f"- {name}: " + (f"no validation below {SPLIT_PX:g} px yet" if split is None else
                     f"split (first validation below {SPLIT_PX:g} px) after {split['minutes']:.1f} minutes, "
                     f"step {split['step']:,} ({split['tracking_input_px']:.1f} px)"))
    if lines:
        lines.append("")
    lines += ["| run | minutes | steps | Rec MSE | Pred MSE | Rec BCE | Pred BCE | presence F1 (missing) "
             "| tracking px (input / future) | imputation MSE per missing digit | MOTA (input / future) "
             "| FG-ARI (input / future) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, records in runs.items():
        for r in records:
            lines.append(f"| {name} | {r['minutes']:g} | {r['step']:,} | {r['rec_mse']:.1f} | {r['pred_mse']:.1f} | "
                         f"{r['rec_bce']:.0f} | {r['pred_bce']:.0f} | {r['missing_f1']:.2f} | "
                         f"{_px(r['tracking_input_px'])} / {_px(r['tracking_future_px'])} | "
                         f"{_px(r.get('imputation_mse'))} | {_score(r.get('mota_input'))} / {_score(r.get('mota_future'))} | "
                         f"{_score(r.get('fg_ari_input'))} / {_score(r.get('fg_ari_future'))} |")
    if any(r["scenario"] == "s2" for records in runs.values() for r in records):  # the original's points are s2
        for minutes, rec, pred, f1 in ORIGINAL:
            lines.append(f"| original (issue tracker, 256 other seqs) | {minutes} | - | {rec} | {pred} | - | - | "
                         f"{f1} | - | - | - | - |")
    return "\n".join(lines) + "\n"


def reference_lines(runs: dict[str, list[dict]]) -> dict[str, tuple[list[float], list[float]]]:
    """Horizontal lines over the runs' minutes: the published DIVE row and the copy-last baseline of
    each scenario scored, and the original implementation's s2 points."""
    records = [r for rs in runs.values() for r in rs]
    span = [0.0, max(r["minutes"] for r in records)]
    lines = {}
    for scenario in sorted({r["scenario"] for r in records}):
        row = published.MOVING_MNIST.get(("dive", scenario))
        if row is not None:
            lines[f"published {scenario} Rec"] = (span, [row["rec"]["mse"]] * 2)
            lines[f"published {scenario} Pred"] = (span, [row["pred"]["mse"]] * 2)
        first = next(r for r in records if r["scenario"] == scenario)
        lines[f"copy-last {scenario} Rec"] = (span, [first["copy_last_rec_mse"]] * 2)
    if "s2" in {r["scenario"] for r in records}:
        lines["original s2 Rec"] = ([o[0] for o in ORIGINAL], [o[1] for o in ORIGINAL])
        lines["original s2 Pred"] = ([o[0] for o in ORIGINAL], [o[2] for o in ORIGINAL])
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", type=Path, nargs="+", help="run folders with snapshots/min_*.pt")
    p.add_argument("--out", type=Path, required=True, help="folder for curve.json, curve.md, curve.png")
    p.add_argument("--n", type=int, default=1024, help="test sequences per snapshot (default: 1024)")
    p.add_argument("--batch-size", type=int, default=64)
    args = p.parse_args(argv)

    previous: dict[str, list[dict]] = {}
    if (args.out / "curve.json").is_file():
        previous = json.loads((args.out / "curve.json").read_text())
    runs: dict[str, list[dict]] = {}
    for run in args.runs:
        paths = sorted((run / "snapshots").glob("min_*.pt"), key=snapshot_minutes)
        if not paths:
            p.error(f"{run / 'snapshots'}: no min_*.pt snapshots (train with --snapshot-minutes)")
        records = []
        for path in paths:
            step = int(checkpoint.load(path, map_location="cpu")["step"])
            known = [r for r in previous.get(run.name, []) if r["minutes"] == snapshot_minutes(path)
                     and r["step"] == step and r["num_sequences"] == args.n and "copy_last_rec_mse" in r]
            records.append(known[0] if known else score(path, args.n, args.batch_size))
            r = records[-1]
            print(f"{run.name} {r['minutes']:g} min (step {r['step']}): rec {r['rec_mse']:.1f} "
                  f"pred {r['pred_mse']:.1f} f1 {r['missing_f1']:.2f}", flush=True)
        runs[run.name] = records

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "curve.json").write_text(json.dumps(runs, indent=2) + "\n")
    (args.out / "curve.md").write_text(table(runs, {run.name: split_time(run) for run in args.runs}))
    curves = {}
    for name, records in runs.items():
        minutes = [r["minutes"] for r in records]
        curves[f"{name} Rec"] = (minutes, [r["rec_mse"] for r in records])
        curves[f"{name} Pred"] = (minutes, [r["pred_mse"] for r in records])
    curves.update(reference_lines(runs))
    scenarios = sorted({r["scenario"] for records in runs.values() for r in records})
    plot_curves(curves, args.out / "curve.png",
                title=f"{'/'.join(scenarios)} test MSE against training time (2-core CPU)",
                xlabel="minutes of training", ylabel="MSE (sum over pixels, per frame)", size=(760, 460))
    print(f"wrote {args.out}/curve.json, curve.md, curve.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Reproduce a row of the authors' table: train, evaluate on the fixed test set, compare with the paper.

    python reproduce.py s2                             # DIVE, scenario 2, the full published schedule
    python reproduce.py s2 --minutes 30                # the same row on a 30-minute budget
    python reproduce.py ddpae-s2 --minutes 30 --recipe cpu
    python reproduce.py --all --minutes 30 --recipe cpu
    python reproduce.py pedestrians --data-root /data/mots

Rows: s1, s2, s3 (DIVE), ddpae-s1, ddpae-s2, ddpae-s3 (the DDPAE ablation: no
imputation, no dynamic appearance), pedestrians, ddpae-pedestrians (need
--data-root). Recipes: "published" (the authors' settings, configs/s1.toml
etc.), "cpu" (the settings that learn fastest on a CPU, configs/s1_track.toml
etc.; the pedestrian rows have none and use the published settings) and
"smoke" (configs/smoke.toml: seconds, checks an installation).

A row trains into OUT/runs/ROW-RECIPE-BUDGET-seedS (plus a short hash of the
--set overrides, if any: another setting, another row). If that folder holds a
checkpoint the run continues from it, so a killed command is simply run
again. Then the row's latest.pt is scored on the scenario's fixed test set
(OUT/runs/.../metrics.json) and OUT/table.json and OUT/table.md are
rewritten: every metric of the authors' table, presence F1, tracking, the
object-level scores (MOTA, IDF1, FG-ARI), the published numbers
(dive/published.py) and the differences, with the budget, device and time
of each row. A row already in table.json at the
same recipe, budget and seed is not run again.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from dive import checkpoint, config, published
from dive.data import build_dataset
from dive.data.common import atomic_write
from dive.engine import Options, build_model, train
from dive.errors import DIVEError
from dive.evaluation import evaluate
from dive.runtime import cpu_name, resolve_device
from train import minutes_list

ROOT = Path(__file__).resolve().parent
SCENARIOS = ("s1", "s2", "s3", "pedestrians")
DDPAE = ["model.use_imputation=false", "model.use_dynamic_appearance=false"]
# recipe -> scenario -> config file (and the overrides it needs)
RECIPES = {
    "published": {s: (f"configs/{s}.toml", []) for s in ("s1", "s2", "s3")}
    | {"pedestrians": ("configs/pedestrian.toml", [])},
    "cpu": {s: (f"configs/{s}_track.toml", []) for s in ("s1", "s2", "s3")}
    | {"pedestrians": ("configs/pedestrian.toml", [])},
    # smoke.toml has 6 input frames; s2's two missing frames need 7
    "smoke": {"s1": ("configs/smoke.toml", []), "s2": ("configs/smoke.toml", ["data.t_in=7"]),
              "s3": ("configs/smoke.toml", [])},
}
METRICS = [(k, s) for k in ("bce", "mse", "psnr", "ssim") for s in ("rec", "pred")]


@dataclass(frozen=True)
class Row:
    name: str
    model: str  # dive | ddpae
    scenario: str  # s1 | s2 | s3 | pedestrians

    @property
    def published(self) -> dict | None:
        if self.scenario == "pedestrians":
            return published.PEDESTRIANS.get(self.model)
        return published.MOVING_MNIST.get((self.model, self.scenario))


ROWS = {r.name: r for r in [Row(s, "dive", s) for s in SCENARIOS]
        + [Row(f"ddpae-{s}", "ddpae", s) for s in SCENARIOS]}


def budget_label(steps: int | None, minutes: float | None) -> str:
    if steps is not None:
        return f"{steps}steps"
    if minutes is not None:
        return f"{minutes:g}min"
    return "full"


def row_config(row: Row, recipe: str, seed: int, data_root: str | None, overrides: list[str]) -> tuple[str, config.Config]:
    """The config file of a row under a recipe, and the resolved config (seed, data folder, overrides applied)."""
    files = RECIPES[recipe]
    if row.scenario not in files:
        raise config.ConfigError(f"recipe {recipe!r} has no config for {row.scenario}; use --recipe published")
    path, extra = files[row.scenario]
    extra = extra + (DDPAE if row.model == "ddpae" else [])
    if row.scenario == "pedestrians":
        extra.append(f"data.root={data_root}")
    else:
        extra.append(f"data.scenario={row.scenario}")
    cfg = config.load(ROOT / path, extra + overrides + [f"train.seed={seed}", f"data.seed={seed}"])
    return path, cfg


def remaining(run_dir: Path, steps: int | None, minutes: float | None) -> tuple[bool, int | None, float | None]:
    """(resume?, steps left, seconds left) of a run folder towards its budget."""
    latest = run_dir / "latest.pt"
    done_steps, done_seconds = 0, 0.0
    if latest.exists():
        state = checkpoint.load(latest)
        done_steps = int(state["step"])
        done_seconds = float(state.get("extra", {}).get("elapsed", 0.0))
    steps_left = None if steps is None else steps - done_steps
    seconds_left = None if minutes is None else minutes * 60 - done_seconds
    return latest.exists(), steps_left, seconds_left


def score(run_dir: Path, device: torch.device, batch_size: int = 64) -> dict:
    """Metrics of the run's latest.pt on its scenario's fixed test set (deterministic on CPU)."""
    path = run_dir / "latest.pt"
    state = checkpoint.load(path, map_location=device)
    cfg = checkpoint.config_of(state, path)
    model = build_model(cfg).to(device)
    checkpoint.load_model_state(model, state, path)
    metrics = evaluate(model, build_dataset(cfg.data, "test"), cfg, batch_size=batch_size, device=device)
    metrics["step"] = int(state["step"])
    metrics["train_seconds"] = float(state.get("extra", {}).get("elapsed", 0.0))
    return metrics


def pooled(metrics: dict, t_in: int, t_out: int) -> dict:
    """Rec and pred pooled over all frames (frame-weighted), as the pedestrian table reports them."""
    w = t_in / (t_in + t_out)
    return {k: w * metrics["rec"][k] + (1 - w) * metrics["pred"][k] for k in ("bce", "mse", "psnr", "ssim")}


def record(row: Row, recipe: str, budget: str, seed: int, cfg_file: str, cfg: config.Config, metrics: dict,
           device: torch.device, threads: int, wall: float, command: str) -> dict:
    rec = {
        "row": row.name, "model": row.model, "scenario": row.scenario, "recipe": recipe, "budget": budget,
        "seed": seed, "config": cfg_file, "device": str(device), "threads": threads,
        "cpu": cpu_name(), "steps": metrics["step"],
        "train_minutes": metrics["train_seconds"] / 60, "wall_minutes": wall / 60, "command": command,
        "num_sequences": metrics["num_sequences"],
        "metrics": {"rec": metrics["rec"], "pred": metrics["pred"], "nelbo": metrics["nelbo"],
                    "presence_f1": metrics["missing"].get("f1"), "tracking_px": metrics["tracking_px"],
                    "objects": metrics.get("objects")},
        "baselines": metrics.get("baselines", {}),
    }
    if row.scenario == "pedestrians":
        rec["metrics"]["pooled"] = pooled(metrics, cfg.data.t_in, cfg.data.t_out)
    return rec


def _fmt(value, key: str) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if key == "ssim" else f"{value:.2f}"


def _objects_text(objects: dict | None) -> str:
    """'MOTA, IDF1, FG-ARI' as input / future pairs; '-' for rows scored before these metrics existed."""
    if not objects:
        return "-"
    parts = []
    for key in ("mota", "idf1", "fg_ari"):
        a, b = objects["input"].get(key), objects["future"].get(key)
        parts.append("-" if a is None or b is None else f"{a:.2f} / {b:.2f}")
    return ", ".join(parts)


def table_markdown(table: dict) -> str:
    """OUT/table.md: each row's metrics next to the published ones, with the differences."""
    head = ("| row | recipe, budget, seed | what | " + " | ".join(f"{k.upper()} {s.capitalize()}" for k, s in METRICS)
            + " | NELBO | presence F1 | tracking px (input / future) | MOTA, IDF1, FG-ARI (input / future)"
            + " | steps | train min | device |")
    lines = [
        "# Our rows next to the authors' table",
        "",
        f"Published numbers: {table['source']}. BCE and MSE are per-frame sums over pixels; Rec is the",
        "unmasked (imputed) reconstruction of the input frames against the full frames, Pred the future",
        "frames; lower is better except PSNR and SSIM. Differences are ours minus published. NELBO",
        "depends on the likelihood std (published settings 0.3, the cpu recipe 0.15): it compares only",
        "rows with the same std.",
        "",
        head,
        "|" + "---|" * (len(METRICS) + 10),
    ]
    baselines = {}
    for key in sorted(table["rows"], key=lambda k: (table["rows"][k]["scenario"], table["rows"][k]["model"], k)):
        r = table["rows"][key]
        m, pub = r["metrics"], ROWS[r["row"]].published
        track = m["tracking_px"]
        track_text = ("-" if track.get("input") is None
                      else f"{track['input']:.1f} / {track['future']:.1f}")
        f1 = "-" if m.get("presence_f1") is None else f"{m['presence_f1']:.3f}"
        objects_text = _objects_text(m.get("objects"))
        setting = f"{r['recipe']}, {r['budget']}, seed {r['seed']}" + "".join(
            f", `{o}`" for o in r.get("overrides", []))
        if r["scenario"] == "pedestrians":
            ours = [_fmt(m["pooled"][k], k) if s == "rec" else "" for k, s in METRICS]
            theirs = [_fmt(pub[k], k) if s == "rec" and pub else "" for k, s in METRICS]
            diff = [_fmt(m["pooled"][k] - pub[k], k) if s == "rec" and pub else "" for k, s in METRICS]
            pub_nelbo = None
        else:
            ours = [_fmt(m[s][k], k) for k, s in METRICS]
            theirs = [_fmt(pub[s][k], k) if pub else "-" for k, s in METRICS]
            diff = [_fmt(m[s][k] - pub[s][k], k) if pub else "-" for k, s in METRICS]
            pub_nelbo = pub["nelbo"] if pub else None
        lines.append(f"| {r['row']} | {setting} | ours | " + " | ".join(ours)
                     + f" | {m['nelbo']:.3f} | {f1} | {track_text} | {objects_text} | {r['steps']}"
                     + f" | {r['train_minutes']:.1f}"
                     + f" | {r['device']}, {r['threads']} thread{'s' if r['threads'] != 1 else ''} |")
        lines.append(f"| {r['row']} | | published | " + " | ".join(theirs)
                     + f" | {_fmt(pub_nelbo, 'nelbo')} | | | | | | |")
        lines.append(f"| {r['row']} | | difference | " + " | ".join(diff)
                     + f" | {_fmt(None if pub_nelbo is None else m['nelbo'] - pub_nelbo, 'nelbo')} | | | | | | |")
        if r["scenario"] != "pedestrians" and r.get("baselines"):
            baselines.setdefault(r["scenario"], (r["num_sequences"], r["baselines"]))
    if baselines:
        lines += ["", "Trivial baselines on the same test sequences:", "",
                  "| scenario | baseline | " + " | ".join(f"{k.upper()} {s.capitalize()}" for k, s in METRICS) + " |",
                  "|" + "---|" * (len(METRICS) + 2)]
        for scenario, (n, base) in sorted(baselines.items()):
            for name, label in (("copy_last", "copy last observed frame"), ("mean_frame", "mean frame")):
                if name in base:
                    lines.append(f"| {scenario} ({n} seqs) | {label} | "
                                 + " | ".join(_fmt(base[name][s][k], k) for k, s in METRICS) + " |")
    lines += ["", "Commands:", ""] + [f"- `{table['rows'][k]['command']}`" for k in sorted(table["rows"])]
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def _locked(path: Path):
    """An exclusive lock on `path` (created) for a read-modify-write of the table; a no-op off POSIX."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        try:
            import fcntl
        except ImportError:  # pragma: no cover
            yield
            return
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def load_table(path: Path) -> dict:
    if not path.exists():
        return {"source": published.SOURCE, "rows": {}}
    try:
        table = json.loads(path.read_text())
        if not isinstance(table.get("rows"), dict):
            raise ValueError("no rows")
    except (ValueError, AttributeError) as e:
        raise DIVEError(f"{path}: not a table written by reproduce.py ({e}); move it away to start a new one") from None
    return table


def save_table(out: Path, table: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(table, indent=2, sort_keys=True) + "\n"
    atomic_write(out / "table.json", lambda f: f.write(text.encode()))
    markdown = table_markdown(table).encode()
    atomic_write(out / "table.md", lambda f: f.write(markdown))


def row_key(row: Row, recipe: str, budget: str, seed: int, overrides: list[str]) -> str:
    """The row's name in the table and its run folder: row-recipe-budget-seedS, plus a short hash of
    the --set overrides when there are any (a different setting is a different row)."""
    key = f"{row.name}-{recipe}-{budget}-seed{seed}"
    if overrides:
        key += "-set" + hashlib.sha1("\n".join(overrides).encode()).hexdigest()[:6]
    return key


def run_row(row: Row, args, device: torch.device, command: str) -> dict | None:
    """Train (or continue) and score one row; None when the table already has it."""
    budget = budget_label(args.steps, args.minutes)
    key = row_key(row, args.recipe, budget, args.seed, args.overrides)
    table = load_table(args.out / "table.json")
    if key in table["rows"]:
        print(f"{key}: already in {args.out / 'table.json'}, not run again")
        return None
    cfg_file, cfg = row_config(row, args.recipe, args.seed, args.data_root, args.overrides)
    if args.steps is not None and args.steps > cfg.train.steps:
        raise config.ConfigError(f"--steps {args.steps} is longer than the row's schedule "
                                 f"(train.steps = {cfg.train.steps})")
    run_dir = args.out / "runs" / key
    resume, steps_left, seconds_left = remaining(run_dir, args.steps, args.minutes)
    t0 = time.perf_counter()
    if (steps_left is None or steps_left > 0) and (seconds_left is None or seconds_left > 0):
        print(f"{key}: training into {run_dir}" + (" (continuing)" if resume else ""), flush=True)
        opts = Options(out=run_dir, device=args.device, amp=args.amp, compile=args.compile, resume=resume,
                       quiet=args.quiet, stop_after=steps_left, time_limit=seconds_left,
                       snapshot_minutes=args.snapshot_minutes)
        train(cfg, opts)
    metrics = score(run_dir, device)
    text = json.dumps(metrics, indent=2, sort_keys=True) + "\n"
    atomic_write(run_dir / "metrics.json", lambda f: f.write(text.encode()))
    entry = record(row, args.recipe, budget, args.seed, cfg_file, cfg, metrics, device, torch.get_num_threads(),
                   time.perf_counter() - t0, command)
    entry["overrides"] = list(args.overrides)
    with _locked(args.out / "table.lock"):  # rows run in parallel may finish together
        table = load_table(args.out / "table.json")
        table["rows"][key] = entry
        save_table(args.out, table)
    print(f"{key}: rec mse {metrics['rec']['mse']:.2f} | pred mse {metrics['pred']['mse']:.2f} -> "
          f"{args.out / 'table.md'}", flush=True)
    return entry


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Train, evaluate and compare one row (or all rows) of the DIVE authors' table.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Rows: " + ", ".join(ROWS) + ". The pedestrian rows need --data-root.",
    )
    p.add_argument("row", nargs="?", help="the row to run (see below)")
    p.add_argument("--all", action="store_true", help="every row in turn (pedestrians only with --data-root)")
    p.add_argument("--recipe", choices=sorted(RECIPES), default="published",
                   help="published (the authors' settings, default), cpu (the CPU recipe) or smoke (seconds)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=int, metavar="N", help="train N optimiser steps in all (default: the full schedule)")
    budget.add_argument("--minutes", type=float, metavar="M", help="train M minutes in all (validation included)")
    p.add_argument("--seed", type=int, default=0, help="sets train.seed and data.seed (default 0); recorded")
    p.add_argument("--data-root", help="folder of the MOTS pedestrian seq_* folders (pedestrian rows)")
    p.add_argument("--out", type=Path, default=Path("reproduce"), help="folder for runs/, table.json, table.md")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config value of every row (repeatable); recorded in the run's config.toml")
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int, metavar="N", help="CPU threads for torch (default: one per core)")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=False, help="bfloat16 autocast")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False, help="torch.compile")
    p.add_argument("--snapshot-minutes", type=minutes_list, default=(), metavar="M1,M2,...",
                   help="also keep snapshots/min_M.pt in the run folder (score them with bench/learning_curve.py)")
    p.add_argument("--quiet", action="store_true", help="no progress lines while training")
    args = p.parse_args(argv)
    if args.all == (args.row is not None):
        p.error("name one row (" + ", ".join(ROWS) + ") or give --all")
    if args.row is not None and args.row not in ROWS:
        p.error(f"unknown row {args.row!r}; rows: {', '.join(ROWS)}")
    if args.steps is not None and args.steps < 1:
        p.error(f"--steps must be at least 1, got {args.steps}")
    if args.minutes is not None and not 0 < args.minutes < float("inf"):
        p.error(f"--minutes must be a positive number, got {args.minutes}")
    if args.threads is not None and args.threads < 1:
        p.error(f"--threads must be at least 1, got {args.threads}")
    if args.row is not None and ROWS[args.row].scenario == "pedestrians":
        if not args.data_root:
            p.error(f"row {args.row} needs --data-root, the folder of the MOTS pedestrian seq_* folders")
        if not Path(args.data_root).is_dir():
            p.error(f"--data-root {args.data_root}: no such folder")
    if args.recipe == "smoke" and args.row is not None and ROWS[args.row].scenario == "pedestrians":
        p.error("--recipe smoke has no pedestrian config; use --recipe published")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    command = "python reproduce.py " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    rows = [ROWS[args.row]] if args.row else [
        r for r in ROWS.values()
        if (r.scenario != "pedestrians" or args.data_root) and not (args.recipe == "smoke" and r.scenario == "pedestrians")]
    try:
        device = resolve_device(args.device)
        for row in rows:
            run_row(row, args, device, command)
    except config.ConfigError as e:
        print(f"error: config: {e}", file=sys.stderr)
        return 2
    except DIVEError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; run the same command again to continue", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

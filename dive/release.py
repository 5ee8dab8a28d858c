"""Shipped checkpoints: a run's weights without its optimiser, and a record of where they came from.

    python -m dive.release RUN/snapshots/min_120.pt --name s2_track \\
        --scores EVAL/metrics.json --command "python train.py --config configs/s2_track.toml ..."

writes, under ``checkpoints/`` (``--out``):

* ``NAME.pt``: a checkpoint evaluate.py reads (format, step, config, weights). The optimiser's moments
  and the RNG states are left out: they are two thirds of a training checkpoint, and without them the
  file cannot resume a run, only be evaluated or fine-tuned from its weights.
* ``NAME.json``: its provenance. The command that trained it, its steps and training minutes, the
  machine, the scores ``evaluate.py`` gave on the fixed test set (``--scores``), the file's SHA-256,
  and the scores on the first ``CHECK_N`` test sequences, which tests/test_shipped.py recomputes so
  that a change to the model code that changes what a shipped checkpoint computes cannot go unseen.
* ``README.md``: the table of every shipped checkpoint, rewritten from the JSON files.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch

from . import __version__, checkpoint
from .config import Config
from .data import build_dataset
from .engine import build_model
from .errors import DIVEError
from .evaluation import evaluate
from .runtime import cpu_name

CHECK_N = 16  # sequences the test recomputes: a few seconds on a CPU
CHECK_RTOL = 1e-3  # loose enough for another CPU's float rounding, far tighter than any model change

_KEPT = ("format_version", "version", "step", "config", "model")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_scores(model: torch.nn.Module, cfg: Config, n: int = CHECK_N) -> dict[str, float]:
    """Rec / Pred MSE and presence F1 on the first `n` sequences of the config's fixed test set."""
    m = evaluate(model, build_dataset(cfg.data, "test"), cfg, n=n, baselines=False, objects=False)
    return {"rec_mse": m["rec"]["mse"], "pred_mse": m["pred"]["mse"], "presence_f1": m["missing"].get("f1")}


def scores_kept(metrics: dict[str, Any]) -> dict[str, Any]:
    """The figures of an evaluate.py metrics.json that the provenance keeps."""
    scores: dict[str, Any] = {
        "num_sequences": metrics["num_sequences"],
        "test_set": metrics.get("test_set"),
        "rec_mse": metrics["rec"]["mse"], "pred_mse": metrics["pred"]["mse"],
        "rec_ssim": metrics["rec"]["ssim"], "pred_ssim": metrics["pred"]["ssim"],
        "presence_f1": metrics["missing"].get("f1"),
        "presence_accuracy": metrics["missing"].get("accuracy"),
        "tracking_px": metrics["tracking_px"],
    }
    if "objects" in metrics:
        scores["objects"] = {part: {k: metrics["objects"][part][k] for k in ("mota", "idf1", "fg_ari", "miou")}
                             for part in ("input", "future")}
    if "baselines" in metrics:
        scores["copy_last"] = {k: metrics["baselines"]["copy_last"][k]["mse"] for k in ("rec", "pred")}
    return scores


def release(source: Path, name: str, scores_file: Path, command: str, out: Path,
            machine: str | None = None) -> dict[str, Any]:
    state = checkpoint.load(source)
    cfg = checkpoint.config_of(state, source)
    metrics = json.loads(scores_file.read_text())
    try:
        scores = scores_kept(metrics)
    except (KeyError, TypeError) as e:
        raise DIVEError(f"{scores_file} is not a metrics.json of evaluate.py on a test set (no {e})") from None
    if metrics.get("step") != state["step"]:
        raise DIVEError(f"{scores_file} scores step {metrics.get('step')}, but {source} is at step "
                        f"{state['step']}: evaluate this checkpoint and pass its metrics.json")
    model = build_model(cfg)
    checkpoint.load_model_state(model, state, source)
    out.mkdir(parents=True, exist_ok=True)
    target = out / f"{name}.pt"
    checkpoint.save(target, {k: state[k] for k in _KEPT if k in state})
    elapsed = state.get("extra", {}).get("elapsed")
    record = {
        "name": name,
        "file": target.name,
        "sha256": sha256(target),
        "command": command,
        "scenario": cfg.data.scenario,
        # no digit is ever missing (s1 hides rows instead): presence is then an accuracy, F1 says nothing
        "nothing_missing": cfg.data.dataset == "moving_mnist" and cfg.data.resolved("num_missing") == 0,
        "steps": state["step"],
        "training_minutes": round(elapsed / 60, 1) if elapsed is not None else None,
        "machine": machine or f"{cpu_name()}, {os.cpu_count()} cores",
        "torch": torch.__version__,
        "package_version": state.get("version", __version__),
        "test_set": scores,
        "check": {"n": CHECK_N, **check_scores(model, cfg)},
    }
    (out / f"{name}.json").write_text(json.dumps(record, indent=2) + "\n")
    write_index(out)
    return record


def write_index(folder: Path) -> None:
    def fmt(value: float | None, digits: int) -> str:  # None: nothing missing (s1), or no digit positions
        return "-" if value is None else f"{value:.{digits}f}"

    rows = []
    for f in sorted(folder.glob("*.json")):
        r = json.loads(f.read_text())
        s = r["test_set"]
        track = s["tracking_px"]
        presence = (f"accuracy {fmt(s.get('presence_accuracy'), 3)}" if r.get("nothing_missing")
                    else f"F1 {fmt(s['presence_f1'], 3)}")
        rows.append(f"| `{r['file']}` | {r['scenario']} | {r['steps']:,} | {r['training_minutes']} | "
                    f"{s['rec_mse']:.1f} / {s['pred_mse']:.1f} | {presence} | "
                    f"{fmt(track['input'], 1)} / {fmt(track['future'], 1)} | {r['machine']} |")
    (folder / "README.md").write_text(
        "# Shipped checkpoints\n\n"
        "Weights of finished runs, to evaluate or look at without training (README, \"Try it without "
        "training\"). They hold no optimiser state, so they do not resume. Each `NAME.json` says how the "
        "file was made: the full command, the machine, the scores below (Rec / Pred MSE, presence F1, or "
        "its accuracy where no digit is ever missing, "
        "tracking error in pixels on the input / future frames, on the scenario's 1,024 fixed test "
        "sequences), the file's SHA-256, and the scores on the first few test sequences that "
        "`tests/test_shipped.py` recomputes. Written by `python -m dive.release`.\n\n"
        "| file | scenario | steps | training minutes | Rec / Pred MSE | presence | tracking px | machine |\n"
        "|---|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dive.release", description=__doc__.split("\n\n")[0])
    p.add_argument("source", type=Path, help="a training checkpoint (latest.pt, best.pt, snapshots/min_M.pt)")
    p.add_argument("--name", required=True, help="file name to ship it under, without .pt")
    p.add_argument("--scores", required=True, type=Path,
                   help="metrics.json that evaluate.py wrote for this checkpoint on the fixed test set")
    p.add_argument("--command", required=True, help="the command that trained it, for the record")
    p.add_argument("--machine", help="the machine it trained on (default: this one)")
    p.add_argument("--out", type=Path, default=Path("checkpoints"), help="folder (default: checkpoints)")
    args = p.parse_args(argv)
    try:
        r = release(args.source, args.name, args.scores, args.command, args.out, args.machine)
    except (DIVEError, OSError, json.JSONDecodeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.out / r['file']} ({(args.out / r['file']).stat().st_size / 1e6:.1f} MB), "
          f"{args.out / (args.name + '.json')} and {args.out / 'README.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

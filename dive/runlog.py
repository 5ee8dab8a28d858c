"""What a run folder records besides checkpoints: the jsonl logs, TensorBoard scalars and pictures, validation."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from .config import Config
from .data.common import atomic_write
from .evaluation import evaluate, picture_inputs
from .model import DIVE, forward_batch
from .viz import tensorboard_grid


def append_jsonl(path: Path, record: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")


def trim_jsonl(path: Path, step: int) -> None:
    """Drop records a crashed run wrote after the checkpoint it resumes from."""
    if not path.exists():
        return
    keep = "".join(line + "\n" for line in path.read_text().splitlines() if step_of(line) <= step).encode()
    atomic_write(path, lambda f: f.write(keep))  # a kill during the rewrite must not empty the log


def step_of(line: str) -> float:
    # A kill during an append leaves a torn last line: it belongs to no finished step.
    try:
        return float(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return math.inf


def write_scalars(writer, step: int, logs: dict, sched) -> None:
    for k, v in logs.items():
        if k != "finite":
            writer.add_scalar(f"train/{k}", v, step)
    writer.add_scalar("schedule/lr", sched.lr, step)
    writer.add_scalar("schedule/kl_weight", sched.kl_weight, step)
    writer.add_scalar("schedule/temperature", sched.temperature, step)
    writer.add_scalar("schedule/gamma_app", sched.gamma_app, step)
    writer.add_scalar("schedule/gamma_imp", sched.gamma_imp, step)
    writer.add_scalar("schedule/future_mask", float(sched.future_mask), step)
    writer.add_scalar("schedule/blur", sched.blur, step)
    writer.add_scalar("schedule/future_poses_only", float(sched.future_poses_only), step)


@torch.no_grad()
def write_images(writer, model: DIVE, batch, step: int) -> None:
    """The first sequence of `batch` in eval mode, as a picture grid in TensorBoard."""
    was_training = model.training
    model.eval()
    first = {k: v[:1] for k, v in batch.items()}
    out = forward_batch(model, first)
    model.train(was_training)
    writer.add_image("sequence", tensorboard_grid(**picture_inputs(first, out, 0)), step)


def validate(writer, model: DIVE, val_set, cfg: Config, device: torch.device, st, out: Path) -> float:
    """Score `model` on the first train.eval_size validation sequences; log them (TensorBoard, val.jsonl,
    stdout, `st.history`). Returns the score best.pt is chosen by: Rec MSE + Pred MSE."""
    n = min(cfg.train.eval_size, len(val_set))
    # the object-level scores are left to evaluate.py: validation time counts against a run's budget
    metrics = evaluate(model, val_set, cfg, n=n, batch_size=min(cfg.train.batch_size, 64), device=device,
                       baselines=False, objects=False)
    flat = {
        "rec_mse": metrics["rec"]["mse"], "pred_mse": metrics["pred"]["mse"],
        "rec_bce": metrics["rec"]["bce"], "pred_bce": metrics["pred"]["bce"],
        "rec_ssim": metrics["rec"]["ssim"], "pred_ssim": metrics["pred"]["ssim"],
        "nelbo": metrics["nelbo"], "missing_f1": metrics["missing"]["f1"],
    }
    # pixels from each digit to its matched slot (Moving MNIST only): a run's slots have split
    # from the pair's midpoint once this falls below ~4 px (docs/studies/s2-track-three-seeds.md)
    track = metrics["tracking_px"]
    if track["input"] is not None:
        flat.update(tracking_input_px=track["input"], tracking_future_px=track["future"])
    for k, v in flat.items():
        writer.add_scalar(f"val/{k}", v, st.step)
    score = flat["rec_mse"] + flat["pred_mse"]
    tracking = (f" | tracking {flat['tracking_input_px']:.1f} / {flat['tracking_future_px']:.1f} px"
                if "tracking_input_px" in flat else "")
    print(f"  val @ {st.step}: rec mse {flat['rec_mse']:.2f} | pred mse {flat['pred_mse']:.2f} | "
          f"nelbo {flat['nelbo']:.4f} | missing f1 {flat['missing_f1']:.3f}{tracking}", flush=True)
    st.history.append({"step": st.step, **flat})
    append_jsonl(out / "val.jsonl", {"step": st.step, "time": st.elapsed, **flat})
    return score

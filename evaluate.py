"""Evaluate a DIVE checkpoint on its scenario's fixed test set, or run it on your own video.

    python evaluate.py --ckpt runs/s2/best.pt --out eval/s2                 # 1,024 fixed test sequences
    python evaluate.py --ckpt runs/s2/best.pt --out eval/s2 --n 256         # the first 256 of them
    python evaluate.py --ckpt runs/s2/best.pt --out eval/s2 --test-set s2_test.npz
    python evaluate.py --ckpt runs/s2/best.pt --out mine --input video.npy  # no ground truth needed

Writes metrics.json, results.md (the authors' table layout), per_frame.png and,
for a few sequences, examples/seq_NNN.png grids and .gif animations. With
--input (an array or a folder of PNG frames, any length of at least t_in
frames) it runs on the video's windows of t_in frames and writes output.npz
(imputed reconstruction, prediction, slots, poses, presence, each window's
first frame) and the pictures instead.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from dive import checkpoint
from dive.allocator import retain_freed_memory
from dive.config import ConfigError
from dive.data import DataError, build_dataset, load_test_set
from dive.data.common import from_uint8
from dive.data.videos import clip_frames, read_clip
from dive.engine import build_model
from dive.errors import DIVEError
from dive.evaluation import evaluate, picture_inputs
from dive.model import forward_batch
from dive.runtime import resolve_device
from dive.viz import animation_frames, plot_curves, save_gif, save_png, sequence_grid

METRIC_COLUMNS = [("bce", "rec"), ("bce", "pred"), ("mse", "rec"), ("mse", "pred"),
                  ("psnr", "rec"), ("psnr", "pred"), ("ssim", "rec"), ("ssim", "pred")]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Evaluate a DIVE checkpoint (or apply it to a video of your own).")
    p.add_argument("--ckpt", type=Path, required=True, help="checkpoint file (latest.pt or best.pt of a run)")
    p.add_argument("--out", type=Path, required=True, help="folder for metrics.json, results.md and pictures")
    p.add_argument("--n", type=int, help="evaluate only the first N test sequences (default: all)")
    p.add_argument("--test-set", type=Path, help="a test set written by dive.data.save_test_set (.npz)")
    p.add_argument("--input", type=Path,
                   help="your own video: .npy or .npz (T, H, W), (T, C, H, W) or (T, H, W, C), or a folder of "
                        "numbered PNG frames; any size, at least t_in frames, values in [0, 1] or uint8. Runs "
                        "on its windows of t_in frames; writes imputed and predicted frames")
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda or cuda:N")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--examples", type=int, default=4, help="sequences drawn as PNG grid + GIF (default 4)")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=False, help="bfloat16 autocast")
    args = p.parse_args(argv)
    if args.n is not None and args.n < 1:
        p.error(f"--n must be at least 1, got {args.n}")
    if args.batch_size < 1:
        p.error(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.examples < 0:
        p.error(f"--examples must be at least 0, got {args.examples}")
    return args


def load_video(path: Path, cfg) -> tuple[torch.Tensor, list[int], int]:
    """A user's video as windows of the model's t_in frames: float32 (b t_in c s s) in [0, 1], the first
    frame of each window, and the video's length.

    A video is an .npy or .npz array (T, H, W), (T, C, H, W) or (T, H, W, C), or a folder of numbered PNG
    frames, of any size (fitted into the model's frame, dive/data/videos.py) and at least t_in frames;
    its windows are frames [0, t_in), [t_in, 2 t_in), ... (frames after the last full window are not
    used). An .npy of shape (B, t_in, C, S, S) is B windows as they are. Read without pickle; a DataError
    says what was expected and what was found.
    """
    d = cfg.data
    arr = read_clip(path)
    if arr.ndim == 5:
        expected = (d.t_in, d.channels, d.image_size, d.image_size)
        if tuple(arr.shape[1:]) != expected:
            raise DataError(f"--input {path}: a 5-D array is a batch of windows (B, {', '.join(map(str, expected))}), "
                            f"got {tuple(arr.shape)}")
        if arr.shape[0] < 1:
            raise DataError(f"--input {path}: holds no video (shape {tuple(arr.shape)})")
        windows = torch.stack([from_uint8(clip_frames(a, f"--input {path}", d.channels, d.image_size,
                                                      channels_first=True)) for a in arr])
        return windows, [0] * arr.shape[0], d.t_in
    channels_first = arr.ndim == 4 and arr.shape[1] in (1, 3) and arr.shape[3] not in (1, 3)
    frames = from_uint8(clip_frames(arr, f"--input {path}", d.channels, d.image_size, min_frames=d.t_in,
                                    channels_first=channels_first))
    starts = list(range(0, frames.shape[0] - d.t_in + 1, d.t_in))
    return torch.stack([frames[s:s + d.t_in] for s in starts]), starts, frames.shape[0]


def results_table(metrics: dict) -> str:
    head = "| Model | " + " | ".join(f"{m.upper()} {s.capitalize()}" for m, s in METRIC_COLUMNS) + " | NELBO |"
    rule = "|" + "---|" * (len(METRIC_COLUMNS) + 2)
    rows = [("DIVE (this checkpoint)", metrics, f"{metrics['nelbo']:.4f}")]
    for name, label in (("copy_last", "copy last observed frame"), ("mean_frame", "mean frame")):
        if name in metrics.get("baselines", {}):
            rows.append((label, metrics["baselines"][name], "-"))
    lines = [head, rule]
    for label, m, nelbo in rows:
        cells = [f"{m[s][k]:.2f}" if k in ("bce", "mse", "psnr") else f"{m[s][k]:.3f}" for k, s in METRIC_COLUMNS]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {nelbo} |")
    miss = metrics.get("missing", {})
    notes = [
        "",
        f"Scenario {metrics['scenario']}, {metrics['num_sequences']} test sequences (seed {metrics['seed']}), "
        f"checkpoint step {metrics['step']}. BCE and MSE are per-frame sums over pixels; Rec is the unmasked "
        "(imputed) reconstruction of the input frames against the full frames, Pred the future frames.",
    ]
    if miss:
        notes.append(f"Presence decisions: accuracy {miss['accuracy']:.3f}, F1 of the missing class {miss['f1']:.3f}.")
    track = metrics.get("tracking_px", {})
    if track.get("input") is not None:
        notes.append(f"Tracking: a digit's centre is {track['input']:.2f} px from its slot's centre on the input "
                     f"frames where it is visible, {track['future']:.2f} px on the predicted frames.")
    objects = metrics.get("objects")
    if objects:
        def fmt(v, spec=".3f"):
            return "-" if v is None else format(v, spec)
        notes += ["", "Slots as objects (input frames / predicted frames):", "",
                  "| | MOTA | MOTP px | IDF1 | ID switches | FG-ARI | mIoU |", "|---|---|---|---|---|---|---|"]
        for part in ("input", "future"):
            o = objects[part]
            notes.append(f"| {part} | {fmt(o['mota'])} | {fmt(o['motp_px'], '.2f')} | {fmt(o['idf1'])} | "
                         f"{o['id_switches']} | {fmt(o['fg_ari'])} | {fmt(o['miou'])} |")
    return "\n".join(lines + notes) + "\n"


def write_pictures(out_dir: Path, batch: dict, out, count: int) -> None:
    ex = out_dir / "examples"
    ex.mkdir(parents=True, exist_ok=True)
    for i in range(min(count, batch["input"].shape[0])):
        kw = picture_inputs(batch, out, i)
        save_png(sequence_grid(**kw, scale=2), ex / f"seq_{i:03d}.png")
        save_gif(animation_frames(kw["gt"], kw["slots"], kw["output"], kw["pose"], t_in=kw["t_in"]),
                 ex / f"seq_{i:03d}.gif")


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        device = resolve_device(args.device)
        if device.type == "cpu":
            retain_freed_memory()  # as in training: freed buffers stay in the process (docs/performance.md)
        state = checkpoint.load(args.ckpt, map_location="cpu")
        cfg = checkpoint.config_of(state, args.ckpt)
        model = build_model(cfg)
        checkpoint.load_model_state(model, state, args.ckpt)
        model.to(device).eval()
        args.out.mkdir(parents=True, exist_ok=True)

        if args.input is not None:
            video, starts, length = load_video(args.input, cfg)
            video = video.to(device)
            with torch.no_grad():
                out = model(video)
            np.savez_compressed(
                args.out / "output.npz", reconstruction=out.input_rec.cpu().numpy(),
                prediction=out.pred.cpu().numpy(), slots=out.slots.cpu().numpy(), pose=out.pose.cpu().numpy(),
                presence_prob=torch.sigmoid(out.presence_logits).cpu().numpy(),
                presence=out.presence_hard.cpu().numpy(), window_start=np.array(starts))
            write_pictures(args.out, {"input": video}, out, args.examples)
            t_in, used = cfg.data.t_in, starts[-1] + cfg.data.t_in
            print(f"{args.input}: {length} frames; {len(starts)} window(s) of {t_in} input frames, "
                  f"frames 0-{used - 1}" + (f" (frames {used}-{length - 1} not used)" if used < length else ""))
            print(f"wrote {args.out / 'output.npz'} and pictures in {args.out / 'examples'}")
            return 0

        dataset = load_test_set(args.test_set) if args.test_set else build_dataset(cfg.data, "test")
        metrics = evaluate(model, dataset, cfg, n=args.n, batch_size=args.batch_size, device=device, amp=args.amp)
        metrics.update({"scenario": cfg.data.scenario if cfg.data.dataset == "moving_mnist" else cfg.data.dataset,
                        "seed": cfg.data.test_seed, "step": int(state["step"]), "checkpoint": str(args.ckpt),
                        "test_set": str(args.test_set) if args.test_set else "generated"})
        (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        (args.out / "results.md").write_text(results_table(metrics))
        pf = metrics["per_frame"]
        plot_curves({"DIVE MSE": pf["rec"]["mse"] + pf["pred"]["mse"]}, args.out / "per_frame.png",
                    title=f"Per-frame MSE, {metrics['scenario']}, {metrics['num_sequences']} sequences",
                    xlabel="frame", ylabel="MSE (sum over pixels)", vline=cfg.data.t_in - 0.5,
                    vline_label="input | future")
        if args.examples > 0:
            idx = list(range(min(args.examples, len(dataset))))
            batch = {k: v.to(device) for k, v in dataset.batch(idx).items()}
            with torch.no_grad():
                out = forward_batch(model, batch)
            write_pictures(args.out, batch, out, args.examples)
        print(results_table(metrics))
        print(f"wrote {args.out}/metrics.json, results.md, per_frame.png, examples/")
    except ConfigError as e:
        print(f"error: config: {e}", file=sys.stderr)
        return 2
    except DIVEError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # --out cannot be written (read-only, disk full)
        where = f"{e.filename}: " if e.filename else ""
        print(f"error: cannot write results: {where}{e.strerror or e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

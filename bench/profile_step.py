"""Where one training step's time goes: forward and backward of every part of the model, with torch.profiler.

    python bench/profile_step.py                       # s3, batch 16 and 64, 2 threads
    python bench/profile_step.py --batch 64 --steps 5 --amp
    python bench/profile_step.py --config configs/s2_track.toml --batch 16

The step is the training loop's own, ``dive.engine.train_step`` (noise, the
loss of ``dive.objective.batch_loss``: forward, ELBO and, in the tracking
recipes, the teacher term; backward, clipping, Adam, logging scalars), whose
profiler ranges name the parts outside the model. Each part of the forward
is wrapped in a ``torch.profiler.record_function`` range by this script (the
model's code is not touched); the parts are the stages of docs/model.md:

    frame encoder, pose: slot encoder, pose: presence, pose: imputation, pose: rollout,
    pose: initial pose, pose: tracker (tracking variant), crop, object encoder,
    appearance: slot LSTM, appearance: dynamic, decoder, placement, ELBO, teacher

Forward time of a part is the CPU time of every op inside its range (the
part's own Python included); "model: other" is what the forward spends
outside the named parts (sampling, heads, composition). Backward time is
attributed through autograd's sequence numbers: each backward node carries
the number of the forward op that created it, and that op sits in one part's
range. The optimiser, clipping, noise, the BatchNorm-buffer copy and the
logging scalars are timed as parts of their own.

The profiler adds overhead to every op (more to small ones), so the parts'
sum is larger than the unprofiled step, which is printed for reference:
read the table as shares, not as absolute times.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from dive import config as config_mod  # noqa: E402
from dive import schedules  # noqa: E402
from dive.allocator import retain_freed_memory  # noqa: E402
from dive.data import MovingMNIST  # noqa: E402
from dive.engine import build_model, build_optimizer, train_step  # noqa: E402
from dive.runtime import Runtime, batch_indices  # noqa: E402

PREFIX = "part:"


def _labelled(label: str, fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with record_function(PREFIX + label):
            return fn(*args, **kwargs)

    return wrapper


def instrument(model) -> None:
    """Wrap every part of `model`'s forward in a labelled profiler range (this process only)."""
    import dive.model
    import dive.nn.appearance
    import dive.objective

    pose, app = model.pose, model.appearance
    targets = [
        (model.frame_encoder, "forward", "frame encoder"),
        (pose, "encode_slots", "pose: slot encoder"),
        (pose, "presence_logits", "pose: presence"),
        (pose, "sample_presence", "pose: presence"),
        (pose, "impute", "pose: imputation"),
        (pose, "rollout", "pose: rollout"),
        (pose, "initial_pose", "pose: initial pose"),
        (app.encoder, "forward", "object encoder"),
        (app, "encode_slots", "appearance: slot LSTM"),
        (model.decoder, "forward", "decoder"),
    ]
    if hasattr(app, "dynamic"):
        targets.append((app, "dynamic", "appearance: dynamic"))
    if hasattr(pose, "tracker"):  # the tracking variant (dive/nn/pose_track.py)
        targets += [(pose.tracker, "forward", "pose: tracker"), (pose, "rollout_tracked", "pose: rollout")]
    for obj, attr, label in targets:
        setattr(obj, attr, _labelled(label, getattr(obj, attr)))
    dive.objective.elbo = _labelled("ELBO", dive.objective.elbo)
    dive.objective.future_track_term = _labelled("teacher", dive.objective.future_track_term)
    dive.nn.appearance.image_to_object = _labelled("crop", dive.nn.appearance.image_to_object)
    dive.model.object_to_image = _labelled("placement", dive.model.object_to_image)
    dive.model.compose = _labelled("placement", dive.model.compose)


class Step:
    """dive.engine.train_step on one fixed batch; its parts are the profiler ranges the engine names."""

    def __init__(self, cfg, batch_size: int, amp: bool):
        self.cfg, self.amp = cfg, amp
        self.model = build_model(cfg)
        self.opt = build_optimizer(self.model, cfg)
        data = MovingMNIST(config=cfg.data, split="train", seed=cfg.data.seed)
        self.batch = data.batch(batch_indices(0, batch_size, 0, 1, len(data)))
        self.step = 0

    def __call__(self) -> None:
        train_step(self.model, self.model, self.opt, self.batch, self.cfg, schedules.at(self.step, self.cfg),
                   Runtime(device=torch.device("cpu")), self.amp)
        self.step += 1


def _part_of(event) -> str | None:
    """The innermost labelled range `event` lies in."""
    node = event
    while node is not None:
        if node.name.startswith(PREFIX):
            return node.name[len(PREFIX):]
        node = node.cpu_parent
    return None


def breakdown(prof) -> dict[str, dict[str, float]]:
    """{part: {"forward": us, "backward": us}} from one profiled run."""
    events = prof.events()
    backward_nodes = [ev for ev in events if ev.name.startswith("autograd::engine::evaluate_function")]
    in_backward = set()
    for node in backward_nodes:  # everything under a backward node is its time, not a forward part's
        stack = [node]
        while stack:
            ev = stack.pop()
            in_backward.add(id(ev))
            stack.extend(ev.cpu_children)
    seq_part: dict[int, str] = {}
    for ev in events:
        part = _part_of(ev)
        if ev.sequence_nr >= 0 and id(ev) not in in_backward and part not in (None, "backward (driver)"):
            seq_part[ev.sequence_nr] = part  # the last forward op with the number created the node
    fwd: dict[str, float] = defaultdict(float)
    bwd: dict[str, float] = defaultdict(float)
    for node in backward_nodes:
        bwd[seq_part.get(node.sequence_nr, "backward: unattributed")] += node.cpu_time_total
    for ev in events:
        if id(ev) in in_backward or ev.name.startswith(PREFIX):
            continue
        part = _part_of(ev)
        if part == "backward (driver)":
            continue  # the engine's own time is counted below
        fwd[part or "unlabelled"] += ev.self_cpu_time_total
    # The backward range's time not spent inside a node: the engine's own overhead.
    driver = sum(ev.cpu_time_total for ev in events if ev.name == PREFIX + "backward (driver)")
    bwd["autograd engine"] += max(0.0, driver - sum(bwd.values()))
    parts = sorted(set(fwd) | set(bwd), key=lambda p: -(fwd.get(p, 0) + bwd.get(p, 0)))
    return {p: {"forward": fwd.get(p, 0.0), "backward": bwd.get(p, 0.0)} for p in parts}


def run(config: str, batch_size: int, steps: int, warmup: int, amp: bool) -> dict:
    cfg = config_mod.load(config, [f"train.batch_size={batch_size}"])
    step = Step(cfg, batch_size, amp)
    for _ in range(warmup):
        step()
    plain = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        plain.append(time.perf_counter() - t0)
    instrument(step.model)
    for _ in range(warmup):
        step()
    totals: dict[str, dict[str, float]] = defaultdict(lambda: {"forward": 0.0, "backward": 0.0})
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    for part, t in breakdown(prof).items():
        totals[part]["forward"] += t["forward"] / steps / 1e3
        totals[part]["backward"] += t["backward"] / steps / 1e3
    return {"config": config, "batch": batch_size, "amp": amp, "steps": steps,
            "unprofiled_median_ms": statistics.median(plain) * 1e3, "parts_ms": dict(totals)}


def print_table(report: dict) -> None:
    parts = report["parts_ms"]
    total = sum(t["forward"] + t["backward"] for t in parts.values())
    print(f"{report['config']} | batch {report['batch']} | amp {report['amp']} | "
          f"unprofiled step {report['unprofiled_median_ms']:.0f} ms (median of {report['steps']}) | "
          f"profiled parts sum {total:.0f} ms")
    print(f"{'part':28s} {'forward ms':>10s} {'backward ms':>11s} {'total ms':>9s} {'share':>6s}")
    for part, t in sorted(parts.items(), key=lambda kv: -(kv[1]["forward"] + kv[1]["backward"])):
        both = t["forward"] + t["backward"]
        print(f"{part:28s} {t['forward']:10.1f} {t['backward']:11.1f} {both:9.1f} {100 * both / total:5.1f}%")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "configs" / "s3.toml"))
    ap.add_argument("--batch", default="16,64", help="comma-separated batch sizes (default 16,64)")
    ap.add_argument("--steps", type=int, default=5, help="profiled steps per batch size (default 5)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--amp", action="store_true", help="bfloat16 autocast, as train.py --amp")
    ap.add_argument("--json", action="store_true", help="print one JSON object per batch size")
    args = ap.parse_args(argv)
    if args.steps < 1:
        raise SystemExit("--steps must be at least 1")
    retain_freed_memory()  # as train.py on CPU
    torch.set_num_threads(args.threads)
    for b in (int(x) for x in args.batch.split(",") if x):
        report = run(args.config, b, args.steps, args.warmup, args.amp)
        print(json.dumps(report) if args.json else "", flush=True)
        if not args.json:
            print_table(report)


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        main()

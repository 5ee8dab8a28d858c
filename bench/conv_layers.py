"""Every conv layer of the model, forward + backward in isolation, under each conv backend torch offers.

    python bench/conv_layers.py                          # s3, batch 16 and 64, 2 threads, every variant
    python bench/conv_layers.py --batch 64 --variants onednn,autocast --repeats 9
    python bench/conv_layers.py --config configs/smoke.toml --batch 2 --repeats 1 --json

What a training step's convolutions cost, and whether another backend or
precision would make them cheaper. The layers and their inputs are the
model's own: one training step (bench/train_step.py's, allocator on) runs
with a hook on every conv module that keeps a copy of its input; then each
layer's forward and backward (an all-ones output gradient, the input
gradient where the step needed one, and the weight gradient) is timed
alone, the variants interleaved round by round:

    onednn     as the training step runs them: oneDNN, channels-last maps and weights,
               the layers' own fast paths (dive/nn/convnets.py) included
    nchw       the same on a contiguous (NCHW) copy of the layer and its input
    native     torch's own kernels, not oneDNN (torch.backends.mkldnn disabled): im2col + GEMM
    bf16math   oneDNN allowed to compute float32 convs in bfloat16
               (torch.backends.mkldnn.conv.fp32_precision = "bf16"; the report says whether
               oneDNN honoured it: where it does not, the values stay bit for bit the same)
    autocast   bfloat16 autocast around the forward, as train.py --amp

The sum over the layers is a floor for the whole step in that form: the
step runs every one of these layers once forward and once backward
(docs/studies/2026-12-06-conv-layers-floor.md compares it with what a target step time allows).
Medians of the rounds, milliseconds.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "bench"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from dive.allocator import retain_freed_memory  # noqa: E402
from train_step import Worker, machine  # noqa: E402

VARIANTS = ("onednn", "nchw", "native", "bf16math", "autocast")


def captured_layers(config: str, batch: int) -> list[tuple[str, torch.nn.Module, torch.Tensor, bool]]:
    """(name, conv module, its input in one training step, whether the step needed the input's gradient), in call order."""
    worker = Worker({"mode": "malloc", "batch": batch, "config": config})
    seen: dict[str, tuple] = {}

    def keep(name):
        def hook(module, inputs, _output):
            if name not in seen:  # a module called twice in a step is timed once, at its first input
                seen[name] = (name, module, inputs[0].detach().clone(), inputs[0].requires_grad)
        return hook

    handles = [m.register_forward_hook(keep(name)) for name, m in worker.model.named_modules()
               if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    worker.run_once()
    for h in handles:
        h.remove()
    return list(seen.values())


@contextlib.contextmanager
def _bf16_math():
    if not hasattr(torch.backends.mkldnn, "conv"):
        raise SystemExit(f"variant bf16math needs torch.backends.mkldnn.conv.fp32_precision (torch {torch.__version__} "
                         "has none); leave it out of --variants")
    before = torch.backends.mkldnn.conv.fp32_precision
    torch.backends.mkldnn.conv.fp32_precision = "bf16"
    try:
        yield
    finally:
        torch.backends.mkldnn.conv.fp32_precision = before


def bf16_math_applied() -> bool | None:
    """Whether oneDNN honours fp32_precision = "bf16" for convs here (the values change); None where torch has no such flag."""
    if not hasattr(torch.backends.mkldnn, "conv"):
        return None
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(8, 16, 16, 16, generator=gen).contiguous(memory_format=torch.channels_last)
    w = torch.randn(32, 16, 4, 4, generator=gen).contiguous(memory_format=torch.channels_last)
    exact = torch.nn.functional.conv2d(x, w, stride=2, padding=1)
    with _bf16_math():
        return not torch.equal(torch.nn.functional.conv2d(x, w, stride=2, padding=1), exact)


def layer_step(variant: str, module: torch.nn.Module, x: torch.Tensor, input_grad: bool):
    """A function that runs `module`'s forward and backward once in `variant`'s form."""
    if variant == "nchw":
        module = copy.deepcopy(module).to(memory_format=torch.contiguous_format)
        x = x.contiguous()
    else:
        x = x.contiguous(memory_format=torch.channels_last)
    x = x.clone().requires_grad_(input_grad)
    context = {
        "onednn": contextlib.nullcontext,
        "nchw": contextlib.nullcontext,
        "native": lambda: torch.backends.mkldnn.flags(enabled=False),
        "bf16math": _bf16_math,
        "autocast": lambda: torch.autocast("cpu", torch.bfloat16),
    }[variant]

    def step():
        with context():  # around the backward too: the backend is chosen again there
            y = module(x)
            y.float().backward(torch.ones_like(y, dtype=torch.float32))
        module.zero_grad(set_to_none=True)
        x.grad = None

    return step


def time_layers(config: str, batch: int, variants: list[str], repeats: int, warmup: int) -> dict:
    rows = []
    for name, module, x, input_grad in captured_layers(config, batch):
        steps = {v: layer_step(v, module, x, input_grad) for v in variants}
        for step in steps.values():
            for _ in range(warmup):
                step()
        times: dict[str, list[float]] = {v: [] for v in variants}
        for r in range(repeats):
            order = variants[r % len(variants):] + variants[:r % len(variants)]  # a slow spell hits each in turn
            for v in order:
                t0 = time.perf_counter()
                steps[v]()
                times[v].append(time.perf_counter() - t0)
        rows.append({"layer": name, "module": type(module).__name__, "input_shape": list(x.shape),
                     "input_grad": input_grad, "ms": {v: 1e3 * statistics.median(times[v]) for v in variants}})
    total = {v: sum(row["ms"][v] for row in rows) for v in variants}
    return {"batch": batch, "layers": rows, "total_ms": total}


def print_table(report: dict) -> None:
    variants = report["variants"]
    print(f"{report['config']} | {report['machine']['cpu']} | torch {report['machine']['torch']} | "
          f"{report['threads']} threads | {report['repeats']} interleaved rounds, medians, ms forward + backward")
    for res in report["results"]:
        print(f"\nbatch {res['batch']}")
        print(f"{'layer':24s} {'module':26s} {'input (n c h w)':>20s} " + " ".join(f"{v:>9s}" for v in variants))
        for row in res["layers"]:
            shape = "x".join(str(s) for s in row["input_shape"])
            print(f"{row['layer']:24s} {row['module']:26s} {shape:>20s} "
                  + " ".join(f"{row['ms'][v]:9.1f}" for v in variants))
        print(f"{'sum of the layers':72s} " + " ".join(f"{res['total_ms'][v]:9.1f}" for v in variants))
    if "bf16math" in variants and report["bf16math_applied"] is False:
        print("\nbf16math: oneDNN left a float32 conv's values bit for bit as they were, so it did not compute in "
              "bfloat16 on this machine")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "configs" / "s3.toml"))
    ap.add_argument("--batch", default="16,64", help="comma-separated batch sizes (default 16,64)")
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated (default {','.join(VARIANTS)})")
    ap.add_argument("--repeats", type=int, default=7, help="interleaved rounds per layer (default 7)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed runs per layer and variant (default 2)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = ap.parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown or not variants:
        raise SystemExit(f"unknown variant(s) {unknown or '(none given)'}; choose from {', '.join(VARIANTS)}")
    if args.repeats < 1:
        raise SystemExit("--repeats must be at least 1")
    torch.set_num_threads(args.threads)
    retain_freed_memory()  # as the training step runs: no page faults for the layers' buffers
    results = [time_layers(args.config, int(b), variants, args.repeats, args.warmup)
               for b in args.batch.split(",") if b]
    report = {"config": args.config, "threads": args.threads, "repeats": args.repeats, "variants": variants,
              "bf16math_applied": bf16_math_applied(), "machine": machine(), "results": results}
    if args.json:
        print(json.dumps(report))
    else:
        print_table(report)


if __name__ == "__main__":
    main()

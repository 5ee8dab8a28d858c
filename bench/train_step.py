"""Training-step speed: seconds per step, peak memory and FLOP/s of DIVE, plus end to end and evaluation.

    python bench/train_step.py                                   # s3, batch 16 and 64, default modes
    python bench/train_step.py --batch 64 --modes eager,compile+amp --repeats 15
    python bench/train_step.py --config configs/smoke.toml --batch 2 --repeats 1 --warmup 0 --json

A mode is a '+'-joined set of switches (``eager`` is the empty set):

    compile  dive.compile.compile_model (torch.compile, RNNs traced, full graph)
    graphs   (with compile) mode reduce-overhead: CUDA graphs, what train.py --compile does on CUDA
    amp      bfloat16 autocast around the forward, as train.py --amp
    nchw     conv weights in the default contiguous layout instead of channels-last
    malloc   dive.allocator.retain_freed_memory(): freed memory stays in the process
             (no page faults per step), called before anything is built
    data     end to end: every step first generates its batch (MovingMNIST.batch)
    loader   end to end through the training loop's DataLoader with train.num_workers = 1
             (dive.runtime.train_batches): one process generates batches ahead
    eval     dive.evaluation.evaluate over the test set, no gradients (sequences/s);
             may be combined with compile / amp / nchw / malloc
    nobase   (with eval) without the two baselines, as the training loop's validation

Some switches undo one optimisation each, to measure what it buys:

    fullstn     place and crop over the whole image (no min_scale window)
    convlinear  the encoders' last and the decoder's first layer as convs, not matmuls
    nativeup    the decoder's transposed convs to few channels through torch's kernel (oneDNN),
                not as forward convs (dive/nn/phase_conv.py)
    firstconv   the encoders' one-channel first layer as a plain strided conv (no space-to-depth)
    nativebn    torch's batch norm for the decoder's 8-channel layer
    slots       render every slot's image and sum them, as an eval pass does (no compose)
    loopadam    torch's default Adam (a loop of small ops per parameter), not the fused one

The step is the one train.py takes: the worker calls ``dive.engine.train_step``
(noise from ``step_generator``, the BatchNorm-buffer copy, the loss of
``dive.objective.batch_loss`` with the schedule's values: forward under
``autocast``, the ELBO and the training-only terms; backward, gradient-norm
clipping, the finiteness check (one host sync), an Adam step and the scalars
for logging). Without
``data`` one batch is generated before timing and reused (as the original's
pre-generated data); the noise is new every step.

Method, chosen to be honest on a small noisy machine:

* One worker subprocess per (batch, mode). Every worker builds its model
  and runs its warm-up (and compilation) first; then the timed steps are
  interleaved: each round asks every worker in turn (order rotated per round)
  for ``--chunk`` steps, so a busy period of the machine hits all
  configurations alike. Workers wait on a pipe while another one runs. Reported:
  median, quartiles, min and max of the per-step wall times.
* Memory: each worker's own peak resident set size (VmHWM in /proc/self/status,
  ru_maxrss elsewhere), everything the process holds: Python, torch's
  libraries, the model, the allocator's cache. ``peak_rss_gib`` covers the
  whole life of the process (build, warm-up, compilation); ``steady_rss_gib``
  only the timed steps (the peak counter is reset through
  /proc/self/clear_refs after warm-up; null where that is not possible);
  ``base_rss_gib`` is the resident size before the model is built.
* FLOPs: torch.utils.flop_counter.FlopCounterMode over one eager step
  (forward + backward; the counter sees matmuls and convolutions, which is
  where the FLOPs are); GFLOP/s = FLOPs / median step time. Counted after
  the timed rounds and the memory readings: with ``malloc`` the memory of
  that eager step would otherwise stay in a compiled worker's resident
  size. The reference is a float32 1024^3 matmul timed by the parent
  between rounds, same threads.
* Evaluation: sequences per second of dive.evaluation.evaluate(model, test set,
  batch_size=64) on the first ``--eval-n`` test sequences, generated on the fly
  as evaluate.py does, with every metric and the baselines except the object-level scores
  (dive/object_metrics.py, left out so that figures stay comparable with the earlier rounds).

``--json`` prints one object; every timed configuration in ``results`` has
``batch``, ``mode``, ``median_s`` (seconds per step, or per evaluation batch
of 64 for eval modes) and ``seq_per_s`` (training or evaluated sequences per
second); ``machine`` names the CPU (and the GPU with ``--device cuda``).

On CUDA (``--device cuda``) every step ends with a device synchronisation,
and ``gpu_peak_gib`` is torch.cuda.max_memory_allocated of the worker.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere, without installing
    sys.path.insert(0, str(ROOT))

SWITCHES = ("compile", "graphs", "amp", "nchw", "malloc", "data", "loader", "eval", "nobase",
            "fullstn", "convlinear", "nativeup", "firstconv", "nativebn", "slots", "loopadam")
DEFAULT_MODES = "eager,nchw,amp,compile,compile+amp,data,compile+data,eval,compile+eval"
GIB = 1024 ** 3


def parse_mode(mode: str) -> frozenset[str]:
    parts = frozenset(p for p in mode.split("+") if p and p != "eager")
    unknown = parts - set(SWITCHES)
    if unknown:
        raise SystemExit(f"unknown switch(es) {sorted(unknown)} in mode {mode!r}; use eager or "
                         f"'+'-joined {', '.join(SWITCHES)}")
    if "eval" in parts and parts & {"data", "loader"}:
        raise SystemExit(f"mode {mode!r}: eval always generates its data; drop 'data' / 'loader'")
    if "graphs" in parts and "compile" not in parts:
        raise SystemExit(f"mode {mode!r}: 'graphs' is a compile mode; add 'compile'")
    if "nobase" in parts and "eval" not in parts:
        raise SystemExit(f"mode {mode!r}: 'nobase' only goes with 'eval'")
    if {"data", "loader"} <= parts:
        raise SystemExit(f"mode {mode!r}: choose one of 'data' (in the step) and 'loader' (a worker process)")
    return parts


# --------------------------------------------------------------------------- memory


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def peak_rss_bytes() -> int:
    kib = _status_kib("VmHWM")
    if kib is not None:
        return kib * 1024
    scale = 1 if sys.platform == "darwin" else 1024  # macOS reports bytes, Linux KiB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def rss_bytes() -> int | None:
    kib = _status_kib("VmRSS")
    return None if kib is None else kib * 1024


def reset_peak_rss() -> bool:
    """Start a new peak (Linux >= 4.0); False where the counter cannot be reset."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


# --------------------------------------------------------------------------- worker


def undo_optimisations(model, switches: frozenset[str]) -> None:
    """Put back the plain implementation of each optimisation the switches name (for comparisons only)."""
    import types

    from torch import nn

    from dive.nn import convnets

    if "fullstn" in switches:
        model.min_scale = model.appearance.min_scale = None
    for m in model.modules():
        if "convlinear" in switches and isinstance(m, convnets._MapToVector):
            m.forward = types.MethodType(nn.Conv2d.forward, m)
        if "convlinear" in switches and isinstance(m, convnets._VectorToMap):
            m.forward = types.MethodType(nn.ConvTranspose2d.forward, m)
        if "nativeup" in switches and isinstance(m, convnets._FewChannelConvTranspose):
            m.forward = types.MethodType(nn.ConvTranspose2d.forward, m)
        if "firstconv" in switches and isinstance(m, convnets._SpaceToDepthConv):
            m.forward = types.MethodType(nn.Conv2d.forward, m)
        if "nativebn" in switches and isinstance(m, convnets._FewChannelBatchNorm):
            m.forward = types.MethodType(nn.BatchNorm2d.forward, m)


class Worker:
    """One configuration in its own process: build, warm up, then time steps on request."""

    def __init__(self, spec: dict):
        from dive import config as config_mod
        from dive.data import MovingMNIST, build_dataset
        from dive.engine import build_model

        self.spec = spec
        self.switches = parse_mode(spec["mode"])
        self.batch_size = spec["batch"]
        self.device = torch.device(spec.get("device", "cpu"))
        self.base_rss = rss_bytes()

        workers = 1 if "loader" in self.switches else 0
        cfg = config_mod.load(spec["config"], [f"train.batch_size={self.batch_size}", f"train.num_workers={workers}"])
        self.cfg = cfg
        model = build_model(cfg).to(self.device)
        if "nchw" in self.switches:
            model.to(memory_format=torch.contiguous_format)
        undo_optimisations(model, self.switches)
        self.model = model
        self.step_model = model
        if "compile" in self.switches:
            from dive.compile import compile_model

            self.step_model = compile_model(model, mode="reduce-overhead" if "graphs" in self.switches else None)
        self.amp = "amp" in self.switches
        self.step = 0

        if "eval" in self.switches:
            self.test_set = build_dataset(cfg.data, "test")
            self.eval_n = min(spec["eval_n"], len(self.test_set))
            self.run_once = self._evaluate
        else:
            self.train_set = MovingMNIST(config=cfg.data, split="train", seed=cfg.data.seed)
            self.fixed_batch = self._next_batch()
            if "loader" in self.switches:
                from dive.runtime import Runtime, train_batches

                self.loader = train_batches(self.train_set, cfg, 0, Runtime(device=self.device))
            from dive.engine import build_optimizer

            self.opt = (torch.optim.Adam(model.parameters(), lr=cfg.train.lr, betas=tuple(cfg.train.betas))
                        if "loopadam" in self.switches else build_optimizer(model, cfg))
            self.run_once = self._train_step

    def _next_batch(self) -> dict[str, torch.Tensor]:
        from dive.runtime import batch_indices

        idx = batch_indices(self.step, self.batch_size, 0, 1, len(self.train_set))
        return {k: v.to(self.device) for k, v in self.train_set.batch(idx).items()}

    def _train_step(self) -> dict:
        """The training loop's step, dive.engine.train_step, on this worker's batch; returns its logs."""
        from dive import schedules
        from dive.engine import train_step
        from dive.runtime import Runtime

        if "data" in self.switches:
            batch = self._next_batch()
        elif "loader" in self.switches:
            batch = {k: v.to(self.device) for k, v in next(self.loader).items()}
        else:
            batch = self.fixed_batch
        sched = schedules.at(self.step, self.cfg)
        for group in self.opt.param_groups:
            group["lr"] = sched.lr
        logs = train_step(self.step_model, self.model, self.opt, batch, self.cfg, sched,
                          Runtime(device=self.device), self.amp, render_slots="slots" in self.switches)
        self.step += 1
        return logs

    def _evaluate(self) -> None:
        from dive.evaluation import evaluate

        evaluate(self.step_model, self.test_set, self.cfg, n=self.eval_n, batch_size=64, device=self.device,
                 amp=self.amp, baselines="nobase" not in self.switches, objects=False)
        self.step += 1

    def count_flops(self) -> int | None:
        """FLOPs of one eager step (or one evaluation pass), measured without changing the model's state."""
        from torch.utils.flop_counter import FlopCounterMode

        if "eval" in self.switches:
            saved = self.step_model
            self.step_model = self.model
            try:
                with FlopCounterMode(display=False) as counter:
                    self._evaluate()
            finally:
                self.step_model, self.step = saved, self.step - 1
            return counter.get_total_flops()
        params = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        opt_state = self.opt.state_dict()
        saved = self.step_model
        self.step_model = self.model
        try:
            with FlopCounterMode(display=False) as counter:
                self._train_step()
        finally:
            self.step_model, self.step = saved, self.step - 1
            self.model.load_state_dict(params)
            self.opt.load_state_dict(opt_state)
        return counter.get_total_flops()

    def time_steps(self, n: int) -> list[float]:
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            self.run_once()
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            times.append(time.perf_counter() - t0)
        return times


def worker_main(spec_json: str) -> None:
    spec = json.loads(spec_json)
    if "malloc" in parse_mode(spec["mode"]):
        from dive.allocator import retain_freed_memory

        if not retain_freed_memory():
            raise SystemExit("mode 'malloc' needs glibc")
    torch.set_num_threads(spec["threads"])
    t0 = time.perf_counter()
    w = Worker(spec)
    warm = w.time_steps(spec["warmup"])
    peak_setup = peak_rss_bytes()
    resettable = reset_peak_rss()
    send({"ready": True, "setup_s": time.perf_counter() - t0, "warmup_s": warm,
          "sequences": getattr(w, "eval_n", None)})
    for line in sys.stdin:
        cmd = line.split()
        if cmd[0] == "run":
            send({"times": w.time_steps(int(cmd[1]))})
        elif cmd[0] == "quit":
            steady = peak_rss_bytes() if resettable else None
            peak = max(peak_setup, peak_rss_bytes())
            # Counted last: the count runs one eager step, which must not add to the memory
            # measured for a compiled configuration (train.py --compile never runs one).
            flops = w.count_flops() if spec["flops"] else None
            gpu_peak = torch.cuda.max_memory_allocated(w.device) if w.device.type == "cuda" else None
            send({"peak_rss": peak, "steady_rss": steady, "base_rss": w.base_rss, "flops": flops,
                  "gpu_peak": gpu_peak})
            return


def send(obj: dict) -> None:
    sys.stdout.write("@@" + json.dumps(obj) + "\n")
    sys.stdout.flush()


# --------------------------------------------------------------------------- parent


class Proc:
    """A worker process for `spec`: this file's, or that of the checkout at `root` (bench/ab.py)."""

    def __init__(self, spec: dict, root: Path = ROOT):
        self.spec = spec
        env = {**os.environ, "OMP_NUM_THREADS": str(spec["threads"])}
        self.p = subprocess.Popen([sys.executable, str(root / "bench" / "train_step.py"), "--worker", json.dumps(spec)],
                                  cwd=root, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.times: list[float] = []

    def receive(self) -> dict:
        for line in self.p.stdout:
            if line.startswith("@@"):
                return json.loads(line[2:])
        self.p.wait()
        raise RuntimeError(f"worker {self.spec['batch']}/{self.spec['mode']} exited with {self.p.returncode}")

    def ask(self, command: str) -> dict:
        self.p.stdin.write(command + "\n")
        self.p.stdin.flush()
        return self.receive()


def _busy_jiffies() -> int | None:
    """CPU time (clock ticks) all processes of the machine have used so far; None off Linux."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return user + nice + system + irq + softirq + steal


def _process_jiffies(pid: int | str = "self") -> int:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])  # utime + stime


def matmul_gflops(threads: int, n: int = 1024, repeats: int = 5) -> float:
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - t0)
    return 2 * n ** 3 / statistics.median(times) / 1e9


def quantiles(xs: list[float]) -> dict[str, float]:
    xs = sorted(xs)
    q = statistics.quantiles(xs, n=4) if len(xs) > 1 else [xs[0]] * 3
    return {"median_s": statistics.median(xs), "p25_s": q[0], "p75_s": q[2], "min_s": xs[0], "max_s": xs[-1]}


def machine() -> dict:
    model_name = platform.processor()
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name"):
                model_name = line.split(":", 1)[1].strip()
    except OSError:
        pass
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return {"cpu": model_name, "logical_cpus": os.cpu_count(), "gpu": gpu, "torch": torch.__version__,
            "python": platform.python_version()}


def run(args) -> dict:
    specs = [{"batch": b, "mode": m, "config": args.config, "threads": args.threads, "warmup": args.warmup,
              "eval_n": args.eval_n, "flops": not args.no_flops, "device": args.device}
             for m in args.modes for b in ([64] if "eval" in parse_mode(m) else args.batch)]
    seen, unique = set(), []
    for s in specs:  # eval modes use batch 64 whatever --batch says
        if (s["batch"], s["mode"]) not in seen:
            seen.add((s["batch"], s["mode"]))
            unique.append(s)
    procs = []
    for spec in unique:  # one at a time: warm-up and compilation must not overlap either
        p = Proc(spec)
        p.ready = p.receive()
        procs.append(p)
        if not args.json:
            print(f"ready: batch {spec['batch']:3d} {spec['mode']} setup {p.ready['setup_s']:.1f} s",
                  file=sys.stderr, flush=True)

    # CPU time other processes take during the timed rounds: the measure of how noisy the run was
    busy0 = _busy_jiffies()
    mine0 = _process_jiffies() + sum(_process_jiffies(p.p.pid) for p in procs)
    wall0 = time.perf_counter()
    ref = []
    for r in range(args.repeats):
        order = procs[r % len(procs):] + procs[:r % len(procs)]
        for p in order:
            p.times += p.ask(f"run {1 if 'eval' in parse_mode(p.spec['mode']) else args.chunk}")["times"]
        ref.append(matmul_gflops(args.threads))

    wall = time.perf_counter() - wall0
    busy1 = _busy_jiffies()
    mine1 = _process_jiffies() + sum(_process_jiffies(p.p.pid) for p in procs)
    other_cpu_s = None
    if busy0 is not None:
        other_cpu_s = max(0.0, ((busy1 - busy0) - (mine1 - mine0)) / os.sysconf("SC_CLK_TCK"))

    results = []
    for p in procs:
        mem = p.ask("quit")
        p.p.wait()
        sw = parse_mode(p.spec["mode"])
        q = quantiles(p.times)
        row = {"batch": p.spec["batch"], "mode": p.spec["mode"], **q, "n": len(p.times),
               "peak_rss_gib": mem["peak_rss"] / GIB,
               "steady_rss_gib": None if mem["steady_rss"] is None else mem["steady_rss"] / GIB,
               "base_rss_gib": None if mem["base_rss"] is None else mem["base_rss"] / GIB,
               "setup_s": p.ready["setup_s"], "flops": mem["flops"],
               "gpu_peak_gib": None if mem.get("gpu_peak") is None else mem["gpu_peak"] / GIB}
        if "eval" in sw:
            n = p.ready["sequences"]
            row["sequences"] = n
            row["seq_per_s"] = n / q["median_s"]
            row["median_s"] = q["median_s"] / -(-n // 64)  # per evaluation batch of 64
        else:
            row["seq_per_s"] = p.spec["batch"] / q["median_s"]
        row["gflop_per_s"] = mem["flops"] / q["median_s"] / 1e9 if mem["flops"] and "eval" not in sw \
            else None
        results.append(row)
    return {"config": args.config, "device": args.device, "threads": args.threads, "repeats": args.repeats,
            "chunk": args.chunk,
            "warmup": args.warmup, "machine": machine(), "timed_wall_s": wall, "other_cpu_s": other_cpu_s,
            "matmul_ref_gflop_per_s": statistics.median(ref) if ref else None, "results": results}


def print_table(report: dict) -> None:
    m = report["machine"]
    where = f"{m['gpu']} ({report['device']}) | host CPU {m['cpu']}" if report["device"] != "cpu" else m["cpu"]
    print(f"{report['config']} | {where} | torch {m['torch']} | {report['threads']} threads | "
          f"{report['repeats']} rounds x {report['chunk']} step(s), interleaved")
    print(f"matmul reference (fp32 1024^3): {report['matmul_ref_gflop_per_s']:.1f} GFLOP/s")
    if report["other_cpu_s"] is not None:
        print(f"other processes used {report['other_cpu_s']:.1f} CPU-s during the {report['timed_wall_s']:.0f} s "
              "of timed rounds (0 on a quiet machine)")
    mw = max([14] + [len(r["mode"]) for r in report["results"]])
    print(f"{'batch':>5s} {'mode':{mw}s} {'median':>9s} {'seq/s':>8s} {'p25-p75':>15s} {'min':>8s} {'peak':>9s} "
          f"{'steady':>9s} {'GPU peak':>9s} {'GFLOP':>7s} {'GFLOP/s':>8s}")
    for r in report["results"]:
        steady = f"{r['steady_rss_gib']:.2f} GiB" if r["steady_rss_gib"] is not None else "-"
        flops = f"{r['flops'] / 1e9:.1f}" if r["flops"] else "-"
        rate = f"{r['gflop_per_s']:.1f}" if r["gflop_per_s"] else "-"
        gpu = f"{r['gpu_peak_gib']:.2f} GiB" if r.get("gpu_peak_gib") is not None else "-"
        if "sequences" in r:  # an evaluation pass: per batch of 64
            spread = f"over {r['sequences']} seq"
        else:
            spread = f"{r['p25_s'] * 1e3:.0f}-{r['p75_s'] * 1e3:.0f} ms"
        print(f"{r['batch']:5d} {r['mode']:{mw}s} {r['median_s'] * 1e3:6.0f} ms {r['seq_per_s']:8.0f} {spread:>15s} "
              f"{r['min_s'] * 1e3:6.0f}ms {r['peak_rss_gib']:5.2f} GiB {steady:>9s} {gpu:>9s} {flops:>7s} {rate:>8s}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "configs" / "s3.toml"))
    ap.add_argument("--batch", default="16,64", help="comma-separated batch sizes (default 16,64)")
    ap.add_argument("--modes", default=DEFAULT_MODES, help=f"comma-separated (default {DEFAULT_MODES})")
    ap.add_argument("--repeats", type=int, default=9, help="interleaved rounds")
    ap.add_argument("--chunk", type=int, default=1, help="training steps per configuration per round")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps (and compilation) per configuration")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    ap.add_argument("--eval-n", type=int, default=1024, help="test sequences per evaluation (default all)")
    ap.add_argument("--no-flops", action="store_true", help="skip the FLOP count")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker_main(args.worker)
        return
    args.batch = [int(b) for b in args.batch.split(",") if b]
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    for m in args.modes:
        parse_mode(m)
    if args.repeats < 1:
        raise SystemExit("--repeats must be at least 1")
    report = run(args)
    if args.json:
        print(json.dumps(report))
    else:
        print_table(report)


if __name__ == "__main__":
    main()

"""The training step and loop: the optimiser, AMP, compile, DDP, checkpoints, resume.

Where it runs and what each step reads (devices, ranks, the step's batch and
noise, and why a resumed run computes what an uninterrupted one does):
dive/runtime.py. What the run folder records besides checkpoints (logs,
TensorBoard, validation): dive/runlog.py. The loss of a batch:
dive/objective.py.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.profiler import record_function
from torch.utils.tensorboard import SummaryWriter

from . import checkpoint, schedules
from .allocator import retain_freed_memory
from .compile import compile_model, resolve_mode
from .config import Config, architecture_diff, dumps_toml, to_dict
from .data import build_dataset
from .data.common import atomic_write
from .errors import CheckpointError, DIVEError, TrainingError
from .model import DIVE
from .objective import batch_loss
from .runlock import RunLock
from .runlog import append_jsonl, trim_jsonl, validate, write_images, write_scalars
from .runtime import Runtime, setup_runtime, step_generator, to_device, train_batches


@dataclass
class Options:
    """Run options that are not part of the model's config."""

    out: Path
    device: str = "auto"
    amp: bool = False
    compile: bool = False
    compile_mode: str = "auto"  # dive.compile.resolve_mode: reduce-overhead (CUDA graphs) on CUDA, default on CPU
    resume: bool = False
    quiet: bool = False
    stop_after: int | None = None  # optimiser steps in this invocation, then checkpoint and stop
    time_limit: float | None = None  # seconds of training in this invocation, then checkpoint and stop
    # Save snapshots/min_XXX.pt when the run's wall-clock time (all invocations) passes each of
    # these minutes: checkpoints for a metrics-against-time curve (evaluate them afterwards).
    snapshot_minutes: tuple[float, ...] = ()


@dataclass
class State:
    step: int = 0
    best: float = math.inf
    nonfinite_in_row: int = 0
    nonfinite_total: int = 0
    elapsed: float = 0.0  # wall-clock seconds of training over every invocation (validation included)
    history: list[dict[str, float]] = field(default_factory=list)


def _log(rt: Runtime, msg: str) -> None:
    if rt.is_main:
        print(msg, flush=True)


def _fmt_time(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}"


def build_model(cfg: Config) -> DIVE:
    torch.manual_seed(cfg.train.seed)
    return DIVE(cfg.model, cfg.data)


ORIGINAL_ADAM_EPS = 1e-8  # torch's default: the original's Adam, on the unscaled -ELBO


def adam_eps(cfg: Config, world: int = 1) -> float:
    """Adam's eps for the loss per element, -ELBO / (B T C H W) with B over all `world` processes.

    Adam is invariant to the scale of the loss but for eps: gradients divided
    by N = B T C H W take the same steps as the unscaled ones only with eps / N.
    The original stepped on the unscaled -ELBO with eps 1e-8, so
    `train.adam_eps = 0` (the default) gives 1e-8 / N; a positive value is used as it is.
    """
    if cfg.train.adam_eps > 0:
        return cfg.train.adam_eps
    d = cfg.data
    elements = cfg.train.batch_size * world * (d.t_in + d.t_out) * d.channels * d.image_size**2
    return ORIGINAL_ADAM_EPS / elements


def build_optimizer(model: nn.Module, cfg: Config, world: int = 1) -> torch.optim.Adam:
    """Adam with the config's settings (eps: `adam_eps`), as one fused kernel per parameter where torch has one.

    The per-parameter loop of the default implementation launches some ten
    small ops per tensor (95 tensors): 6.5 ms per step on a 2-core CPU
    against 1.3 ms fused (docs/studies/speed-round-intel-xeon.md). Same update to float rounding.
    """
    kwargs = dict(lr=cfg.train.lr, betas=tuple(cfg.train.betas), eps=adam_eps(cfg, world))
    try:
        return torch.optim.Adam(model.parameters(), fused=True, **kwargs)
    except RuntimeError:  # no fused kernel for this device or torch version (CPU: torch >= 2.4)
        return torch.optim.Adam(model.parameters(), **kwargs)


def _checkpoint_state(model: nn.Module, opt: torch.optim.Optimizer, cfg: Config, st: State) -> dict[str, Any]:
    return {
        "step": st.step,
        "config": to_dict(cfg),
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "rng": checkpoint.rng_state(),
        "extra": {"best": st.best, "nonfinite_total": st.nonfinite_total,
                  "nonfinite_in_row": st.nonfinite_in_row, "elapsed": st.elapsed},
    }


def check_resume(run_dir: Path, cfg: Config) -> tuple[dict[str, Any], list[str]]:
    """The checkpoint to continue `run_dir` from, and the config changes since it was written.

    Architecture keys must match the stored config; training keys may change.
    """
    path = run_dir / "latest.pt"
    state = checkpoint.load(path)
    stored = checkpoint.config_of(state, path)
    diff = architecture_diff(stored, cfg)
    if diff:
        raise TrainingError(
            f"cannot resume {run_dir} with a different architecture ({'; '.join(diff)}); "
            "start a new run folder or drop those overrides"
        )
    return state, config_changes(stored, cfg)


def config_changes(old: Config, new: Config) -> list[str]:
    a, b = to_dict(old), to_dict(new)
    return [f"{s}.{k}: {a[s].get(k)!r} -> {b[s].get(k)!r}"
            for s in b for k in sorted(set(a[s]) | set(b[s])) if a[s].get(k) != b[s].get(k)]


def train(cfg: Config, opts: Options) -> State:
    """Train `cfg` into run folder `opts.out` (resuming from its latest.pt when `opts.resume`)."""
    rt = setup_runtime(opts.device, cfg.train.dist_timeout)
    if rt.device.type == "cpu":
        retain_freed_memory()  # freed tensors stay in the process: no page faults per step (docs/performance.md)
    out = Path(opts.out)
    # --resume of a folder that does not exist is check_resume's error; nothing is created for it
    lock = _lock_run_folder(out, rt) if not (opts.resume and not out.is_dir()) else None
    try:
        return _train(cfg, opts, rt, out)
    except RuntimeError as e:
        if not rt.distributed or isinstance(e, DIVEError) or not _is_collective_failure(e):
            raise
        raise _lost_ranks(e, rt, out) from e
    finally:
        if lock is not None:
            lock.release()


def _is_collective_failure(e: RuntimeError) -> bool:
    """A failed collective (torch.distributed's own error types, or the backend's words for one), not a
    bug elsewhere that happens to raise a RuntimeError."""
    text = str(e).lower()
    return isinstance(e, dist.DistError) or any(w in text for w in ("gloo", "nccl", "processgroup", "timed out",
                                                                        "connection closed", "connection reset"))


def _lost_ranks(e: RuntimeError, rt: Runtime, out: Path) -> TrainingError:
    """A collective failed: another rank died, hangs past train.dist_timeout, or lost its connection."""
    reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
    latest = out / "latest.pt"
    try:
        kept = f"{latest} (step {checkpoint.load(latest)['step']})"
    except (CheckpointError, OSError, KeyError):
        kept = "no checkpoint yet"
    return TrainingError(f"rank {rt.rank} of {rt.world}: lost the other ranks ({type(e).__name__}: {reason}); "
                         f"a rank died or hung past train.dist_timeout. Last checkpoint: {kept}; continue with "
                         f"--resume {out}")


def _lock_run_folder(out: Path, rt: Runtime) -> RunLock | None:
    """The main rank's lock on the run folder (dive/runlock.py); every rank raises if it is refused."""
    lock, refusal = None, None
    if rt.is_main:
        lock = RunLock(out)
        try:
            note = lock.acquire()
            if note:
                _log(rt, note)
        except TrainingError as e:
            lock, refusal = None, str(e)
    if rt.distributed:
        box = [refusal]
        dist.broadcast_object_list(box, src=0)
        refusal = box[0]
    if refusal is not None:
        raise TrainingError(refusal if rt.is_main else f"rank {rt.rank}: rank 0 refused the run folder: {refusal}")
    return lock


def _train(cfg: Config, opts: Options, rt: Runtime, out: Path) -> State:
    resume_state, changes = check_resume(out, cfg) if opts.resume else (None, [])
    for change in changes:
        _log(rt, f"resume: config change {change}")
    model = build_model(cfg).to(rt.device)
    opt = build_optimizer(model, cfg, rt.world)
    st = State()
    if resume_state is not None:
        st = _restore(resume_state, out / "latest.pt", model, opt, cfg, rt, changes)
        _log(rt, f"resumed {out} at step {st.step}")
    writer = _open_run_folder(out, cfg, st, opts) if rt.is_main else None
    compile_mode = resolve_mode(opts.compile_mode, rt.device)
    compiled = f"True ({compile_mode or 'default'})" if opts.compile else "False"
    _log(rt, f"device {rt.device} | world {rt.world} | amp {opts.amp} | compile {compiled} | "
             f"params {sum(p.numel() for p in model.parameters()):,}")
    step_model: nn.Module = model
    if rt.distributed:
        step_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None)
    if opts.compile:
        step_model = compile_model(step_model, mode=compile_mode)
    try:
        _loop(step_model, model, opt, cfg, opts, rt, st, out, writer)
    finally:
        if writer is not None:
            writer.close()
    if rt.distributed:
        dist.barrier()
    return st


def _restore(state: dict[str, Any], path: Path, model, opt, cfg: Config, rt: Runtime, changes: list[str]) -> State:
    """Weights, optimiser, RNG and counters from a checkpoint; the State to continue from."""
    checkpoint.load_model_state(model, state, path)
    try:
        opt.load_state_dict(state["optimizer"])
        # The checkpoint's eps continues (runs written before train.adam_eps kept 1e-8) unless the keys it
        # follows from were changed for this invocation.
        if any(c.startswith(("train.adam_eps:", "train.batch_size:")) for c in changes):
            for group in opt.param_groups:
                group["eps"] = adam_eps(cfg, rt.world)
        checkpoint.set_rng_state(state.get("rng", {}))
        extra = state.get("extra", {})
        return State(step=int(state["step"]), best=float(extra.get("best", math.inf)),
                     nonfinite_total=int(extra.get("nonfinite_total", 0)),
                     nonfinite_in_row=int(extra.get("nonfinite_in_row", 0)),
                     elapsed=float(extra.get("elapsed", 0.0)))
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as e:
        reason = (str(e).strip().splitlines() or [""])[0]
        raise CheckpointError(f"{path}: its optimiser, RNG or step state cannot be restored "
                              f"({type(e).__name__}: {reason})") from None


def _open_run_folder(out: Path, cfg: Config, st: State, opts: Options) -> SummaryWriter:
    """The run folder made ready on the main rank: config.toml, logs trimmed to the resumed step, TensorBoard."""
    out.mkdir(parents=True, exist_ok=True)
    for name in ("latest.pt", "best.pt"):
        checkpoint.remove_partial(out / name)  # left by a save that was killed
    text = dumps_toml(cfg).encode()
    atomic_write(out / "config.toml", lambda f: f.write(text))
    # purge_step drops events a crashed run logged after its last checkpoint.
    writer = SummaryWriter(log_dir=str(out / "tb"), purge_step=st.step if opts.resume else None)
    trim_jsonl(out / "log.jsonl", st.step)
    trim_jsonl(out / "val.jsonl", st.step)
    return writer


def _loop(step_model, model, opt, cfg: Config, opts: Options, rt: Runtime, st: State, out: Path, writer) -> None:
    """Steps from st.step until train.steps, the stop options or too many non-finite steps."""
    dataset = build_dataset(cfg.data, "train", seed=cfg.data.seed)
    val_set = build_dataset(cfg.data, "val") if rt.is_main else None
    t0, step0, elapsed0 = time.perf_counter(), st.step, st.elapsed
    snapshots = sorted(m for m in opts.snapshot_minutes if m * 60 > st.elapsed)
    for batch in train_batches(dataset, cfg, st.step, rt):
        sched = schedules.at(st.step, cfg)
        batch = to_device(batch, rt.device)
        for group in opt.param_groups:
            group["lr"] = sched.lr
        logs = train_step(step_model, model, opt, batch, cfg, sched, rt, opts.amp)
        st.step += 1
        st.elapsed = elapsed0 + time.perf_counter() - t0
        _after_step(st, logs, cfg, rt, out)
        stopping = _should_stop(opts, st.step - step0, time.perf_counter() - t0, rt)
        if rt.is_main:
            rate = (st.step - step0) / max(time.perf_counter() - t0, 1e-9)
            _record(writer, model, opt, batch, logs, sched, cfg, opts, rt, st, out, rate, val_set, stopping)
            while snapshots and st.elapsed >= snapshots[0] * 60:
                minute = snapshots.pop(0)
                (out / "snapshots").mkdir(exist_ok=True)
                checkpoint.save(out / "snapshots" / f"min_{minute:g}.pt", _checkpoint_state(model, opt, cfg, st))
        if stopping:
            _log(rt, f"stopping at step {st.step} as asked; continue with --resume {out}")
            break


def _record(writer, model, opt, batch, logs: dict, sched, cfg: Config, opts: Options, rt: Runtime, st: State,
            out: Path, rate: float, val_set, stopping: bool) -> None:
    """The main rank's bookkeeping after a step: progress line, logs, pictures, validation, checkpoints."""
    t = cfg.train
    if st.step % t.log_every == 0 or st.step == t.steps:
        if not opts.quiet:
            eta = (t.steps - st.step) / max(rate, 1e-9)
            print(f"step {st.step}/{t.steps} | loss/elem {logs['loss']:.5f} | "
                  f"{rate:.2f} steps/s | ETA {_fmt_time(eta)}", flush=True)
        write_scalars(writer, st.step, logs, sched)
        append_jsonl(out / "log.jsonl", {"step": st.step, "time": st.elapsed, "lr": sched.lr,
                                         "temperature": sched.temperature,
                                         **{k: v for k, v in logs.items() if k != "finite"}})
        writer.add_scalar("speed/steps_per_s", rate, st.step)
    if st.step % t.image_every == 0:
        write_images(writer, model, batch, st.step)
    if st.step % t.eval_every == 0 or st.step == t.steps:
        score = validate(writer, model, val_set, cfg, rt.device, st, out)
        if score < st.best:
            st.best = score
            checkpoint.save(out / "best.pt", _checkpoint_state(model, opt, cfg, st))
    if st.step % t.ckpt_every == 0 or st.step == t.steps or stopping:
        checkpoint.save(out / "latest.pt", _checkpoint_state(model, opt, cfg, st))


def _should_stop(opts: Options, steps_done: int, seconds: float, rt: Runtime) -> bool:
    stop = opts.stop_after is not None and steps_done >= opts.stop_after
    if opts.time_limit is not None:
        over = torch.tensor([float(seconds >= opts.time_limit)], device=rt.device)
        if rt.distributed:  # every rank must stop at the same step
            dist.all_reduce(over, op=dist.ReduceOp.MAX)
        stop = stop or bool(over.item())
    return stop


def train_step(step_model, model, opt, batch, cfg: Config, sched, rt: Runtime, amp: bool, *,
               render_slots: bool = False, check_values: bool = False) -> dict:
    """One optimiser step on `batch` (the loss: dive/objective.py); returns the step's log scalars.

    The profiler ranges name the parts bench/profile_step.py reports (no cost without a profiler).
    """
    step_model.train()
    with record_function("part:noise"):
        noise = model.sample_noise(batch["input"].shape[0], rt.device,
                                   generator=step_generator(cfg.train.seed, sched.step, rt.rank, rt.device))
    # The forward pass updates the BatchNorm running statistics before anyone knows whether the step
    # is finite; a skipped step must not keep that update (NaN statistics would poison every later
    # eval pass and checkpoint). The buffers are a few small vectors; a clone each step costs little.
    with record_function("part:BatchNorm buffer copy"):
        buffers = list(model.buffers())
        saved = [b.clone() for b in buffers]
    # Batches come from the package's datasets, which produce values in [0, 1]; a value check would
    # cost a second host sync per step, and a bad value still ends up as a skipped non-finite step.
    with record_function("part:model: other"):
        bl = batch_loss(step_model, model, batch, cfg, sched, noise, amp=amp, render_slots=render_slots,
                        check_values=check_values)
    with record_function("part:zero_grad"):
        opt.zero_grad(set_to_none=True)
    with record_function("part:backward (driver)"):
        bl.loss.backward()
    with record_function("part:gradient clipping"):
        max_norm = cfg.train.grad_clip if cfg.train.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        finite = bool(torch.isfinite(bl.loss) & torch.isfinite(grad_norm))  # the one sync of the step
    with record_function("part:Adam"):
        if finite:
            opt.step()
        else:
            with torch.no_grad():
                for b, old in zip(buffers, saved):
                    b.copy_(old)
    with record_function("part:logging scalars"):
        logs = bl.scalars() if finite else {"loss": float("nan")}
    logs["grad_norm"] = float(grad_norm)
    logs["finite"] = finite
    return logs


def _after_step(st: State, logs: dict, cfg: Config, rt: Runtime, out: Path) -> None:
    if logs["finite"]:
        st.nonfinite_in_row = 0
        return
    st.nonfinite_in_row += 1
    st.nonfinite_total += 1
    _log(rt, f"step {st.step}: non-finite loss or gradient, optimiser step skipped "
             f"({st.nonfinite_in_row} in a row, {st.nonfinite_total} in total)")
    if st.nonfinite_in_row >= cfg.train.max_nonfinite:
        latest = out / "latest.pt"
        kept = (f"the last good checkpoint is kept in {latest}" if latest.exists()
                else "no checkpoint was written before the failure")
        raise TrainingError(
            f"{st.nonfinite_in_row} non-finite steps in a row (train.max_nonfinite = "
            f"{cfg.train.max_nonfinite}); stopping: {kept}. Try a lower train.lr or train.grad_clip > 0"
        )

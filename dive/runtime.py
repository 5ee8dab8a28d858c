"""Where training runs and what each step reads: device, torchrun ranks, the step's batch and noise.

Reproducibility rests on two rules:

* the training batch of step n on rank r is the list of dataset indices
  ``[(n * world + r) * B + j for j < B]``, and every item depends only on its
  index, so data never depends on workers, restarts or iteration order;
* all of a step's model noise (latent samples, presence noise, the two
  dropout tricks) comes from a generator seeded with (train.seed, n, r).

So a run resumed from its checkpoint at step n computes exactly what an
uninterrupted run computes at step n (on CPU; CUDA kernels may differ in the
last bits).
"""

from __future__ import annotations

import datetime
import os
import platform
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed as dist

from .config import Config
from .data import collate
from .errors import TrainingError


@dataclass
class Runtime:
    device: torch.device
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def resolve_device(name: str) -> torch.device:
    """`auto` is CUDA when present, else CPU; asking for CUDA without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TrainingError("--device cuda was asked for but no CUDA device is available; use --device cpu")
    if name not in ("cpu",) and not name.startswith("cuda"):
        raise TrainingError(f"--device {name!r} is not one of auto, cpu, cuda, cuda:N")
    return torch.device(name)


def setup_runtime(device_name: str, timeout: float = 300.0) -> Runtime:
    """Single process, or one rank of a torchrun job (detected from its environment).

    timeout: seconds a collective waits for the other ranks before it fails (train.dist_timeout).
    """
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Runtime(device=resolve_device(device_name))
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo",
                                timeout=datetime.timedelta(seconds=timeout))
    return Runtime(device=device, rank=rank, world=world, local_rank=local_rank)


def step_generator(seed: int, step: int, rank: int, device: torch.device) -> torch.Generator:
    """The generator of all model noise at one step: a pure function of (seed, step, rank)."""
    g = torch.Generator(device=device)
    g.manual_seed((seed * 1_000_003 + step) * 1_009 + rank)
    return g


def batch_indices(step: int, batch_size: int, rank: int, world: int, length: int) -> list[int]:
    """Dataset indices of one rank's batch at `step` (wrapping around finite datasets such as pedestrians)."""
    start = (step * world + rank) * batch_size
    return [i % length for i in range(start, start + batch_size)]


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    non_blocking = device.type == "cuda"
    return {k: v.to(device, non_blocking=non_blocking) for k, v in batch.items()}




class _StepBatches(torch.utils.data.Sampler):
    """Index lists of steps start..end-1 for one rank (for DataLoader workers)."""

    def __init__(self, start: int, end: int, batch_size: int, rank: int, world: int, length: int):
        self.start, self.end, self.b, self.rank, self.world, self.length = start, end, batch_size, rank, world, length

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start, self.end):
            yield batch_indices(step, self.b, self.rank, self.world, self.length)

    def __len__(self) -> int:
        return max(0, self.end - self.start)


def train_batches(dataset, cfg: Config, start: int, rt: Runtime) -> Iterator[dict[str, torch.Tensor]]:
    t = cfg.train
    if t.num_workers == 0:
        for step in range(start, t.steps):
            yield dataset.batch(batch_indices(step, t.batch_size, rt.rank, rt.world, len(dataset)))
        return
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=_StepBatches(start, t.steps, t.batch_size, rt.rank, rt.world, len(dataset)),
        num_workers=t.num_workers, collate_fn=collate, pin_memory=rt.device.type == "cuda",
        persistent_workers=False, prefetch_factor=4,
    )
    yield from loader


def cpu_name() -> str:
    """The CPU's model name, for the record of where a figure was measured (Linux: /proc/cpuinfo;
    elsewhere what the platform module knows, which may be only the architecture)."""
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8", errors="replace"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()

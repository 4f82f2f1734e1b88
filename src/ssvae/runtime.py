"""Where and how the computation runs: device, threads, seeds, mixed precision."""

from __future__ import annotations

import contextlib
import os
import random
from dataclasses import dataclass

import numpy as np
import torch

from .errors import SsvaeError


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; ``cpu``, ``cuda`` and ``cuda:N`` are taken as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise SsvaeError(f"--device {name}: not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SsvaeError(f"--device {name}: this machine has no CUDA device; use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise SsvaeError(f"--device {name}: this machine has {count} CUDA device{'s' if count > 1 else ''}, "
                         f"cuda:0 to cuda:{count - 1}")
    if device.type not in ("cpu", "cuda"):
        raise SsvaeError(f"--device {name}: only cpu and cuda are supported")
    return device


def available_cores() -> int:
    """Cores this process may use (respects taskset / container limits, unlike os.cpu_count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def set_threads(threads: int | None) -> int:
    """One torch thread per available core unless told otherwise; returns the number used."""
    threads = threads or available_cores()
    torch.set_num_threads(threads)
    return threads


def seed_everything(seed: int) -> None:
    """Seed every random source a run touches, so that a run can be repeated."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def bf16_supported(device: torch.device) -> bool:
    """Whether bf16 matrix multiplies are native (and so faster than float32) on ``device``."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    capability = torch.backends.cpu.get_cpu_capability()
    if "AVX512" not in capability and "AMX" not in capability:
        return False
    # AVX512 alone emulates bf16; only avx512_bf16 / AMX make it pay. Read the CPU flags on Linux.
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on ``device`` when ``enabled``, else a no-op context."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


# -- several processes (torchrun) ------------------------------------------------------------------

@dataclass(frozen=True)
class Processes:
    """Where this process stands among those training one model: torchrun's RANK, WORLD_SIZE,
    LOCAL_RANK and LOCAL_WORLD_SIZE, or a single process when they are not set."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 alone logs, draws progress, validates and writes files."""
        return self.rank == 0


def processes_from_env() -> Processes:
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return Processes()
        return Processes(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")),
                         int(os.environ.get("LOCAL_WORLD_SIZE", str(world))))
    except (KeyError, ValueError) as error:
        raise SsvaeError(f"WORLD_SIZE is set but the other torchrun variables are not usable ({error}); "
                         f"start distributed runs with torchrun") from None


def start_processes(processes: Processes, device: torch.device) -> torch.device:
    """Join the process group (NCCL between GPUs, gloo between CPUs) and return this process's
    device: its own GPU (LOCAL_RANK) when training on CUDA."""
    if not processes.distributed:
        return device
    import torch.distributed as dist

    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", processes.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def stop_processes(processes: Processes) -> None:
    """At the end of a run: wait until rank 0 has written its last file, then leave the process
    group together. A process that left (or exited) while another still used the group could be
    aborted in the communication library's teardown."""
    if processes.distributed:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


def barrier(processes: Processes) -> None:
    """Wait for every process, e.g. until rank 0 has written a file the others read next."""
    if processes.distributed:
        import torch.distributed as dist

        dist.barrier()


def threads_per_process(processes: Processes) -> int:
    """The cores of this machine shared out between the processes torchrun started on it."""
    return max(1, available_cores() // processes.local_world)

"""Where and how the computation runs: device, threads, seeds, mixed precision."""

from __future__ import annotations

import contextlib
import os
import random

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

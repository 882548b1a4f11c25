"""Process set-up: which device runs the network, the C allocator, and how many threads each parallel job gets.

docs/performance.md has the measurements behind the allocator and thread settings (benchmarks/run.py reproduces them).
"""
from __future__ import annotations

import ctypes
import os
import re
from typing import TYPE_CHECKING

from atfnn.errors import ConfigError

if TYPE_CHECKING:
    import torch

DEVICE_NAMES = "auto, cpu, cuda, cuda:N"
_DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")

# glibc mallopt parameters (malloc.h) and the values used: no mmap below 1 GiB, never trim, grow the heap by 256 MiB.
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
MALLOC_TUNING = ((M_MMAP_THRESHOLD, 1 << 30), (M_TRIM_THRESHOLD, 2**31 - 1), (M_TOP_PAD, 256 << 20))

_tuned = False


def is_device_name(name: object) -> bool:
    """Whether `name` is one of DEVICE_NAMES (whether that device exists here is `resolve_device`'s question)."""
    return isinstance(name, str) and _DEVICE_PATTERN.fullmatch(name) is not None


def resolve_device(name: "str | torch.device | None" = "auto", key: str = "device") -> "torch.device":
    """The torch device for a setting: "auto" (or None) is CUDA when available, else the CPU.

    `key` names the setting in errors ("train.device", "--device"): an unknown name, CUDA on a machine without it,
    or a CUDA index past the last GPU is a ConfigError that lists the valid values.
    """
    import torch

    if isinstance(name, torch.device):
        name = str(name)
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not is_device_name(name):
        raise ConfigError(f"{key}={name!r} is not a device; valid: {DEVICE_NAMES}")
    device = torch.device(name)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"{key}={name!r}: CUDA is not available on this machine; use cpu or auto")
        if device.index is not None and device.index >= count:
            raise ConfigError(f"{key}={name!r}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    return device


def tune_allocator() -> bool:
    """Make glibc keep freed memory for reuse instead of returning it to the kernel; True when applied.

    A training step of ATFNN allocates many large short-lived tensors. By default glibc serves each one with a fresh
    mmap whose pages fault in again, and unmaps it when freed, so a step spends much of its time in the kernel
    (docs/performance.md). Keeping the memory costs nothing after the first step (the peak is the same).
    Process-wide and harmless to repeat; False (and nothing changed) on a non-glibc C library.
    Set ATFNN_MALLOC=default to leave the allocator alone.
    """
    global _tuned
    if _tuned:
        return True
    if os.environ.get("ATFNN_MALLOC", "tuned") == "default":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    _tuned = all(mallopt(param, value) == 1 for param, value in MALLOC_TUNING)
    return _tuned


def cpu_count() -> int:
    """Cores this process may run on (the affinity mask, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def threads_per_job(jobs: int, threads: int = 0) -> int:
    """torch threads for each of `jobs` parallel jobs: `threads` when set (> 0), else the cores shared out."""
    if threads > 0:
        return threads
    return max(1, cpu_count() // max(1, jobs))


def peak_rss_mib() -> float:
    """This process's peak resident memory in MiB.

    VmHWM (Linux) belongs to the process's own address space; ru_maxrss would be wrong in a worker, because Linux
    carries it over from the parent across fork and exec.
    """
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def die_with_parent() -> None:
    """Ask Linux to end this (worker) process when its parent dies, so that a killed `atfnn train --jobs N` leaves
    no orphan training a fold that the next run resumes too. A no-op elsewhere."""
    import signal

    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() == 1:  # the parent died before the call above
        os._exit(1)

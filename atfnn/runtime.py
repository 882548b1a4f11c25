"""Process set-up for fast CPU training: the C allocator and how many threads each parallel job gets.

docs/performance.md has the measurements behind both (benchmarks/run.py reproduces them).
"""
from __future__ import annotations

import ctypes
import os

# glibc mallopt parameters (malloc.h) and the values used: no mmap below 1 GiB, never trim, grow the heap by 256 MiB.
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
MALLOC_TUNING = ((M_MMAP_THRESHOLD, 1 << 30), (M_TRIM_THRESHOLD, 2**31 - 1), (M_TOP_PAD, 256 << 20))

_tuned = False


def tune_allocator() -> bool:
    """Make glibc keep freed memory for reuse instead of returning it to the kernel; True when applied.

    A training step of ATFNN allocates about 2 GB of short-lived tensors. By default glibc serves each large one with
    a fresh mmap whose pages fault in again and unmaps it when freed: about half a million page faults and over a
    second of kernel time per step on a 2-core VM. Keeping the memory costs nothing after the first step (the peak
    is the same). Process-wide and harmless to repeat; False (and nothing changed) on a non-glibc C library.
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

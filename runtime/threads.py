"""One thread setting for every stage: the CPU engines' sessions (ONNX Runtime, OpenVINO),
SimpleITK's filters and the BLAS under numpy and scipy.

The default is the cores this process may really use: its CPU affinity and its
cgroup quota (a console shares its CPUs with reconstruction; a container may be
capped below what os.cpu_count() reports).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import SimpleITK as sitk
from threadpoolctl import threadpool_limits

from .errors import UsageError

ENV = "ASPECTS_THREADS"


def available_cores() -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = _cgroup_quota()
    return max(1, min(cores, quota) if quota else cores)


def _cgroup_quota() -> int | None:
    """cgroup v2 cpu.max ("max 100000" or "150000 100000"), or v1 cfs quota/period; None if unlimited."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            return max(1, math.ceil(int(quota) / int(period)))
        return None
    except (OSError, ValueError):
        pass
    try:
        q = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        p = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        return max(1, math.ceil(q / p)) if q > 0 else None
    except (OSError, ValueError):
        return None


def resolve(threads: int | None = None) -> int:
    """The setting: an explicit value, else $ASPECTS_THREADS, else the available cores."""
    where = "thread count"
    if threads is None and os.environ.get(ENV):
        where = f"${ENV}"
        try:
            threads = int(os.environ[ENV])
        except ValueError:
            raise UsageError(f"{where}={os.environ[ENV]!r}: a thread count is a whole number") from None
    n = available_cores() if threads is None else threads
    if n < 1:
        raise UsageError(f"{where} {n}: at least 1")
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(n)
    threadpool_limits(n)          # numpy/scipy BLAS (OpenBLAS, MKL); scipy.ndimage is single-threaded
    return n

"""What this machine lets the process use: cores and free memory, container limits included.

Standard library only (read at argument parsing and before Keras starts). One home for the
rule, so the worker count (`--workers auto`) and each worker's thread count agree.
"""

from __future__ import annotations

import os
from pathlib import Path


def usable_cores() -> int:
    """The cores in this process's CPU affinity, or fewer under a container's CPU quota
    (cgroup v2 `cpu.max`, e.g. `docker run --cpus 2`), which the affinity does not show."""
    cores = len(os.sched_getaffinity(0))
    quota, _, period = (_cgroup("cpu.max") or "max").partition(" ")
    if quota.isdigit() and period.strip().isdigit() and int(period) > 0:
        cores = min(cores, max(1, -(-int(quota) // int(period))))
    return cores


def available_memory() -> int | None:
    """Bytes that can be used without swapping: the kernel's MemAvailable, or less under a
    container's memory limit (cgroup v2 `memory.max` minus `memory.current`); None if unknown."""
    free = None
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    free = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    limit, used = _cgroup("memory.max"), _cgroup("memory.current")
    if limit and limit.isdigit() and used and used.isdigit():
        room = max(0, int(limit) - int(used))
        free = room if free is None else min(free, room)
    return free


def _cgroup(name: str) -> str | None:
    """A cgroup v2 control file of this process's container (its cgroup namespace root)."""
    try:
        return Path("/sys/fs/cgroup", name).read_text(encoding="ascii").strip()
    except OSError:
        return None

"""What this machine lets the process use: cores and free memory, container limits included.

Standard library only (read at argument parsing and before Keras starts). One home for the
rule, so the worker count (`--workers auto`) and each worker's thread count agree.
"""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.errors import PipelineError

WORKERS_ENV = "PIPELINE_WORKERS"  # the --workers default when the flag is not given
# What `auto` budgets per worker: a digits worker holds about 1 GiB resident (bench/memory.py),
# so a machine with little free memory gets fewer.
WORKER_MEMORY = 1.25 * 2**30


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


def auto_workers() -> int:
    """`--workers auto`: one single-threaded worker per core this process may use, but no
    more than the free memory holds at WORKER_MEMORY each, and always at least one."""
    cores = usable_cores()
    free = available_memory()
    fit = cores if free is None else int(free // WORKER_MEMORY)
    return max(1, min(cores, fit))


def default_workers() -> int:
    """The worker count when --workers is not given: $PIPELINE_WORKERS, else `auto`."""
    text = os.environ.get(WORKERS_ENV, "auto").strip()
    if text == "auto":
        return auto_workers()
    workers = int(text) if text.isdigit() else 0
    if workers < 1:
        raise PipelineError(
            f"{WORKERS_ENV}={text!r}: give a number of worker processes (1 or more) or "
            "`auto`, or unset it for `auto`."
        )
    return workers

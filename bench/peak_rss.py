"""Peak memory of a command and all its child processes (e.g. `search --workers 2`): samples
/proc every 0.2 s and prints the peak of the tree's summed RSS and PSS (PSS splits pages shared
between processes, such as a memory-mapped data cache, so it is the figure for K workers) and
the largest single process's RSS, in MiB. Linux only.

    python bench/peak_rss.py python -m pipeline.run train --set data.source=train.csv ...
"""

from __future__ import annotations

import os
import subprocess
import sys
import time


def tree(root: int) -> list[int]:
    """`root` and its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                parent = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found


def memory(pid: int) -> tuple[float, float]:
    """(RSS, PSS) of a process in MiB; zeros once it is gone."""
    rss = pss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Rss:"):
                    rss = int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss = int(line.split()[1])
    except OSError:
        pass
    return rss / 1024, pss / 1024


def main() -> None:
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    started = time.monotonic()
    proc = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)
    peak_rss = peak_pss = largest = 0.0
    while proc.poll() is None:
        sizes = [memory(pid) for pid in tree(proc.pid)]
        peak_rss = max(peak_rss, sum(r for r, _ in sizes))
        peak_pss = max(peak_pss, sum(p for _, p in sizes))
        largest = max([largest, *(r for r, _ in sizes)])
        time.sleep(0.2)
    print(
        f"exit {proc.returncode}, {time.monotonic() - started:.1f} s: peak RSS {peak_rss:.0f} MiB, "
        f"peak PSS {peak_pss:.0f} MiB (summed over the process tree), largest process RSS "
        f"{largest:.0f} MiB"
    )


if __name__ == "__main__":
    main()

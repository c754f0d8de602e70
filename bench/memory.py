"""Memory over a long study in one process: RSS after every few trials of the real, tracked
search (each trial builds, trains, logs and releases a Keras model). Flat means trials need no
process isolation; steady growth would mean they do (DESIGN.md §8).

    python bench/memory.py [--trials 40] [--epochs 5]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _common import tracked_search

from pipeline import config, stages
from pipeline.study import TrialSummary


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=40)
    ap.add_argument("--epochs", type=int, default=5)
    a = ap.parse_args()
    repo = Path(__file__).resolve().parent.parent
    params = config.load(
        repo / "params" / "default.yaml", [f"train.epochs={a.epochs}", "search.pruner=none"]
    )
    prep = stages.prepare(params)
    samples: list[tuple[int, float]] = []

    def sample(s: TrialSummary) -> None:
        if s.counts.finished % 5 == 0:
            samples.append((s.counts.finished, rss_mib()))
            print(f"after {s.counts.finished:3d} trials: RSS {samples[-1][1]:7.1f} MiB", flush=True)

    tracked_search(params, prep, a.trials, name="mem", on_trial_end=sample)
    if len(samples) < 3:
        raise SystemExit("run at least 15 trials to see a trend")
    (n0, m0), (n1, m1) = samples[1], samples[-1]  # from trial 10: after warm-up allocations
    print(
        f"growth from trial {n0} to {n1}: {m1 - m0:+.1f} MiB ({(m1 - m0) / (n1 - n0):+.2f} "
        "MiB per trial)"
    )


if __name__ == "__main__":
    main()

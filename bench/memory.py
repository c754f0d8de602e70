"""Memory over a long study in one process: RSS after every few trials of the real, tracked
search (each trial builds, trains, logs and releases a Keras model). Flat means trials need no
process isolation; steady growth would mean they do (DESIGN.md §8).

    python bench/memory.py [--trials 40] [--epochs 5]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import optuna

from pipeline import config, run, search
from pipeline.tracking import Tracker


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
    prep = run.prepare(params)
    samples: list[tuple[int, float]] = []

    def sample(s: search.TrialSummary) -> None:
        if s.finished % 5 == 0:
            samples.append((s.finished, rss_mib()))
            print(f"after {s.finished:3d} trials: RSS {samples[-1][1]:7.1f} MiB", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        tracker = Tracker(f"sqlite:///{tmp}/mlflow.db", "bench")
        study = search.open_study(
            "mem",
            optuna.storages.InMemoryStorage(),
            params.search,
            seed=params.seed,
            max_epochs=a.epochs,
        )
        with tracker.run("study") as parent:
            fn = run.make_trial_fn(params, prep, tracker, parent, "mem")
            search.optimize(
                study, fn, params.search, n_trials=a.trials, timeout=None, on_trial_end=sample
            )
    (n0, m0), (n1, m1) = samples[1], samples[-1]
    print(
        f"growth from trial {n0} to {n1}: {m1 - m0:+.1f} MiB ({(m1 - m0) / (n1 - n0):+.2f} "
        "MiB per trial)"
    )


if __name__ == "__main__":
    main()

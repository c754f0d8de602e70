"""Pruner variants over several seeds: wall time and best validation accuracy of the same
tracked 12-trial search (digits, TPE, 30 epochs) with each pruner, to tell a pruner's cost in
search quality from the seed's luck. One seed changes the split, the sampler and the initial
weights; every variant of a seed runs the same trials until a pruning decision differs.

Variants: the shipped default (`search.pruner: median`, pruning from epoch 4), no pruner, the
median pruner from epoch 11 (a third of the epochs), and Optuna's 25th-percentile pruner
from epoch 4. Prints per seed and variant the seconds and best val_accuracy, then per variant
the median seconds and the bests.

    python bench/pruners.py [--seeds 5] [--trials 12] [--epochs 30]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import optuna
from _common import tracked_search

from pipeline import config, search, stages

P = optuna.pruners
VARIANTS: dict[str, Callable[[], optuna.pruners.BasePruner]] = {
    "median from epoch 4 (default)": lambda: P.MedianPruner(n_startup_trials=5, n_warmup_steps=3),
    "none": P.NopPruner,
    "median from epoch 11": lambda: P.MedianPruner(n_startup_trials=5, n_warmup_steps=10),
    "25th percentile from epoch 4": lambda: P.PercentilePruner(
        25.0, n_startup_trials=5, n_warmup_steps=3
    ),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--epochs", type=int, default=30)
    a = ap.parse_args()
    repo = Path(__file__).resolve().parent.parent
    results: dict[str, list[tuple[float, float]]] = {k: [] for k in VARIANTS}
    shipped = search._pruner
    for seed in range(a.seeds):
        params = config.load(
            repo / "params" / "default.yaml", [f"train.epochs={a.epochs}"], extra={"seed": seed}
        )
        prep = stages.prepare(params)
        params = stages.resolve_metric(params, prep)
        stages.fit(params, prep, seed=params.seed)  # warm-up
        for name, make in VARIANTS.items():
            search._pruner = lambda *_, make=make, **__: make()  # the study's pruner, swapped
            try:
                started = time.perf_counter()
                study = tracked_search(params, prep, a.trials, name="pruners")
                seconds = time.perf_counter() - started
            finally:
                search._pruner = shipped
            best = max(study.values().values())
            results[name].append((seconds, best))
            print(f"seed {seed} {name:<30} {seconds:6.1f} s  best val_accuracy {best:.4f}")
    print(f"\n{a.seeds} seeds, {a.trials} trials of up to {a.epochs} epochs")
    for name, rows in results.items():
        median = statistics.median(s for s, _ in rows)
        bests = " ".join(f"{b:.4f}" for _, b in rows)
        print(f"{name:<30} median {median:6.1f} s   best per seed {bests}")


if __name__ == "__main__":
    main()

"""Pruner or sampler variants over several seeds: wall time and best validation accuracy of
the same tracked 12-trial search (digits, 30 epochs) with each, to tell a variant's effect on
search quality from the seed's luck. One seed changes the split, the sampler and the initial
weights.

`--vary pruner` (the sampler stays TPE): the shipped default (`search.pruner: median`, judging
a trial after a third of its epochs, `samplers.median_warmup`: from epoch 11 of 30), no pruner,
the median pruner from epoch 4 (the default before), Optuna's 25th-percentile pruner from epoch
4. `--vary sampler` (the pruner stays the default): TPE as shipped, multivariate TPE, random.
Prints per seed and variant the seconds and best val_accuracy, then per variant the median
seconds, the mean best and the bests.

    python bench/search_variants.py [--vary pruner|sampler] [--seeds 5] [--trials 12] [--epochs 30]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import optuna
from _common import tracked_search

from pipeline import config, stages

P, S = optuna.pruners, optuna.samplers
PRUNERS: dict[str, Callable[[], optuna.pruners.BasePruner] | None] = {
    "median, shipped (a third in)": None,  # the params' own (samplers.make_pruner)
    "none": P.NopPruner,
    "median from epoch 4": lambda: P.MedianPruner(n_startup_trials=5, n_warmup_steps=3),
    "25th percentile from epoch 4": lambda: P.PercentilePruner(
        25.0, n_startup_trials=5, n_warmup_steps=3
    ),
}
SAMPLERS: dict[str, Callable[[int], optuna.samplers.BaseSampler]] = {
    "TPE (default)": lambda seed: S.TPESampler(seed=seed, n_startup_trials=5),
    "multivariate TPE": lambda seed: S.TPESampler(seed=seed, n_startup_trials=5, multivariate=True),
    "random": lambda seed: S.RandomSampler(seed=seed),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vary", choices=("pruner", "sampler"), default="pruner")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--epochs", type=int, default=30)
    a = ap.parse_args()
    repo = Path(__file__).resolve().parent.parent
    variants = PRUNERS if a.vary == "pruner" else SAMPLERS
    results: dict[str, list[tuple[float, float]]] = {k: [] for k in variants}
    for seed in range(a.seeds):
        params = config.load(
            repo / "params" / "default.yaml", [f"train.epochs={a.epochs}"], extra={"seed": seed}
        )
        prep = stages.prepare(params)
        params = stages.resolve_metric(params, prep)
        stages.fit(params, prep, seed=params.seed)  # warm-up
        for name in variants:
            make_pruner = PRUNERS.get(name) if a.vary == "pruner" else None
            started = time.perf_counter()
            study = tracked_search(
                params,
                prep,
                a.trials,
                name="variants",
                sampler=SAMPLERS[name] if a.vary == "sampler" else None,
                pruner=make_pruner() if make_pruner is not None else None,
            )
            seconds = time.perf_counter() - started
            best = max(study.values().values())
            results[name].append((seconds, best))
            print(f"seed {seed} {name:<30} {seconds:6.1f} s  best val_accuracy {best:.4f}")
    print(f"\n{a.seeds} seeds, {a.trials} trials of up to {a.epochs} epochs")
    for name, rows in results.items():
        median = statistics.median(s for s, _ in rows)
        mean = statistics.mean(b for _, b in rows)
        bests = " ".join(f"{b:.4f}" for _, b in rows)
        print(f"{name:<30} median {median:6.1f} s   mean best {mean:.4f}   per seed {bests}")


if __name__ == "__main__":
    main()

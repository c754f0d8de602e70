"""Tracking overhead: the pipeline's search (every trial a nested MLflow run with params,
per-epoch metrics and weights) vs a bare Optuna + Keras loop training the very same trials
with no logging. Both sides run in this process, on the same prepared data and seeds, after
a shared warm-up; the sides alternate `--rounds` times each (against drift) and each side's
best round counts; prints seconds per side and the ratio (DESIGN.md target <= 1.05x).

    python bench/overhead.py [--trials 10] [--epochs 20] [--rounds 2]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from _common import tracked_search

from pipeline import config, model, search, stages


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=2, help="runs of each side, alternating")
    args = ap.parse_args()
    repo = Path(__file__).resolve().parent.parent
    params = config.load(
        repo / "params" / "default.yaml",
        [f"train.epochs={args.epochs}", "search.pruner=none", f"search.n_trials={args.trials}"],
    )
    prep = stages.prepare(params)
    params = stages.resolve_metric(params, prep)
    # Warm-up: TensorFlow's start and first tracing, and one tracked trial so MLflow and
    # Optuna are loaded before model.release() freezes the start-up heap (as in a CLI worker,
    # whose first trial comes after the tracker): both sides then collect the same heap.
    tracked_search(params, prep, 1, name="warm-up")

    def bare(side: str) -> search.SearchStudy:
        """The same trials through the same Optuna layer, with no MLflow at all."""
        study = search.open_study(
            side,
            search.memory_storage(),
            params.search,
            seed=params.seed,
            max_epochs=args.epochs,
            configured=config.flatten(params),  # the same baseline trial 0 as the pipeline's
        )
        while (trial := study.ask(args.trials)) is not None:
            result = stages.fit(config.with_values(params, trial.values), prep, seed=params.seed)
            study.tell_complete(trial, stages.score(result, prep, "val")[params.search.metric])
            model.release()
        return study

    timings: dict[str, list] = {}
    for side in ("bare", "pipeline") * args.rounds:  # interleaved against drift
        started = [time.perf_counter()]
        if side == "pipeline":

            def ready(clock: list[float] = started) -> None:
                clock[0] = time.perf_counter()  # after the store is set up

            study = tracked_search(params, prep, args.trials, name=side, on_ready=ready)
        else:
            study = bare(side)
        timings.setdefault(side, []).append(time.perf_counter() - started[0])
        timings.setdefault(f"{side}_values", []).append(
            [v for _, v in sorted(study.values().items())]
        )
    assert timings["bare_values"][0] == timings["pipeline_values"][0], (
        "sides trained different trials"
    )
    b, p = min(timings["bare"]), min(timings["pipeline"])
    rounds = zip(timings["bare"], timings["pipeline"], strict=True)
    print(
        f"trials per side: {args.trials}, epochs: {args.epochs} (best of {args.rounds} rounds "
        "each; every round, bare / pipeline s: "
        + ", ".join(f"{x:.1f}/{y:.1f}" for x, y in rounds)
        + ")"
    )
    print(f"bare Optuna + Keras: {b:.1f} s   pipeline (MLflow tracked): {p:.1f} s")
    print(f"tracking overhead ratio: {p / b:.3f}x")


if __name__ == "__main__":
    main()

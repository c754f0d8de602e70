"""Tracking overhead: the pipeline's search (every trial a nested MLflow run with params,
per-epoch metrics and weights) vs a bare Optuna + Keras loop training the very same trials
with no logging (DESIGN.md target <= 1.05x).

Both sides run in this process, on the same prepared data and seeds, after a shared warm-up,
in lockstep: trial i of the bare loop, then trial i of the pipeline's study (the next pair in
the other order), each timed on its own. A slow stretch of the machine (another process, a
frequency change) then lands on both sides alike instead of on whichever side ran during it;
timing whole searches one after the other swung ±15 % a round, more than the overhead itself.
Each round opens two fresh studies. It prints each round's seconds per side and its ratio,
then min / median / max over rounds and over single trials (the same trial's seconds on both
sides: a hiccup of the machine during one trial moves one of these, not the median), and as
the headline the median over trials.

On a 2-core VM the same trial's training alone varies by +-20 % from one run to the next, so
the ratio above swings by several per cent between runs although tracking costs the same.
The bench therefore also clocks Keras training (`stages.fit`, the same call on both sides) in
each trial, and the pipeline's own per-epoch work made during it (metric buffering and live
writes, the pruner's report): a trial's *tracking seconds* are its pipeline seconds outside
training, plus that work, minus the bare trial's seconds outside training - the time the
pipeline adds, free of the training's noise. Their median over the trials against the bare
trial's median gives the second, steadier ratio; the median ratio of the two sides' training
seconds shows whether tracking slowed training itself.

    python bench/overhead.py [--trials 8] [--epochs 20] [--rounds 5]
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from statistics import median
from typing import Any

from _common import open_tracked, tracked_search

from pipeline import config, model, search, stages, tracking
from pipeline.storage import memory_storage


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    repo = Path(__file__).resolve().parent.parent
    params = config.load(
        repo / "params" / "default.yaml",
        [f"train.epochs={args.epochs}", "search.pruner=none", f"search.n_trials={args.trials}"],
    )
    prep = stages.prepare(params)
    params = stages.resolve_metric(params, prep)
    # Both sides must train through stages.fit, the call clocked below (cross-validation
    # trains through stages.fit_fold).
    assert prep.folds is None, "the bench needs split.folds: 0"
    # Warm-up: TensorFlow's start and first tracing, and one tracked trial so MLflow and
    # Optuna are loaded before model.release() freezes the start-up heap (as in a CLI worker,
    # whose first trial comes after the tracker): both sides then collect the same heap.
    tracked_search(params, prep, 1, name="warm-up")

    rounds: list[float] = []  # per round: its pipeline seconds / its bare seconds
    pairs: list[float] = []  # per trial: the same trial's pipeline seconds / bare seconds
    bare_trials: list[float] = []  # per trial: the bare trial's seconds
    added: list[float] = []  # per trial: its tracking seconds (see the module docstring)
    fit_pairs: list[float] = []  # per trial: pipeline training seconds / bare training seconds
    totals = {"bare": 0.0, "pipeline": 0.0}
    for r in range(args.rounds):
        seconds = one_round(r, params, prep, args.trials, args.epochs)
        pairs += [p / b for b, p in zip(seconds["bare"], seconds["pipeline"], strict=True)]
        bare_trials += seconds["bare"]
        added += [
            (p - pf + pw) - (b - bf)
            for b, bf, p, pf, pw in zip(
                seconds["bare"],
                seconds["bare_fit"],
                seconds["pipeline"],
                seconds["pipeline_fit"],
                seconds["pipeline_hooks"],
                strict=True,
            )
        ]
        fit_pairs += [
            p / b for b, p in zip(seconds["bare_fit"], seconds["pipeline_fit"], strict=True)
        ]
        bare, tracked = sum(seconds["bare"]), sum(seconds["pipeline"])
        rounds.append(tracked / bare)
        totals = {"bare": totals["bare"] + bare, "pipeline": totals["pipeline"] + tracked}
        print(
            f"round {r + 1}: bare {bare:.2f} s, pipeline {tracked:.2f} s -> {rounds[-1]:.3f}x",
            flush=True,
        )
    print(f"trials per round: {args.trials}, epochs: {args.epochs}, rounds: {args.rounds}")
    print(
        f"all rounds: bare Optuna + Keras: {totals['bare']:.1f} s   "
        f"pipeline (MLflow tracked): {totals['pipeline']:.1f} s"
        f" -> {totals['pipeline'] / totals['bare']:.3f}x"
    )
    print(f"per round, min / median / max: {spread(rounds)}")
    print(f"per trial (the same trial on both sides), min / median / max: {spread(pairs)}")
    ms = [1000 * a for a in added]
    print(
        f"tracking seconds per trial, min / median / max: {min(ms):.0f} / {median(ms):.0f} / "
        f"{max(ms):.0f} ms, against a bare trial's median {median(bare_trials):.3f} s"
        f" -> {(median(bare_trials) + median(added)) / median(bare_trials):.3f}x"
    )
    print(
        f"training seconds (Keras fit), pipeline / bare, per trial, min / median / max: "
        f"{spread(fit_pairs)}"
    )
    print(f"tracking overhead ratio (median over {len(pairs)} trials): {median(pairs):.3f}x")


def spread(ratios: list[float]) -> str:
    return f"{min(ratios):.3f} / {median(ratios):.3f} / {max(ratios):.3f}x"


def one_round(
    r: int, params: config.Params, prep: stages.Prepared, trials: int, epochs: int
) -> dict[str, list[float]]:
    """Two fresh studies, bare and tracked, stepped in lockstep; each trial's seconds, per
    side."""
    with tempfile.TemporaryDirectory() as tmp:
        bare = search.open_study(
            f"bare-{r}",
            memory_storage(),
            params.search,
            seed=params.seed,
            max_epochs=epochs,
            configured=config.flatten(params),  # the same baseline trial 0 as the pipeline's
        )
        tracked = open_tracked(params, prep, Path(tmp), name=f"pipeline-{r}")
        # What a CLI worker's first trial end freezes (model.release) is its tracker and
        # study; here they were made after that, so freeze them likewise: otherwise every
        # collection of either side walks them, which no CLI worker does.
        gc.collect()
        gc.freeze()

        def bare_trial() -> None:
            trial = bare.ask(trials)
            assert trial is not None
            result = stages.fit(config.with_values(params, trial.values), prep, seed=params.seed)
            bare.tell_complete(trial, stages.score(result, prep, "val")[params.search.metric])
            model.release()

        def pipeline_trial() -> None:
            assert tracked.run_trials(max_trials=1) == 1

        seconds: dict[str, list[float]] = {
            key: [] for key in ("bare", "pipeline", "bare_fit", "pipeline_fit", "pipeline_hooks")
        }
        with tracked.tracker.run("study", resume_id=tracked.parent_id):
            for i in range(trials):
                pair = [("bare", bare_trial), ("pipeline", pipeline_trial)]
                for side, step in pair if i % 2 == 0 else pair[::-1]:
                    with (
                        clocked(stages, "fit") as fit,
                        clocked(tracking.LiveMetrics, "log") as log,
                        clocked(search.Trial, "should_prune") as report,
                    ):
                        started = time.perf_counter()
                        step()
                        seconds[side].append(time.perf_counter() - started)
                    seconds[f"{side}_fit"].append(fit())
                    if side == "pipeline":  # its per-epoch work ran inside training's clock
                        seconds["pipeline_hooks"].append(log() + report())
    values = [[v for _, v in sorted(s.values().items())] for s in (bare, tracked.study)]
    assert values[0] == values[1], "the sides trained different trials"
    return seconds


@contextmanager
def clocked(owner: Any, name: str) -> Iterator[Callable[[], float]]:
    """Wrap `owner.name` for the block to sum the seconds spent in it; yields the reader of
    that sum. (stages.fit is what both sides train with; LiveMetrics.log, the pipeline's
    per-epoch metric buffering and live writes, and Trial.should_prune, its pruner's report,
    run inside training.)"""
    real = getattr(owner, name)
    spent = [0.0]

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return real(*args, **kwargs)
        finally:
            spent[0] += time.perf_counter() - started

    setattr(owner, name, wrapper)
    try:
        yield lambda: spent[0]
    finally:
        setattr(owner, name, real)


if __name__ == "__main__":
    main()

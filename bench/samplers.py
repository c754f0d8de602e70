"""Which Optuna sampler the default search should ship, judged by the champion's test accuracy
as well as its validation accuracy: the same tracked search (digits, default space and pruner,
30 epochs, `search.baseline_first` off so every trial is the sampler's own) with each sampler,
over several seeds (a seed changes the split, the sampler and the initial weights).

Samplers (each called with the study's sampler seed, as `search.open_study` calls its own):

- TPE as shipped: `TPESampler(seed, n_startup_trials=5)` (samplers.make_sampler with the
  preset's `search.n_startup_trials: 5`).
- TPE, Optuna 5 defaults: `TPESampler(seed)`. In Optuna 5.1 that is `n_startup_trials=10`,
  `multivariate=None` (which means multivariate for a single-objective study, independent for
  a multi-objective one) and `constant_liar=True` (no effect here: one process, one trial at a
  time), gamma min(ceil(0.1 n), 25).
- TPE independent, 5 startup: `multivariate=False`, each param modelled on its own (Optuna 4's
  default). This replaces "multivariate TPE, 5 startup": with `multivariate=None` meaning True,
  the shipped TPE already is that sampler (same proposals for a seed), and so are
  search_variants.py's "TPE (default)" and "multivariate TPE".
- random: `RandomSampler(seed)`.
- GPSampler, 5 startup: `GPSampler(seed, n_startup_trials=5)`; needs PyTorch (a CPU build is
  enough: `pip install torch==2.13.0+cpu`, ~200 MB, not the ~3 GB of the CUDA wheels); left out
  when torch is not importable.

Each search runs `--trials` trials and is scored twice from the same run, at `--at` trials and
at the end: a seeded sequential search proposes the same first trials whatever its budget, so
its champion after the first 12 finished trials is the champion of a 12-trial search. A
champion is the best complete trial by the ranking rule (protocol.ranked: val_accuracy, ties by
val_loss). Its test scores come from its own model as the trial logged it, loaded and scored on
the test split exactly as the champion step does (stages.load_trained, stages.score): no
retraining, so nothing rests on training being reproducible, and the trials run the shipped
trainer untouched. Re-scoring the loaded model on the validation split must give the trial's
own val_accuracy (asserted).

Prints per seed and sampler the seconds (the trials only, not the store's set-up) and, at both
budgets, the champion's val_accuracy (as measured by its trial) and its test accuracy and loss;
then per sampler min / median / max of each across seeds, and a markdown table for
docs/benchmarks.md (medians, min-max in brackets). `--json PATH` also writes every row.

    python bench/samplers.py [--seeds 5] [--trials 20] [--at 12] [--epochs 30]
                             [--samplers KEY ...] [--json PATH]
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import optuna
from _common import open_tracked

from pipeline import config, model, protocol, search, stages
from pipeline.stages import Prepared
from pipeline.study import TrackedStudy

S = optuna.samplers
SAMPLERS: dict[str, tuple[str, Callable[[int], optuna.samplers.BaseSampler]]] = {
    "shipped": ("TPE as shipped", lambda seed: S.TPESampler(seed=seed, n_startup_trials=5)),
    "defaults": ("TPE, Optuna 5 defaults", lambda seed: S.TPESampler(seed=seed)),
    "independent": (
        "TPE independent, 5 startup",
        lambda seed: S.TPESampler(seed=seed, n_startup_trials=5, multivariate=False),
    ),
    "random": ("random", lambda seed: S.RandomSampler(seed=seed)),
    "gp": ("GPSampler, 5 startup", lambda seed: S.GPSampler(seed=seed, n_startup_trials=5)),
}
HAVE_TORCH = importlib.util.find_spec("torch") is not None
# What each row reports, in print order: (key, heading).
COLUMNS = (
    ("val_at", "val acc @{at}"),
    ("val_end", "val acc @{end}"),
    ("test_at", "test acc @{at}"),
    ("test_end", "test acc @{end}"),
    ("loss_at", "test loss @{at}"),
    ("loss_end", "test loss @{end}"),
    ("seconds", "seconds"),
)


def champion(tracked: TrackedStudy, budget: int, direction: str) -> dict[str, float]:
    """The champion of the study's first `budget` finished trials, scored: its trial number,
    val_accuracy as its trial measured it, and its logged model's test accuracy and loss."""
    frame = tracked.study.frame()
    done = (protocol.TrialState.COMPLETE, protocol.TrialState.PRUNED)
    finished = frame[frame["state"].isin(done)]
    cut = finished.sort_values("number")["number"].iloc[min(budget, len(finished)) - 1]
    best = protocol.ranked(frame[frame["number"] <= cut], direction).iloc[0]
    prep = tracked.prep
    result = stages.load_trained(tracked.tracker, best[f"user_attrs_{search.RUN_ATTR}"], prep)
    try:
        val, test = stages.score(result, prep, "val"), stages.score(result, prep, "test")
    finally:
        model.release()
    measured = float(best["user_attrs_val_accuracy"])
    if not math.isclose(val["val_accuracy"], measured, abs_tol=1e-9):
        raise AssertionError(
            f"trial {best['number']}: its logged model scores val_accuracy "
            f"{val['val_accuracy']:.6f}, its trial measured {measured:.6f}"
        )
    return {
        "trial": int(best["number"]),
        "val": measured,
        "test": test["test_accuracy"],
        "loss": test["test_loss"],
    }


def run(
    params: config.Params, prep: Prepared, trials: int, at: int, sampler: search.SamplerFactory
) -> dict[str, float]:
    """One tracked search of `trials` trials (the pipeline's own study, as `tracked_search`
    runs it, its store kept open until both champions are scored)."""
    params = config.with_values(params, {"search.n_trials": trials}, origin="bench")
    with tempfile.TemporaryDirectory() as tmp:
        tracked = open_tracked(params, prep, Path(tmp), name="samplers", sampler=sampler)
        with tracked.tracker.run("study", resume_id=tracked.parent_id):
            started = time.perf_counter()
            tracked.run_trials()
            seconds = time.perf_counter() - started
        direction = tracked.params.search.directions[0]
        early, end = champion(tracked, at, direction), champion(tracked, trials, direction)
    row = {"seconds": seconds, "trial_at": early["trial"], "trial_end": end["trial"]}
    for suffix, c in (("at", early), ("end", end)):
        row |= {f"val_{suffix}": c["val"], f"test_{suffix}": c["test"], f"loss_{suffix}": c["loss"]}
    return row


def fmt(key: str, value: float) -> str:
    return f"{value:.1f}" if key == "seconds" else f"{value:.4f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 (split, sampler, inits)")
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--at", type=int, default=12, help="also score the champion at this budget")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--samplers", nargs="+", choices=list(SAMPLERS), default=list(SAMPLERS))
    ap.add_argument("--json", type=Path, default=None, help="also write every row here")
    a = ap.parse_args()
    at = min(a.at, a.trials)
    keys = [k for k in a.samplers if k != "gp" or HAVE_TORCH]
    if len(keys) < len(a.samplers):
        print("GPSampler left out: PyTorch is not installed (pip install torch==2.13.0+cpu)")
    repo = Path(__file__).resolve().parent.parent
    overrides = [f"train.epochs={a.epochs}", "search.baseline_first=false"]
    rows: dict[str, list[dict[str, float]]] = {k: [] for k in keys}
    started = time.perf_counter()
    for seed in range(a.seeds):
        params = config.load(repo / "params" / "default.yaml", overrides, extra={"seed": seed})
        prep = stages.prepare(params)
        params = stages.resolve_metric(params, prep)
        stages.fit(params, prep, seed=params.seed)  # warm-up
        model.release()
        for key in keys:
            label, factory = SAMPLERS[key]
            row = run(params, prep, a.trials, at, factory)
            rows[key].append(row)
            print(
                f"seed {seed} {label:<27} {row['seconds']:6.1f} s  "
                f"@{at}: val {row['val_at']:.4f} test {row['test_at']:.4f} "
                f"loss {row['loss_at']:.4f} (#{row['trial_at']})  "
                f"@{a.trials}: val {row['val_end']:.4f} test {row['test_end']:.4f} "
                f"loss {row['loss_end']:.4f} (#{row['trial_end']})",
                flush=True,
            )
    total = time.perf_counter() - started
    heads = [h.format(at=at, end=a.trials) for _, h in COLUMNS]
    print(
        f"\n{a.seeds} seeds, {a.trials} trials of up to {a.epochs} epochs (no baseline trial, "
        f"default space and pruner), champion at {at} and {a.trials} trials; "
        f"min / median / max across seeds; whole run {total / 60:.1f} min"
    )
    for key in keys:
        print(SAMPLERS[key][0])
        for (col, _), head in zip(COLUMNS, heads, strict=True):
            v = [r[col] for r in rows[key]]
            spread = " / ".join(fmt(col, x) for x in (min(v), statistics.median(v), max(v)))
            print(f"  {head:<16} {spread}")
    print(f"  per seed val acc @{at}:")
    for key in keys:
        print(f"    {SAMPLERS[key][0]:<27} " + " ".join(f"{r['val_at']:.4f}" for r in rows[key]))
    command = " ".join(["python", "bench/samplers.py", *sys.argv[1:]])
    print(f"\nMarkdown ({datetime.date.today().isoformat()}, `{command}`, median (min-max)):\n")
    print("| sampler | " + " | ".join(heads) + " |")
    print("|---" * (len(heads) + 1) + "|")
    for key in keys:
        cells = []
        for col, _ in COLUMNS:
            v = [r[col] for r in rows[key]]
            med = statistics.median(v)
            cells.append(f"{fmt(col, med)} ({fmt(col, min(v))}-{fmt(col, max(v))})")
        print(f"| {SAMPLERS[key][0]} | " + " | ".join(cells) + " |")
    if a.json is not None:
        a.json.write_text(json.dumps({"command": command, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()

"""pipeline vs Keras Tuner on the same space, data and trial budget (digits, default space:
activation, initializer, dropout, batch size, lr-decay kind and rate; same net and epochs).

What is measured, per seed:

- pipeline: the real command line as users run it, in a subprocess in a fresh temporary
  directory (its default stores: the Optuna journal and MLflow database under mlruns/):
  `python -m pipeline.run search -p params/default.yaml --seed S --trials T --set
  train.epochs=E --workers W` (W = this script's --workers, default `auto`: the CLI's own
  choice, one single-threaded worker process per core as far as free memory allows). The
  child's environment is this one without PIPELINE_WORKERS, TF_NUM_INTRAOP_THREADS,
  TF_NUM_INTEROP_THREADS and XLA_FLAGS, so the CLI sizes its own threads. Afterwards the
  Optuna study is read back from its journal: the clock starts at the first trial's start
  (process start-up, data loading, TensorFlow import and the champion step at the end are
  excluded; a --workers child's start-up overlaps the first trials and is not), and each
  finished (complete or pruned) trial, in order of its end, gives a point (seconds, best
  val_accuracy so far). The CLI's whole wall time (process start to exit) and the number of
  worker processes that ran trials are printed beside it. The pipeline side is the full
  search as shipped: MLflow tracking of every trial, median pruning, TPE, and its trial 0
  training the preset's own values (`search.baseline_first`: relu, he_normal, dropout 0.2,
  batch 64, no decay), which Keras Tuner has no counterpart for (its tuners never try the
  `hp` defaults first). `--cli-arg=--set --cli-arg=search.baseline_first=false` (any
  `--cli-arg` goes to the CLI as given) measures the search without that trial.
- Keras Tuner (RandomSearch, BayesianOptimization, Hyperband): each search in a fresh process
  of its own (as a user runs one), after a warm-up fit, with TensorFlow's default threads (this
  script sizes no threads: as shipped); the clock starts when `tuner.search` is called, and
  each trial's end gives a point.

Both sides are scored by one rule: the val_accuracy of the model a trial ends with (early
stopping's restored epoch; Keras Tuner's own objective, the highest val_accuracy of any epoch,
is printed beside it). It prints each tool's total time, best accuracy, and the time each
needed to first reach the *same* accuracy (the lower of the two bests), with the ratio.
Needs Keras Tuner: `pip install -e ".[bench]"`.

Over several seeds (each seed changes the split, the samplers and the initial weights; the CLI
gets the same seed through --seed) it prints, per Keras Tuner tuner, min / median / max of the
time ratio to the same best accuracy (tuner time / pipeline time: above 1 means the pipeline
got there faster) and of the accuracy gap at equal wall time.

With --open-budget it also answers "how much sooner do I get a model as good as Keras Tuner's":
per seed, a second CLI run with no trial cap, stopped by --timeout once the slowest tuner's
whole search time is used, timed to the first trial that reaches each tuner's own final best
(0x when none did within that tuner's time), and its best at that tuner's time minus the
tuner's. (The fixed-budget ratio above is the design's figure; with 12 trials it is decided
mostly by which side's draws happened to score a row or two higher.)

    python bench/vs_keras_tuner.py [--trials 12] [--epochs 30] [--seeds 5] [--workers auto|N]
                                   [--tuners NAME ...] [--open-budget] [--cli-arg=ARG ...]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import keras
import keras_tuner as kt
import numpy as np
import optuna
from _common import cli_search
from optuna.trial import TrialState

from pipeline import config, model, search, stages
from pipeline.stages import Prepared

# Thread settings the CLI must decide for itself (a test's or a --workers parent's otherwise).
CHILD_ENV_DROP = (
    "PIPELINE_WORKERS",
    "TF_NUM_INTRAOP_THREADS",
    "TF_NUM_INTEROP_THREADS",
    "XLA_FLAGS",
)


@dataclass(frozen=True)
class CliRun:
    points: list[tuple[float, float]]  # (seconds from the first trial's start, best so far)
    finished: int  # complete + pruned trials
    wall: float  # the CLI process, start to exit
    workers: int  # distinct worker processes that ran trials


def pipeline_side(
    repo: Path,
    seed: int,
    trials: int,
    epochs: int,
    workers: str,
    extra: tuple[str, ...] = (),
) -> CliRun:
    """The real CLI in a subprocess in a fresh directory; its study read back from its journal."""
    env = {k: v for k, v in os.environ.items() if k not in CHILD_ENV_DROP}
    flags = ["-p", str(repo / "params" / "default.yaml"), "--seed", str(seed)]
    flags += ["--trials", str(trials), "--set", f"train.epochs={epochs}", "--workers", workers]
    trials_, directions, wall = cli_search([*flags, *extra], env)
    if directions != [optuna.study.StudyDirection.MAXIMIZE]:
        raise RuntimeError(f"expected one maximized objective, got {directions}")
    origin = min(t.datetime_start for t in trials_ if t.datetime_start is not None)
    finished = sorted(
        (t for t in trials_ if t.state in (TrialState.COMPLETE, TrialState.PRUNED)),
        key=lambda t: t.datetime_complete,
    )
    points: list[tuple[float, float]] = []
    best: float | None = None
    for t in finished:
        if t.state == TrialState.COMPLETE:
            best = t.value if best is None else max(best, t.value)
        if best is not None:
            points.append(((t.datetime_complete - origin).total_seconds(), best))
    ran_by = {t.user_attrs.get(search.WORKER_ATTR) for t in finished} - {None}
    return CliRun(points, len(finished), wall, len(ran_by))


class Space(kt.HyperModel):
    """The default preset's space in Keras Tuner terms, building the same network."""

    def __init__(self, params: config.Params, steps_per_epoch: dict) -> None:
        super().__init__()
        self.params = params
        self.steps = steps_per_epoch

    def _values(self, hp: kt.HyperParameters) -> dict:
        values = {}
        for key, spec in self.params.search.space.items():
            if "choices" in spec:
                values[key] = hp.Choice(key, spec["choices"])
            else:
                values[key] = hp.Float(
                    key, spec["low"], spec["high"], sampling="log" if spec.get("log") else "linear"
                )
        return values

    def build(self, hp: kt.HyperParameters) -> keras.Model:
        p = config.with_values(self.params, self._values(hp))
        net = model.build(64, "classification", 10, p.model)
        steps = self.steps[p.train.batch_size]
        net.compile(
            optimizer=keras.optimizers.Adam(model.learning_rate(p.train, steps)),
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
        )
        return net

    def fit(self, hp: kt.HyperParameters, net: keras.Model, *args, **kwargs):  # noqa: ANN002, ANN003
        return net.fit(*args, batch_size=hp.get("train.batch_size"), **kwargs)


def tuner_side(
    tuner: kt.Tuner, prep: Prepared, epochs: int, own: list[float]
) -> list[tuple[float, float]]:
    """(seconds, best val_accuracy so far) after each trial; `own` gets Keras Tuner's own
    best-so-far objective (the highest val_accuracy of any epoch) for the report."""
    points: list[tuple[float, float]] = []
    best, best_any = [0.0], [0.0]
    start = time.perf_counter()

    class Track(keras.callbacks.Callback):
        """Scores a trial by the rule the pipeline uses: the val_accuracy of the model the trial
        ends with, i.e. of the epoch early stopping restored (the first lowest val_loss). Keras
        Tuner's own objective is the highest val_accuracy of any epoch, a maximum over up to 30
        noisy readings of 270 rows, which would compare a best-of-30 with a single reading.
        """

        def on_train_end(self, logs: dict | None = None) -> None:
            hist = self.model.history.history
            restored = int(np.argmin(hist["val_loss"]))
            best[0] = max(best[0], hist["val_accuracy"][restored])
            best_any[0] = max(best_any[0], max(hist["val_accuracy"]))
            points.append((time.perf_counter() - start, best[0]))
            own.append(best_any[0])

    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=8, restore_best_weights=True)
    tuner.search(
        prep.scaled.X_train,
        prep.scaled.y_train,
        epochs=epochs,
        verbose=0,
        validation_data=(prep.scaled.X_val, prep.scaled.y_val),
        callbacks=[stop, Track()],
    )
    return points


# Both sides' accuracies are counts of 270 rows (steps of 0.0037), read as float32 by Keras
# and as float64 by the pipeline: equal within this, never closer than a row apart otherwise.
SAME = 1e-6


def time_to(points: list[tuple[float, float]], target: float) -> float:
    return next(t for t, v in points if v >= target - SAME)


def best_at(points: list[tuple[float, float]], seconds: float) -> float:
    """Best validation accuracy reached within `seconds` (0 if no trial had finished)."""
    return max((v for t, v in points if t <= seconds + 1e-9), default=0.0)


TUNERS = ("RandomSearch", "BayesianOptimization", "Hyperband")


def make_tuner(hm: Space, name: str, trials: int, epochs: int, seed: int, tmp: str) -> kt.Tuner:
    """The named Keras Tuner tuner over `hm` (only that one: each search has its process)."""
    common = {"objective": "val_accuracy", "seed": seed, "directory": tmp, "overwrite": True}
    if name == "RandomSearch":
        return kt.RandomSearch(hm, max_trials=trials, project_name="rs", **common)
    if name == "BayesianOptimization":
        return kt.BayesianOptimization(hm, max_trials=trials, project_name="bo", **common)
    return kt.Hyperband(
        hm, max_epochs=epochs, factor=3, hyperband_iterations=1, project_name="hb", **common
    )


def one_seed(
    repo: Path,
    seed: int,
    trials: int,
    epochs: int,
    workers: str,
    names: list[str],
    *,
    open_budget: bool = False,
    cli_args: tuple[str, ...] = (),
) -> tuple[dict[str, list], dict[str, float], CliRun, CliRun | None]:
    """Every tool's (seconds, best-so-far) points for one seed (data split, samplers, inits),
    each tuner's best by its own objective (highest val_accuracy of any epoch), the CLI run,
    and with `open_budget` a second CLI run with no trial cap, stopped (--timeout) when the
    slowest tuner's whole search time is used."""
    cli = pipeline_side(repo, seed, trials, epochs, workers, cli_args)
    results = {OURS: cli.points}
    own: dict[str, float] = {}
    spawn = multiprocessing.get_context("spawn")
    for name in names:  # each search in a fresh process, as a user runs one
        with ProcessPoolExecutor(1, mp_context=spawn) as child:
            results[name], own[name] = child.submit(
                tuner_process, repo, name, seed, trials, epochs
            ).result()
    unbounded = None
    if open_budget:
        longest = max(results[name][-1][0] for name in names)
        unbounded = pipeline_side(
            repo, seed, 100_000, epochs, workers, (*cli_args, "--timeout", f"{longest:.1f}")
        )
    return results, own, cli, unbounded


OURS = "pipeline"


def tuner_process(
    repo: Path, name: str, seed: int, trials: int, epochs: int
) -> tuple[list[tuple[float, float]], float]:
    """One Keras Tuner search, run in a process of its own: its (seconds, best-so-far) points
    and its best by its own objective. A process per search, because in one process Keras
    Tuner slowed from search to search (Hyperband 223 s for seed 0, 705 s for seed 4; most
    likely the growth the pipeline's model.release removes: TensorFlow's custom-gradient
    registry keeping every traced train step alive, tensorflow#97697; not measured for Keras
    Tuner), so later seeds measured that, not the tuner."""
    params = config.load(
        repo / "params" / "default.yaml", [f"train.epochs={epochs}"], extra={"seed": seed}
    )
    prep = stages.prepare(params)
    stages.fit(params, prep, seed=params.seed)  # warm-up for Keras Tuner (TensorFlow's defaults)
    n = len(prep.scaled.y_train)
    steps = {b: -(-n // b) for b in params.search.space["train.batch_size"]["choices"]}
    objective: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        tuner = make_tuner(Space(params, steps), name, trials, epochs, seed, tmp)
        points = tuner_side(tuner, prep, epochs, objective)
    return points, objective[-1]


def spread(values: list[float], fmt: str = "{:.2f}") -> str:
    """min / median / max of a list, as text."""
    return " / ".join(fmt.format(v) for v in (min(values), statistics.median(values), max(values)))


def workers_arg(text: str) -> str:
    """`auto` or a positive number, passed on to the CLI's --workers as given."""
    if text == "auto" or (text.isdigit() and int(text) >= 1):
        return text
    raise argparse.ArgumentTypeError(f"{text!r}: give a number of workers or `auto`")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 (split, samplers, inits)")
    ap.add_argument(
        "--workers",
        type=workers_arg,
        default="auto",
        help="the pipeline CLI's --workers: `auto` (one per core, the default) or a number",
    )
    ap.add_argument("--tuners", nargs="+", choices=TUNERS, default=list(TUNERS))
    ap.add_argument(
        "--open-budget",
        action="store_true",
        help="also run the pipeline with no trial cap for the slowest tuner's search time and "
        "time it to each tuner's own final best",
    )
    ap.add_argument(
        "--cli-arg",
        action="append",
        default=[],
        help="one more argument for the pipeline CLI, as given (repeat it; write --cli-arg=--set)",
    )
    a = ap.parse_args()
    repo = Path(__file__).resolve().parent.parent
    speedup: dict[str, list[float]] = {}
    acc_gap: dict[str, list[float]] = {}
    open_speedup: dict[str, list[float]] = {}
    open_gap: dict[str, list[float]] = {}
    for seed in range(a.seeds):
        results, own, cli, unbounded = one_seed(
            repo,
            seed,
            a.trials,
            a.epochs,
            a.workers,
            a.tuners,
            open_budget=a.open_budget,
            cli_args=tuple(a.cli_arg),
        )
        ours = results[OURS]
        if not ours:
            raise RuntimeError(f"seed {seed}: the pipeline finished no complete trial")
        print(
            f"seed {seed}: {OURS:<22} {cli.finished:>3} trials, {ours[-1][0]:6.1f} s, "
            f"best val_accuracy {ours[-1][1]:.4f} (CLI --workers {a.workers}: "
            f"trials ran in {cli.workers} process{'es' * (cli.workers != 1)}; whole CLI "
            f"{cli.wall:.1f} s)",
            flush=True,
        )
        for name, pts in results.items():
            if name == OURS:
                continue
            print(
                f"seed {seed}: {name:<22} {len(pts):>3} trials, {pts[-1][0]:6.1f} s, "
                f"best val_accuracy {pts[-1][1]:.4f} "
                f"(its own objective, any epoch: {own[name]:.4f})",
                flush=True,
            )
        for name, pts in results.items():
            if name == OURS:
                continue
            target = min(pts[-1][1], ours[-1][1])  # the accuracy both reached
            speedup.setdefault(name, []).append(time_to(pts, target) / time_to(ours, target))
            equal = min(pts[-1][0], ours[-1][0])  # the wall time both used
            acc_gap.setdefault(name, []).append(best_at(ours, equal) - best_at(pts, equal))
            print(
                f"seed {seed}: vs {name}: to val_accuracy {target:.4f} {speedup[name][-1]:.2f}x; "
                f"at {equal:.0f} s pipeline - tuner {acc_gap[name][-1]:+.4f}",
                flush=True,
            )
        if unbounded is not None:
            report_open(seed, results, unbounded, open_speedup, open_gap)
    print(
        f"\n{a.seeds} seeds, {a.trials} trials of up to {a.epochs} epochs each; pipeline = the "
        f"CLI with --workers {a.workers}{''.join(' ' + x for x in a.cli_arg)} (clock from its "
        "first trial's start; trial 0 the preset's values unless turned off), each Keras "
        "Tuner search in a process of its own after a warm-up fit, TensorFlow default threads "
        "(min / median / max)"
    )
    table(
        "time to the same best val_accuracy: ratio",
        "val_accuracy at equal wall time: pipeline - tuner",
        speedup,
        acc_gap,
    )
    if open_speedup:
        print(
            "\nopen budget: the pipeline with no trial cap, for as long as the slowest tuner "
            "searched; each tuner's own final best as the target (not reached = 0x)"
        )
        table(
            "time to the tuner best: ratio",
            "val_accuracy at the tuner's whole time: pipeline - tuner",
            open_speedup,
            open_gap,
        )


def table(
    ratio_title: str, gap_title: str, ratios: dict[str, list[float]], gaps: dict[str, list[float]]
) -> None:
    """One row per tuner: min / median / max of its time ratios and accuracy gaps."""
    print(f"{'vs Keras Tuner':<22} {ratio_title:<44} {gap_title}")
    for name in ratios:
        print(f"{name:<22} {spread(ratios[name]) + ' x':<44} {spread(gaps[name], '{:+.4f}')}")


def report_open(
    seed: int,
    results: dict[str, list[tuple[float, float]]],
    unbounded: CliRun,
    speedup: dict[str, list[float]],
    gap: dict[str, list[float]],
) -> None:
    """The open-budget comparison for one seed: how long the uncapped pipeline took to first
    reach each tuner's final best (0x when it did not within that tuner's whole search time),
    and its best at that time minus the tuner's."""
    pts = unbounded.points
    print(
        f"seed {seed}: {OURS + ' (open budget)':<22} {unbounded.finished:>3} trials, "
        f"{pts[-1][0] if pts else 0.0:6.1f} s, best val_accuracy "
        f"{pts[-1][1] if pts else 0.0:.4f}",
        flush=True,
    )
    for name, tuner_pts in results.items():
        if name == OURS:
            continue
        target, whole = tuner_pts[-1][1], tuner_pts[-1][0]
        reached = next((t for t, v in pts if v >= target - SAME and t <= whole), None)
        ratio = 0.0 if reached is None else time_to(tuner_pts, target) / reached
        speedup.setdefault(name, []).append(ratio)
        gap.setdefault(name, []).append(best_at(pts, whole) - target)
        got = (
            "not reached"
            if reached is None
            else f"{reached:.1f} s vs {time_to(tuner_pts, target):.1f} s"
        )
        print(
            f"seed {seed}: open budget vs {name}: to its best {target:.4f}: {got} = {ratio:.2f}x; "
            f"at its {whole:.0f} s pipeline - tuner {gap[name][-1]:+.4f}",
            flush=True,
        )


if __name__ == "__main__":
    main()

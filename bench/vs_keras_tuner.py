"""pipeline vs Keras Tuner on the same space, data and trial budget (digits, default space:
activation, initializer, dropout, batch size, lr-decay kind and rate; same net and epochs).

Both run in this process after a shared warm-up. For each tool it records, after every
trial, the wall time and the best validation accuracy so far; it prints each tool's total time,
best accuracy, and the time each needed to first reach the *same* accuracy (the lower of
the two bests), with the ratio. The pipeline side is the real search: MLflow tracking of every
trial, median pruning and TPE, as `python -m pipeline.run` runs it.
Needs Keras Tuner: `pip install -e ".[bench]"`.

    python bench/vs_keras_tuner.py [--trials 12] [--epochs 30]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import keras
import keras_tuner as kt
from _common import tracked_search

from pipeline import config, model, stages
from pipeline.stages import Prepared
from pipeline.study import TrialSummary


def pipeline_side(params: config.Params, prep: Prepared, trials: int) -> list[tuple[float, float]]:
    points: list[tuple[float, float]] = []
    start = [0.0]

    def ready() -> None:
        start[0] = time.perf_counter()

    def track(s: TrialSummary) -> None:
        if s.best is not None:
            points.append((time.perf_counter() - start[0], s.best.value))

    tracked_search(params, prep, trials, on_ready=ready, on_trial_end=track)
    return points


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


def tuner_side(tuner: kt.Tuner, prep: Prepared, epochs: int) -> list[tuple[float, float]]:
    points: list[tuple[float, float]] = []
    best = [0.0]
    start = time.perf_counter()

    class Track(keras.callbacks.Callback):
        def on_train_end(self, logs: dict | None = None) -> None:
            vals = self.model.history.history.get("val_accuracy", [0.0])
            best[0] = max(best[0], max(vals))
            points.append((time.perf_counter() - start, best[0]))

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


def time_to(points: list[tuple[float, float]], target: float) -> float:
    return next(t for t, v in points if v >= target - 1e-9)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--epochs", type=int, default=30)
    a = ap.parse_args()
    repo = Path(__file__).resolve().parent.parent
    params = config.load(repo / "params" / "default.yaml", [f"train.epochs={a.epochs}"])
    prep = stages.prepare(params)
    stages.fit(params, prep, seed=params.seed)  # warm-up for both sides
    n = len(prep.scaled.y_train)
    steps = {b: -(-n // b) for b in params.search.space["train.batch_size"]["choices"]}
    results = {"pipeline (TPE + median pruner, MLflow)": pipeline_side(params, prep, a.trials)}
    with tempfile.TemporaryDirectory() as tmp:
        hm = Space(params, steps)
        rs = kt.RandomSearch(
            hm,
            objective="val_accuracy",
            max_trials=a.trials,
            seed=params.seed,
            directory=tmp,
            project_name="rs",
            overwrite=True,
        )
        results["Keras Tuner RandomSearch"] = tuner_side(rs, prep, a.epochs)
        hb = kt.Hyperband(
            hm,
            objective="val_accuracy",
            max_epochs=a.epochs,
            factor=3,
            hyperband_iterations=1,
            seed=params.seed,
            directory=tmp,
            project_name="hb",
            overwrite=True,
        )
        results["Keras Tuner Hyperband"] = tuner_side(hb, prep, a.epochs)
    ours = results["pipeline (TPE + median pruner, MLflow)"]
    for name, pts in results.items():
        print(
            f"{name:<40} {len(pts):>3} trials, {pts[-1][0]:6.1f} s, best val_accuracy "
            f"{pts[-1][1]:.4f}"
        )
    for name, pts in list(results.items())[1:]:
        target = min(pts[-1][1], ours[-1][1])
        t_ours, t_kt = time_to(ours, target), time_to(pts, target)
        print(
            f"time to val_accuracy {target:.4f}: pipeline {t_ours:.1f} s, {name} {t_kt:.1f} s "
            f"-> {t_kt / t_ours:.2f}x"
        )


if __name__ == "__main__":
    main()

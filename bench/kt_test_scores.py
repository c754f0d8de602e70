"""Keras Tuner's champions on the test split, which bench/vs_keras_tuner.py does not report:
per seed and tuner, the best trial by the pipeline's ranking rule (the val_accuracy of the model
a trial ends with, i.e. early stopping's restored epoch, ties by that epoch's val_loss; earlier
trial first) and that model's test accuracy and loss, scored as the pipeline scores its own
champion (pipeline.model.evaluate on the test split), to set beside bench/samplers.py.

The searches are vs_keras_tuner.py's own (its Space and make_tuner: same space, network,
epochs, early stopping, seeds and a fresh process per search after a warm-up fit); each trial's
model is scored on the test split when its training ends, after early stopping has restored
its best weights, so the champion's test score is that of the very model its val_accuracy
came from. RandomSearch and BayesianOptimization run --trials trials; Hyperband runs its own
schedule (max_epochs = --epochs, factor 3), so its trial count differs.

    python bench/kt_test_scores.py [--trials 12] [--epochs 30] [--seeds 5] [--tuners NAME ...]
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import keras
import numpy as np
from vs_keras_tuner import TUNERS, Space, make_tuner

from pipeline import config, model, stages


def tuner_process(
    repo: Path, name: str, seed: int, trials: int, epochs: int
) -> list[tuple[float, float, float, float]]:
    """One Keras Tuner search in a process of its own: per trial (val_accuracy, val_loss) of
    its restored epoch and (test accuracy, test loss) of its final (restored) model."""
    params = config.load(
        repo / "params" / "default.yaml", [f"train.epochs={epochs}"], extra={"seed": seed}
    )
    prep = stages.prepare(params)
    stages.fit(params, prep, seed=params.seed)  # warm-up, as vs_keras_tuner.py
    n = len(prep.scaled.y_train)
    steps = {b: -(-n // b) for b in params.search.space["train.batch_size"]["choices"]}
    ds, rows = prep.dataset, []

    class Score(keras.callbacks.Callback):
        """After early stopping's on_train_end (listed first) has restored the best weights."""

        def on_train_end(self, logs: dict | None = None) -> None:
            hist = self.model.history.history
            restored = int(np.argmin(hist["val_loss"]))
            test = model.evaluate(
                self.model,
                prep.scaled.X_test,
                prep.scaled.y_test,
                task=ds.task,
                n_classes=ds.n_classes,
            )
            val = (float(hist["val_accuracy"][restored]), float(hist["val_loss"][restored]))
            rows.append((*val, float(test["accuracy"]), float(test["loss"])))

    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=8, restore_best_weights=True)
    with tempfile.TemporaryDirectory() as tmp:
        tuner = make_tuner(Space(params, steps), name, trials, epochs, seed, tmp)
        tuner.search(
            prep.scaled.X_train,
            prep.scaled.y_train,
            epochs=epochs,
            verbose=0,
            validation_data=(prep.scaled.X_val, prep.scaled.y_val),
            callbacks=[stop, Score()],
        )
    return rows


def spread(values: list[float], fmt: str = "{:.4f}") -> str:
    return " / ".join(fmt.format(v) for v in (min(values), statistics.median(values), max(values)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 (split, samplers, inits)")
    ap.add_argument("--tuners", nargs="+", choices=TUNERS, default=list(TUNERS))
    a = ap.parse_args()
    repo = Path(__file__).resolve().parent.parent
    spawn = multiprocessing.get_context("spawn")
    best: dict[str, list[tuple[float, float, float, float]]] = {n: [] for n in a.tuners}
    for seed in range(a.seeds):
        for name in a.tuners:
            with ProcessPoolExecutor(1, mp_context=spawn) as child:
                rows = child.submit(tuner_process, repo, name, seed, a.trials, a.epochs).result()
            i = min(range(len(rows)), key=lambda k: (-rows[k][0], rows[k][1], k))
            best[name].append(rows[i])
            val, _, acc, loss = rows[i]
            print(
                f"seed {seed} {name:<22} {len(rows):>3} trials  champion #{i}: val_accuracy "
                f"{val:.4f}  test accuracy {acc:.4f}  test loss {loss:.4f}",
                flush=True,
            )
    print(f"\n{a.seeds} seeds, {a.trials} trials of up to {a.epochs} epochs (min / median / max)")
    for name, rows in best.items():
        print(
            f"{name:<22} val acc {spread([r[0] for r in rows])}  "
            f"test acc {spread([r[2] for r in rows])}  test loss {spread([r[3] for r in rows])}"
        )


if __name__ == "__main__":
    main()

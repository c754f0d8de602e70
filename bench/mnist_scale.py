"""MNIST scale: a 60 000 x 784 CSV in the Digit Recognizer layout (`label,pixel0..pixel783`,
synthetic pixels, generated here since nothing is downloaded) is loaded, split and normalized
by the pipeline's stages; then the pipeline's training (with its per-epoch validation, lr
logging and hooks) is timed against a bare `model.fit(..., validation_data=...)` of the same
network on the same arrays. Prints seconds and the per-epoch ratio (target <= 1.1x).

    python bench/mnist_scale.py [--rows 60000] [--epochs 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import data, model
from pipeline.config import DataParams, ModelParams, SplitParams, TrainParams


def write_csv(path: Path, rows: int) -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, rows)
    centers = rng.integers(0, 256, (10, 784))
    pixels = np.clip(centers[labels] + rng.integers(-60, 60, (rows, 784)), 0, 255)
    frame = pd.DataFrame(pixels, columns=[f"pixel{i}" for i in range(784)])
    frame.insert(0, "label", labels)
    frame.to_csv(path, index=False)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=60000)
    ap.add_argument("--epochs", type=int, default=3)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "train.csv"
        write_csv(path, a.rows)
        t0 = time.perf_counter()
        ds = data.load(DataParams(source=str(path), target="label"))
        t1 = time.perf_counter()
        splits, _ = data.normalize(data.split(ds, SplitParams(), seed=0))
        t2 = time.perf_counter()
    print(
        f"{a.rows} x 784 CSV ({path.name}): load {t1 - t0:.1f} s, split + normalize {t2 - t1:.1f} s"
    )

    mp = ModelParams(hidden=(256, 256), activation="relu", initializer="he_normal")
    tp = TrainParams(epochs=a.epochs, batch_size=128, early_stopping={"patience": 0})
    model.warm_up()
    import keras

    def bare() -> float:
        keras.utils.set_random_seed(0)
        net = model.build(784, "classification", 10, mp)
        net.compile(
            optimizer=keras.optimizers.Adam(1e-3),
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
        )
        start = time.perf_counter()
        net.fit(
            splits.X_train,
            splits.y_train,
            validation_data=(splits.X_val, splits.y_val),
            epochs=a.epochs,
            batch_size=128,
            verbose=0,
        )
        return time.perf_counter() - start

    def ours() -> float:
        return model.train(splits, mp, tp, task="classification", n_classes=10, seed=0).seconds

    times = {"bare": [], "pipeline": []}
    for _ in range(2):  # interleaved, best of two
        times["bare"].append(bare())
        times["pipeline"].append(ours())
    b, p = min(times["bare"]), min(times["pipeline"])
    print(
        f"{a.epochs} epochs: bare model.fit {b:.1f} s ({b / a.epochs:.2f} s/epoch), pipeline "
        f"{p:.1f} s ({p / a.epochs:.2f} s/epoch, includes building the model)"
    )
    print(f"per-epoch ratio pipeline / bare: {p / b:.3f}x")


if __name__ == "__main__":
    main()

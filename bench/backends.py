"""Per-epoch cost on each Keras backend: the XOR preset's 1,000 one-step epochs (4 rows, six
hidden layers of 10) trained by the pipeline vs a bare Keras `fit` with validation data, on
TensorFlow (numpy input, and a cached tf.data input) and on JAX (`pip install -e ".[jax]"`).
Each case runs in its own process (the backend is chosen at import); cases alternate over the
rounds. Prints training seconds min / median / max per case.

    python bench/backends.py [--rounds 3] [--epochs 1000]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

CASE = r"""
import json, sys, time
from pipeline import config, model, stages
params = config.load(sys.argv[1], ["model.activation=relu", f"train.epochs={sys.argv[3]}"])
prep = stages.prepare(params)
stages.start_keras()
import keras
s = prep.scaled
how = sys.argv[2]
if how == "pipeline":
    result = stages.fit(params, prep, seed=params.seed)
    seconds = result.seconds
else:
    net = model.build(s.X_train.shape[1], "classification", 2, params.model)
    net.compile(optimizer=keras.optimizers.SGD(params.train.learning_rate),
                loss="binary_crossentropy", metrics=["accuracy"])
    x = s.X_train
    if how == "bare-tf.data":
        import tensorflow as tf
        x = tf.data.Dataset.from_tensor_slices((s.X_train, s.y_train)).cache().batch(4)
        kw = {}
    else:
        kw = {"y": s.y_train, "batch_size": 4}
    started = time.perf_counter()
    net.fit(x, **kw, epochs=params.train.epochs, verbose=0, validation_data=(s.X_val, s.y_val))
    seconds = time.perf_counter() - started
print(json.dumps({"seconds": seconds}))
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=1000)
    a = ap.parse_args()
    cases = [
        ("tensorflow", "pipeline"),
        ("tensorflow", "bare-numpy"),
        ("tensorflow", "bare-tf.data"),
    ]
    if importlib.util.find_spec("jax") is not None:
        cases += [("jax", "pipeline"), ("jax", "bare-numpy")]
    else:
        print('(jax not installed: pip install -e ".[jax]" for the JAX rows)')
    times: dict[tuple[str, str], list[float]] = {c: [] for c in cases}
    preset = str(REPO / "params" / "xor.yaml")
    for r in range(a.rounds):
        for backend, how in cases if r % 2 == 0 else cases[::-1]:
            env = {**os.environ, "KERAS_BACKEND": backend}
            done = subprocess.run(
                [sys.executable, "-c", CASE, preset, how, str(a.epochs)],
                env=env,
                capture_output=True,
                text=True,
            )
            if done.returncode != 0:
                raise SystemExit(f"{backend} {how} failed:\n{done.stderr[-2000:]}")
            times[(backend, how)].append(json.loads(done.stdout.splitlines()[-1])["seconds"])
    print(f"XOR, {a.epochs} epochs of one 4-row step, training seconds over {a.rounds} rounds")
    print("backend     input          min    median  max")
    for (backend, how), t in times.items():
        print(f"{backend:<11} {how:<13} {min(t):6.2f} {statistics.median(t):7.2f} {max(t):6.2f}")


if __name__ == "__main__":
    main()

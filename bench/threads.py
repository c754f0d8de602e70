"""One training process's TensorFlow compute threads: 1 ... all cores, side by side.

Each case is a fresh process with TF_NUM_INTRAOP_THREADS set (inter-op 1, as the pipeline
sets it) training the same trials after a warm-up: the default preset's digits MLP over a
fixed spread of activations, dropouts and batch sizes, and optionally an MNIST-scale epoch
(60,000 x 784 random rows, 2x256). Cases alternate over the rounds, so drift hits all alike;
prints seconds per case (min / median / max) and each case's ratio to TensorFlow's default
(all cores). `model.configure_threads` picks the cores but one for a single worker from it.

    python bench/threads.py [--rounds 3] [--trials 6] [--mnist]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

CHILD = r"""
import sys, time
from pathlib import Path
import numpy as np
from pipeline import config, model, stages
from pipeline.config import ModelParams, TrainParams
from pipeline.data import Splits

repo, trials, mnist = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
params = config.load(repo / "params" / "default.yaml", ["search.pruner=none"])
prep = stages.prepare(params)
model.warm_up()
spread = [("relu", 0.1, 32), ("tanh", 0.2, 64), ("elu", 0.3, 128), ("selu", 0.4, 256)]
start = time.perf_counter()
for i in range(trials):
    act, drop, batch = spread[i % len(spread)]
    values = {"model.activation": act, "model.dropout": drop, "train.batch_size": batch}
    stages.fit(config.with_values(params, values), prep, seed=params.seed + i)
    model.release()
digits = time.perf_counter() - start
epoch = 0.0
if mnist:
    rng = np.random.default_rng(0)
    X = rng.random((60000, 784), dtype=np.float32)
    y = X[:, :10].argmax(1).astype(np.int64)
    s = Splits(X[:48000], y[:48000], X[48000:54000], y[48000:54000], X[54000:], y[54000:])
    start = time.perf_counter()
    model.train(s, ModelParams(hidden=(256, 256)), TrainParams(epochs=1, batch_size=64),
                task="classification", n_classes=10, seed=1,
                inputs=model.TrainInput(s.X_train, s.y_train))
    epoch = time.perf_counter() - start
print(f"{digits} {epoch}")
"""


def run(threads: int, trials: int, mnist: bool) -> tuple[float, float]:
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "TF_NUM_INTRAOP_THREADS": str(threads), "TF_NUM_INTEROP_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", CHILD, repo, str(trials), "1" if mnist else "0"],
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise SystemExit(f"threads={threads} failed:\n{done.stderr[-3000:]}")
    digits, epoch = done.stdout.split()[-2:]
    return float(digits), float(epoch)


def spread(values: list[float]) -> str:
    return f"{min(values):.2f} / {statistics.median(values):.2f} / {max(values):.2f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--trials", type=int, default=6)
    ap.add_argument("--mnist", action="store_true", help="also one MNIST-scale epoch per case")
    a = ap.parse_args()
    cores = len(os.sched_getaffinity(0))
    cases = list(range(1, cores + 1))
    times: dict[int, list[tuple[float, float]]] = {n: [] for n in cases}
    for r in range(a.rounds):
        for n in cases if r % 2 == 0 else reversed(cases):
            times[n].append(run(n, a.trials, a.mnist))
            print(f"round {r + 1} threads={n}: {times[n][-1][0]:.2f} s", flush=True)
    default = cores
    print(f"\n{cores} cores; {a.trials} digits trials (30 epochs) per case, {a.rounds} rounds")
    for n in cases:
        digits = [d for d, _ in times[n]]
        ratio = statistics.median(d for d, _ in times[default]) / statistics.median(digits)
        line = f"threads={n}: digits min/median/max {spread(digits)} s ({ratio:.2f}x vs {default})"
        if a.mnist:
            epochs = [e for _, e in times[n]]
            mratio = statistics.median(e for _, e in times[default]) / statistics.median(epochs)
            line += f"; MNIST-scale epoch {spread(epochs)} s ({mratio:.2f}x)"
        print(line)


if __name__ == "__main__":
    main()

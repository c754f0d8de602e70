"""Every bench in one command: runs each script of this folder (in its own process, one after
the other, each `--repeats` times) and prints one table of its headline numbers, min / median /
max over the repeats. `--quick` runs each with small arguments and once, to check that they
all still run (its numbers are not the release's figures); `--only NAME` picks benches.

    python bench/all.py [--quick] [--repeats 3] [--only overhead --only memory ...]

Numbers are read from each script's own printed lines (the patterns below), so a script stays
runnable on its own and this table shows exactly what it prints. The machine's load moves every
absolute time; the ratios compare sides measured together and are the figures to read.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Bench:
    name: str
    script: str
    full: tuple[str, ...]  # arguments of a full run (the scripts' defaults)
    quick: tuple[str, ...]  # arguments of a quick run
    patterns: tuple[tuple[str, str], ...]  # (metric, regex: its group `v` or last group)
    needs: str | None = None  # an optional module the bench needs


_NUM = r"([-+]?[0-9]*\.?[0-9]+)"
BENCHES = (
    Bench(
        "overhead",
        "overhead.py",
        (),
        ("--trials", "2", "--epochs", "3", "--rounds", "1"),
        (
            (
                "tracking overhead ratio, median over trials (x, target <= 1.05)",
                rf"overhead ratio \(median over \d+ trials\): {_NUM}x",
            ),
            (
                "tracking seconds per trial, median (ms)",
                rf"tracking seconds per trial, min / median / max: -?\d+ / {_NUM} /",
            ),
            (
                "tracking seconds against the bare trial (x)",
                rf"against a bare trial's median [0-9.]+ s -> {_NUM}x",
            ),
            ("bare Optuna + Keras (s)", rf"bare Optuna \+ Keras: {_NUM} s"),
            ("pipeline, MLflow tracked (s)", rf"pipeline \(MLflow tracked\): {_NUM} s"),
        ),
    ),
    Bench(
        "backends",
        "backends.py",
        (),
        ("--rounds", "1", "--epochs", "50"),
        tuple(
            (
                f"{backend} {how}: median training (s)",
                rf"{backend}\s+{re.escape(how)}\s+{_NUM}\s+{_NUM}",
            )
            for backend, how in (
                ("tensorflow", "pipeline"),
                ("tensorflow", "bare-numpy"),
                ("tensorflow", "bare-tf.data"),
                ("jax", "pipeline"),
                ("jax", "bare-numpy"),
            )
        ),
    ),
    Bench(
        "vs_previous",
        "vs_previous.py",
        (),
        ("--rounds", "1", "--set", "search.n_trials=2", "--set", "train.epochs=2"),
        (("speed-up over the previous release (x)", rf"median this\): {_NUM}x"),),
    ),
    Bench(
        "vs_keras_tuner",
        "vs_keras_tuner.py",
        (),
        ("--trials", "3", "--epochs", "3", "--seeds", "1"),
        tuple(
            (
                f"vs {tuner}: median time ratio to the same accuracy (x, target >= 2)",
                rf"(?m)^{tuner}\s+{_NUM} / (?P<v>{_NUM[1:-1]}) / {_NUM} x",
            )
            for tuner in ("RandomSearch", "BayesianOptimization", "Hyperband")
        ),
        needs="keras_tuner",
    ),
    Bench(
        "threads",
        "threads.py",
        (),
        ("--rounds", "1", "--trials", "1"),
        (
            (
                "one worker, 1 TensorFlow compute thread vs all cores: digits trials (x)",
                rf"threads=1: digits min/median/max [^(]*\({_NUM}x vs",
            ),
        ),
    ),
    Bench(
        "memory",
        "memory.py",
        (),
        ("--trials", "15", "--epochs", "1"),
        (("RSS growth (MiB per trial)", rf"\({_NUM} MiB per trial\)"),),
    ),
    Bench(
        "mnist_scale",
        "mnist_scale.py",
        (),
        ("--rows", "5000", "--epochs", "1"),
        (
            ("CSV load (s)", rf": load {_NUM} s"),
            ("split + normalize (s)", rf"split \+ normalize {_NUM} s"),
            ("per-epoch ratio pipeline / bare fit (x)", rf"pipeline / bare: {_NUM}x"),
        ),
    ),
)


def run(bench: Bench, quick: bool) -> tuple[dict[str, float], float, str | None]:
    """One run of a bench: its numbers, wall seconds, and an error text if it failed."""
    cmd = [sys.executable, str(HERE / bench.script), *(bench.quick if quick else bench.full)]
    started = time.perf_counter()
    done = subprocess.run(cmd, cwd=HERE, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        return {}, wall, (done.stderr.strip().splitlines() or ["no output"])[-1][:200]
    found = {}
    for metric, pattern in bench.patterns:
        match = re.search(pattern, done.stdout)
        if match:  # the group named v, else the last number
            found[metric] = float(match.groupdict().get("v") or match.groups()[-1])
    return found, wall, None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small arguments, one run each")
    ap.add_argument("--repeats", type=int, default=None, help="runs per bench (default 3, quick 1)")
    ap.add_argument(
        "--only", action="append", choices=[b.name for b in BENCHES], help="run only these"
    )
    a = ap.parse_args()
    repeats = a.repeats or (1 if a.quick else 3)
    rows: list[tuple[str, str, list[float]]] = []
    notes: list[str] = []
    for bench in BENCHES:
        if a.only and bench.name not in a.only:
            continue
        if bench.needs and importlib.util.find_spec(bench.needs) is None:
            notes.append(
                f'{bench.name}: skipped ({bench.needs} not installed: pip install -e ".[bench]")'
            )
            continue
        values: dict[str, list[float]] = {}
        walls: list[float] = []
        for i in range(repeats):
            print(
                f"[{bench.name} {i + 1}/{repeats}] python bench/{bench.script} "
                f"{' '.join(bench.quick if a.quick else bench.full)}",
                file=sys.stderr,
                flush=True,
            )
            found, wall, error = run(bench, a.quick)
            walls.append(wall)
            if error:
                notes.append(f"{bench.name} run {i + 1} failed: {error}")
            for metric, value in found.items():
                values.setdefault(metric, []).append(value)
        for metric, _ in bench.patterns:
            if metric in values:
                rows.append((bench.name, metric, values[metric]))
            elif len(walls) > sum(f"{bench.name} run" in n for n in notes):  # some run succeeded
                notes.append(f"{bench.name}: no line for {metric!r} (optional, or output changed)")
        rows.append((bench.name, "wall of the whole bench (s)", walls))
    mode = (
        "quick (small arguments: checks the benches run, not release figures)"
        if a.quick
        else "full"
    )
    print(f"\n{mode}; {repeats} run(s) per bench; min / median / max over the runs")
    width = max((len(m) for _, m, _ in rows), default=10)
    print(f"{'bench':<15} {'metric':<{width}} {'n':>2} {'min':>9} {'median':>9} {'max':>9}")
    for name, metric, vals in rows:
        print(
            f"{name:<15} {metric:<{width}} {len(vals):>2} {min(vals):9.3f} "
            f"{statistics.median(vals):9.3f} {max(vals):9.3f}"
        )
    for note in notes:
        print(note)


if __name__ == "__main__":
    main()

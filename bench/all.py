"""Every bench in one command: runs each script of this folder (in its own process, one after
the other, each `--repeats` times) and prints one table of its headline numbers, min / median /
max over the repeats. `--quick` runs each with small arguments and once, to check that they
all still run (its numbers are not the release's figures); `--only NAME` picks benches.
`--write-doc [PATH]` (default docs/benchmarks.md) then records one dated row per bench that ran
in the doc's generated table, between its two marker lines; the rest of the doc is left alone.

    python bench/all.py [--quick] [--repeats 3] [--only overhead --only memory ...] [--write-doc]

Numbers are read from each script's own printed lines (the patterns below), so a script stays
runnable on its own and this table shows exactly what it prints. The machine's load moves every
absolute time; the ratios compare sides measured together and are the figures to read.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
DOC = HERE.parent / "docs" / "benchmarks.md"
BEGIN, END = "<!-- bench/all.py:begin -->", "<!-- bench/all.py:end -->"
TABLE_HEAD = (
    "| date | bench | command | runs | headline: min / median / max |",
    "|---|---|---|---|---|",
)
WALL = "wall of the whole bench (s)"


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


def doc_row(day: str, bench: Bench, metrics: list[tuple[str, list[float]]]) -> str:
    """One generated table row: date, bench, its command, runs, each metric's min/median/max."""
    command = " ".join(("python", f"bench/{bench.script}", *bench.full))
    runs = max(len(vals) for _, vals in metrics)
    cells = "; ".join(
        f"{metric}: {min(v):.3f} / {statistics.median(v):.3f} / {max(v):.3f}"
        for metric, v in metrics
    )
    return f"| {day} | {bench.name} | `{command}` | {runs} | {cells} |"


def write_doc(text: str, rows: dict[str, str]) -> str:
    """`text` with its generated table updated: each bench in `rows` gets that row (replacing its
    old one), other benches' rows stay, and everything outside the markers is kept as it was. A
    doc without the markers gets the table appended."""
    if BEGIN in text and END in text.split(BEGIN, 1)[1]:
        head, rest = text.split(BEGIN, 1)
        body, tail = rest.split(END, 1)
    else:
        head, body, tail = (text.rstrip("\n") + "\n\n" if text.strip() else ""), "", "\n"
    kept: dict[str, str] = {}
    for line in body.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and line not in TABLE_HEAD and len(cells) > 1:
            kept[cells[1]] = line
    kept.update(rows)
    order = [b.name for b in BENCHES]
    names = sorted(kept, key=lambda n: (order.index(n) if n in order else len(order), n))
    table = "\n".join((*TABLE_HEAD, *(kept[n] for n in names)))
    return f"{head}{BEGIN}\n{table}\n{END}{tail}"


def record(path: Path, rows: list[tuple[str, str, list[float]]], day: str) -> list[str]:
    """Writes a row dated `day` for every bench with a figure in `rows` (bench, metric, values)
    into the doc at `path`; returns those benches' names."""
    by_name = {b.name: b for b in BENCHES}
    names = list(dict.fromkeys(n for n, m, _ in rows if m != WALL))
    new = {
        n: doc_row(day, by_name[n], [(m, v) for b, m, v in rows if b == n and m != WALL])
        for n in names
    }
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(write_doc(old, new), encoding="utf-8")
    return names


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small arguments, one run each")
    ap.add_argument("--repeats", type=int, default=None, help="runs per bench (default 3, quick 1)")
    ap.add_argument(
        "--only", action="append", choices=[b.name for b in BENCHES], help="run only these"
    )
    ap.add_argument(
        "--write-doc",
        nargs="?",
        const=DOC,
        type=Path,
        metavar="PATH",
        help="after the run, record its figures in this doc (default docs/benchmarks.md)",
    )
    a = ap.parse_args()
    if a.write_doc and a.quick:
        ap.error("--write-doc records figures: not with --quick, whose numbers are not figures")
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
        rows.append((bench.name, WALL, walls))
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
    if a.write_doc:
        written = record(a.write_doc, rows, datetime.date.today().isoformat())
        print(f"{a.write_doc}: {len(written)} row(s) written ({', '.join(written) or 'none'})")


if __name__ == "__main__":
    main()

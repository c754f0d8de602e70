"""The bare default run (`python -m pipeline.run`: digits, 20 trials, champion) of this code
vs an earlier commit of it, side by side on this machine: the two alternate, each in a fresh
working directory with its own stores, so machine drift hits both alike. Prints wall seconds
(min / median / max per side), the ratio of medians, and each run's champion test accuracy.

    python bench/vs_previous.py [--commit 3e8c8e0] [--rounds 2] [--set KEY=VALUE ...]
                                [--this-arg=--workers --this-arg=1]

`--set` goes to both sides; `--this-arg` (repeatable) only to this code's command line, e.g.
`--this-arg=--workers --this-arg=1` for this code with one worker process (its bare command
runs one per core since --workers defaults to `auto`). $PIPELINE_WORKERS is removed from both
sides' environment, so each runs its own default.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run_side(code_root: Path | None, extra: list[str]) -> tuple[float, float | None]:
    """Wall seconds and champion test accuracy of one bare run (code from `code_root`, or
    this checkout when None)."""
    env = {k: v for k, v in os.environ.items() if k != "PIPELINE_WORKERS"}
    if code_root is not None:
        env["PYTHONPATH"] = str(code_root)  # ahead of the editable install of this checkout
    with tempfile.TemporaryDirectory() as work:
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "pipeline.run", *extra],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
        )
        wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"run failed ({code_root or 'this code'}):\n{done.stderr[-3000:]}")
    found = re.search(r"test_accuracy\s+([0-9.]+)", done.stdout)
    return wall, float(found.group(1)) if found else None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--commit", default="3e8c8e0")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--this-arg", dest="this_args", action="append", default=[])
    a = ap.parse_args()
    extra = [x for o in a.overrides for x in ("--set", o)]
    with tempfile.TemporaryDirectory() as old:
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", a.commit], capture_output=True, check=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", old], input=archive, check=True)
        sides: dict[str, list[tuple[float, float | None]]] = {"previous": [], "this": []}
        for i in range(a.rounds):
            for side in ("previous", "this") if i % 2 == 0 else ("this", "previous"):
                root = Path(old) if side == "previous" else None
                sides[side].append(run_side(root, extra if root else extra + a.this_args))
                wall, acc = sides[side][-1]
                print(f"round {i + 1} {side:<8}: {wall:6.1f} s, champion test_accuracy {acc}")
    med = {}
    for side, runs in sides.items():
        walls = [w for w, _ in runs]
        med[side] = statistics.median(walls)
        print(
            f"{side:<8} ({a.commit if side == 'previous' else 'HEAD ' + ' '.join(a.this_args)}):"
            f" wall min {min(walls):.1f}"
            f" / median {med[side]:.1f} / max {max(walls):.1f} s over {len(walls)} runs"
        )
    print(f"speed-up (median previous / median this): {med['previous'] / med['this']:.2f}x")


if __name__ == "__main__":
    main()

"""Search throughput, side by side: `--workers 2` vs 1 worker (trials per minute on 2 cores)
and the median pruner vs no pruner (wall time and best validation accuracy). Each case is the
real CLI in a subprocess with its own temporary store; times come from the Optuna trials
(first trial start to last trial end), so start-up and the champion's training are excluded.

    python bench/search_modes.py [--trials 12] [--epochs 30]
"""

from __future__ import annotations

import argparse

from _common import cli_search


def case(label: str, trials: int, epochs: int, *flags: str) -> dict:
    try:
        all_trials, _, _ = cli_search(
            ["--trials", str(trials), "--set", f"train.epochs={epochs}", *flags]
        )
    except RuntimeError as exc:
        raise SystemExit(f"{label} failed:\n{exc}") from None
    finished = [t for t in all_trials if t.datetime_complete is not None]
    span = (
        max(t.datetime_complete for t in finished) - min(t.datetime_start for t in finished)
    ).total_seconds()
    pruned = sum(t.state.name == "PRUNED" for t in finished)
    return {
        "label": label,
        "seconds": span,
        "per_min": 60 * len(finished) / span,
        "best": max(t.value for t in finished if t.state.name == "COMPLETE"),  # maximized
        "trials": len(finished),
        "pruned": pruned,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--epochs", type=int, default=30)
    a = ap.parse_args()
    rows = [
        case(
            "1 worker, no pruner",
            a.trials,
            a.epochs,
            "--set",
            "search.pruner=none",
            "--workers",
            "1",
        ),
        case(
            "2 workers, no pruner",
            a.trials,
            a.epochs,
            "--set",
            "search.pruner=none",
            "--workers",
            "2",
        ),
        case("1 worker, median pruner", a.trials, a.epochs, "--workers", "1"),
    ]
    for r in rows:
        print(
            f"{r['label']:<26} {r['trials']:>3} trials ({r['pruned']} pruned) in "
            f"{r['seconds']:6.1f} s = {r['per_min']:5.1f} trials/min, best val_accuracy "
            f"{r['best']:.4f}"
        )
    one, two, pruned = rows
    print(f"--workers 2 vs 1: {two['per_min'] / one['per_min']:.2f}x trials per minute")
    print(
        f"median pruner vs none: {one['seconds'] / pruned['seconds']:.2f}x faster, best "
        f"{pruned['best']:.4f} vs {one['best']:.4f}"
    )


if __name__ == "__main__":
    main()

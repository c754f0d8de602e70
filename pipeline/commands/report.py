"""`report`: the top trials of a study read back from the tracking store, and the plots."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from pipeline.commands.common import add_common, load_params, make_tracker
from pipeline.errors import PipelineError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="top trials of a study from the tracking store, and plots")
    add_common(p)
    p.add_argument("--study", help="study name (default: the experiment name)")
    p.add_argument("--top", type=int, default=10, help="how many trials to list")
    p.add_argument("--out", type=Path, default=None, help="folder for the plots")


def _scalar(text: str | None) -> Any:
    """MLflow stores params as text; give numbers back as numbers for tables and plots."""
    try:
        return float(text) if text is not None and not text.isalpha() else text
    except ValueError:
        return text


def main(args: argparse.Namespace) -> int:
    """Top trials of a study read back from the tracking store, and the study plots."""
    import pandas as pd

    from pipeline import report, stages

    params = load_params(args)
    tracker = make_tracker(params)
    study = args.study or stages.experiment_name(params)
    metric = params.search.metric
    maximize = params.search.direction == "maximize"
    runs = tracker.runs(f"tags.`pipeline.study` = '{study}'")
    trials = [r for r in runs if "pipeline.trial" in r.data.tags]
    if not trials:
        raise PipelineError(
            f"no trials of study {study!r} in {tracker.display_uri} (experiment "
            f"{tracker.experiment_name!r}). Run `search` first, or pass --study, -p or "
            "--tracking-uri."
        )
    keys = list(params.search.space)
    rows = []
    for r in trials:
        row = {
            "number": int(r.data.tags["pipeline.trial"]),
            "state": r.data.tags.get("optuna.state", "?"),
            "value": r.data.metrics.get(metric),
            "run_id": r.info.run_id,
            "epochs": r.data.metrics.get("epochs_run"),
        }
        row.update({f"params_{k}": _scalar(r.data.params.get(k)) for k in keys})
        rows.append(row)
    frame = pd.DataFrame(rows).sort_values("number")
    ranked = frame[frame["state"] == "COMPLETE"].sort_values("value", ascending=not maximize)
    shown = [
        {
            "trial": r["number"],
            metric: r["value"],
            "epochs": r["epochs"],
            **{k: r[f"params_{k}"] for k in keys},
        }
        for _, r in ranked.head(args.top).iterrows()
    ]
    counts = frame["state"].value_counts().to_dict()
    print(f"study {study!r}: {len(frame)} trials {counts}")
    print(report.table(shown, ["trial", metric, "epochs", *keys]))
    out = args.out or Path("mlruns") / "reports" / study
    out.mkdir(parents=True, exist_ok=True)
    report.optimization_history(frame, metric, maximize).savefig(out / "optimization_history.png")
    report.parallel_coordinates(frame, keys, metric).savefig(out / "parallel_coordinates.png")
    curves = {
        f"trial {r['number']}": tracker.metric_history(r["run_id"], metric)
        for _, r in ranked.head(min(args.top, 5)).iterrows()
    }
    report.top_trial_curves(curves, metric).savefig(out / "top_trials_curves.png")
    print(f"plots written to {out}/")
    return 0

"""`train`: one fully tracked training run with fixed params (no search)."""

from __future__ import annotations

import argparse
import logging

from pipeline.commands.common import add_common, load_params, make_tracker
from pipeline.protocol import KIND_TAG, RunKind

log = logging.getLogger("pipeline")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="one fully tracked training run with fixed params")
    add_common(p)


def main(args: argparse.Namespace) -> int:
    from pipeline import config, report, stages

    params = load_params(args)
    prep = stages.prepare(params)  # bad data fails here, before any run exists
    stages.start_keras()
    tracker = make_tracker(params)
    ds = prep.dataset
    log.info(
        "training on %s: %d rows, %d features, task %s", ds.name, len(ds.y), ds.X.shape[1], ds.task
    )
    if params.split.cross_validated:
        log.info("split.folds scores search trials; train uses the train/val/test split")
    with tracker.run("train", tags={KIND_TAG: RunKind.TRAIN}) as run_id:
        tracker.log_params(run_id, config.flatten(params))
        stages.log_dataset(tracker, run_id, params, prep)
        with tracker.live_metrics(run_id) as live:
            result, val = stages.train_logged(live, params, prep, seed=params.seed)
        made = stages.log_champion(tracker, run_id, params, prep, result, register_as=None)
    rows = [{"metric": k, "value": v} for k, v in {**val, **made.test}.items()]
    print(report.table(rows, ["metric", "value"]))
    done = f"{result.epochs_run} epochs, {result.seconds:.1f} s"
    print(f"\nrun {run_id} ({done}), model: {made.model_uri}")
    print(f"open the UI:  python -m pipeline.run ui   then  {tracker.ui_url()}")
    return 0

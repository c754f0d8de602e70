"""`train`: one fully tracked training run with fixed params (no search)."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from pipeline import config
from pipeline.commands.common import add_common, load_params, make_tracker
from pipeline.errors import ConfigError
from pipeline.protocol import FROM_RUN_TAG, KIND_TAG, RunKind

log = logging.getLogger("pipeline")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="one fully tracked training run with fixed params")
    add_common(p)
    p.add_argument(
        "--from-run",
        metavar="RUN_ID",
        help="train again exactly the params an earlier run logged (a search trial's, the "
        "champion's or a train run's), e.g. with --set train.epochs=100; no -p",
    )


def _params(args: argparse.Namespace) -> tuple[config.Params, dict[str, str]]:
    """The params to train and the tags that link the new run to the one it repeats."""
    if not args.from_run:
        return load_params(args), {}
    from pipeline.tracking import logged_run

    if args.params is not None:
        raise ConfigError(
            "train --from-run takes the params the run logged: drop -p (change any of them "
            "with --set, e.g. --set train.epochs=100)"
        )
    logged = logged_run(args.tracking_uri, args.from_run)
    if logged.tags.get(KIND_TAG) == RunKind.STUDY:
        raise ConfigError(
            f"--from-run {args.from_run} is a study's parent run, which trains nothing: pass "
            "one of its trial runs or its champion run"
        )
    extra: dict[str, Any] = {"tracking.uri": args.tracking_uri}  # where the run was found
    if args.seed is not None:
        extra["seed"] = args.seed
    params = config.from_logged(logged.params, args.overrides, extra=extra)
    log.info("training run %s's params again (experiment %r)", args.from_run, logged.experiment)
    return params, {FROM_RUN_TAG: args.from_run}


def main(args: argparse.Namespace) -> int:
    from pipeline import report, stages

    params, link = _params(args)
    prep = stages.prepare(params)  # bad data fails here, before any run exists
    stages.start_keras()
    tracker = make_tracker(params)
    ds = prep.dataset
    log.info(
        "training on %s: %d rows, %d features, task %s", ds.name, len(ds.y), ds.X.shape[1], ds.task
    )
    if params.split.cross_validated:
        log.info("split.folds scores search trials; train uses the train/val/test split")
    with tracker.run("train", tags={KIND_TAG: RunKind.TRAIN, **link}) as run_id:
        tracker.log_params(run_id, config.flatten(params))
        stages.log_dataset(tracker, run_id, params, prep)
        with tracker.live_metrics(run_id) as live:
            result, val = stages.train_logged(live, params, prep, seed=params.seed)
        made = stages.log_champion(tracker, run_id, params, prep, result, register_as=None)
    rows = [{"metric": k, "value": v} for k, v in {**val, **made.test}.items()]
    print(report.table(rows, ["metric", "value"]))
    done = f"{result.epochs_run} epochs, {result.seconds:.1f} s"
    print(f"\nrun {run_id} ({done}), model: {made.model_uri}")
    print(tracker.ui_hint())
    return 0

"""What every command shares: the common flags, params loading and the tracker."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline import config

if TYPE_CHECKING:
    from pipeline.tracking import Tracker

DEFAULT_PARAMS = Path("params/default.yaml")


def add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-p", "--params", type=Path, default=None, help="params YAML (default: params/default.yaml)"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a param, e.g. --set model.dropout=0.3 (repeatable; YAML values)",
    )
    parser.add_argument("--tracking-uri", help="MLflow store (default sqlite:///mlruns/mlflow.db)")
    parser.add_argument("--seed", type=int, help="random seed (overrides params seed)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def load_params(args: argparse.Namespace) -> config.Params:
    """The params file (default preset found from any cwd) with the flags applied on top."""
    path = args.params or DEFAULT_PARAMS
    if args.params is None and not path.is_file():
        path = Path(__file__).resolve().parents[2] / DEFAULT_PARAMS  # run from anywhere
    extra: dict[str, Any] = {}
    if args.seed is not None:
        extra["seed"] = args.seed
    if getattr(args, "trials", None) is not None:
        extra["search.n_trials"] = args.trials
    if getattr(args, "timeout", None) is not None:
        extra["search.timeout"] = args.timeout
    if args.tracking_uri:
        extra["tracking.uri"] = args.tracking_uri
    return config.load(path, args.overrides, extra=extra)


def make_tracker(params: config.Params) -> Tracker:
    from pipeline.stages import experiment_name
    from pipeline.tracking import Tracker

    return Tracker(params.tracking.uri, experiment_name(params))

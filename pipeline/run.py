"""The command line and the one place where stages are chained.

`python -m pipeline.run [search|train|predict|report|ui] [flags]`; the bare form means `search`.
Only the standard library and pipeline.config are imported at start-up so `--help` and params
errors answer at once; data, Keras, MLflow and Optuna are imported when a command needs them.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline import config
from pipeline.errors import PipelineError

log = logging.getLogger("pipeline")

COMMANDS = ("search", "train", "predict", "report", "ui")
DEFAULT_PARAMS = Path("params/default.yaml")


# -- command line ---------------------------------------------------------------------------


def _common(parser: argparse.ArgumentParser) -> None:
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


def _search_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trials", type=int, help="finished trials wanted in total (n_trials)")
    parser.add_argument("--timeout", type=float, help="stop starting trials after SECONDS")
    parser.add_argument("--study", help="study name (default: the experiment name)")
    parser.add_argument("--storage", help="Optuna storage URL (default: journal file in mlruns/)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes on this machine")
    parser.add_argument("--new", action="store_true", help="discard a study of the same name")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.run",
        description="Staged Keras training with Optuna searches tracked in MLflow. "
        "With no command, runs `search`.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("search", help="Optuna study over search.space, then the champion model")
    _common(p)
    _search_flags(p)
    p = sub.add_parser("train", help="one fully tracked training run with fixed params")
    _common(p)
    p = sub.add_parser("predict", help="score a CSV of raw features with a logged model")
    _common(p)
    p.add_argument("--model", required=True, help="runs:/<id>/model, models:/<name>@champion ...")
    p.add_argument("--data", required=True, type=Path, help="CSV of raw feature rows")
    p.add_argument("--out", type=Path, help="write predictions here (default: print them)")
    p = sub.add_parser("report", help="top trials of a study from the tracking store, and plots")
    _common(p)
    p.add_argument("--study", help="study name (default: the experiment name)")
    p.add_argument("--top", type=int, default=10, help="how many trials to list")
    p.add_argument("--out", type=Path, default=None, help="folder for the plots")
    p = sub.add_parser("ui", help="start the MLflow UI on 127.0.0.1 for the project's store")
    _common(p)
    p.add_argument("--port", type=int, default=5000)
    return parser


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0] not in COMMANDS and argv[0] not in ("-h", "--help")):
        argv.insert(0, "search")
    return build_parser().parse_args(argv)


def load_params(args: argparse.Namespace) -> config.Params:
    path = args.params or DEFAULT_PARAMS
    if args.params is None and not path.is_file():
        path = Path(__file__).resolve().parent.parent / DEFAULT_PARAMS  # run from anywhere
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


def experiment_name(params: config.Params) -> str:
    return params.tracking.experiment or params.name


# -- stages ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Prepared:
    """Data loaded, split and normalized once, shared by every trial of a study."""

    dataset: Any
    raw: Any  # unscaled splits (for input examples and prediction checks)
    scaled: Any
    scaler: Any


def prepare(params: config.Params) -> Prepared:
    from pipeline import data

    dataset = data.load(params.data)
    raw = data.split(dataset, params.split, seed=params.seed)
    scaled, scaler = data.normalize(raw)
    return Prepared(dataset, raw, scaled, scaler)


def _frame(prep: Prepared, X: Any, y: Any | None = None) -> Any:
    """Raw (unscaled) rows as a data frame with the feature names, optionally with the target."""
    import numpy as np
    import pandas as pd

    frame = pd.DataFrame(np.asarray(X, dtype=np.float64), columns=list(prep.dataset.feature_names))
    if y is not None:
        ds = prep.dataset
        frame[ds.target_name] = [ds.classes[int(c)] for c in y] if ds.classes else y
    return frame


def fit(params: config.Params, prep: Prepared, *, seed: int, on_epoch: Any = None) -> Any:
    from pipeline import model

    ds = prep.dataset
    return model.train(
        prep.scaled,
        params.model,
        params.train,
        task=ds.task,
        n_classes=ds.n_classes,
        seed=seed,
        on_epoch=on_epoch,
    )


def score(result: Any, prep: Prepared, split: str) -> dict[str, float]:
    """Metrics of a trained model on one split ('val' or 'test'), keys prefixed by the split."""
    from pipeline import model

    X = getattr(prep.scaled, f"X_{split}")
    y = getattr(prep.scaled, f"y_{split}")
    ds = prep.dataset
    metrics = model.evaluate(result.model, X, y, task=ds.task, n_classes=ds.n_classes)
    return {f"{split}_{k}": v for k, v in metrics.items()}


def log_training(tracker: Any, run_id: str, result: Any, prep: Prepared) -> dict[str, float]:
    """Per-epoch curves, epochs run, seconds and final validation metrics of one training."""
    tracker.log_history(run_id, result.history)
    final = score(result, prep, "val")
    tracker.log_metrics(
        run_id, {**final, "epochs_run": result.epochs_run, "train_seconds": result.seconds}
    )
    return final


def log_champion(
    tracker: Any,
    run_id: str,
    params: config.Params,
    prep: Prepared,
    result: Any,
    *,
    register_as: str | None,
) -> tuple[dict[str, float], str, str | None]:
    """Test metrics (the test split's only use), plots, report and the servable model."""
    from pipeline import model, report

    ds = prep.dataset
    test = score(result, prep, "test")
    tracker.log_metrics(run_id, test)
    tracker.log_figure(run_id, report.learning_curves(result.history), "learning_curves.png")
    pred = model.to_labels(model.predict_scores(result.model, prep.scaled.X_test), ds.task)
    if ds.task == "classification":
        fig = report.confusion_matrix_figure(prep.scaled.y_test, pred, ds.classes)
        tracker.log_figure(run_id, fig, "confusion_matrix.png")
        text = report.classification_report_text(prep.scaled.y_test, pred, ds.classes)
        tracker.log_text(run_id, text, "classification_report.txt")
    else:
        tracker.log_figure(
            run_id, report.residual_figure(prep.scaled.y_test, pred), "residuals.png"
        )
    preprocess = {
        "scaler": prep.scaler.to_dict(),
        "features": list(ds.feature_names),
        "classes": list(ds.classes),
        "task": ds.task,
        "target": ds.target_name,
    }
    example = _frame(prep, prep.raw.X_test[:5])
    with tempfile.TemporaryDirectory() as tmp:
        path = model.save(result.model, Path(tmp) / "model.keras")
        uri, version = tracker.log_model(run_id, path, preprocess, example, register_as=register_as)
    return test, uri, version


def _tracker(params: config.Params) -> Any:
    from pipeline.tracking import Tracker

    return Tracker(params.tracking.uri, experiment_name(params))


# -- commands -------------------------------------------------------------------------------


def cmd_train(args: argparse.Namespace) -> int:
    params = load_params(args)
    prep = prepare(params)  # bad data fails here, before any run exists
    tracker = _tracker(params)
    ds = prep.dataset
    log.info(
        "training on %s: %d rows, %d features, task %s", ds.name, len(ds.y), ds.X.shape[1], ds.task
    )
    with tracker.run("train", tags={"pipeline.kind": "train"}) as run_id:
        tracker.log_params(run_id, config.flatten(params))
        tracker.log_dataset(
            run_id,
            _frame(prep, ds.X, ds.y),
            name=ds.name,
            source=params.data.source,
            target=ds.target_name,
        )
        result = fit(params, prep, seed=params.seed)
        val = log_training(tracker, run_id, result, prep)
        test, uri, _ = log_champion(tracker, run_id, params, prep, result, register_as=None)
    from pipeline import report

    rows = [{"metric": k, "value": v} for k, v in {**val, **test}.items()]
    print(report.table(rows, ["metric", "value"]))
    print(f"\nrun {run_id} ({result.epochs_run} epochs, {result.seconds:.1f} s), model: {uri}")
    print(f"open the UI:  python -m pipeline.run ui   then  {tracker.ui_url()}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    import pandas as pd

    from pipeline import data, tracking

    params = load_params(args)
    tracking.set_uri(params.tracking.uri)
    if not args.data.is_file():
        raise PipelineError(f"--data {args.data}: file not found. Pass a CSV of raw feature rows.")
    loaded = tracking.load_model(args.model)
    served = loaded.unwrap_python_model()
    frame = data.read_csv(args.data, header="auto")
    frame.columns = [str(c) for c in frame.columns]
    try:
        X = data.features_from_frame(frame, served.features)
    except PipelineError as exc:
        raise PipelineError(f"--data {args.data}: {exc}") from None
    rows = pd.DataFrame(X.astype("float64"), columns=list(served.features))
    try:
        out = loaded.predict(rows)
    except PipelineError:
        raise
    except Exception as exc:  # noqa: BLE001 - MLflow's schema enforcement errors
        raise PipelineError(
            f"--data {args.data}: the rows do not fit the model ({str(exc)[:400]}). "
            f"The model needs the columns {data.preview(served.features)}."
        ) from None
    target = getattr(served, "target", None)
    if target in frame.columns and served.task == "classification":
        truth = frame[target].astype(str).to_numpy()
        acc = float((out["prediction"].astype(str).to_numpy() == truth).mean())
        print(f"accuracy against column {target!r}: {acc:.4f} ({len(frame)} rows)", file=sys.stderr)
    if args.out:
        pd.DataFrame(out).to_csv(args.out, index=False)
        print(f"wrote {len(out)} predictions to {args.out}", file=sys.stderr)
    else:
        pd.DataFrame(out).to_csv(sys.stdout, index=False)
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    import subprocess

    from pipeline import tracking

    params = load_params(args)
    tracker = _tracker(params)  # creates the store (and the experiment) if missing
    cmd = tracking.ui_command(tracker.uri, port=args.port)
    print(f"MLflow UI for {tracker.display_uri}: {tracker.ui_url(port=args.port)}")
    print("(Ctrl-C to stop)")
    try:
        return subprocess.call(cmd)
    except FileNotFoundError:
        raise PipelineError("the `mlflow` command is not on PATH; activate the venv.") from None


def cmd_search(args: argparse.Namespace) -> int:
    raise PipelineError("search is not available yet")


def cmd_report(args: argparse.Namespace) -> int:
    raise PipelineError("report is not available yet")


def _sigterm_as_interrupt() -> None:
    """Treat SIGTERM like Ctrl-C so runs end KILLED instead of staying RUNNING."""
    with contextlib.suppress(ValueError):  # ValueError: not the main thread
        signal.signal(signal.SIGTERM, signal.default_int_handler)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("mlflow", "alembic", "optuna", "absl", "tensorflow", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # MLflow's schema hints and source-guessing warnings are noise for a CLI user.
    warnings.filterwarnings("ignore", category=UserWarning, module=r"mlflow(\.|$)")
    _sigterm_as_interrupt()
    handler = {
        "search": cmd_search,
        "train": cmd_train,
        "predict": cmd_predict,
        "report": cmd_report,
        "ui": cmd_ui,
    }[args.command]
    try:
        return handler(args)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("\ninterrupted: runs ended KILLED.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

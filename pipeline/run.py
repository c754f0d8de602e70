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
    parser.add_argument("--worker-of", help=argparse.SUPPRESS)  # internal: a spawned worker
    parser.add_argument("--worker-index", type=int, default=0, help=argparse.SUPPRESS)


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


def start_keras() -> None:
    from pipeline import model

    model.warm_up()


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


def log_dataset(tracker: Any, run_id: str, params: config.Params, prep: Prepared) -> None:
    """The whole data set (raw features and labels) as the run's MLflow dataset input."""
    ds = prep.dataset
    frame = _frame(prep, ds.X, ds.y)
    tracker.log_dataset(
        run_id, frame, name=ds.name, source=params.data.source, target=ds.target_name
    )


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
    start_keras()
    tracker = _tracker(params)
    ds = prep.dataset
    log.info(
        "training on %s: %d rows, %d features, task %s", ds.name, len(ds.y), ds.X.shape[1], ds.task
    )
    with tracker.run("train", tags={"pipeline.kind": "train"}) as run_id:
        tracker.log_params(run_id, config.flatten(params))
        log_dataset(tracker, run_id, params, prep)
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
    # Its own process group: `mlflow ui` starts uvicorn and job-runner children that outlive a
    # SIGTERM to the parent alone, so stopping means signalling the whole group.
    server = subprocess.Popen(cmd, start_new_session=True)
    try:
        return server.wait()
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: stop the server too, that is the normal end
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        print("MLflow UI stopped.")
        return 0


METRICS = {
    "classification": (
        "val_accuracy",
        "val_loss",
        "val_f1",
        "val_precision",
        "val_recall",
        "val_roc_auc",
    ),
    "regression": ("val_loss", "val_mse", "val_rmse", "val_mae", "val_r2"),
}


def _check_metric(params: config.Params, task: str, n_classes: int) -> None:
    metric = params.search.metric
    binary_only = metric == "val_roc_auc" and n_classes != 2
    if metric not in METRICS[task] or binary_only:
        raise PipelineError(
            f"search.metric {metric!r} is not available for {task}; use one of "
            f"{', '.join(METRICS[task])} (with a matching search.direction; val_roc_auc needs "
            "two classes)."
        )


def make_trial_fn(
    params: config.Params, prep: Prepared, tracker: Any, parent_id: str, study: str
) -> Any:
    """The objective: one trial = one nested MLflow run trained with the sampled params."""
    from pipeline import model
    from pipeline.errors import TrialPruned
    from pipeline.search import RUN_ATTR

    metric = params.search.metric

    def trial_fn(ctx: Any) -> float:
        trial_params = config.with_values(params, ctx.values, origin=f"trial {ctx.number}")
        tags = {
            "pipeline.study": study,
            "pipeline.trial": str(ctx.number),
            "optuna.state": "RUNNING",
        }

        def hook(epoch: int, logs: dict[str, float]) -> bool:
            return metric in logs and ctx.should_prune(epoch, logs[metric])

        state, extra = "FAIL", {}
        try:
            with tracker.run(f"trial-{ctx.number:04d}", parent_id=parent_id, tags=tags) as run_id:
                ctx.remember(RUN_ATTR, run_id)
                tracker.log_params(run_id, config.flatten(trial_params))
                try:
                    result = fit(trial_params, prep, seed=params.seed, on_epoch=hook)
                    val = log_training(tracker, run_id, result, prep)
                    with tempfile.TemporaryDirectory() as tmp:
                        weights = model.save(result.model, Path(tmp) / "model.keras")
                        tracker.log_artifact(run_id, weights)
                    if result.stopped_by == "hook":
                        state, extra = "PRUNED", {"pruned_at_epoch": result.epochs_run}
                        raise TrialPruned(f"pruned after epoch {result.epochs_run}")
                    state = "COMPLETE"
                    return val[metric]
                finally:
                    tracker.set_tags(run_id, {"optuna.state": state, **extra})
        finally:
            model.release()

    return trial_fn


def _progress(n_trials: int, metric: str) -> Any:
    def show(s: Any) -> None:
        value = f"{s.value:.4f}" if s.value is not None else "-"
        best = f"{s.best_value:.4f} (#{s.best_number})" if s.best_value is not None else "-"
        secs = f"{s.seconds:.1f}s" if s.seconds is not None else ""
        log.info(
            "trial %d %-8s %s=%s  | finished %d/%d, best %s, pruned %d, failed %d  %s",
            s.number,
            s.state,
            metric,
            value,
            s.finished,
            n_trials,
            best,
            s.pruned,
            s.failed,
            secs,
        )

    return show


def _reconcile(tracker: Any, study: Any, parent_id: str | None) -> int:
    """Close trial runs left RUNNING whose Optuna trial is no longer running (crashed worker)."""
    from pipeline import search

    if not parent_id:
        return 0
    states = search.trial_states(study)
    closed = 0
    for run_id in tracker.running_children(parent_id):
        state = states.get(run_id, "FAIL")
        if state != "RUNNING":
            tracker.set_tags(run_id, {"optuna.state": state, "error": "worker died mid-trial"})
            tracker.end_run(run_id, "KILLED")
            closed += 1
    return closed


def _spawn_workers(
    args: argparse.Namespace, k: int, parent_id: str, study: str, storage: str, uri: str
) -> list[Any]:
    import subprocess

    argv = [
        sys.executable,
        "-m",
        "pipeline.run",
        "search",
        "--workers",
        "1",
        "--worker-of",
        parent_id,
        "--study",
        study,
        "--storage",
        storage,
        "--tracking-uri",
        uri,
    ]
    if args.params:
        argv += ["-p", str(args.params)]
    for o in args.overrides:
        argv += ["--set", o]
    for flag in ("seed", "trials", "timeout"):
        if getattr(args, flag) is not None:
            argv += [f"--{flag}", str(getattr(args, flag))]
    env = {**os.environ, "TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1"}
    return [subprocess.Popen([*argv, "--worker-index", str(i + 1)], env=env) for i in range(k)]


def _parent_artifacts(tracker: Any, parent_id: str, study: Any, params: config.Params) -> Any:
    """Trials table, best params and study plots on the parent run; returns the table."""
    import yaml

    from pipeline import report, search

    frame = search.trials_frame(study)
    metric, maximize = params.search.metric, params.search.direction == "maximize"
    tracker.log_text(parent_id, frame.to_csv(index=False), "trials.csv")
    found = search.best(study)
    if found is None:
        return frame
    number, value, best_params = found
    tracker.log_text(
        parent_id,
        yaml.safe_dump({"trial": number, metric: value, "params": best_params}, sort_keys=False),
        "best_params.yaml",
    )
    c = search.counts(study)
    tracker.log_metrics(
        parent_id,
        {
            f"best_{metric}": value,
            "trials_complete": c["COMPLETE"],
            "trials_pruned": c["PRUNED"],
            "trials_failed": c["FAIL"],
        },
    )
    tracker.log_figure(
        parent_id, report.optimization_history(frame, metric, maximize), "optimization_history.png"
    )
    imp = search.importances(study)
    if imp:
        tracker.log_figure(parent_id, report.importance_figure(imp), "param_importances.png")
    keys = list(params.search.space)
    tracker.log_figure(
        parent_id, report.parallel_coordinates(frame, keys, metric), "parallel_coordinates.png"
    )
    done = frame[frame["state"] == "COMPLETE"].sort_values("value", ascending=not maximize)
    curves = {}
    col = f"user_attrs_{search.RUN_ATTR}"
    for _, row in done.head(params.search.top_k).iterrows():
        if col in row and isinstance(row[col], str):
            curves[f"trial {int(row['number'])}"] = tracker.metric_history(row[col], metric)
    tracker.log_figure(parent_id, report.top_trial_curves(curves, metric), "top_trials_curves.png")
    return frame


def _optimize_to_budget(
    study: Any, fn: Any, params: config.Params, workers: list[Any], progress: Any
) -> None:
    """Run trials here (and wait for the spawned workers) until n_trials have finished.

    Workers stop starting trials once running + finished trials fill the budget; if one of
    those running trials then fails, the budget is topped up here after the workers exit.
    """
    import time

    from pipeline import search

    n_trials, timeout = params.search.n_trials, params.search.timeout
    started = time.monotonic()
    search.optimize(
        study, fn, params.search, n_trials=n_trials, timeout=timeout, on_trial_end=progress
    )
    for w in workers:
        w.wait()
    while True:
        c = search.counts(study)
        left = None if timeout is None else timeout - (time.monotonic() - started)
        if c["finished"] >= n_trials or (left is not None and left <= 0):
            return
        search.reap_stale_trials(study, retries=params.search.retries)  # workers are gone
        search.optimize(
            study, fn, params.search, n_trials=n_trials, timeout=left, on_trial_end=progress
        )
        if search.counts(study)["finished"] == c["finished"]:
            return  # nothing finished (every trial failed): stop rather than loop


def cmd_search(args: argparse.Namespace) -> int:
    from pipeline import search
    from pipeline.tracking import mask_secret

    params = load_params(args)
    if args.workers < 1:
        raise PipelineError(f"--workers {args.workers}: give 1 or more worker processes.")
    prep = prepare(params)
    _check_metric(params, prep.dataset.task, prep.dataset.n_classes)
    if args.workers > 1 or args.worker_of:
        from pipeline import model

        model.configure_threads(1)  # K single-threaded workers beat one K-threaded process
    start_keras()
    tracker = _tracker(params)
    study_name = args.study or experiment_name(params)
    storage_url = args.storage or search.default_storage()
    storage = search.make_storage(storage_url, retries=params.search.retries)
    study = search.open_study(
        study_name,
        storage,
        params.search,
        seed=params.seed,
        max_epochs=params.train.epochs,
        new=args.new and not args.worker_of,
        worker=args.worker_index,
    )
    n_trials = params.search.n_trials
    progress = _progress(n_trials, params.search.metric)
    if args.worker_of:  # a spawned worker: trials only; the parent process does the rest
        fn = make_trial_fn(params, prep, tracker, args.worker_of, study_name)
        search.optimize(
            study,
            fn,
            params.search,
            n_trials=n_trials,
            timeout=params.search.timeout,
            on_trial_end=progress,
        )
        return 0

    for number, _ in search.reap_stale_trials(study, retries=params.search.retries):
        log.warning("trial %d of a dead worker marked FAIL", number)
    parent_id = search.study_attr(study, "mlflow_parent_run_id")
    resumed = tracker.exists(parent_id)
    _reconcile(tracker, study, parent_id if resumed else None)
    ds = prep.dataset
    tags = {
        "pipeline.kind": "study",
        "pipeline.study": study_name,
        "optuna.storage": mask_secret(storage_url),
    }
    before = search.counts(study)
    log.info(
        "study %r: %d/%d trials finished before this run; data %s (%d rows, %s)",
        study_name,
        before["finished"],
        n_trials,
        ds.name,
        len(ds.y),
        ds.task,
    )
    with tracker.run(
        f"study-{study_name}", tags=tags, resume_id=parent_id if resumed else None
    ) as parent_id:
        if not resumed:
            search.set_study_attr(study, "mlflow_parent_run_id", parent_id)
            tracker.log_params(
                parent_id,
                {k: v for k, v in config.flatten(params).items() if not k.startswith("search.")},
            )
            tracker.log_text(
                parent_id, config.space_fingerprint(params.search.space), "search_space.yaml"
            )
            log_dataset(tracker, parent_id, params, prep)
        workers = []
        if args.workers > 1 and before["finished"] < n_trials:
            workers = _spawn_workers(
                args, args.workers - 1, parent_id, study_name, storage_url, tracker.uri
            )
        try:
            fn = make_trial_fn(params, prep, tracker, parent_id, study_name)
            _optimize_to_budget(study, fn, params, workers, progress)
        except BaseException:
            for w in workers:
                w.terminate()
            for w in workers:
                w.wait()
            _reconcile(tracker, study, parent_id)
            _print_study(study, params)
            raise
        _reconcile(tracker, study, parent_id)
        _parent_artifacts(tracker, parent_id, study, params)
        found = search.best(study)
        if found is None:
            raise PipelineError(
                f"study {study_name!r}: no trial completed (see the failed trials' `error` tags "
                "in MLflow); nothing to evaluate or register."
            )
        number, value, best_values = found
        previous = search.study_attr(study, "champion") or {}
        if previous.get("trial") == number and tracker.exists(previous.get("run_id")):
            # Same winner as last time: keep its model; the test split is used once per champion.
            test, where, fresh = previous["test"], previous["model"], False
        else:
            test, where = _train_champion(
                tracker, parent_id, params, prep, study, study_name, found
            )
            fresh = True
    _print_study(study, params)
    from pipeline import report

    how = (
        "retrained on the train split with its params and evaluated once on the test split:"
        if fresh
        else "unchanged since the last run (same best trial; the test split is not used again):"
    )
    print(f"\nchampion = best trial {number} ({params.search.metric} {value:.4f}), {how}")
    print(report.table([{"metric": k, "value": v} for k, v in test.items()], ["metric", "value"]))
    print(f"\nmodel: {where}")
    print(f"open the UI:  python -m pipeline.run ui    then  {tracker.ui_url()}")
    return 0


def _train_champion(
    tracker: Any,
    parent_id: str,
    params: config.Params,
    prep: Prepared,
    study: Any,
    study_name: str,
    found: tuple[int, float, dict[str, Any]],
) -> tuple[dict[str, float], str]:
    """Train the best params on the train split, test once, log, register; remember it."""
    from pipeline import search

    number, _, best_values = found
    champion = config.with_values(params, best_values, origin=f"best trial {number}")
    name = params.tracking.model_name or experiment_name(params)
    tags = {
        "pipeline.study": study_name,
        "pipeline.kind": "champion",
        "pipeline.best_trial": str(number),
    }
    with tracker.run("champion", parent_id=parent_id, tags=tags) as champ_id:
        tracker.log_params(champ_id, config.flatten(champion))
        result = fit(champion, prep, seed=params.seed)
        log_training(tracker, champ_id, result, prep)
        test, uri, version = log_champion(
            tracker,
            champ_id,
            champion,
            prep,
            result,
            register_as=name if params.tracking.register_model else None,
        )
    tracker.log_metrics(parent_id, test)
    where = f"models:/{name}@champion (version {version})" if version else uri
    record = {"trial": number, "run_id": champ_id, "model": where, "test": test}
    search.set_study_attr(study, "champion", record)
    return test, where


def _print_study(study: Any, params: config.Params) -> None:
    from pipeline import report, search

    c = search.counts(study)
    frame = search.trials_frame(study)
    maximize = params.search.direction == "maximize"
    print(f"\nstudy: {c['COMPLETE']} complete, {c['PRUNED']} pruned, {c['FAIL']} failed")
    done = frame[frame["state"] == "COMPLETE"].sort_values("value", ascending=not maximize)
    cols = ["number", "value", *[f"params_{k}" for k in params.search.space]]
    rows = [
        {c.replace("params_", ""): r[c] for c in cols if c in r}
        for _, r in done.head(params.search.top_k).iterrows()
    ]
    if rows:
        print(report.table(rows, [c.replace("params_", "") for c in cols]))


def _scalar(text: str | None) -> Any:
    """MLflow stores params as text; give numbers back as numbers for tables and plots."""
    try:
        return float(text) if text is not None and not text.isalpha() else text
    except ValueError:
        return text


def cmd_report(args: argparse.Namespace) -> int:
    """Top trials of a study read back from the tracking store, and the study plots."""
    import pandas as pd

    from pipeline import report

    params = load_params(args)
    tracker = _tracker(params)
    study = args.study or experiment_name(params)
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
    for noisy in ("mlflow", "alembic", "optuna", "absl", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("tensorflow").setLevel(logging.ERROR)  # retracing notices between trials
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

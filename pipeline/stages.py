"""The one place where the stages are chained: load -> split -> normalize -> train -> evaluate.

Each stage is a pure function of data.py or model.py; this module calls them in order and hands
their results to a `Tracker`. It never talks to MLflow, Optuna or Keras itself, so the `train`
command, a tracked study and the benches all train and log a model in exactly the same way.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline import config
from pipeline.errors import PipelineError

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from pipeline.data import Dataset, Folds, Scaler, Splits, TargetScaler
    from pipeline.model import EpochHook, TrainInput, TrainResult
    from pipeline.tracking import LiveMetrics, Tracker

# What `search.metric` may name, per task (every one of them is computed after each epoch).
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
# What `search.metric: auto` means, per task.
DEFAULT_METRIC = {"classification": "val_accuracy", "regression": "val_rmse"}
# A second objective of a multi-objective search: the network's parameter count (cheap and
# deterministic, unlike a measured latency), logged by every trial.
SIZE_OBJECTIVE = "n_params"


@dataclass(frozen=True)
class Fold:
    """One cross-validation fold, MinMax-scaled by its own scaler (fitted on the fold's
    training part only), with its training part prepared once as model input."""

    index: int
    scaled: Splits  # train / val of this fold; its test split is empty
    scaler: Scaler
    inputs: TrainInput
    target: TargetScaler | None  # regression: fitted on this fold's training targets only


@dataclass(frozen=True)
class Prepared:
    """Data loaded, split and normalized once, shared by every trial of a study.

    `scaled` holds MinMax-scaled features and the targets in their own units; a regression
    target is standardized (`target`, fitted on the train split) only where the network fits it.
    With `split.folds` >= 2, `folds` holds the cross-validation folds of the non-test rows as
    well; `raw`/`scaled` stay the holdout split (the `train` command's), with the same test rows.
    """

    dataset: Dataset
    raw: Splits  # unscaled splits (for input examples and prediction checks)
    scaled: Splits
    scaler: Scaler
    target: TargetScaler | None = None  # regression: what the network's outputs are mapped by
    folds: Folds | None = None
    _inputs: list[TrainInput] = field(default_factory=list, compare=False, repr=False)
    _folds: dict[int, Fold] = field(default_factory=dict, compare=False, repr=False)

    def train_input(self) -> TrainInput:
        """The scaled train split as model input, built on first use (Keras is imported by
        then) and kept for every later trial of the study."""
        if not self._inputs:
            from pipeline.model import TrainInput

            y = self.scaled.y_train
            self._inputs.append(
                TrainInput(
                    self.scaled.X_train, y if self.target is None else self.target.transform(y)
                )
            )
        return self._inputs[0]

    def fold(self, i: int) -> Fold:
        """Cross-validation fold i, scaled and prepared as model input on first use and kept
        for every later trial of the study."""
        if self.folds is None:
            raise ValueError("no cross-validation folds: split.folds is off")
        if i not in self._folds:
            from pipeline import data
            from pipeline.model import TrainInput

            scaled, scaler = data.normalize(self.folds.fold(i))
            y, target = scaled.y_train, None
            if self.dataset.task == "regression":
                target = data.fit_target_scaler(y)
                y = target.transform(y)
            self._folds[i] = Fold(i, scaled, scaler, TrainInput(scaled.X_train, y), target)
        return self._folds[i]

    def refit(self) -> Prepared:
        """The data a cross-validated champion is trained on: every non-test row as the train
        split (a new scaler fitted on them alone), no validation split, the same test rows."""
        if self.folds is None:
            raise ValueError("no cross-validation folds: split.folds is off")
        from pipeline import data

        raw = self.folds.all_rows()
        scaled, scaler = data.normalize(raw)
        regression = self.dataset.task == "regression"
        target = data.fit_target_scaler(raw.y_train) if regression else None
        return Prepared(self.dataset, raw, scaled, scaler, target)


@dataclass(frozen=True)
class Champion:
    """What the champion step produced: test metrics and where the servable model is."""

    test: dict[str, float]
    model_uri: str
    version: str | None


def experiment_name(params: config.Params) -> str:
    return params.tracking.experiment or params.name


def prepare(params: config.Params) -> Prepared:
    """Load, split and normalize (scalers of features and regression target fitted on the
    training split only).

    Data read from CSV files is prepared once per store and cached on disk (pipeline/cache.py,
    under the store's folder: `mlruns/cache/`): a rerun, and every worker process, memory-maps
    the arrays instead of parsing the files again. Only the params sections in
    `PREPARE_KEYS` decide what is prepared: a param added elsewhere that changes it must be
    added there too, or the cache would serve data prepared without it.
    """
    from pipeline import cache, data, tracking

    def build() -> Prepared:
        dataset = data.load(params.data)
        raw = data.split(dataset, params.split, seed=params.seed)
        scaled, scaler = data.normalize(raw)
        target = data.fit_target_scaler(raw.y_train) if dataset.task == "regression" else None
        folds = None
        if params.split.cross_validated:  # the same test rows, the rest cut into k folds
            folds = data.cross_validation(dataset, params.split, seed=params.seed)
        return Prepared(dataset, raw, scaled, scaler, target, folds)

    sources = (params.data.source, params.data.test_source)
    files = [Path(s) for s in sources if s is not None]
    if params.data.source in data.BUILTINS or not all(f.is_file() for f in files):
        return build()  # built-ins load in milliseconds; a missing file is build()'s error
    key = {k: v for k, v in params.model_dump(mode="json").items() if k in PREPARE_KEYS}
    root = tracking.store_home(params.tracking.uri) / "cache"
    return cache.cached(root, key, files, build, digest=lambda p: p.dataset.digest())


PREPARE_KEYS = ("data", "split", "seed")  # the params that `prepare` depends on


def resolve_metric(params: config.Params, prep: Prepared) -> config.Params:
    """`params` with search.metric and search.direction made concrete for the data's task:
    `auto` metric = DEFAULT_METRIC[task], `auto` direction = config.direction_of(metric).

    Refuses a search metric the task cannot produce, before anything is written. A list of
    metrics (multi-objective) starts with a validation metric; `n_params` may follow it.
    """
    task, n_classes = prep.dataset.task, prep.dataset.n_classes
    sp = params.search
    metrics = [DEFAULT_METRIC[task] if m == "auto" else m for m in sp.metrics]
    for i, metric in enumerate(metrics):
        if metric == SIZE_OBJECTIVE and i > 0:
            continue
        binary_only = metric == "val_roc_auc" and n_classes != 2
        if metric not in METRICS[task] or binary_only:
            extra = f", and after it {SIZE_OBJECTIVE}" if sp.multi_objective else ""
            raise PipelineError(
                f"search.metric {metric!r} is not available for {task}; use one of "
                f"{', '.join(METRICS[task])}, or auto (val_roc_auc needs two classes){extra}."
            )
    directions = [
        config.direction_of(m) if d == "auto" else d
        for m, d in zip(metrics, sp.directions, strict=True)
    ]
    metric = metrics if sp.multi_objective else metrics[0]
    direction = directions if sp.multi_objective else directions[0]
    if (metric, direction) == (sp.metric, sp.direction):
        return params
    return config.with_values(
        params, {"search.metric": metric, "search.direction": direction}, origin="search.metric"
    )


def start_keras(*, workers: int = 1) -> None:
    """Import Keras now, its threads sized for one of `workers` processes on this machine, so
    no trial pays TensorFlow's start-up."""
    from pipeline import model

    model.configure_threads(workers)
    model.warm_up()


def frame(prep: Prepared, X: np.ndarray, y: np.ndarray | None = None) -> pd.DataFrame:
    """Raw (unscaled) rows as a data frame with the feature names, optionally with the target."""
    import numpy as np
    import pandas as pd

    out = pd.DataFrame(np.asarray(X, dtype=np.float64), columns=list(prep.dataset.feature_names))
    if y is not None:
        ds = prep.dataset
        out[ds.target_name] = [ds.classes[int(c)] for c in y] if ds.classes else y
    return out


def fit(
    params: config.Params, prep: Prepared, *, seed: int, on_epoch: EpochHook | None = None
) -> TrainResult:
    """Train on the train split, validating (and early stopping) on the val split."""
    return _train(
        params, prep.dataset, prep.scaled, prep.train_input(), prep.target, seed, on_epoch
    )


def _train(
    params: config.Params,
    ds: Dataset,
    splits: Splits,
    inputs: TrainInput,
    target: TargetScaler | None,
    seed: int,
    on_epoch: EpochHook | None = None,
) -> TrainResult:
    """model.train with the params' model and train sections and the data's task: the one
    call behind `fit` (holdout) and `fit_fold` (one cross-validation fold)."""
    from pipeline import model

    return model.train(
        splits,
        params.model,
        params.train,
        task=ds.task,
        n_classes=ds.n_classes,
        seed=seed,
        on_epoch=on_epoch,
        inputs=inputs,
        target=target,
    )


def train_logged(
    live: LiveMetrics,
    params: config.Params,
    prep: Prepared,
    *,
    seed: int,
    on_epoch: EpochHook | None = None,
) -> tuple[TrainResult, dict[str, float]]:
    """Fit into an open run, its per-epoch metrics reaching the run while it trains (live
    curves; see Tracker.live_metrics), then buffer what `log_training` records, to be written
    with the last epochs when the caller's `live` block ends; returns the result and its final
    validation metrics. `on_epoch` (pruning) sees each epoch after it has been buffered."""

    def hook(epoch: int, logs: dict[str, float]) -> bool:
        live.log(epoch, logs)
        return on_epoch is not None and on_epoch(epoch, logs)

    result = fit(params, prep, seed=seed, on_epoch=hook)
    return result, _record_training(live, result, prep)


def fit_fold(params: config.Params, prep: Prepared, i: int, *, seed: int) -> TrainResult:
    """Train on fold i's training part, validating (and early stopping) on its own part.

    No per-epoch hook: in cross-validation the pruner judges a trial between folds.
    """
    fold = prep.fold(i)
    return _train(params, prep.dataset, fold.scaled, fold.inputs, fold.target, seed)


def log_fold(
    tracker: Tracker, run_id: str, i: int, result: TrainResult, prep: Prepared
) -> dict[str, float]:
    """Fold i's per-epoch curves, final validation metrics, epochs run and best epoch, each
    prefixed `fold{i}_`; returns the final validation metrics (unprefixed, e.g. val_accuracy)
    and the network's `n_params` (a possible second objective).

    As in `log_training`, the final metrics are logged after the last epoch (step = epochs run),
    so each `fold{i}_val_*` metric's latest value is the fold's score.
    """
    from pipeline import model

    ds, fold = prep.dataset, prep.fold(i)
    X, y = fold.scaled.X_val, fold.scaled.y_val
    scores = model.evaluate(
        result.model, X, y, task=ds.task, n_classes=ds.n_classes, target=fold.target
    )
    final = {f"val_{k}": v for k, v in scores.items()}
    tag = f"fold{i}_"
    with tracker.live_metrics(run_id) as metrics:  # one write
        metrics.add_history({tag + k: v for k, v in result.history.items()})
        metrics.add(result.epochs_run, {tag + k: v for k, v in final.items()})
        best_epoch = result.best_epoch
        metrics.add(0, {f"{tag}epochs_run": result.epochs_run, f"{tag}best_epoch": best_epoch})
    return {**final, SIZE_OBJECTIVE: float(model.count_params(result.model))}


def refit_epochs(best_epochs: list[int]) -> int:
    """The epochs a cross-validated champion trains on all non-test rows: the median of the
    folds' best epochs (the epochs whose weights each fold kept), rounded half up."""
    import numpy as np

    return max(1, int(np.floor(np.median(best_epochs) + 0.5)))


def log_cv(
    tracker: Tracker, run_id: str, scores: list[dict[str, float]], best_epochs: list[int]
) -> dict[str, float]:
    """The cross-validated result of a trial: for every validation metric the folds share,
    its mean over the folds as the metric itself (e.g. val_accuracy, logged last, at step k, so
    its latest value is the trial's objective) and as `cv_mean_<metric>`, with the spread as
    `cv_std_<metric>`; plus `refit_epochs`. Returns the means."""
    import numpy as np

    keys = [k for k in scores[0] if all(k in s for s in scores)]
    means = {k: float(np.mean([s[k] for s in scores])) for k in keys}
    val = [k for k in keys if k.startswith("val_")]
    spread = {f"cv_std_{k}": float(np.std([s[k] for s in scores])) for k in val}
    tracker.log_metrics(
        run_id,
        {
            **{f"cv_mean_{k}": means[k] for k in val},
            **spread,
            "cv_folds": len(scores),
            "refit_epochs": refit_epochs(best_epochs),
        },
    )
    tracker.log_metrics(run_id, means, step=len(scores))
    return means


def refit(params: config.Params, prep: Prepared, *, epochs: int, seed: int) -> TrainResult:
    """Train a cross-validated champion on `prep` (a `Prepared.refit()`: all non-test rows, no
    validation split) for exactly `epochs` epochs.

    The run stops through the epoch hook rather than a shorter `train.epochs`, so a learning
    rate schedule (e.g. cosine over train.epochs) is the very one the folds trained under.
    """
    return fit(params, prep, seed=seed, on_epoch=lambda epoch, logs: epoch + 1 >= epochs)


def score(result: TrainResult, prep: Prepared, split: str) -> dict[str, float]:
    """Metrics of a trained model on one split ('val' or 'test'), keys prefixed by the split."""
    from pipeline import model

    X = getattr(prep.scaled, f"X_{split}")
    y = getattr(prep.scaled, f"y_{split}")
    ds = prep.dataset
    metrics = model.evaluate(
        result.model, X, y, task=ds.task, n_classes=ds.n_classes, target=prep.target
    )
    return {f"{split}_{k}": v for k, v in metrics.items()}


DATASET_SAMPLE = 1000  # rows of a dataset input that MLflow infers its schema from


def log_dataset(tracker: Tracker, run_id: str, params: config.Params, prep: Prepared) -> None:
    """The whole data set (raw features and labels) as the run's MLflow dataset input; a
    separate test file (data.test_source) as a second input, in context `test`.

    The digest hashes every row (data.content_digest, in place over the memory-mapped
    arrays, whose pages are released after); MLflow infers the schema from the first
    DATASET_SAMPLE rows only, so no copy of the whole data set is built (such a copy was the
    peak of a run's memory at MNIST scale).
    """
    from pipeline import cache, data

    ds = prep.dataset
    about = (ds.feature_names, ds.target_name, ds.classes)
    parts = [(ds.X, ds.y, ds.name, params.data.source, "training")]
    if ds.test is not None:
        parts.append((ds.test.X, ds.test.y, f"{ds.name}-test", ds.test.source, "test"))
    for X, y, name, source, context in parts:
        tracker.log_dataset(
            run_id,
            frame(prep, X[:DATASET_SAMPLE], y[:DATASET_SAMPLE]),
            rows=len(y),
            digest=data.content_digest(X, y, about=about),
            name=name,
            source=source,
            target=ds.target_name,
            context=context,
        )
        cache.release(X, y)  # read whole once to hash; training reads the scaled splits


def log_training(
    tracker: Tracker, run_id: str, result: TrainResult, prep: Prepared
) -> dict[str, float]:
    """Per-epoch curves, epochs run, seconds, parameter count (`n_params`) and final validation
    metrics of one training, in one write; returns the latter two (see _record_training)."""
    with tracker.live_metrics(run_id) as metrics:
        return _record_training(metrics, result, prep)


def _record_training(metrics: LiveMetrics, result: TrainResult, prep: Prepared) -> dict[str, float]:
    """Buffer what `log_training` logs into `metrics` (written when its block ends, in one
    batch); the (key, epoch) pairs it already holds (logged live) are not written twice.

    The final validation metrics (of the model as it ends, e.g. with the best epoch's weights
    restored) are logged at step = epochs run, after the last epoch, so they are each metric's
    latest value: what the MLflow UI shows and sorts by equals the trial's objective.
    """
    from pipeline import model

    metrics.add_history(result.history)
    final = score(result, prep, "val")
    metrics.add(result.epochs_run, final)
    size = {SIZE_OBJECTIVE: float(model.count_params(result.model))}
    metrics.add(0, {"epochs_run": result.epochs_run, "train_seconds": result.seconds, **size})
    return {**final, **size}


HISTORY_KEYS = {
    "classification": ("loss", "accuracy", "val_loss", "val_accuracy", "lr"),
    "regression": ("loss", "rmse", "mae", "val_loss", "val_rmse", "val_mae", "lr"),
}


def load_trained(tracker: Tracker, run_id: str, prep: Prepared) -> TrainResult:
    """A trial's trained model as its run logged it (weights and per-epoch curves), so the best
    trial's own model can become the champion without training it again."""
    from pipeline import model

    run_metrics = tracker.run_metrics(run_id)
    epochs = int(run_metrics.get("epochs_run", 0))
    history = {
        key: tracker.metric_history(run_id, key)[:epochs]
        for key in HISTORY_KEYS[prep.dataset.task]
        if key in run_metrics
    }
    with tempfile.TemporaryDirectory() as tmp:
        net = model.load(tracker.download_artifact(run_id, "model.keras", tmp))
    seconds = float(run_metrics.get("train_seconds", 0.0))
    return model.TrainResult(net, history, epochs, seconds, "completed", best_epoch=epochs)


def log_weights(tracker: Tracker, run_id: str, result: TrainResult) -> None:
    """The trained network as a Keras v3 file artifact of the run."""
    from pipeline import model

    with tempfile.TemporaryDirectory() as tmp:
        tracker.log_artifact(run_id, model.save(result.model, Path(tmp) / "model.keras"))


def log_champion(
    tracker: Tracker,
    run_id: str,
    params: config.Params,
    prep: Prepared,
    result: TrainResult,
    *,
    register_as: str | None,
) -> Champion:
    """Test metrics (the test split's only use), plots, report and the servable model."""
    from pipeline import model, report, serving

    ds = prep.dataset
    test = score(result, prep, "test")
    tracker.log_metrics(run_id, test)
    tracker.log_figure(run_id, report.learning_curves(result.history), "learning_curves.png")
    scores = model.predict_scores(result.model, prep.scaled.X_test, target=prep.target)
    pred = model.to_labels(scores, ds.task)
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
        "target_scaler": prep.target.to_dict() if prep.target is not None else None,
        "features": list(ds.feature_names),
        "classes": list(ds.classes),
        "task": ds.task,
        "target": ds.target_name,
    }
    example = frame(prep, prep.raw.X_test[:5])
    with tempfile.TemporaryDirectory() as tmp:
        artifacts = {
            serving.KERAS_MODEL: model.save(result.model, Path(tmp) / "model.keras"),
            serving.PREPROCESS: Path(tmp) / "preprocess.json",
        }
        artifacts[serving.PREPROCESS].write_text(json.dumps(preprocess))
        wrapper = serving.ServingModel()  # as MLflow will load it: its output is the signature's
        wrapper.load_from(str(artifacts[serving.KERAS_MODEL]), str(artifacts[serving.PREPROCESS]))
        uri, version = tracker.log_model(
            run_id,
            code=Path(serving.__file__).with_name("serving_entry.py"),
            artifacts=artifacts,
            input_example=example,
            output_example=wrapper.predict(None, example),
            register_as=register_as,
        )
    return Champion(test, uri, version)

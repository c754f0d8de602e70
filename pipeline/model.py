"""Stages build -> train -> evaluate: the project's only Keras (and TensorFlow) user.

Keras is imported inside the functions, never at module import, so the CLI, config errors and
data errors answer before TensorFlow's multi-second start-up. The builder takes plain params,
never an Optuna trial; the search talks to training through the `on_epoch` hook alone.
"""

from __future__ import annotations

import gc
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from pipeline import metrics
from pipeline.config import ModelParams, TrainParams
from pipeline.data import Splits, TargetScaler
from pipeline.errors import TrainingDiverged

if TYPE_CHECKING:
    import keras

# Why fit ended: all epochs ran, early stopping ended it, or the epoch hook (the pruner) did.
StopReason = Literal["completed", "early_stopping", "hook"]

# on_epoch(epoch, logs) -> True asks training to stop now (used for pruning). `logs` holds the
# epoch's entries of the final history: the loss and metrics, every val_* metric, and "lr".
EpochHook = Callable[[int, dict[str, float]], bool]

_MAX_STEPS_PER_EXECUTION = 64


def _executions(steps: int) -> tuple[int, bool]:
    """Steps per graph call for an epoch of `steps` steps, and whether the prepared input can
    be one endless (repeated) dataset read by a single iterator for the whole fit.

    Keras's TensorFlow trainer makes new iterators over a finite dataset every epoch (more than
    a small epoch's arithmetic); over a repeated one it keeps one, but a graph call runs its
    full count of steps, so that count must divide the epoch: the largest divisor up to the cap.
    When only small divisors exist (a prime step count), the finite dataset is kept.
    """
    cap = min(steps, _MAX_STEPS_PER_EXECUTION)
    divisor = max(k for k in range(1, cap + 1) if steps % k == 0)
    if divisor * 4 >= cap:
        return divisor, True
    return cap, False


@dataclass
class TrainResult:
    """A trained model and what happened while training it."""

    model: keras.Model
    history: dict[str, list[float]]
    epochs_run: int
    seconds: float
    stopped_by: StopReason
    best_epoch: int  # the epochs the returned weights trained for (early stopping's restored one)


class TrainInput:
    """The training split as model input, built once per study and reused by every trial.

    On the TensorFlow backend, `fit` on numpy arrays rebuilds its tf.data pipeline every epoch
    (tens of milliseconds each, more than a small MLP's arithmetic); a dataset built once and
    re-batched per trial costs one iterator per epoch instead. Other backends take the arrays
    as they are.

    What is shuffled and batched is the rows' indices; each batch then takes its rows from the
    arrays as they are (memory-mapped from the data cache, pages shared by every worker). A
    tensor copy of the rows costs twice their size in TensorFlow (~240 MB at MNIST scale), and
    shuffling the rows themselves held a cached copy plus a shuffle buffer of the whole split.
    The permutation depends only on the seed and the row count, so the batches are
    exactly those of shuffling the rows.
    """

    def __init__(self, X: np.ndarray, y: np.ndarray) -> None:
        self.X = np.ascontiguousarray(X, dtype=np.float32)
        self.y = np.ascontiguousarray(y)

    def rows(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The rows at `index` (one batch), in that order."""
        return self.X[index], self.y[index]

    def batches(
        self, batch_size: int, seed: int, *, shuffle: bool = True, repeat: bool = False
    ) -> Any:
        """A shuffled (seeded, reshuffled each epoch), batched, prefetched tf.data dataset;
        with `repeat`, endless: epoch after epoch, each its own shuffle (fit then needs
        steps_per_epoch)."""
        import tensorflow as tf

        types = (tf.float32, tf.as_dtype(self.y.dtype))
        shapes = ((None, *self.X.shape[1:]), (None, *self.y.shape[1:]))

        def take(index: Any) -> tuple[Any, Any]:
            X, y = tf.numpy_function(self.rows, [index], types, stateful=False)
            return tf.ensure_shape(X, shapes[0]), tf.ensure_shape(y, shapes[1])

        ds = tf.data.Dataset.range(len(self.X))
        if shuffle:
            ds = ds.shuffle(len(self.X), seed=seed, reshuffle_each_iteration=True)
        ds = ds.batch(batch_size)
        if repeat:
            ds = ds.repeat()
        return ds.map(take).prefetch(tf.data.AUTOTUNE)


def configure_threads(workers: int) -> None:
    """Size the backend's thread pools for one of `workers` training processes on this
    machine; must run before the backend starts any work.

    Several workers: one thread each, on both backends (K single-threaded processes beat one
    K-threaded process; bench/search_modes.py measures it). One worker on TensorFlow: compute
    threads are the cores but one, since the spare core runs tf.data's own input threads,
    tracking writes and the heartbeat, which otherwise queue behind TensorFlow's compute pool
    (bench/threads.py; figures in docs/benchmarks.md). One worker on JAX keeps XLA's default.
    """
    from pipeline import machine

    n = 1 if workers > 1 else max(1, machine.usable_cores() - 1)
    # A setting already in the environment (the user's, or a --workers parent's) is
    # TensorFlow's own to read at start-up; only a count decided here is also set below.
    decided_here = "TF_NUM_INTRAOP_THREADS" not in os.environ
    os.environ.setdefault("TF_NUM_INTRAOP_THREADS", str(n))
    os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")
    if workers > 1:  # JAX/XLA on the CPU: one thread per process
        os.environ.setdefault(
            "XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
        )
    _quiet_tensorflow()
    if backend() != "tensorflow" or not decided_here:
        return
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(n)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:  # TensorFlow already initialised: the env vars above still apply
        pass


def backend() -> str:
    """The Keras backend in use: `tensorflow` (default) or `jax` (KERAS_BACKEND=jax, with
    `pip install -e ".[jax]"`)."""
    import keras

    return keras.backend.backend()


def _quiet_tensorflow() -> None:
    """Import TensorFlow and Keras with the C++ start-up lines (CUDA stub, oneDNN) silenced.

    Those lines are written by absl straight to file descriptor 2 before logging is set up, so
    no environment variable or Python logger reaches them; stderr is pointed at /dev/null for
    the import only. A failing import still raises with its Python traceback.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    if "keras" in sys.modules:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            # TensorFlow comes first even on the JAX backend: Keras imports it anyway for its
            # input pipelines, and its lines must be silenced too.
            import tensorflow as tf

            tf.config.list_physical_devices("GPU")  # the CUDA probe logs on first use
            import keras  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def warm_up() -> None:
    """Import Keras/TensorFlow now (3-4 s), before any run or trial starts.

    Keeps that one-off cost out of the first trial's duration, and keeps Ctrl-C from landing
    inside TensorFlow's import, which swallows the interrupt and leaves Keras half-imported.
    """
    _quiet_tensorflow()
    import keras  # noqa: F401


def output_spec(task: str, n_classes: int, params: ModelParams) -> tuple[int, str, str]:
    """Units, activation and loss of the output layer for the task."""
    if task == "regression":
        return (
            1,
            params.output_activation if params.output_activation != "auto" else "linear",
            "mse",
        )
    if n_classes == 2 and params.output_activation in ("auto", "sigmoid"):
        return 1, "sigmoid", "binary_crossentropy"
    return n_classes, "softmax", "sparse_categorical_crossentropy"


def build(n_features: int, task: str, n_classes: int, params: ModelParams) -> Any:
    """A dense MLP: hidden layers (optional batch norm, dropout), task-specific output."""
    _quiet_tensorflow()
    import keras

    layers: list[Any] = [keras.Input(shape=(n_features,), name="features")]
    for units in params.hidden:
        layers.append(keras.layers.Dense(units, kernel_initializer=params.initializer))
        if params.batch_norm:
            layers.append(keras.layers.BatchNormalization())
        layers.append(keras.layers.Activation(params.activation))
        if params.dropout > 0:
            layers.append(keras.layers.Dropout(params.dropout))
    units, activation, _ = output_spec(task, n_classes, params)
    layers.append(keras.layers.Dense(units, activation=activation, name="output"))
    return keras.Sequential(layers, name="mlp")


def learning_rate(params: TrainParams, steps_per_epoch: int) -> Any:
    """The initial rate or a Keras schedule; decay counts epochs k (staircase per epoch).

    inverse_time: lr0 / (1 + rate*k);  exponential: lr0 * exp(-rate*k);
    step: lr0 / (1 + rate)^floor(k / step_every);  cosine: lr0 * (1 + cos(pi*t/T)) / 2 over
    all training steps (rate unused). Built-in schedules only, so models reload in safe mode.
    """
    import keras

    lr0, decay = params.learning_rate, params.lr_decay
    sched = keras.optimizers.schedules
    if decay.kind == "inverse_time":
        return sched.InverseTimeDecay(lr0, steps_per_epoch, decay.rate, staircase=True)
    if decay.kind == "exponential":
        return sched.ExponentialDecay(lr0, steps_per_epoch, math.exp(-decay.rate), staircase=True)
    if decay.kind == "step":
        every = steps_per_epoch * decay.step_every
        return sched.ExponentialDecay(lr0, every, 1.0 / (1.0 + decay.rate), staircase=True)
    if decay.kind == "cosine":
        return sched.CosineDecay(lr0, steps_per_epoch * params.epochs)
    return lr0


def _optimizer(params: TrainParams, lr: Any) -> Any:
    import keras

    opt = keras.optimizers
    if params.optimizer == "sgd":
        return opt.SGD(learning_rate=lr, momentum=params.momentum)
    return {"adam": opt.Adam, "rmsprop": opt.RMSprop, "adamw": opt.AdamW, "nadam": opt.Nadam}[
        params.optimizer
    ](learning_rate=lr)


def _make_callback(
    on_epoch: EpochHook | None,
    X_val: np.ndarray,
    y_val: np.ndarray,
    task: str,
    n_classes: int,
    target: TargetScaler | None = None,
) -> Any:
    import keras

    class EpochRecorder(keras.callbacks.Callback):
        """Adds validation metrics, records the learning rate used, catches divergence and
        runs the hook. It runs first, so EarlyStopping and History see the val_* entries.

        With a standardized regression target, the network's outputs are mapped back and the
        training loss, RMSE and MAE rescaled, so every logged number is in the target's units
        (a constant factor: early stopping and pruning decide exactly as on the scaled values).
        """

        def __init__(self) -> None:
            super().__init__()
            self.lr: list[float] = []
            self.diverged: str | None = None
            self.hook_stopped = False

        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            rate = self.model.optimizer.learning_rate
            self.lr.append(float(keras.ops.convert_to_numpy(rate)))

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            if logs is None:
                logs = {}
            if target is not None:
                for key, power in (("loss", 2), ("rmse", 1), ("mae", 1)):
                    if key in logs:
                        logs[key] = float(logs[key]) * target.scale**power
            if len(y_val):  # no validation split: a refit on all its rows (cross-validation)
                scores = np.asarray(self.model.predict_on_batch(X_val))
                if target is not None:
                    scores = target.inverse(scores)
                logs.update(
                    metrics.validation_logs(scores, y_val, task, n_classes)
                )  # shared with later callbacks
            logs = {k: float(v) for k, v in logs.items()}
            bad = [k for k, v in logs.items() if not math.isfinite(v)]
            if bad:
                self.diverged = f"{bad[0]} became {logs[bad[0]]} at epoch {epoch + 1}"
                self.model.stop_training = True
                return
            if on_epoch is not None and on_epoch(epoch, {**logs, "lr": self.lr[-1]}):
                self.hook_stopped = True
                self.model.stop_training = True

    return EpochRecorder()


def train(
    splits: Splits,
    model_params: ModelParams,
    train_params: TrainParams,
    *,
    task: str,
    n_classes: int,
    seed: int,
    on_epoch: EpochHook | None = None,
    inputs: TrainInput | None = None,
    shuffle: bool = True,
    target: TargetScaler | None = None,
) -> TrainResult:
    """Build and fit the MLP on the (normalized) train split, validating on the val split (an
    empty one trains without validation: a cross-validated champion's refit).

    `inputs` is the train split prepared once as model input (see TrainInput), with the target
    as the network fits it; without it, the arrays are fed as they are. `target` (regression)
    standardizes y_train for fitting; every metric and the history stay in the target's units
    (the model's outputs need `target.inverse`: predict_scores). Seeded and deterministic.
    Raises TrainingDiverged when the loss or a metric turns NaN or infinite.
    """
    _quiet_tensorflow()
    import keras

    _seed_everything(seed)
    started = time.perf_counter()
    model = build(splits.X_train.shape[1], task, n_classes, model_params)
    steps = max(1, math.ceil(len(splits.X_train) / train_params.batch_size))
    prepared = inputs is not None and keras.backend.backend() == "tensorflow"
    per_call, endless = (
        _executions(steps) if prepared else (min(steps, _MAX_STEPS_PER_EXECUTION), False)
    )
    _compile(model, task, n_classes, model_params, train_params, steps, per_call)
    recorder = _make_callback(on_epoch, splits.X_val, splits.y_val, task, n_classes, target)
    early = _early_stopping(train_params)
    if keras.backend.backend() == "tensorflow":
        _build_state(model, splits.X_train[:1], splits.y_train[:1])
    if prepared:
        batches = inputs.batches(train_params.batch_size, seed, shuffle=shuffle, repeat=endless)
        data = {"x": batches, "shuffle": False, "steps_per_epoch": steps if endless else None}
    else:  # the arrays as they are, the target as the network fits it
        y_fit = splits.y_train if target is None else target.transform(splits.y_train)
        data = {"x": splits.X_train, "y": y_fit, "batch_size": train_params.batch_size}
        data["shuffle"] = shuffle
    callbacks = [recorder] if early is None else [recorder, early]
    fit = model.fit(**data, epochs=train_params.epochs, verbose=0, callbacks=callbacks)
    history = {k: [float(v) for v in vals] for k, vals in fit.history.items()}
    epochs_run = len(history.get("loss", []))
    history["lr"] = recorder.lr[:epochs_run]
    seconds = time.perf_counter() - started
    if recorder.diverged:
        raise TrainingDiverged(f"training diverged: {recorder.diverged}")
    stopped_by: StopReason = "completed"
    if recorder.hook_stopped:
        stopped_by = "hook"
    elif epochs_run < train_params.epochs:
        stopped_by = "early_stopping"
    return TrainResult(model, history, epochs_run, seconds, stopped_by, _best(early, epochs_run))


def _best(early: keras.callbacks.EarlyStopping | None, epochs_run: int) -> int:
    """The epochs the returned weights were trained for: early stopping's restored best epoch."""
    if early is not None and early.restore_best_weights and early.best_weights is not None:
        return int(early.best_epoch) + 1
    return epochs_run


def _seed_everything(seed: int) -> None:
    """Python, NumPy and the backend seeded, and TensorFlow's ops deterministic: the same
    params and seed give the same weights."""
    import keras

    keras.utils.set_random_seed(seed)
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()


def _compile(
    model: keras.Model,
    task: str,
    n_classes: int,
    model_params: ModelParams,
    train_params: TrainParams,
    steps: int,
    per_call: int,
) -> None:
    """The optimizer with its learning-rate schedule, the task's loss and metrics."""
    import keras

    _, _, loss = output_spec(task, n_classes, model_params)
    metrics: list[Any] = (
        [keras.metrics.RootMeanSquaredError(name="rmse"), "mae"]
        if task == "regression"
        else ["accuracy"]
    )
    model.compile(
        optimizer=_optimizer(train_params, learning_rate(train_params, steps)),
        loss=loss,
        metrics=metrics,
        # Run several steps per graph call: small MLPs are bound by per-step overhead.
        steps_per_execution=per_call,
    )


def _early_stopping(train_params: TrainParams) -> keras.callbacks.EarlyStopping | None:
    """Keras's early stopping as `train.early_stopping` sets it (patience 0: off)."""
    import keras

    es = train_params.early_stopping
    if es.patience <= 0:
        return None
    return keras.callbacks.EarlyStopping(
        monitor=es.monitor, patience=es.patience, restore_best_weights=es.restore_best_weights
    )


def _build_state(model: Any, X: np.ndarray, y: np.ndarray) -> None:
    """Create the compiled model's metric, loss and optimizer variables now, from one row's
    shapes, before `fit` traces its train step.

    Without a distribution strategy, Keras's TensorFlow trainer defers this to the first trace
    of the train step (`_maybe_symbolic_build` returns early); a tf.function that creates
    variables while tracing is traced again to run without creating them, so each trial paid
    two traces of the step (~0.25 s each on the digits MLP, a quarter of a 30-epoch trial).
    This is the build Keras itself runs first when a strategy is set, and the JAX trainer
    always runs; it creates zeros, so the training is unchanged.
    """
    model._symbolic_build(data_batch=(X.astype(np.float32), y, None))


def predict_scores(
    model: Any, X: np.ndarray, batch_size: int = 4096, *, target: TargetScaler | None = None
) -> np.ndarray:
    """Model outputs: class probabilities (n, k), a binary probability (n, 1) or values (n, 1),
    the latter mapped back to the target's units with `target` (a standardized target).

    Direct calls in large batches, not `model.predict`: predict builds a tf.data pipeline per
    call, which costs more than a small MLP's forward pass and logs TensorFlow noise.
    """
    import keras

    X = np.asarray(X, dtype=np.float32)
    parts = [
        keras.ops.convert_to_numpy(model(X[i : i + batch_size], training=False))
        for i in range(0, max(len(X), 1), batch_size)
    ]
    out = np.concatenate(parts) if len(X) else np.asarray(parts[0])
    return out if target is None else target.inverse(out)


def to_labels(scores: np.ndarray, task: str) -> np.ndarray:
    """Class codes from scores (or the regression values themselves)."""
    if task == "regression":
        return scores.reshape(-1)
    if scores.shape[1] == 1:
        return (scores[:, 0] >= 0.5).astype(np.int64)
    return scores.argmax(axis=1).astype(np.int64)


def evaluate(
    model: Any,
    X: np.ndarray,
    y: np.ndarray,
    *,
    task: str,
    n_classes: int,
    target: TargetScaler | None = None,
) -> dict:
    """Metrics on one split: accuracy, loss, macro precision/recall/F1, ROC AUC (binary);
    MSE, RMSE, MAE, R² and loss (= MSE) for regression, in y's units (`target` maps the
    outputs of a network fitted on a standardized target back)."""
    from sklearn import metrics as skm

    scores = predict_scores(model, X, target=target)
    if task == "regression":
        pred = scores.reshape(-1)
        mse = float(skm.mean_squared_error(y, pred))
        out = {
            "loss": mse,
            "mse": mse,
            "rmse": math.sqrt(mse),
            "mae": float(skm.mean_absolute_error(y, pred)),
        }
        out["r2"] = float(skm.r2_score(y, pred)) if len(y) > 1 else float("nan")
    else:
        probs = np.hstack([1 - scores, scores]) if scores.shape[1] == 1 else scores
        probs = np.clip(probs, 1e-7, 1.0)
        probs = probs / probs.sum(axis=1, keepdims=True)
        pred = to_labels(scores, task)
        labels = list(range(n_classes))
        p, r, f1, _ = skm.precision_recall_fscore_support(
            y, pred, labels=labels, average="macro", zero_division=0
        )
        out = {
            "accuracy": float(skm.accuracy_score(y, pred)),
            "loss": float(skm.log_loss(y, probs, labels=labels)),
            "precision": float(p),
            "recall": float(r),
            "f1": float(f1),
        }
        if n_classes == 2 and len(np.unique(y)) == 2:
            out["roc_auc"] = float(skm.roc_auc_score(y, probs[:, 1]))
    if not all(math.isfinite(v) for k, v in out.items() if k != "r2"):
        raise TrainingDiverged(f"evaluation produced a non-finite metric: {out}")
    return out


def count_params(model: Any) -> int:
    """Trainable and non-trainable weights of the network (a size objective)."""
    return int(model.count_params())


def save(model: Any, path: str | Path) -> Path:
    """Save in the Keras v3 format (no pickle, no Lambda layers), without the optimizer.

    Every saved model here is loaded to predict (`load`: compile=False), never to go on
    training, and the optimizer's state would be most of the file: Adam keeps two slots per
    weight (default preset: 1.05 MB with it, 0.36 MB without) and saving it takes ~40 % of
    the save's time, paid once per trial. Keras 3 has no `include_optimizer` for this format,
    so the model is saved with its optimizer detached for the moment of the save. (Loaded
    with compile=True, such a file gets a fresh optimizer; Keras warns that it has no saved
    state for it.)
    """
    path = Path(path)
    optimizer = getattr(model, "optimizer", None)  # a loaded (uncompiled) model has none
    if optimizer is None:
        model.save(path)
        return path
    model.optimizer = None
    try:
        model.save(path)
    finally:
        model.optimizer = optimizer
    return path


def load(path: str | Path) -> Any:
    """Load a saved model in Keras safe mode (refuses arbitrary code)."""
    _quiet_tensorflow()
    import keras

    return keras.saving.load_model(Path(path), compile=False, safe_mode=True)


def release() -> None:
    """Free graph state between trials so memory does not grow over a long study.

    Keras's clear_session ends in a full garbage collection. The first call also moves what
    survives it (the frameworks as imported, the prepared data) out of the collector's sight
    for good (`gc.freeze`), so later collections walk only what trials made. Before it,
    TensorFlow's registry of traced custom gradients is emptied, or it would keep every trial's
    train step alive. Call it between trainings only: it resets process-wide state.
    """
    import keras

    if keras.backend.backend() == "tensorflow":
        _forget_traced_custom_gradients()
    keras.backend.clear_session()  # collects garbage last, so the freed graphs go now
    if gc.get_freeze_count() == 0:
        gc.freeze()


def _forget_traced_custom_gradients() -> None:
    """Drop the gradient functions TensorFlow registered while tracing `tf.custom_gradient`s.

    Keras's TensorFlow optimizer sums gradients through `all_reduce`, a `tf.custom_gradient`;
    each trace registers its gradient function (`CustomGradient-<uid>`) in TensorFlow's
    process-wide registry, which nothing empties (tensorflow#97697), and its closure keeps the
    whole traced step alive. A registered gradient is looked up only while tracing, so none is
    needed between trainings. A TensorFlow that keeps no registry there is left alone (a private
    of TensorFlow's: tests/test_model.py fails if it moves).
    """
    from tensorflow.python.framework import ops

    registry = getattr(getattr(ops, "_gradient_registry", None), "_registry", None)
    if not isinstance(registry, dict):
        return
    for name in [n for n in registry if str(n).startswith("CustomGradient-")]:
        del registry[name]

import io
import math
import zipfile

import numpy as np
import pytest

from pipeline import machine, metrics, model
from pipeline.config import LrDecayParams, ModelParams, TrainParams
from pipeline.data import Splits
from pipeline.errors import TrainingDiverged


def blobs(n=120, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    X = (rng.normal(size=(n, 4)) * 0.3 + y[:, None]).astype(np.float32) / classes
    return Splits(X[:80], y[:80], X[80:100], y[80:100], X[100:], y[100:])


SMALL = ModelParams(hidden=(8,), activation="relu", initializer="he_normal")


def fit(splits, train=None, model_params=SMALL, **kw):
    train = train or TrainParams(epochs=5, batch_size=16)
    return model.train(
        splits, model_params, train, task="classification", n_classes=3, seed=3, **kw
    )


def test_training_is_deterministic_for_a_seed():
    a, b = fit(blobs()), fit(blobs())
    assert a.history == b.history
    assert a.epochs_run == 5 and set(a.history) >= {
        "loss",
        "accuracy",
        "val_loss",
        "val_accuracy",
        "lr",
    }


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("none", lambda k: 0.1),
        ("inverse_time", lambda k: 0.1 / (1 + 0.5 * k)),
        ("exponential", lambda k: 0.1 * math.exp(-0.5 * k)),
        ("step", lambda k: 0.1 / 1.5 ** (k // 2)),
    ],
)
def test_learning_rate_decay_per_epoch_is_logged(kind, expected):
    train = TrainParams(
        optimizer="sgd",
        learning_rate=0.1,
        epochs=5,
        batch_size=16,
        lr_decay=LrDecayParams(kind=kind, rate=0.5, step_every=2),
    )
    lrs = fit(blobs(), train).history["lr"]
    assert lrs == pytest.approx([expected(k) for k in range(5)], rel=1e-5)


def test_cosine_decay_falls_towards_zero():
    train = TrainParams(
        learning_rate=0.1, epochs=6, batch_size=16, lr_decay=LrDecayParams(kind="cosine")
    )
    lrs = fit(blobs(), train).history["lr"]
    assert lrs[0] == pytest.approx(0.1) and lrs[-1] < 0.05
    assert all(x > y for x, y in zip(lrs, lrs[1:], strict=False))


def test_divergence_raises():
    train = TrainParams(optimizer="sgd", learning_rate=1e12, epochs=5, batch_size=16)
    with pytest.raises(TrainingDiverged, match="epoch"):
        fit(blobs(), train, ModelParams(hidden=(8,), activation="linear"))


def test_hook_can_stop_training():
    seen = []
    result = fit(
        blobs(), on_epoch=lambda epoch, logs: seen.append(logs["val_accuracy"]) or epoch == 1
    )
    assert result.epochs_run == 2 and result.stopped_by == "hook" and len(seen) == 2


def test_early_stopping_watches_validation_loss():
    noisy = blobs()
    rng = np.random.default_rng(5)  # labels unrelated to features: val_loss soon stops improving
    noisy = Splits(
        noisy.X_train,
        rng.permutation(noisy.y_train),
        noisy.X_val,
        rng.permutation(noisy.y_val),
        noisy.X_test,
        noisy.y_test,
    )
    train = TrainParams(epochs=200, batch_size=16, learning_rate=0.05)
    result = fit(noisy, train, ModelParams(hidden=(64, 64)))
    assert result.stopped_by == "early_stopping" and result.epochs_run < 200


def test_validation_logs_match_keras_evaluate():
    splits = blobs()
    result = fit(splits)
    scores = model.predict_scores(result.model, splits.X_val)
    ours = metrics.validation_logs(scores, splits.y_val, "classification")
    result.model.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    keras_loss, keras_acc = result.model.evaluate(splits.X_val, splits.y_val, verbose=0)
    assert ours["val_loss"] == pytest.approx(keras_loss, rel=1e-4)
    assert ours["val_accuracy"] == pytest.approx(keras_acc)


def binary(n=120, seed=1):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    X = (rng.normal(size=(n, 3)) * 0.6 + y[:, None]).astype(np.float32)
    return Splits(X[:80], y[:80], X[80:100], y[80:100], X[100:], y[100:])


def regression(n=100, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.uniform(size=(n, 2)).astype(np.float32)
    y = (X @ np.array([1.0, -2.0]) + 0.5).astype(np.float32)
    return Splits(X[:60], y[:60], X[60:80], y[60:80], X[80:], y[80:])


@pytest.mark.parametrize(
    "task,n_classes,splits",
    [
        ("classification", 3, blobs()),
        ("classification", 2, binary()),
        ("regression", 0, regression()),
    ],
    ids=["3-class", "binary", "regression"],
)
def test_every_search_metric_is_logged_each_epoch_and_ends_at_evaluates_value(
    task, n_classes, splits
):
    """So any allowed search.metric can prune: each epoch's logs hold all of them, and the
    last epoch's equal scikit-learn's (model.evaluate) on the same model and split."""
    from pipeline.stages import METRICS

    seen: list[dict[str, float]] = []
    res = model.train(
        splits,
        SMALL,
        TrainParams(epochs=4, batch_size=16, learning_rate=0.02),
        task=task,
        n_classes=n_classes,
        seed=0,
        on_epoch=lambda epoch, logs: seen.append(dict(logs)) and False,
    )
    wanted = {m for m in METRICS[task] if m != "val_roc_auc" or n_classes == 2}
    assert len(seen) == 4 and all(wanted <= set(logs) for logs in seen)
    final = model.evaluate(res.model, splits.X_val, splits.y_val, task=task, n_classes=n_classes)
    for name in wanted:
        assert seen[-1][name] == pytest.approx(final[name.removeprefix("val_")], rel=1e-4), name


def test_epoch_metrics_agree_with_scikit_learn_on_awkward_predictions():
    """Macro averages over every class (0 for a class never predicted or never present),
    AUC with tied scores: the same numbers scikit-learn gives."""
    from sklearn import metrics as skm

    rng = np.random.default_rng(0)
    for _ in range(100):
        k, n = int(rng.integers(2, 6)), int(rng.integers(3, 40))
        y = rng.integers(0, k, n)
        scores = np.round(rng.uniform(size=(n, 1)), 1) if k == 2 else rng.dirichlet([1] * k, n)
        ours = metrics.validation_logs(scores, y, "classification", k)
        pred = model.to_labels(scores, "classification")
        p, r, f1, _ = skm.precision_recall_fscore_support(
            y, pred, labels=list(range(k)), average="macro", zero_division=0
        )
        assert (ours["val_precision"], ours["val_recall"], ours["val_f1"]) == pytest.approx(
            (p, r, f1)
        )
        if k == 2 and len(set(y)) == 2:
            assert ours["val_roc_auc"] == pytest.approx(skm.roc_auc_score(y, scores[:, 0]))
        else:
            assert "val_roc_auc" not in ours
    y = rng.normal(size=30)
    pred = y + rng.normal(size=30) * 0.3
    ours = metrics.validation_logs(pred[:, None], y, "regression")
    assert ours["val_r2"] == pytest.approx(skm.r2_score(y, pred))
    assert ours["val_mse"] == pytest.approx(skm.mean_squared_error(y, pred))


def test_evaluate_classification_and_binary_auc():
    splits = blobs()
    net = fit(splits).model
    metrics = model.evaluate(net, splits.X_test, splits.y_test, task="classification", n_classes=3)
    assert set(metrics) == {"accuracy", "loss", "precision", "recall", "f1"}
    # The reported numbers are the model's own on these rows, computed independently here.
    scores = model.predict_scores(net, splits.X_test)
    assert metrics["accuracy"] == pytest.approx(np.mean(scores.argmax(axis=1) == splits.y_test))
    picked = np.clip(scores[np.arange(len(splits.y_test)), splits.y_test], 1e-7, 1.0)
    assert metrics["loss"] == pytest.approx(-np.mean(np.log(picked)), rel=1e-4)
    y2 = np.arange(120) % 2
    X2 = (np.random.default_rng(1).normal(size=(120, 3)) * 0.2 + y2[:, None]).astype(np.float32)
    bin_splits = Splits(X2[:80], y2[:80], X2[80:100], y2[80:100], X2[100:], y2[100:])
    res = model.train(
        bin_splits,
        SMALL,
        TrainParams(epochs=30, batch_size=16, learning_rate=0.02),
        task="classification",
        n_classes=2,
        seed=0,
    )
    assert res.model.layers[-1].units == 1  # one sigmoid unit for two classes
    m = model.evaluate(
        res.model, bin_splits.X_test, bin_splits.y_test, task="classification", n_classes=2
    )
    assert m["roc_auc"] > 0.9 and m["accuracy"] > 0.8


def test_a_standardized_target_is_fitted_but_every_metric_is_in_the_targets_units():
    """A target in the hundreds is fitted standardized; per-epoch val_* (pruning, early stopping,
    the UI's curves), the training curves and evaluate() all speak the target's own units."""
    from pipeline.data import fit_target_scaler

    s = regression()
    big = Splits(s.X_train, s.y_train * 50 + 200, s.X_val, s.y_val * 50 + 200, s.X_test, s.y_test)
    target = fit_target_scaler(big.y_train)
    seen: list[dict[str, float]] = []
    res = model.train(
        big,
        SMALL,
        TrainParams(epochs=3, batch_size=16, learning_rate=0.02),
        task="regression",
        n_classes=0,
        seed=0,
        on_epoch=lambda epoch, logs: seen.append(dict(logs)) and False,
        target=target,
    )
    final = model.evaluate(
        res.model, big.X_val, big.y_val, task="regression", n_classes=0, target=target
    )
    for name in ("loss", "mse", "rmse", "mae", "r2"):
        assert seen[-1][f"val_{name}"] == pytest.approx(final[name], rel=1e-4), name
    assert res.history["val_rmse"][-1] == pytest.approx(final["rmse"], rel=1e-4)
    # The training curve too: Keras's loss and RMSE on the standardized target, rescaled.
    assert all(
        res.history["loss"][i] == pytest.approx(res.history["rmse"][i] ** 2, rel=0.05)
        for i in range(3)
    )
    assert 0.2 < res.history["rmse"][-1] / res.history["val_rmse"][-1] < 5  # same units
    pred = model.predict_scores(res.model, big.X_val, target=target)
    assert float(np.sqrt(np.mean((pred[:, 0] - big.y_val) ** 2))) == pytest.approx(final["rmse"])


def test_regression_metrics():
    rng = np.random.default_rng(0)
    X = rng.uniform(size=(100, 2)).astype(np.float32)
    y = (X @ np.array([1.0, -2.0]) + 0.5).astype(np.float32)
    s = Splits(X[:60], y[:60], X[60:80], y[60:80], X[80:], y[80:])
    res = model.train(
        s,
        SMALL,
        TrainParams(epochs=60, batch_size=8, learning_rate=0.01),
        task="regression",
        n_classes=0,
        seed=0,
    )
    assert {"val_rmse", "val_mae", "val_loss"} <= set(res.history)
    m = model.evaluate(res.model, s.X_test, s.y_test, task="regression", n_classes=0)
    assert m["rmse"] == pytest.approx(math.sqrt(m["mse"])) and m["r2"] > 0.5


def test_save_and_load_in_safe_mode(tmp_path):
    splits = blobs()
    net = fit(splits).model
    optimizer = net.optimizer
    path = model.save(net, tmp_path / "m.keras")
    assert net.optimizer is optimizer  # detached only while saving
    again = model.load(path)
    np.testing.assert_allclose(
        model.predict_scores(again, splits.X_test),
        model.predict_scores(net, splits.X_test),
        rtol=1e-6,
    )


def test_a_saved_model_holds_its_weights_but_not_its_optimizers_state(tmp_path):
    """The optimizer's slots (Adam: two per weight) are most of a .keras file and of its save
    time, and nothing loads a saved model to go on training."""
    import h5py

    net = fit(blobs()).model
    assert net.optimizer.variables  # trained: the optimizer has state to leave out
    with zipfile.ZipFile(model.save(net, tmp_path / "m.keras")) as z:
        weights = h5py.File(io.BytesIO(z.read("model.weights.h5")))
        stored: list[str] = []
        weights.visit(stored.append)
    assert any(name.startswith("layers/") for name in stored)
    assert not [name for name in stored if name.startswith("optimizer/vars/")]
    loaded = model.load(tmp_path / "m.keras")  # as the champion is made: saved once more
    model.save(loaded, tmp_path / "again.keras")
    assert zipfile.is_zipfile(tmp_path / "again.keras")


def test_the_prepared_tf_data_input_trains_exactly_like_the_arrays():
    """Same batches in the same order (no shuffle) -> the same weights and curves; shuffled,
    it is still deterministic for a seed."""
    splits = blobs()
    inputs = model.TrainInput(splits.X_train, splits.y_train)
    arrays = fit(splits, shuffle=False)
    prepared = fit(splits, shuffle=False, inputs=inputs)
    assert prepared.history == arrays.history
    for a, b in zip(arrays.model.get_weights(), prepared.model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    once, twice = fit(splits, inputs=inputs), fit(splits, inputs=inputs)
    assert once.history == twice.history


def test_the_train_steps_variables_exist_before_fit_so_it_is_traced_once(monkeypatch):
    """Keras's TensorFlow trainer otherwise creates the optimizer's and metrics' variables
    while tracing the train step, and a tf.function that creates variables is traced twice."""
    import keras

    if keras.backend.backend() != "tensorflow":
        pytest.skip("the JAX trainer builds this state in fit itself")

    def state(m):
        """Every variable the trained model holds: weights, optimizer slots, metric totals."""
        return [v.path for v in (*m.variables, *m.optimizer.variables, *m.metrics_variables)]

    before = []
    real_fit = keras.Model.fit

    def fit_spy(self, *args, **kwargs):
        before.extend(state(self))
        return real_fit(self, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "fit", fit_spy)
    splits = blobs()
    result = fit(splits, inputs=model.TrainInput(splits.X_train, splits.y_train))
    after = state(result.model)
    assert len(after) > len(result.model.variables)  # optimizer slots and metric totals too
    assert before == after


@pytest.mark.parametrize(
    ("rows", "batch", "calls"),
    [
        (80, 16, (5, True)),  # 5 steps: one graph call per epoch, one endless input
        (96, 1, (48, True)),  # 96 steps: calls of 48 (a divisor), still one endless input
        (67, 1, (64, False)),  # 67 steps, a prime: a finite input, a new iterator each epoch
    ],
)
def test_the_prepared_input_keeps_epochs_whatever_the_steps_per_call(rows, batch, calls):
    """The prepared input is read by one iterator for the whole fit when a graph call's step
    count divides the epoch; epochs, weights and curves stay exactly those of the arrays."""
    assert model._executions(-(-rows // batch)) == calls
    full = blobs(n=rows + 40)
    X = np.concatenate([full.X_train, full.X_val, full.X_test])
    y = np.concatenate([full.y_train, full.y_val, full.y_test])
    splits = Splits(X[:rows], y[:rows], X[rows : rows + 20], y[rows : rows + 20], X[-20:], y[-20:])
    train = TrainParams(epochs=3, batch_size=batch)
    arrays = fit(splits, train, shuffle=False)
    prepared = fit(splits, train, shuffle=False, inputs=model.TrainInput(X[:rows], y[:rows]))
    assert prepared.history == arrays.history
    for a, b in zip(arrays.model.get_weights(), prepared.model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_the_prepared_input_shuffles_exactly_like_shuffling_the_rows():
    """TrainInput shuffles row indices and gathers each batch (no copy of the rows): the
    batches of every epoch are those of a tf.data shuffle of the rows themselves."""
    import tensorflow as tf

    splits = blobs()
    inputs = model.TrainInput(splits.X_train, splits.y_train)
    rows = tf.data.Dataset.from_tensor_slices((inputs.X, inputs.y))
    rows = rows.shuffle(len(inputs.X), seed=3, reshuffle_each_iteration=True).batch(16)
    ours = inputs.batches(16, seed=3)
    for _ in range(2):  # reshuffled the same way each epoch
        for (X, y), (X_rows, y_rows) in zip(ours, rows, strict=True):
            np.testing.assert_array_equal(X, X_rows)
            np.testing.assert_array_equal(y, y_rows)


def test_release_frees_each_trained_model_though_it_freezes_the_start_up_heap():
    """release() freezes what survives its first collection (the frameworks) so later
    collections are cheap; a trial's model must never be among the frozen."""
    import weakref

    for _ in range(2):
        result = fit(blobs())
        ref = weakref.ref(result.model)
        del result
        model.release()
        assert ref() is None


def test_a_released_training_leaves_no_traced_graph_or_model_alive():
    """Every trial traces a new train step; once `release` has run, nothing of it may stay
    alive, or a long study grows by the step's graphs each trial (TensorFlow's
    gradient registry kept them, +8.6 MiB RSS per digits trial). So the live traced graphs
    and models are as many after four train + release cycles as after one, with and without
    the prepared input."""
    import gc

    import keras
    from tensorflow.python.framework.func_graph import FuncGraph

    splits = blobs()
    inputs = model.TrainInput(splits.X_train, splits.y_train)

    def live() -> tuple[int, int]:
        gc.collect()
        objects = gc.get_objects()
        graphs = sum(isinstance(o, FuncGraph) for o in objects)
        return graphs, sum(isinstance(o, keras.Model) for o in objects)

    counts = []
    for cycle in range(4):
        fit(splits, inputs=inputs if cycle % 2 else None)
        model.release()
        counts.append(live())
    assert counts == counts[:1] * 4


def test_tensorflow_start_up_lines_do_not_reach_the_console():
    import subprocess
    import sys

    code = (
        "from pipeline import model\n"
        "model.configure_threads(2)\n"
        "model.warm_up()\n"
        "import tensorflow as tf\n"
        "print(float(tf.reduce_sum(tf.ones(3))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "3.0"
    assert out.stderr == "", out.stderr[:2000]


@pytest.mark.parametrize("workers", [1, 3])
def test_threads_are_sized_for_the_worker_count(workers):
    """One worker leaves a core to tf.data, tracking and the heartbeat; several workers get a
    thread each (and pass the setting on to their children through the environment)."""
    import os
    import subprocess
    import sys

    code = (
        "import os\n"
        "from pipeline import model\n"
        f"model.configure_threads({workers})\n"
        "import tensorflow as tf\n"
        "print(tf.config.threading.get_intra_op_parallelism_threads(),"
        " os.environ['TF_NUM_INTRAOP_THREADS'], 'XLA_FLAGS' in os.environ)\n"
    )
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "XLA_FLAGS")
    }
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    expected = 1 if workers > 1 else max(1, machine.usable_cores() - 1)
    assert out.stdout.split() == [str(expected), str(expected), str(workers > 1)]

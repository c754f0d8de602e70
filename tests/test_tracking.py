from pathlib import Path

import pytest

from pipeline import tracking, uris
from pipeline.errors import TrackingError, TrialPruned


@pytest.mark.parametrize(
    ("uri", "secret"),
    [
        ("postgresql://bob:hunter2@db:5432/optuna", "hunter2"),
        ("postgresql://db/optuna?user=bob&password=hunter2", "hunter2"),
        ("http://alice:s3cr3t@mlflow.local:5000", "s3cr3t"),
    ],
)
def test_mask_secret_hides_passwords(uri, secret):
    masked = uris.mask_secret(uri)
    assert secret not in masked and "***" in masked


def test_run_context_ends_every_run_with_an_explicit_status(store_uri):
    tracker = tracking.Tracker(store_uri, "exp")
    with tracker.run("ok") as ok_id:
        tracker.log_params(ok_id, {"model.hidden": [8, 4], "seed": 1})
        tracker.log_history(ok_id, {"loss": [1.0, 0.5]})
    with pytest.raises(ValueError), tracker.run("bad") as bad_id:
        raise ValueError("boom")
    with pytest.raises(KeyboardInterrupt), tracker.run("stopped") as killed_id:
        raise KeyboardInterrupt
    with pytest.raises(TrialPruned), tracker.run("pruned", parent_id=ok_id) as pruned_id:
        raise TrialPruned
    get = tracker.client.get_run
    assert get(ok_id).info.status == "FINISHED"
    assert get(ok_id).data.params["model.hidden"] == "[8, 4]"
    assert [m.value for m in tracker.client.get_metric_history(ok_id, "loss")] == [1.0, 0.5]
    assert get(bad_id).info.status == "FAILED" and "boom" in get(bad_id).data.tags["error"]
    assert get(killed_id).info.status == "KILLED"
    assert get(pruned_id).info.status == "FINISHED"
    assert get(pruned_id).data.tags["mlflow.parentRunId"] == ok_id
    exp = tracker.client.get_experiment(tracker.experiment_id)
    assert exp.artifact_location.endswith("mlruns/artifacts")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"


def test_file_store_uri_is_refused(workdir):
    with pytest.raises(TrackingError, match="sqlite"):
        tracking.Tracker(str(workdir / "mlruns"), "exp")


def test_ui_binds_to_localhost():
    cmd = tracking.ui_command("sqlite:////tmp/x/mlflow.db")
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1"


def test_dataset_input_digests_every_row_though_mlflow_sees_a_sample(workdir, monkeypatch):
    """The run's dataset input describes the whole data (issue 7 hands MLflow only the first
    DATASET_SAMPLE rows, for the schema): the digest changes when a row past the sample
    changes and is stable otherwise, the profile counts every row, the schema every column."""
    import json

    import mlflow
    import numpy as np
    import pandas as pd

    from pipeline import config, stages

    monkeypatch.setattr(stages, "DATASET_SAMPLE", 5)
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(60, 4)).round(3), columns=["a", "b", "c", "d"])
    frame["label"] = np.array(["cat", "dog", "eel"])[np.arange(60) % 3]
    store = f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}"
    tracker = tracking.Tracker(store, "exp")

    def logged(data: pd.DataFrame):  # noqa: ANN202 - an MLflow entity
        data.to_csv(workdir / "data.csv", index=False)
        params = config.load(
            Path(__file__).parent.parent / "params" / "default.yaml",
            ["data.source=data.csv", f"tracking.uri={store}"],
        )
        with tracker.run("train") as run_id:
            stages.log_dataset(tracker, run_id, params, stages.prepare(params))
        (entry,) = mlflow.MlflowClient(store).get_run(run_id).inputs.dataset_inputs
        return entry.dataset

    first, same = logged(frame), logged(frame.copy())
    edited = frame.copy()
    edited.loc[50, "c"] += 1.0
    changed = logged(edited)
    assert first.name == "data" and first.digest == same.digest != changed.digest
    assert json.loads(first.profile) == {"num_rows": 60, "num_elements": 60 * 5}
    schema = json.loads(first.schema)["mlflow_colspec"]
    assert [c["name"] for c in schema] == ["a", "b", "c", "d", "label"]


def test_a_runs_params_curves_and_result_are_one_write_and_no_result_when_it_fails(tmp_path):
    """A short trial's params, epochs and result tag share one write (one round-trip), the
    result landing after the epochs; a block that raises writes its params and curves but no
    result."""
    tracker = tracking.Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "final")
    calls: list[dict] = []
    real = tracker.client.log_batch

    def counted(run_id: str, **batch: list) -> None:
        calls.append({k: len(v) for k, v in batch.items()})
        real(run_id, **batch)

    tracker.client.log_batch = counted
    done = tracker.create_run("done")
    with tracker.live_metrics(done) as live:
        live.add_params({"model.hidden": [8, 4], "model.dropout": 0.2})
        live.add_history({"loss": [1.0, 0.5]})
        live.final_tags["pipeline.objective"] = "0.5"
    assert calls == [{"metrics": 2, "params": 2, "tags": 1}]
    run = tracker.client.get_run(done)
    assert run.data.tags["pipeline.objective"] == "0.5" and run.data.metrics["loss"] == 0.5
    assert run.data.params == {"model.hidden": "[8, 4]", "model.dropout": "0.2"}

    calls.clear()
    failed = tracker.create_run("failed")
    with pytest.raises(RuntimeError), tracker.live_metrics(failed) as live:
        live.add_params({"model.dropout": 0.2})
        live.add(0, {"loss": 1.0})
        live.final_tags["pipeline.objective"] = "1.0"
        raise RuntimeError("after the result was buffered")
    run = tracker.client.get_run(failed)
    assert run.data.metrics == {"loss": 1.0} and "pipeline.objective" not in run.data.tags
    assert run.data.params == {"model.dropout": "0.2"}
    assert calls == [{"metrics": 1, "params": 1, "tags": 0}]


def test_a_large_flush_keeps_to_mlflows_batch_limits_and_writes_everything_once():
    """At most 100 params and 1000 entities per write, the final tags in the last one."""
    from types import SimpleNamespace

    writes: list[dict[str, list]] = []

    class Store:
        def log_batch(self, run_id: str, **batch: list) -> None:
            writes.append(batch)

    live = tracking.LiveMetrics(SimpleNamespace(client=Store()), "run", every=2.0)
    live.add_params({f"p{i:03d}": i for i in range(150)})
    live.add_history({"loss": [0.5] * 1900})
    live.final_tags.update({"optuna.state": "COMPLETE", "pipeline.objective": "0.5"})
    live.flush()
    assert all(len(w["params"]) <= 100 for w in writes)
    assert all(sum(map(len, w.values())) <= 1000 for w in writes)
    assert sorted(p.key for w in writes for p in w["params"]) == [f"p{i:03d}" for i in range(150)]
    assert sorted(m.step for w in writes for m in w["metrics"]) == list(range(1900))
    assert [len(w["tags"]) for w in writes] == [0] * (len(writes) - 1) + [2]
    assert len(writes) == 3  # 100 + 900, 50 + 950, 50 + 2


def test_params_metrics_and_artifacts_beyond_one_batch_reach_a_real_store(
    store_uri, tmp_path, monkeypatch
):
    """More params and metrics than one MLflow batch holds (100 params, 1000 entities) all
    reach the run, and an artifact of a run the tracker created lands in that run's
    artifacts (written without reading the run back)."""
    from mlflow.tracking._tracking_service.client import TrackingServiceClient

    tracker = tracking.Tracker(store_uri, "exp")
    params = {f"p{i:03d}": i for i in range(150)}
    metrics = {f"m{i:04d}": i / 2 for i in range(1200)}
    (tmp_path / "model.keras").write_bytes(b"weights")
    with tracker.run("many") as run_id:
        tracker.log_params(run_id, params)
        tracker.log_metrics(run_id, metrics, step=3)
        tracker.set_tags(run_id, {"pipeline.note": "x"})
        with monkeypatch.context() as patch:  # MlflowClient.log_artifact reads the run first
            patch.setattr(TrackingServiceClient, "get_run", _refuse_to_read_the_run)
            tracker.log_artifact(run_id, tmp_path / "model.keras")
    data = tracker.client.get_run(run_id).data
    assert data.params == {k: str(v) for k, v in params.items()}
    assert data.metrics == metrics and data.tags["pipeline.note"] == "x"
    assert tracker.read_artifact(run_id, "model.keras") == b"weights"


def _refuse_to_read_the_run(*args: object, **kwargs: object) -> None:
    raise AssertionError("the run was read back from the store")


def test_live_metrics_are_written_on_the_training_thread_and_back_off_on_a_slow_store(
    monkeypatch,
):
    """Per-epoch writes are synchronous (MLflow 3.17 makes the end of a run that logged
    asynchronously wait up to 1 s: issue 7), at most every `every` seconds and never sooner
    than WRITE_SHARE_FACTOR times the last write took; every epoch is written exactly once."""
    import time
    from types import SimpleNamespace

    clock = [0.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    writes: list[tuple[float, int, dict]] = []

    class SlowStore:
        def log_batch(self, run_id: str, metrics=(), **options) -> None:  # noqa: ANN001
            writes.append((clock[0], len(metrics), options))
            clock[0] += 0.05  # 50 ms per write: the next one waits 100 x 0.05 = 5 s

    live = tracking.LiveMetrics(SimpleNamespace(client=SlowStore()), "run", every=2.0)
    for epoch in range(300):
        live.log(epoch, {"loss": 1.0, "val_loss": 2.0})
        clock[0] += 0.1  # a 100 ms epoch
    live.flush()
    assert all("synchronous" not in options for _, _, options in writes), "a write was async"
    assert sum(n for _, n, _ in writes) == 600, "an epoch was lost or written twice"
    starts = [t for t, _, _ in writes[:-1]]  # the last one is the final flush
    assert starts[0] >= 2.0 and len(starts) >= 3
    gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
    assert min(gaps) >= 100 * 0.05, gaps


def _half_made_store(db: Path, runs: int) -> bytes:
    """A store as an interrupted MLflow migration leaves it: some tables, alembic's temporary
    one, no schema version; `runs` rows in `runs`. Returns the file's bytes."""
    import contextlib
    import sqlite3

    db.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.execute("CREATE TABLE runs (run_uuid TEXT)")
        conn.execute("CREATE TABLE _alembic_tmp_trace_tags (key TEXT)")
        conn.executemany("INSERT INTO runs VALUES (?)", [(f"r{i}",) for i in range(runs)])
        conn.commit()
    return db.read_bytes()


def test_a_half_made_store_with_no_runs_is_set_aside_and_rebuilt(tmp_path, caplog):
    db = tmp_path / "mlruns" / "mlflow.db"
    old = _half_made_store(db, runs=0)
    tracker = tracking.Tracker(f"sqlite:///{db}", "exp")
    with tracker.run("ok") as run_id:
        pass
    assert tracker.client.get_run(run_id).info.status == "FINISHED"
    aside = list(db.parent.glob("mlflow.db.half-made-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == old  # kept, not deleted
    assert "half-made" in caplog.text


def test_a_half_made_store_that_holds_runs_is_refused_and_left_untouched(tmp_path):
    db = tmp_path / "mlruns" / "mlflow.db"
    old = _half_made_store(db, runs=3)
    with pytest.raises(TrackingError, match=r"holds 3 runs.*mlflow db upgrade"):
        tracking.Tracker(f"sqlite:///{db}", "exp")
    assert db.read_bytes() == old and not list(db.parent.glob("mlflow.db.half-made-*"))

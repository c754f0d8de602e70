import pytest

from pipeline import tracking
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
    masked = tracking.mask_secret(uri)
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

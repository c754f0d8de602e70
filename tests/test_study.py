"""The tracked study under crashes and simultaneous starts, with real processes, a real Optuna
storage (journal file; PostgreSQL where marked) and a real MLflow store; the trainer is a stub
(tests/study_worker.py) so these runs take seconds, not minutes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import require_postgres

from pipeline import search
from pipeline.storage import make_storage

WORKER = Path(__file__).with_name("study_worker.py")
N_TRIALS = 3


def worker(workdir: Path, storage: str, n_trials: int, *extra: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, str(WORKER), str(workdir), storage, str(n_trials), *extra]
    return subprocess.Popen(
        cmd, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def store(workdir: Path) -> tuple[object, list]:
    """(MLflow client, runs of the stub experiment)."""
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("stub")
    return client, client.search_runs([exp.experiment_id], max_results=1000)


def trained(workdir: Path) -> list[dict]:
    path = workdir / "trained.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def check_store_agrees_with_study(workdir: Path, storage: str) -> dict[int, str]:
    """Every trial that has a run: the run's status and state tag match the Optuna state;
    every trial run belongs to exactly one trial; nothing is left RUNNING."""
    study = search.open_study("stub", make_storage(storage), _space(), seed=0, max_epochs=3)
    _, runs = store(workdir)
    assert [r.info.run_id for r in runs if r.info.status == "RUNNING"] == []
    by_id = {r.info.run_id: r for r in runs}
    trial_runs = [r for r in runs if "pipeline.trial" in r.data.tags]
    trials = study._trials()
    with_runs = {
        t.user_attrs[search.RUN_ATTR]: t for t in trials if search.RUN_ATTR in t.user_attrs
    }
    assert set(with_runs) == {r.info.run_id for r in trial_runs}  # one run per trained trial
    for run_id, t in with_runs.items():
        run = by_id[run_id]
        assert run.data.tags["pipeline.trial"] == str(t.number)
        assert run.data.tags["optuna.state"] == t.state.name, (t.number, run.data.tags)
        expected = {"COMPLETE": {"FINISHED"}, "PRUNED": {"FINISHED"}, "FAIL": {"FAILED", "KILLED"}}
        assert run.info.status in expected[t.state.name], (t.number, run.info.status)
    return {t.number: t.state.name for t in trials}


def _space():
    from study_worker import study_params

    return study_params(Path("."), N_TRIALS).search


@pytest.mark.parametrize(
    "step",
    [
        "before_fit",  # run created, nothing trained: failed, retried
        "during_fit",  # half trained: failed, retried (its params train again)
        "result_logged",  # result on the run, not yet in Optuna: adopted, not retrained
        "told",  # in Optuna, run still RUNNING: run closed FINISHED
        "run_ended",  # all done: nothing to fix
    ],
)
def test_a_worker_killed_at_any_step_of_a_trial_leaves_store_and_study_in_agreement(workdir, step):
    storage = str(workdir / "journal.log")
    proc = worker(workdir, storage, N_TRIALS, "--kill-at", step)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == -9, err[-3000:]  # it really died by SIGKILL
    _, runs = store(workdir)
    if step in ("before_fit", "during_fit", "result_logged", "told"):
        assert any(r.info.status == "RUNNING" for r in runs)  # what the crash left behind

    rerun = worker(workdir, storage, N_TRIALS)
    _, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err[-3000:]
    states = check_store_agrees_with_study(workdir, storage)
    finished = [n for n, s in states.items() if s in ("COMPLETE", "PRUNED")]
    assert len(finished) == N_TRIALS
    runs_trained = [t["run"] for t in trained(workdir)]
    assert len(runs_trained) == len(set(runs_trained))  # no run trained twice
    # The only training beyond the budget: a trial killed mid-training is trained again.
    assert len(runs_trained) == N_TRIALS + (1 if step == "during_fit" else 0)
    if step in ("before_fit", "during_fit"):
        assert list(states.values()).count("FAIL") == 1
        study = search.open_study("stub", make_storage(storage), _space(), seed=0, max_epochs=3)
        retry = [t for t in study._trials() if "retry_of" in t.user_attrs]
        assert len(retry) == 1 and retry[0].params == study._trials()[1].params
        # The retry's new run links to the killed trial's run (ended KILLED by reconcile).
        killed = study._trials()[1].user_attrs[search.RUN_ATTR]
        client, _ = store(workdir)
        tags = client.get_run(retry[0].user_attrs[search.RUN_ATTR]).data.tags
        assert tags["pipeline.retry_of_run"] == killed and tags["pipeline.retry_of_trial"] == "1"
        assert client.get_run(killed).info.status == "KILLED"
    else:
        assert "FAIL" not in states.values()  # finished work kept, never thrown away


def _barrier_start(workdir: Path, k: int, storage: str, n_trials: int, *extra: str) -> list:
    """Start k workers that each import everything, then wait for one `go` file."""
    gate = workdir / "gate"
    gate.mkdir()
    procs = [
        worker(workdir, storage, n_trials, "--barrier", str(gate), f"w{i}", *extra)
        for i in range(k)
    ]
    import time

    while len(list(gate.glob("*.ready"))) < k:
        if any(p.poll() is not None for p in procs):
            raise AssertionError([p.communicate()[1][-2000:] for p in procs])
        time.sleep(0.05)
    (gate / "go").touch()
    return procs


def _check_simultaneous(workdir: Path, storage: str, procs: list, k: int, n_trials: int) -> None:
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
    states = check_store_agrees_with_study(workdir, storage)
    finished = sum(s in ("COMPLETE", "PRUNED") for s in states.values())
    assert n_trials <= finished <= n_trials + k - 1
    _, runs = store(workdir)
    assert len([r for r in runs if r.data.tags.get("pipeline.kind") == "study"]) == 1
    parents = {
        r.data.tags.get("mlflow.parentRunId") for r in runs if "pipeline.trial" in r.data.tags
    }
    assert len(parents) == 1
    dropouts = [t["dropout"] for t in trained(workdir)]
    assert len(dropouts) == len(set(dropouts))  # distinct proposals: no shared sampler stream


def test_simultaneous_workers_on_a_fresh_journal_and_sqlite_store_share_one_study(workdir):
    k, n = 4, 8
    storage = str(workdir / "journal.log")
    procs = _barrier_start(workdir, k, storage, n)
    _check_simultaneous(workdir, storage, procs, k, n)


@pytest.mark.postgres
def test_simultaneous_workers_on_a_fresh_postgresql_database_share_one_study(workdir):
    """Needs PostgreSQL on 127.0.0.1:5432 (or PIPELINE_TEST_PG_URL): see require_postgres.
    A fresh database each time: the schema-creation race only exists on an empty one."""
    url = fresh_database(require_postgres())
    try:
        k, n = 4, 8
        procs = _barrier_start(workdir, k, url, n)
        _check_simultaneous(workdir, url, procs, k, n)
    finally:
        drop_database(url)


def fresh_database(server_url: str) -> str:
    import psycopg

    name = f"pipeline_test_{os.getpid()}_{os.urandom(3).hex()}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return server_url.rsplit("/", 1)[0] + f"/{name}"


def drop_database(url: str) -> None:
    import psycopg

    server_url, name = url.rsplit("/", 1)
    with psycopg.connect(server_url + "/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _learner_then_non_learner(workdir: Path, name: str, *overrides: str):
    """A real Keras study on iris of two queued trials: learning rate 0.05 (learns), then
    1e-6 (cannot learn), run to the end; returns (tracker, good trial, bad trial)."""
    from pipeline import config, stages
    from pipeline.study import TrackedStudy
    from pipeline.tracking import Tracker

    every = [
        "data.source=iris",
        f"name={name}",
        "model.hidden=[16]",
        *overrides,
        "search.n_trials=2",
        "search.pruner=median",
        "search.n_startup_trials=1",
        "search.space={train.learning_rate: {choices: [0.05, 1.0e-6]}}",
        f"tracking.uri=sqlite:///{workdir / 'mlruns' / 'mlflow.db'}",
    ]
    params = config.load(Path(__file__).parent.parent / "params" / "default.yaml", every)
    prep = stages.prepare(params)
    tracker = Tracker(params.tracking.uri, name)
    tracked = TrackedStudy.open(
        params,
        prep,
        tracker,
        name=name,
        storage=make_storage(str(workdir / "journal.log")),
        storage_display="test",
    )
    for lr in (0.05, 1.0e-6):  # the learning trial first, then the one that cannot learn
        tracked.study._study.enqueue_trial({"train.learning_rate": lr})
    with tracker.run(f"study-{name}", resume_id=tracked.parent_id):
        tracked.run_trials()
    good, bad = tracked.study._trials()
    return tracker, good, bad


@pytest.mark.slow
def test_a_val_f1_search_prunes_a_trial_that_learns_nothing(workdir):
    """val_f1 is reported every epoch, so the median pruner stops a trial whose learning rate
    is too small to learn, once a learning trial has set the median (real Keras, iris)."""
    tracker, good, bad = _learner_then_non_learner(
        workdir,
        "f1",
        "train.epochs=8",
        "train.batch_size=8",
        "train.early_stopping.patience=0",
        "search.metric=val_f1",
    )
    assert (good.state.name, bad.state.name) == ("COMPLETE", "PRUNED")
    assert len(good.intermediate_values) == 8 and 4 <= len(bad.intermediate_values) < 8
    run = tracker.client.get_run(bad.user_attrs[search.RUN_ATTR])
    assert run.data.tags["pruned_at_epoch"] == str(len(bad.intermediate_values))


def test_ctrl_c_is_not_masked_when_recording_the_trial_fails(workdir, monkeypatch):
    """Ctrl-C can land inside a storage write, so recording the interrupted trial may fail
    too; the interrupt must still end the search (exit 130), not pass as a failed trial."""
    from study_worker import study_params

    from pipeline import stages
    from pipeline.study import TrackedStudy
    from pipeline.tracking import Tracker

    params = study_params(workdir, N_TRIALS)
    prep = stages.prepare(params)

    def interrupted(p, live, on_epoch):  # noqa: ANN001, ANN202
        raise KeyboardInterrupt

    def broken_store(self, trial, reason):  # noqa: ANN001, ANN202
        raise FileNotFoundError("journal lock vanished")

    monkeypatch.setattr(search.SearchStudy, "tell_failed", broken_store)
    tracked = TrackedStudy.open(
        params,
        prep,
        Tracker(params.tracking.uri, "stub"),
        name="stub",
        storage=make_storage(str(workdir / "journal.log")),
        storage_display="test",
        trainer=interrupted,
    )
    with pytest.raises(KeyboardInterrupt):
        tracked.run_trials()


def test_a_trials_curves_reach_the_store_while_it_trains_and_end_complete(workdir):
    """Issue 7: per-epoch metrics are in the store while the trial still trains (checked
    from inside training, at its last epoch), and at the end every curve holds each epoch
    exactly once, then the final validation metrics at step = epochs run."""
    import time

    from pipeline import config, stages
    from pipeline.study import TrackedStudy
    from pipeline.tracking import Tracker
    from pipeline.trainers import keras_trainer

    epochs = 4
    overrides = [
        "data.source=iris",
        "name=live",
        "model.hidden=[4]",
        f"train.epochs={epochs}",
        "train.early_stopping.patience=0",
        "search.n_trials=1",
        "search.pruner=none",
        "search.space={model.dropout: {choices: [0.0]}}",
        f"tracking.uri=sqlite:///{workdir / 'mlruns' / 'mlflow.db'}",
    ]
    params = config.load(Path(__file__).parent.parent / "params" / "default.yaml", overrides)
    prep = stages.prepare(params)
    tracker = Tracker(params.tracking.uri, "live")
    tracker.live_seconds = 0  # write every epoch as soon as it ends
    seen_live: list[list[int]] = []

    def steps(run_id: str, key: str) -> list[int]:
        return sorted(m.step for m in tracker.client.get_metric_history(run_id, key))

    def trainer(p, live, on_epoch):  # noqa: ANN001, ANN202
        def hook(epoch: int, logs: dict[str, float]) -> bool:
            if epoch == epochs - 1:  # still inside fit: wait (bounded) for the earlier epochs
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    seen_live[:] = [steps(live.run_id, "val_loss"), steps(live.run_id, "lr")]
                    if seen_live[0][:epoch] == list(range(epoch)):
                        break
                    time.sleep(0.05)
            return on_epoch(epoch, logs)

        return keras_trainer(prep, tracker, seed=0)(p, live, hook)

    tracked = TrackedStudy.open(
        params,
        prep,
        tracker,
        name="live",
        storage=make_storage(str(workdir / "journal.log")),
        storage_display="test",
        trainer=trainer,
    )
    with tracker.run("study-live", resume_id=tracked.parent_id):
        tracked.run_trials()
    (trial,) = tracked.study._trials()
    assert trial.state.name == "COMPLETE" and seen_live, "the hook never ran at the last epoch"
    earlier = list(range(epochs - 1))
    assert [seen[: epochs - 1] for seen in seen_live] == [earlier, earlier], "not live"
    run_id = trial.user_attrs[search.RUN_ATTR]
    for key in ("loss", "accuracy", "lr"):
        assert steps(run_id, key) == list(range(epochs)), key
    for key in ("val_loss", "val_accuracy", "val_f1"):
        assert steps(run_id, key) == [*range(epochs), epochs], key


@pytest.mark.slow
def test_a_cross_validated_trial_is_pruned_between_folds_on_its_running_mean(workdir):
    """With split.folds the median pruner judges a trial after each fold (step = fold index,
    value = the running mean of its folds' scores), never per epoch: a trial that cannot learn
    stops after its first fold once a learning trial has set the median."""
    tracker, good, bad = _learner_then_non_learner(
        workdir, "cvprune", "split.folds=3", "train.epochs=4"
    )
    assert (good.state.name, bad.state.name) == ("COMPLETE", "PRUNED")
    done = tracker.client.get_run(good.user_attrs[search.RUN_ATTR]).data.metrics
    folds = [done[f"fold{i}_val_accuracy"] for i in range(3)]
    assert good.intermediate_values == pytest.approx({0: folds[0], 1: (folds[0] + folds[1]) / 2})
    assert list(bad.intermediate_values) == [0]  # one fold, no epoch steps
    run = tracker.client.get_run(bad.user_attrs[search.RUN_ATTR])
    assert (
        run.data.tags["pruned_after_fold"] == "1" and "fold1_val_accuracy" not in run.data.metrics
    )

"""Several `search` processes started at the same instant (through one barrier) on fresh
stores are still one study: all exit 0, one parent run, one run per trained trial, distinct
proposals, the champion made and registered once, nothing left RUNNING."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import free_port, mlflow_server, require_postgres, wait_for_http
from test_study import drop_database, fresh_database

BARRIER = Path(__file__).with_name("barrier_run.py")
K, N_TRIALS = 4, 6
FAST = [
    "--set",
    "train.epochs=3",
    "--set",
    "model.hidden=[16]",
    "--set",
    "search.n_startup_trials=2",
    "--trials",
    str(N_TRIALS),
]


def start_together(workdir: Path, argv: list[str]) -> list[tuple[str, str, int]]:
    """K processes of `python -m pipeline.run ARGV` released at once; (out, err, code) each."""
    gate = workdir / "gate"
    gate.mkdir()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TF_NUM_INTRAOP_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, str(BARRIER), str(gate), f"p{i}", "--", *argv],
            cwd=workdir,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(K)
    ]
    while len(list(gate.glob("*.ready"))) < K:
        if any(p.poll() is not None for p in procs):
            break  # one died before the barrier: report it below
        time.sleep(0.05)
    (gate / "go").touch()
    return [(*p.communicate(timeout=900), p.returncode) for p in procs]


def check_one_study(results, client, experiment: str, study: str) -> None:
    import optuna  # noqa: F401

    for _out, err, code in results:
        assert code == 0, err[-3000:]
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    assert [r.info.run_name for r in runs if r.info.status == "RUNNING"] == []
    parents = [r for r in runs if r.data.tags.get("pipeline.kind") == "study"]
    assert len(parents) == 1
    trials = [r for r in runs if "pipeline.trial" in r.data.tags]
    assert {r.data.tags["mlflow.parentRunId"] for r in trials} == {parents[0].info.run_id}
    numbers = [int(r.data.tags["pipeline.trial"]) for r in trials]
    assert len(numbers) == len(set(numbers))  # one run per trial
    finished = [r for r in trials if r.data.tags["optuna.state"] in ("COMPLETE", "PRUNED")]
    assert N_TRIALS <= len(finished) <= N_TRIALS + K - 1
    keys = ["model.activation", "model.initializer", "model.dropout", "train.batch_size"]
    proposals = [tuple(r.data.params[k] for k in keys) for r in trials]
    assert len(proposals) == len(set(proposals))  # no two processes proposed the same trial
    baseline = [r.data.tags["pipeline.trial"] for r in trials if "pipeline.baseline" in r.data.tags]
    assert baseline == ["0"]  # the configured values were queued once, as the first trial
    champions = [r for r in runs if r.data.tags.get("pipeline.kind") == "champion"]
    assert len(champions) == 1  # the test split was used once
    versions = client.search_model_versions("name = 'default'")
    assert len(versions) == 1
    outs = "".join(out for out, _, _ in results)
    assert outs.count("champion = best trial") >= 1


@pytest.mark.slow
def test_simultaneous_searches_on_fresh_default_stores_are_one_study(workdir):
    import mlflow

    results = start_together(workdir, ["search", *FAST])
    client = mlflow.MlflowClient(f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}")
    check_one_study(results, client, "default", "default")


@pytest.mark.slow
@pytest.mark.postgres
def test_simultaneous_searches_on_fresh_postgresql_and_a_tracking_server_are_one_study(workdir):
    """Needs PostgreSQL on 127.0.0.1:5432 (PIPELINE_TEST_PG_URL overrides); required in CI.
    Fresh databases for Optuna and for a real `mlflow server`."""
    import mlflow

    server_url = require_postgres()
    optuna_db, mlflow_db = fresh_database(server_url), fresh_database(server_url)
    port = free_port()
    server = mlflow_server(workdir, port, mlflow_db)
    uri = f"http://127.0.0.1:{port}"
    try:
        assert wait_for_http(f"{uri}/health") == 200
        argv = ["search", "--storage", optuna_db, "--tracking-uri", uri, *FAST]
        results = start_together(workdir, argv)
        check_one_study(results, mlflow.MlflowClient(uri), "default", "default")
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
        drop_database(optuna_db)
        drop_database(mlflow_db)

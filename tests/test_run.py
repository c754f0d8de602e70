import contextlib
import itertools
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import MISSION_KEYS, free_port, mlflow_server, require_postgres, wait_for_http

from pipeline import config, machine, run, stages
from pipeline.commands.common import make_tracker
from pipeline.errors import PipelineError
from pipeline.storage import make_storage

REPO = Path(__file__).resolve().parent.parent


def predict_argv(model_uri: str, store_uri: str) -> list[str]:
    """`predict` of test.csv into pred.csv in the cwd."""
    return [
        "predict",
        "--model",
        model_uri,
        "--data",
        "test.csv",
        "--out",
        "pred.csv",
        "--tracking-uri",
        store_uri,
    ]


def test_bare_command_means_search_and_flags_parse(monkeypatch):
    assert run.parse_args([]).command == "search"
    monkeypatch.setattr(machine, "auto_workers", lambda: 5)
    assert run.parse_args(["--workers", "auto"]).workers == 5
    args = run.parse_args(["--trials", "3", "--set", "model.dropout=0.1"])
    assert args.command == "search" and args.trials == 3 and args.overrides == ["model.dropout=0.1"]


def test_workers_default_to_one_per_core_as_memory_allows_or_the_environment(monkeypatch):
    assert run.parse_args([]).workers is None  # decided in main: $PIPELINE_WORKERS or auto
    assert machine.available_memory() > 0  # MemAvailable is read on Linux
    monkeypatch.delenv("PIPELINE_WORKERS")
    monkeypatch.setattr(machine.os, "sched_getaffinity", lambda pid: set(range(8)))
    monkeypatch.setattr(machine, "_cgroup", lambda name: None)
    gib = 2**30
    for free, expected in [(100 * gib, 8), (int(2.6 * gib), 2), (gib // 2, 1), (None, 8)]:
        monkeypatch.setattr(machine, "available_memory", lambda free=free: free)
        assert machine.default_workers() == expected, free
    monkeypatch.setenv("PIPELINE_WORKERS", "3")
    assert machine.default_workers() == 3
    for bad in ("many", "0"):
        monkeypatch.setenv("PIPELINE_WORKERS", bad)
        with pytest.raises(PipelineError, match=f"PIPELINE_WORKERS='{bad}'"):
            machine.default_workers()


def test_auto_workers_obey_a_containers_cpu_quota_and_memory_limit(monkeypatch):
    """In a container the affinity and MemAvailable show the host; cgroup v2 says what the
    container may use (`docker run --cpus 1.5 --memory 3g` on an 8-core host: 2 cores)."""
    gib = 2**30
    monkeypatch.setattr(machine.os, "sched_getaffinity", lambda pid: set(range(8)))
    files = {"cpu.max": "150000 100000"}
    monkeypatch.setattr(machine, "_cgroup", files.get)
    assert machine.usable_cores() == 2
    files["cpu.max"] = "max 100000"
    assert machine.usable_cores() == 8
    files.update({"memory.max": str(3 * gib), "memory.current": str(gib // 2)})
    assert machine.available_memory() <= 3 * gib - gib // 2
    assert machine.auto_workers() == 2  # 2.5 GiB of room holds two workers of 1.25 GiB
    files.update({"memory.max": "max", "memory.current": str(2**50)})  # no limit: not used
    assert machine.available_memory() > 0


@pytest.mark.slow
def test_the_bare_search_starts_one_worker_per_core_and_they_share_one_study(
    workdir, store_uri, monkeypatch, capsys
):
    """Without --workers (and $PIPELINE_WORKERS) the search starts `auto` processes, never
    more than it has trials, and they give one study: one parent, each trial once."""
    import mlflow

    from pipeline import workers

    monkeypatch.delenv("PIPELINE_WORKERS")
    started: list[int] = []
    start = workers.LocalProcesses.start
    monkeypatch.setattr(
        workers.LocalProcesses,
        "start",
        lambda self, plan, k: started.append(k) or start(self, plan, k),
    )
    monkeypatch.setattr(machine, "auto_workers", lambda: 2)  # what 2 cores with room give
    argv = ["search", "--tracking-uri", store_uri, *FAST]
    assert run.main([*argv, "--trials", "3"]) == 0
    assert started == [1]
    assert run.main([*argv, "--trials", "4"]) == 0  # resumed with one trial left: no child
    assert started == [1]
    assert "champion = best trial" in capsys.readouterr().out
    runs = mlflow.MlflowClient(store_uri).search_runs(["1"], max_results=100)
    assert len([r for r in runs if r.data.tags.get("pipeline.kind") == "study"]) == 1
    trials = [r.data.tags["pipeline.trial"] for r in runs if "pipeline.trial" in r.data.tags]
    assert sorted(trials) == ["0", "1", "2", "3"]
    assert all(r.info.status != "RUNNING" for r in runs)


def test_every_process_of_a_search_stops_at_the_one_timeout_deadline(monkeypatch):
    """--timeout is one moment for the command: a worker started later (a --workers child, or
    one replacing a recycled worker) gets the parent's deadline, not a fresh timeout."""
    from pipeline import workers

    started: list[list[str]] = []

    class Child:
        def __init__(self, argv: list[str]) -> None:
            started.append(argv)

    monkeypatch.setattr(workers.subprocess, "Popen", Child)
    plan = workers.WorkerPlan(("search", "--timeout", "60"), 3, 3, 1234567.25)
    workers.LocalProcesses().start(plan, 2)
    assert len(started) == 2
    for argv in started:
        tail = argv[argv.index("--spawned") :]
        assert tail == ["--spawned", "--max-trials", "3", "--deadline", "1234567.25"]


@pytest.mark.slow
@pytest.mark.parametrize("spawned", [[], ["--workers", "1", "--spawned"]])
def test_a_search_past_its_deadline_starts_no_trial(workdir, store_uri, capsys, spawned):
    """The parent, and a --workers child handed the parent's deadline, start nothing after it
    (though their own --timeout would allow it)."""
    import time

    past = str(time.time() - 1)
    argv = ["search", "--tracking-uri", store_uri, "--trials", "2", "--timeout", "600", *FAST]
    assert run.main([*argv, *spawned, "--deadline", past]) == 2
    assert "no trial ran: search.timeout (--timeout) ended it" in capsys.readouterr().err
    import optuna

    storage = search_storage(workdir).backend
    trials = optuna.load_study(study_name="default", storage=storage).trials
    assert [t.number for t in trials if t.datetime_start is not None] == []  # none started


@pytest.mark.slow
def test_a_recycled_worker_leaves_the_champion_to_the_last_worker(workdir, store_uri, capsys):
    """A --workers child that ran its `recycle_after` trials exits for a fresh process, the
    study unfinished: it must not test and register the best trial so far (the test split is
    used once, for the best of all trials), even when no other trial is running then."""
    import mlflow

    from pipeline import workers

    argv = ["search", "--tracking-uri", store_uri, "--trials", "3", *FAST]
    assert run.main([*argv, "--workers", "1", "--spawned", "--max-trials", "1"]) == workers.RECYCLED
    runs = mlflow.MlflowClient(store_uri).search_runs(["1"], max_results=100)
    assert [r.data.tags["pipeline.trial"] for r in runs if "pipeline.trial" in r.data.tags] == ["0"]
    assert [r for r in runs if r.data.tags.get("pipeline.kind") == "champion"] == []
    assert run.main(argv) == 0  # the rest of the budget, then the champion, once
    runs = mlflow.MlflowClient(store_uri).search_runs(["1"], max_results=100)
    assert len([r for r in runs if r.data.tags.get("pipeline.kind") == "champion"]) == 1


@pytest.mark.slow
def test_the_timeout_becomes_one_deadline_handed_to_replacement_workers(
    workdir, store_uri, monkeypatch
):
    import time

    from pipeline import workers

    deadlines: list[float | None] = []
    start = workers.LocalProcesses.start

    def spy(self: workers.LocalProcesses, plan: workers.WorkerPlan, k: int) -> None:
        deadlines.extend([plan.deadline] * k)
        start(self, plan, k)

    monkeypatch.setattr(workers.LocalProcesses, "start", spy)
    before = time.time()
    argv = ["search", "--tracking-uri", store_uri, "--trials", "3", "--timeout", "600", *FAST]
    assert run.main([*argv, "--set", "search.recycle_after=1"]) == 0
    after = time.time()
    assert len(deadlines) == 2  # this process ran 1 trial, then two replacements ran 1 each
    assert len(set(deadlines)) == 1 and before + 600 <= deadlines[0] <= after + 600


def test_cli_flags_become_params(workdir):
    args = run.parse_args(["search", "--trials", "7", "--seed", "3", "--timeout", "60"])
    params = run.load_params(args)  # default params found from any cwd
    assert (params.search.n_trials, params.seed, params.search.timeout) == (7, 3, 60)


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--set", "model.dropout=1.5"], "model.dropout = 1.5"),
        (["--set", "model.activation=relux"], "'relu'"),
        (["--set", "model.dropoutt=0.1"], "Did you mean 'model.dropout'"),
        (["-p", "missing.yaml"], "missing.yaml"),
        (["--set", "data.source=nothere.csv"], "nothere.csv: file not found"),
        (["--set", "data.test_source=held.csv"], "not the built-in 'digits'"),
    ],
)
def test_bad_input_exits_non_zero_with_a_message_and_writes_nothing(workdir, capsys, argv, needle):
    code = run.main(["train", *argv])
    err = capsys.readouterr().err
    assert code == 2 and needle in err and "Traceback" not in err
    assert not (workdir / "mlruns").exists()  # no half-written store or run


def test_bad_csv_names_the_column(workdir, capsys):
    (workdir / "bad.csv").write_text("a,b,label\n1,x,0\n2,3,1\n")
    code = run.main(["train", "--set", f"data.source={workdir / 'bad.csv'}"])
    err = capsys.readouterr().err
    assert code == 2 and "bad.csv" in err and "column(s) b" in err


def test_a_test_file_with_an_unseen_label_stops_before_any_run(workdir, capsys):
    rows = "".join(f"{i},{i % 3},{'abc'[i % 2]}\n" for i in range(12))
    (workdir / "train.csv").write_text("x,z,label\n" + rows)
    (workdir / "test.csv").write_text("x,z,label\n1,2,a\n3,4,q\n")
    flags = ["--set", "data.source=train.csv", "--set", "data.test_source=test.csv"]
    code = run.main(["search", *flags])
    err = capsys.readouterr().err
    assert code == 2 and "test.csv" in err and "'label'" in err and "q" in err
    assert "Traceback" not in err and not (workdir / "mlruns").exists()


def write_digit_pair(workdir: Path) -> None:
    """A tiny train/test pair in the Digit Recognizer layout (label first), text labels, noisy
    enough that a test split cut from the training file would score differently."""
    import numpy as np

    rng = np.random.default_rng(0)
    for name, n in (("train.csv", 150), ("test.csv", 37)):
        y = rng.integers(0, 3, n)
        X = rng.normal(size=(n, 4)) * 1.2 + y[:, None]
        lines = ["label," + ",".join(f"pixel{i}" for i in range(4))]
        lines += [
            f"{('cat', 'dog', 'eel')[c]}," + ",".join(f"{v:.3f}" for v in row)
            for c, row in zip(y, X, strict=True)
        ]
        (workdir / name).write_text("\n".join(lines) + "\n")


@pytest.mark.slow
def test_train_with_a_test_file_scores_exactly_that_file(workdir, store_uri, capsys):
    """The test metrics are the test file's: predicting the raw file with the logged model
    gives the logged test accuracy, over the file's 37 rows, with text labels back."""
    import re

    import mlflow

    write_digit_pair(workdir)
    flags = ["-p", str(REPO / "params" / "mnist.yaml"), "--tracking-uri", store_uri]
    flags += ["--set", "data.source=train.csv", "--set", "data.test_source=test.csv"]
    flags += ["--set", "model.hidden=[16]", "--set", "train.epochs=15"]
    flags += ["--set", "train.batch_size=16"]
    assert run.main(["train", *flags]) == 0
    out = capsys.readouterr().out
    run_id, model_uri = re.search(r"run (\w+) .*model: (\S+)", out).groups()
    client = mlflow.MlflowClient(store_uri)
    logged = client.get_run(run_id).data
    assert logged.params["data.test_source"] == "test.csv"
    inputs = client.get_run(run_id).inputs.dataset_inputs
    contexts = {i.dataset.name: {t.key: t.value for t in i.tags} for i in inputs}
    assert contexts["train-test"]["mlflow.data.context"] == "test"  # the test file's provenance
    report = client.download_artifacts(run_id, "classification_report.txt", str(workdir))
    assert Path(report).read_text().split()[-1] == "37"  # support: every test-file row, no other
    argv = ["predict", "--model", model_uri, "--data", "test.csv", "--out", "pred.csv"]
    assert run.main([*argv, "--tracking-uri", store_uri]) == 0
    acc = float(
        re.search(
            r"accuracy against column 'label': ([0-9.]+) \(37 rows\)", capsys.readouterr().err
        ).group(1)
    )
    assert acc == pytest.approx(logged.metrics["test_accuracy"], abs=1e-4)
    import pandas as pd

    assert set(pd.read_csv(workdir / "pred.csv")["prediction"]) <= {"cat", "dog", "eel"}


def test_help_is_answered(capsys):
    with pytest.raises(SystemExit) as stop:
        run.main(["--help"])
    assert stop.value.code == 0 and "search" in capsys.readouterr().out


@pytest.mark.slow
def test_train_end_to_end_logs_a_complete_run_and_a_servable_model(workdir, store_uri, capsys):
    import mlflow
    import numpy as np

    from pipeline import model

    overrides = [
        "train.epochs=25",
        "model.hidden=[16]",
        "train.optimizer=adam",
        "train.learning_rate=0.02",
        f"tracking.uri={store_uri}",
    ]
    params = config.load(REPO / "params" / "iris.yaml", overrides)
    prep = stages.prepare(params)
    tracker = make_tracker(params)
    with tracker.run("train") as run_id:
        tracker.log_params(run_id, config.flatten(params))
        result = stages.fit(params, prep, seed=params.seed)
        stages.log_training(tracker, run_id, result, prep)
        test = stages.log_champion(
            tracker, run_id, params, prep, result, register_as="iris-test"
        ).test

    logged = mlflow.MlflowClient(store_uri).get_run(run_id)
    assert logged.info.status == "FINISHED"
    assert set(MISSION_KEYS) <= set(logged.data.params)
    assert {"val_accuracy", "test_accuracy", "lr", "epochs_run", "train_seconds"} <= set(
        logged.data.metrics
    )
    artifacts = {a.path for a in mlflow.MlflowClient(store_uri).list_artifacts(run_id)}
    assert {"learning_curves.png", "confusion_matrix.png", "classification_report.txt"} <= artifacts
    from importlib import metadata

    # The run names exactly what produced it: the installed versions and the checkout's commit.
    assert logged.data.tags["version.tensorflow"] == metadata.version("tensorflow")
    assert logged.data.tags["version.mlflow"] == metadata.version("mlflow")
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert logged.data.tags["mlflow.source.git.commit"] == head

    # Raw, unscaled test rows scored by the logged model in a fresh process.
    frame = stages.frame(prep, prep.raw.X_test, prep.raw.y_test)
    frame.to_csv(workdir / "test.csv", index=False)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.run",
            *predict_argv("models:/iris-test@champion", store_uri),
        ],
        capture_output=True,
        text=True,
        cwd=workdir,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    import pandas as pd

    served = pd.read_csv(workdir / "pred.csv")["prediction"].tolist()
    codes = model.to_labels(
        model.predict_scores(result.model, prep.scaled.X_test), "classification"
    )
    in_memory = [prep.dataset.classes[c] for c in codes]
    assert served == in_memory and set(served) <= {"setosa", "versicolor", "virginica"}
    expected_acc = float(np.mean(np.array(codes) == prep.scaled.y_test))
    assert expected_acc == pytest.approx(test["test_accuracy"])
    assert f"accuracy against column 'target': {expected_acc:.4f}" in out.stderr


@pytest.mark.slow
def test_train_command_is_reproducible_for_a_seed(workdir, store_uri, capsys):
    import mlflow

    argv = [
        "train",
        "-p",
        str(REPO / "params" / "iris.yaml"),
        "--tracking-uri",
        store_uri,
        "--set",
        "train.epochs=10",
        "--seed",
        "5",
    ]
    assert run.main(argv) == 0
    assert run.main(argv) == 0
    runs = mlflow.MlflowClient(store_uri).search_runs(["1"], order_by=["start_time ASC"])
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    first, second = (r.data.metrics for r in runs)
    keys = [k for k in first if k != "train_seconds"]
    assert {k: first[k] for k in keys} == {k: second[k] for k in keys}


def test_train_from_run_trains_a_trials_params_again_and_links_the_runs(workdir, store_uri, capsys):
    import mlflow

    fast = ["--set", "train.epochs=4", "--set", "model.hidden=[32]"]
    search_argv = ["search", "--tracking-uri", store_uri, "--trials", "2", "--workers", "1", *fast]
    assert run.main(search_argv) == 0
    client = mlflow.MlflowClient(store_uri)
    trials = client.search_runs(["1"], "tags.`pipeline.trial` = '1'")
    parent = client.search_runs(["1"], "tags.`pipeline.kind` = 'study'")[0].info.run_id
    trial = trials[0]
    assert trial.data.params["model.activation"] != "None"  # a sampled trial, not the preset
    again = ["train", "--tracking-uri", store_uri, "--from-run", trial.info.run_id]
    assert run.main(again) == 0
    assert run.main([*again, "--set", "train.epochs=2"]) == 0
    linked = client.search_runs(
        ["1"], f"tags.`pipeline.from_run` = '{trial.info.run_id}'", order_by=["start_time ASC"]
    )
    assert len(linked) == 2 and all(r.info.status == "FINISHED" for r in linked)
    same, shorter = linked
    assert same.data.params == trial.data.params  # exactly its params (seed included)
    for key in ("val_accuracy", "val_loss", "epochs_run"):
        assert same.data.metrics[key] == trial.data.metrics[key], key
    changed = {k for k, v in shorter.data.params.items() if trial.data.params[k] != v}
    assert changed == {"train.epochs"} and shorter.data.metrics["epochs_run"] == 2
    capsys.readouterr()
    # what cannot be trained again says so and trains nothing
    for argv, needle in (
        (["train", "--tracking-uri", store_uri, "--from-run", parent], "parent run"),
        (["train", "--tracking-uri", store_uri, "--from-run", "0" * 32], "no such run"),
        ([*again, "-p", "default"], "drop -p"),
    ):
        assert run.main(argv) == 2
        assert needle in capsys.readouterr().err
    assert len(client.search_runs(["1"], "tags.`pipeline.kind` = 'train'")) == 2


FAST = [
    "--set",
    "train.epochs=4",
    "--set",
    "model.hidden=[32]",
    "--set",
    "search.n_startup_trials=2",
]


def params_for_space():
    return config.load(REPO / "params" / "default.yaml", FAST[1::2])


@pytest.mark.slow
def test_search_resumes_to_the_total_registers_a_champion_and_predict_reproduces_it(
    workdir, store_uri, capsys
):
    import mlflow
    import pandas as pd

    # Early stopping with restored weights: a trial's objective is then not its last epoch's.
    base = ["search", "--tracking-uri", store_uri, *FAST]
    base += ["--set", "train.early_stopping.patience=1", "--set", "train.epochs=8"]
    assert run.main([*base, "--trials", "4"]) == 0
    assert run.main([*base, "--trials", "6"]) == 0
    captured = capsys.readouterr()
    out = captured.out
    assert "champion = best trial" in out and "test_accuracy" in out and "pipeline.run ui" in out
    assert "model: models:/default@champion (version 1)" in out
    assert "Successfully registered" not in captured.err and "Created version" not in captured.err

    client = mlflow.MlflowClient(store_uri)
    runs = client.search_runs(["1"], max_results=100)
    parents = [r for r in runs if r.data.tags.get("pipeline.kind") == "study"]
    assert len(parents) == 1
    parent = parents[0].info.run_id
    trials = [r for r in runs if "pipeline.trial" in r.data.tags]
    assert len(trials) == 6
    assert all(r.data.tags["mlflow.parentRunId"] == parent for r in trials)
    assert len({tuple(sorted(r.data.params)) for r in trials}) == 1  # same keys in every trial
    assert all(r.info.status != "RUNNING" for r in runs)
    assert {r.data.tags["optuna.state"] for r in trials} <= {"COMPLETE", "PRUNED"}
    assert "lr" in trials[0].data.metrics and "epochs_run" in trials[0].data.metrics
    artifacts = {a.path for a in client.list_artifacts(parent)}
    assert {
        "trials.csv",
        "best_params.yaml",
        "study_figures.html",
        "top_trials_curves.png",
    } <= artifacts
    assert {a.path for a in client.list_artifacts(trials[0].info.run_id)} == {"model.keras"}

    # One ranking everywhere: each complete trial's latest val_accuracy in MLflow (what the UI
    # shows and sorts by) is exactly the objective Optuna recorded for it.
    from pipeline import search

    study = search.open_study(
        "default",
        make_storage(str(workdir / "mlruns" / "optuna-journal.log")),
        params_for_space().search,
        seed=0,
        max_epochs=3,
    )
    objectives = study.values()
    in_mlflow = {
        int(r.data.tags["pipeline.trial"]): r.data.metrics["objective"]
        for r in trials
        if r.data.tags["optuna.state"] == "COMPLETE"
    }
    assert in_mlflow == objectives and len(objectives) >= 2  # one ranking: the UI sorts on it
    for r in trials:  # the objective is the metric, nudged by less than 1e-6 (protocol.objective)
        if r.data.tags["optuna.state"] == "COMPLETE":
            m = r.data.metrics
            assert 0 <= m["val_accuracy"] - m["objective"] < 1e-6

    version = client.get_model_version_by_alias("default", "champion")
    champion = client.get_run(version.run_id)
    assert champion.data.tags["mlflow.parentRunId"] == parent
    # The champion is the best trial's own model: same validation score, no retraining.
    best = max(objectives.items(), key=lambda kv: kv[1])
    assert champion.data.tags["pipeline.best_trial"] == str(best[0])
    assert champion.data.metrics["val_accuracy"] == pytest.approx(best[1])

    # The registered champion scores raw test rows to its logged test accuracy.
    params = config.load(REPO / "params" / "default.yaml", FAST[1::2])
    prep = stages.prepare(params)
    stages.frame(prep, prep.raw.X_test, prep.raw.y_test).to_csv(workdir / "test.csv", index=False)
    assert run.main(predict_argv("models:/default@champion", store_uri)) == 0
    pred = pd.read_csv(workdir / "pred.csv")["prediction"].to_numpy()
    acc = float((pred == prep.raw.y_test).mean())
    assert acc == pytest.approx(champion.data.metrics["test_accuracy"])

    assert run.main(["report", "--tracking-uri", store_uri, "--out", str(workdir / "rep")]) == 0
    listing = capsys.readouterr().out
    assert "6 trials" in listing and (workdir / "rep" / "study_figures.html").is_file()

    # Running the finished study again keeps its champion: no retraining, no second test use.
    def champions() -> int:
        runs = client.search_runs(["1"], "tags.`pipeline.kind` = 'champion'")
        return len(runs)

    before = champions()
    assert run.main([*base, "--trials", "6"]) == 0
    assert "already evaluated for this best trial" in capsys.readouterr().out
    assert champions() == before


@pytest.mark.slow
def test_a_diverging_trial_fails_and_the_study_still_completes(workdir, store_uri, capsys):
    import mlflow

    space = "search.space={train.learning_rate: {choices: [0.01, 1.0e+12]}}"
    argv = [
        "search",
        "--tracking-uri",
        store_uri,
        *FAST,
        "--trials",
        "1",
        "--set",
        "search.sampler=grid",
        "--set",
        "train.optimizer=sgd",
        "--set",
        "model.activation=linear",
        "--set",
        space,
    ]
    assert run.main(argv) == 0
    runs = mlflow.MlflowClient(store_uri).search_runs(["1"])
    failed = [r for r in runs if r.data.tags.get("optuna.state") == "FAIL"]
    assert len(failed) == 1 and failed[0].info.status == "FAILED"
    assert "diverged" in failed[0].data.tags["error"]
    assert any(r.data.tags.get("pipeline.kind") == "champion" for r in runs)
    assert all(r.info.status != "RUNNING" for r in runs)


def _start_search(workdir, store_uri, *extra, sigint="ignored", session=False):
    """A search in a subprocess whose trials run long enough to be interrupted.

    `sigint="ignored"` starts it as a script's background job (`cmd &`) or a CI runner does:
    with SIGINT ignored, which Python keeps unless the command sets its own handler;
    `"default"` as a terminal does. `session=True` makes it a process group of its own, so the
    test can signal the group as a terminal's Ctrl-C does.
    """
    import os
    import signal

    argv = [
        sys.executable,
        "-m",
        "pipeline.run",
        "search",
        "--tracking-uri",
        store_uri,
        "--set",
        "train.epochs=400",
        "--set",
        "train.early_stopping.patience=0",
        "--set",
        "model.hidden=[32]",
        "--set",
        "search.pruner=none",
        *extra,
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    disposition = {"ignored": signal.SIG_IGN, "default": signal.SIG_DFL}[sigint]
    return subprocess.Popen(
        argv,
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=session,
        preexec_fn=lambda: signal.signal(signal.SIGINT, disposition),
    )


def _wait_for_running_trial(workdir, proc, timeout=180.0):
    """The MLflow run id of a trial that is inside fit()."""
    return _wait_for_running_trials(workdir, proc, 1, timeout)[0]


def _wait_for_running_trials(workdir, proc, n, timeout=180.0):
    """The MLflow run ids of `n` trials that are inside fit(): RUNNING trials that have
    reported their first epoch to Optuna (the pruning hook runs at every epoch end)."""
    import time

    import optuna

    from pipeline import search

    journal = workdir / "mlruns" / "optuna-journal.log"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(proc.communicate()[1][-3000:])
        if journal.is_file():
            storage = make_storage(str(journal)).backend
            with contextlib.suppress(KeyError):  # the study is not created yet
                study = optuna.load_study(study_name="default", storage=storage)
                running = [
                    t.user_attrs[search.RUN_ATTR]
                    for t in study.get_trials(states=[optuna.trial.TrialState.RUNNING])
                    if t.intermediate_values and search.RUN_ATTR in t.user_attrs
                ]
                if len(running) >= n:
                    return running
        time.sleep(0.2)
    raise AssertionError(f"{n} trials did not reach their first epoch in time")


@pytest.mark.slow
@pytest.mark.parametrize("sigint", ["ignored", "default"])
@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_interrupt_ends_runs_killed_marks_the_trial_and_exits_130(
    workdir, store_uri, signame, sigint
):
    """Sent to the search process itself, mid-trial, however its SIGINT was set at start."""
    import signal

    import mlflow

    proc = _start_search(workdir, store_uri, "--trials", "3", sigint=sigint)
    trial_run = _wait_for_running_trial(workdir, proc)
    proc.send_signal(getattr(signal, signame))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted" in err
    runs = mlflow.MlflowClient(store_uri).search_runs(["1"])
    assert all(r.info.status != "RUNNING" for r in runs)
    assert {r.info.run_id: r.info.status for r in runs}[trial_run] == "KILLED"
    storage = make_storage(str(workdir / "mlruns" / "optuna-journal.log")).backend
    import optuna

    study = optuna.load_study(study_name="default", storage=storage)
    assert [t.state.name for t in study.trials] == ["FAIL"]


@pytest.mark.slow
@pytest.mark.parametrize("target", ["parent", "group"])
def test_ctrl_c_to_a_search_with_workers_stops_every_worker_and_leaves_nothing_running(
    workdir, store_uri, target
):
    """`--workers 2`, both processes mid-trial; SIGINT to the parent alone (`kill -INT`) or to
    the whole process group (a terminal's Ctrl-C), started with SIGINT ignored as a background
    job is: exit 130, every run ended, every trial marked, no worker left behind.

    A trial that reaches its end in the moment the signal takes to act is a finished trial, not
    an interrupted one."""
    import os
    import signal

    import mlflow
    import optuna

    from pipeline import search

    proc = _start_search(workdir, store_uri, "--trials", "4", "--workers", "2", session=True)
    trial_runs = _wait_for_running_trials(workdir, proc, 2)
    if target == "parent":
        proc.send_signal(signal.SIGINT)
    else:
        os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    left = [s for s in _proc_stats() if int(s[4]) == proc.pid and s[2] != "Z"]  # its group
    assert left == [], left
    runs = {r.info.run_id: r.info.status for r in mlflow.MlflowClient(store_uri).search_runs(["1"])}
    assert "RUNNING" not in runs.values(), runs
    storage = make_storage(str(workdir / "mlruns" / "optuna-journal.log")).backend
    study = optuna.load_study(study_name="default", storage=storage)
    states = {t.user_attrs.get(search.RUN_ATTR): t.state.name for t in study.trials}
    assert "RUNNING" not in states.values(), states
    # Each of the two trials was interrupted (run KILLED, trial FAIL) or, if it reached its end
    # in the moment before the signal took effect, finished (FINISHED, COMPLETE): the parent's
    # began first, and alone the parent stops its worker only after recording its own trial.
    ended = [(runs[r], states[r]) for r in trial_runs]
    assert set(ended) <= {("KILLED", "FAIL"), ("FINISHED", "COMPLETE")}, ended
    assert ("KILLED", "FAIL") in ended, ended  # the signal did interrupt a trial


@pytest.mark.slow
def test_a_killed_worker_is_reconciled_on_the_next_start(workdir, store_uri, capsys):
    import mlflow
    import optuna

    from pipeline import search

    proc = _start_search(workdir, store_uri, "--trials", "3")
    trial_run = _wait_for_running_trial(workdir, proc)
    proc.kill()  # SIGKILL: no handler runs, the trial and its run stay RUNNING
    proc.communicate()
    client = mlflow.MlflowClient(store_uri)
    assert client.get_run(trial_run).info.status == "RUNNING"

    # The next start marks the dead trial FAIL, closes its run and retries its params.
    assert run.main(["search", "--tracking-uri", store_uri, "--trials", "1", *FAST]) == 0
    old = client.get_run(trial_run)
    assert old.info.status == "KILLED" and old.data.tags["optuna.state"] == "FAIL"
    storage = make_storage(str(workdir / "mlruns" / "optuna-journal.log")).backend
    study = optuna.load_study(study_name="default", storage=storage)
    states = [t.state.name for t in study.trials]
    assert states == ["FAIL", "COMPLETE"]
    assert study.trials[1].params == study.trials[0].params  # the retry
    assert "died" in study.trials[0].user_attrs[search.REASON_ATTR]
    runs = client.search_runs(["1"])
    assert all(r.info.status != "RUNNING" for r in runs)
    assert len([r for r in runs if r.data.tags.get("pipeline.kind") == "study"]) == 1


def _proc_stats() -> list[list[str]]:
    """/proc/<pid>/stat fields after the command name: [state, ppid, pgrp, ...] at 2.., so
    index 3 is the parent pid and 4 the process group (Linux)."""
    stats = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                text = (entry / "stat").read_text()
            except OSError:
                continue
            stats.append([entry.name, "", *text.rsplit(")", 1)[1].split()])
    return stats


@pytest.mark.slow
def test_ui_serves_the_store_on_localhost(workdir, store_uri):
    import time

    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pipeline.run",
            "ui",
            "--port",
            str(port),
            "--tracking-uri",
            store_uri,
        ],
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert wait_for_http(f"http://127.0.0.1:{port}/") == 200
        groups = {stat[4] for stat in _proc_stats() if stat[3] == str(proc.pid)}  # mlflow's group
        assert groups
    finally:
        proc.terminate()
        out = proc.communicate(timeout=30)[0]
    deadline = time.monotonic() + 30
    while any(stat[4] in groups for stat in _proc_stats()) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not any(stat[4] in groups for stat in _proc_stats()), "mlflow ui left processes behind"
    assert f"http://127.0.0.1:{port}/#/experiments/1/runs" in out


@pytest.mark.slow
def test_train_on_a_regression_csv_logs_residuals_and_predicts_values(workdir, store_uri):
    import mlflow
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    X = rng.uniform(size=(120, 3))
    frame = pd.DataFrame(X, columns=["a", "b", "c"])
    frame["price"] = X @ np.array([3.0, -1.0, 0.5]) + 0.1 * rng.normal(size=120)
    frame.to_csv(workdir / "houses.csv", index=False)
    argv = [
        "train",
        "--tracking-uri",
        store_uri,
        "--set",
        "data.source=houses.csv",
        "--set",
        "train.epochs=5",
        "--set",
        "model.hidden=[16]",
    ]
    assert run.main(argv) == 0
    client = mlflow.MlflowClient(store_uri)
    (logged,) = client.search_runs(["1"])
    assert logged.info.status == "FINISHED" and logged.data.params["data.task"] == "auto"
    assert {"test_rmse", "test_r2", "val_rmse"} <= set(logged.data.metrics)
    assert "residuals.png" in {a.path for a in client.list_artifacts(logged.info.run_id)}
    frame.drop(columns=["price"]).head(5).to_csv(workdir / "test.csv", index=False)
    model_uri = client.search_logged_models(["1"])[0].model_uri
    assert run.main(predict_argv(model_uri, store_uri)) == 0
    pred = pd.read_csv(workdir / "pred.csv")["prediction"]
    assert len(pred) == 5 and pred.dtype == float


@pytest.mark.slow
@pytest.mark.postgres
def test_scale_out_postgres_storage_tracking_server_and_two_workers(workdir, capsys):
    """Needs PostgreSQL on 127.0.0.1:5432 (PIPELINE_TEST_PG_URL overrides); skipped without it
    on a developer machine, required in CI. Starts a real MLflow tracking server."""
    import os
    import signal

    import mlflow
    import optuna

    pg_url = require_postgres()
    port = free_port()
    server = mlflow_server(workdir, port)
    uri = f"http://127.0.0.1:{port}"
    study = f"scale-out-{os.getpid()}"
    try:
        assert wait_for_http(f"{uri}/health") == 200
        argv = [
            "search",
            "--storage",
            pg_url,
            "--tracking-uri",
            uri,
            "--study",
            study,
            "--workers",
            "2",
            "--trials",
            "6",
            "--new",
            *FAST,
            *("--set", "train.epochs=20", "--set", "search.pruner=none"),
            # no process trains more than 2 of the 6 trials, so however fast the first one is,
            # several processes must share the study (fresh ones replacing the recycled)
            *("--set", "search.recycle_after=2"),
        ]
        assert run.main(argv) == 0
        out = capsys.readouterr().out
        client = mlflow.MlflowClient(uri)
        exp = client.get_experiment_by_name("default")
        # the server's own UI, and none of MLflow's per-run "View run" lines
        assert f"open the UI:  {uri}/#/experiments/{exp.experiment_id}/runs?" in out
        assert "View run" not in out and "View experiment" not in out
        assert run.main(["ui", "--tracking-uri", uri]) == 0  # points there, starts nothing
        assert f"MLflow UI of the tracking server: {uri}/#/experiments/" in capsys.readouterr().out
        runs = client.search_runs([exp.experiment_id], f"tags.`pipeline.study` = '{study}'")
        trials = [r for r in runs if "pipeline.trial" in r.data.tags]
        parent = [r for r in runs if r.data.tags.get("pipeline.kind") == "study"]
        assert len(parent) == 1 and len(trials) == 6
        assert {r.data.tags["mlflow.parentRunId"] for r in trials} == {parent[0].info.run_id}
        workers = {
            t.user_attrs["worker"]
            for t in optuna.load_study(study_name=study, storage=pg_url).trials
        }
        assert len(workers) >= 3  # 6 trials, at most 2 per process
        assert client.get_model_version_by_alias("default", "champion").run_id
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        optuna.delete_study(study_name=study, storage=pg_url)


def test_search_metric_must_suit_the_task(workdir, capsys):
    code = run.main(["search", "--set", "search.metric=val_rmse"])
    err = capsys.readouterr().err
    assert code == 2 and "search.metric 'val_rmse'" in err and "val_accuracy" in err
    assert not (workdir / "mlruns").exists()


def search_storage(workdir: Path):
    """The default Optuna storage of a search run in `workdir`."""

    return make_storage(str(workdir / "mlruns" / "optuna-journal.log"))


def diabetes_csv(path: Path) -> Path:
    """scikit-learn's diabetes set (442 rows, target 25-346) as a CSV with a header."""
    from sklearn.datasets import load_diabetes

    load_diabetes(as_frame=True).frame.to_csv(path, index=False)
    return path


def test_search_metric_auto_follows_the_task(workdir):
    """auto: val_accuracy (maximize) for classification, val_rmse (minimize) for regression."""
    default = REPO / "params" / "default.yaml"
    csv = diabetes_csv(workdir / "diabetes.csv")
    for source, expected in (
        ("iris", ("val_accuracy", "maximize")),
        (csv, ("val_rmse", "minimize")),
    ):
        params = config.load(default, [f"data.source={source}"])
        resolved = stages.resolve_metric(params, stages.prepare(params)).search
        assert (resolved.metric, resolved.direction) == expected
    params = config.load(default, [f"data.source={csv}", "search.metric=val_r2"])
    assert stages.resolve_metric(params, stages.prepare(params)).search.direction == "maximize"
    params = config.load(default, [f"data.source={csv}", "search.metric=val_accuracy"])
    with pytest.raises(PipelineError, match="'val_accuracy' is not available for regression"):
        stages.resolve_metric(params, stages.prepare(params))


@pytest.mark.slow
def test_regression_on_diabetes_fits_a_standardized_target_and_reports_real_units(
    workdir, store_uri
):
    """The raw target (25-346) fitted unscaled left the default MLP at test R² 0.35 after 30
    epochs, below a linear regression's 0.45 on the same split; standardized (fitted on the
    train split), it matches the linear model. Metrics, per-epoch curves and `predict` are in
    the target's own units."""
    import mlflow
    import numpy as np
    import pandas as pd
    from sklearn.linear_model import LinearRegression
    from sklearn.metrics import r2_score

    diabetes_csv(workdir / "diabetes.csv")
    argv = ["train", "--tracking-uri", store_uri, "--set", "data.source=diabetes.csv"]
    assert run.main(argv) == 0
    params = config.load(REPO / "params" / "default.yaml", ["data.source=diabetes.csv"])
    assert params.train.epochs == 30
    prep = stages.prepare(params)  # the very split `train` used (same seed)
    linear = LinearRegression().fit(prep.raw.X_train, prep.raw.y_train)
    linear_r2 = r2_score(prep.raw.y_test, linear.predict(prep.raw.X_test))
    client = mlflow.MlflowClient(store_uri)
    (logged,) = client.search_runs(["1"])
    metrics = logged.data.metrics
    assert metrics["test_r2"] >= 0.9 * linear_r2, (metrics["test_r2"], linear_r2)
    # Per-epoch val_rmse in the target's units: the restored best epoch's is the final one.
    curve = [m.value for m in client.get_metric_history(logged.info.run_id, "val_rmse")]
    assert min(curve) == pytest.approx(metrics["val_rmse"], rel=1e-3) and min(curve) > 20
    # predict answers in the target's units: its R² on the test rows is the logged test_r2.
    stages.frame(prep, prep.raw.X_test).to_csv(workdir / "test.csv", index=False)
    model_uri = client.search_logged_models(["1"])[0].model_uri
    assert run.main(predict_argv(model_uri, store_uri)) == 0
    pred = pd.read_csv(workdir / "pred.csv")["prediction"].to_numpy()
    assert r2_score(prep.raw.y_test, pred) == pytest.approx(metrics["test_r2"], abs=1e-3)
    assert np.mean(pred) == pytest.approx(np.mean(prep.raw.y_test), rel=0.2)


@pytest.mark.slow
def test_warm_start_tries_the_earlier_studys_best_params_first(workdir, store_uri):
    import mlflow

    from pipeline import search

    tiny = [*FAST, "--trials", "2", "--set", "data.source=iris", "--set", "train.epochs=1"]
    tiny += ["--set", "search.pruner=none", "--set", "tracking.register_model=false"]
    assert run.main(["search", "--tracking-uri", store_uri, "--study", "first", *tiny]) == 0
    argv = ["search", "--tracking-uri", store_uri, "--study", "second", *tiny]
    # Another seed: what its sampler would propose on its own differs from study first's.
    assert run.main([*argv, "--seed", "7", "--warm-start", "first", "--set", "search.top_k=2"]) == 0
    journal = make_storage(str(workdir / "mlruns" / "optuna-journal.log"))
    first, second = (
        search.existing_study(name, journal.url, params_for_space().search)._trials()
        for name in ("first", "second")
    )
    best_first = sorted(first, key=lambda t: -t.value)
    assert [t.params for t in second] == [t.params for t in best_first]
    client = mlflow.MlflowClient(store_uri)
    runs = client.search_runs(["1"], "tags.`pipeline.study` = 'second'")
    origins = {
        r.data.tags["pipeline.trial"]: r.data.tags.get("pipeline.warm_start_from")
        for r in runs
        if "pipeline.trial" in r.data.tags
    }
    assert origins == {
        str(t.number): f"first#{b.number}" for t, b in zip(second, best_first, strict=True)
    }


@pytest.mark.slow
def test_a_multi_objective_search_keeps_the_pareto_front_and_its_champion_is_first_on_it(
    workdir, store_uri, capsys
):
    """search.metric [val_accuracy, n_params]: every trial's two objectives are what its run
    logged, no trial is pruned, the champion is the Pareto trial best on val_accuracy, the
    figures include the Pareto front, and `report` lists the front."""
    import mlflow
    import optuna

    space = (
        "{model.batch_norm: {choices: [false, true]}, "
        "train.learning_rate: {low: 0.001, high: 0.2, log: true}}"
    )
    sets = [
        "data.source=iris",
        "train.epochs=3",
        "model.hidden=[8]",
        "search.metric=[val_accuracy, n_params]",
        f"search.space={space}",
        "tracking.register_model=false",
    ]
    common = ["--tracking-uri", store_uri, *[a for s in sets for a in ("--set", s)]]
    assert run.main(["search", "--trials", "3", *common]) == 0
    printed = capsys.readouterr().out
    study = optuna.load_study(study_name="default", storage=search_storage(workdir).backend)
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    client = mlflow.MlflowClient(store_uri)
    runs = {
        int(r.data.tags["pipeline.trial"]): r
        for r in client.search_runs(["1"])
        if "pipeline.trial" in r.data.tags
    }
    for t in study.trials:
        assert t.state.name == "COMPLETE" and t.intermediate_values == {}
        logged = runs[t.number].data.metrics
        assert t.values == [logged["val_accuracy"], logged["n_params"]]
    front = sorted(study.best_trials, key=lambda t: (-t.values[0], t.number))
    (champion,) = [
        r for r in client.search_runs(["1"]) if r.data.tags.get("pipeline.kind") == "champion"
    ]
    assert champion.data.tags["pipeline.best_trial"] == str(front[0].number)
    assert "Pareto front (val_accuracy maximize, n_params minimize)" in printed
    parent = champion.data.tags["mlflow.parentRunId"]
    page = client.download_artifacts(parent, "study_figures.html", str(workdir))
    assert "Pareto front" in Path(page).read_text()
    assert run.main(["report", *common]) == 0
    listed = capsys.readouterr().out.split("Pareto front")[1].splitlines()[3:]
    rows = itertools.takewhile(lambda line: line[:1].isdigit(), listed)
    assert [int(line.split()[0]) for line in rows] == [t.number for t in front]


@pytest.mark.slow
def test_worker_processes_are_recycled_after_recycle_after_trials(workdir, store_uri, capsys):
    """No process trains more than `search.recycle_after` trials (Keras memory grows per
    trial); fresh processes take over until the budget is met, still one study."""
    import collections

    import mlflow

    from pipeline import search

    argv = ["search", "--tracking-uri", store_uri, *FAST, "--trials", "5"]
    argv += ["--set", "search.recycle_after=2", "--set", "search.pruner=none"]
    assert run.main(argv) == 0
    study = search.open_study(
        "default",
        make_storage(str(workdir / "mlruns" / "optuna-journal.log")),
        params_for_space().search,
        seed=0,
        max_epochs=3,
    )
    per_process = collections.Counter(
        t.user_attrs[search.WORKER_ATTR] for t in study._trials() if t.state.name == "COMPLETE"
    )
    assert sum(per_process.values()) == 5
    assert max(per_process.values()) <= 2 and len(per_process) >= 3
    runs = mlflow.MlflowClient(store_uri).search_runs(["1"])
    assert all(r.info.status == "FINISHED" for r in runs)
    assert len([r for r in runs if r.data.tags.get("pipeline.kind") == "champion"]) == 1
    assert "champion = best trial" in capsys.readouterr().out


@pytest.mark.slow
def test_the_jax_backend_trains_and_its_model_serves_on_tensorflow(workdir, store_uri):
    """KERAS_BACKEND=jax (the `jax` extra) trains and logs the same kind of model; `predict` on
    the default TensorFlow backend scores it to the logged test accuracy."""
    import os
    import re

    from conftest import require_jax

    require_jax()
    env = {**os.environ, "KERAS_BACKEND": "jax"}
    argv = ["-m", "pipeline.run", "train", "-p", str(REPO / "params" / "iris.yaml")]
    argv += ["--tracking-uri", store_uri, "--set", "train.epochs=30"]
    done = subprocess.run(
        [sys.executable, *argv], cwd=workdir, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "backend 'tpu'" not in done.stderr  # JAX's platform probe stays off the console
    uri = re.search(r"model: (models:/\S+)", done.stdout).group(1)
    logged = float(re.search(r"test_accuracy\s+([0-9.]+)", done.stdout).group(1))
    import mlflow

    (trained,) = mlflow.MlflowClient(store_uri).search_runs(["1"])
    assert trained.data.tags["keras.backend"] == "jax"

    params = config.load(REPO / "params" / "iris.yaml", ["train.epochs=30"])
    prep = stages.prepare(params)
    stages.frame(prep, prep.raw.X_test, prep.raw.y_test).to_csv(workdir / "test.csv", index=False)
    env.pop("KERAS_BACKEND")
    served = subprocess.run(
        [sys.executable, "-m", "pipeline.run", *predict_argv(uri, store_uri)],
        cwd=workdir,
        env={**env, "KERAS_BACKEND": "tensorflow"},
        capture_output=True,
        text=True,
    )
    assert served.returncode == 0, served.stderr[-3000:]
    assert f"accuracy against column 'target': {logged:.4f}" in served.stderr


@pytest.mark.parametrize("folds", ["1000", "-1"])
def test_a_bad_fold_count_stops_the_search_before_any_run(workdir, capsys, folds):
    code = run.main(["search", "-p", "iris", "--set", f"split.folds={folds}"])
    err = capsys.readouterr().err
    assert code == 2 and f"split.folds={folds}" in err.replace(" = ", "=")
    assert "Traceback" not in err and not (workdir / "mlruns").exists()


@pytest.mark.slow
def test_a_cross_validated_search_ranks_trials_by_their_fold_mean_and_refits_the_champion(
    workdir, store_uri, capsys
):
    """split.folds=3 on iris: every trial run carries its three folds' scores and their mean
    (its latest val_accuracy, which is its Optuna value); the champion is the best params
    trained once on all 120 non-test rows for the folds' median best epoch, tested once."""
    import mlflow
    import numpy as np

    from pipeline import search

    # lr 1.0 overshoots after a few epochs, so the folds' best epochs fall well inside the 30
    # and the refit's shorter run is told apart from a full one.
    sets = ["split.folds=3", "search.n_trials=2", "train.epochs=30", "model.hidden=[8]"]
    sets += ["train.learning_rate=1.0"]
    flags = ["-p", "iris", "--tracking-uri", store_uri]
    flags += [a for s in [*sets, "search.pruner=none"] for a in ("--set", s)]
    assert run.main(["search", *flags]) == 0
    assert "trained once more on all non-test rows" in capsys.readouterr().out

    client = mlflow.MlflowClient(store_uri)
    runs = client.search_runs([client.get_experiment_by_name("iris-softmax").experiment_id])
    trials = {
        int(r.data.tags["pipeline.trial"]): r for r in runs if "pipeline.trial" in r.data.tags
    }
    params = config.load(REPO / "params" / "iris.yaml", sets)
    journal = make_storage(str(workdir / "mlruns" / "optuna-journal.log"))
    study = search.open_study("iris-softmax", journal, params.search, seed=0, max_epochs=30)
    objectives = study.values()
    assert sorted(objectives) == sorted(trials) == [0, 1]
    for number, trial in trials.items():
        m = trial.data.metrics
        folds = [m[f"fold{i}_val_accuracy"] for i in range(3)]
        assert "fold3_val_accuracy" not in m
        assert m["val_accuracy"] == pytest.approx(np.mean(folds)) == m["cv_mean_val_accuracy"]
        assert m["cv_std_val_accuracy"] == pytest.approx(np.std(folds))
        assert m["objective"] == objectives[number]  # one ranking: MLflow's latest = Optuna's
        assert 0 <= m["val_accuracy"] - m["objective"] < 1e-6  # ties broken by the loss
        best_epochs = [int(m[f"fold{i}_best_epoch"]) for i in range(3)]
        assert m["refit_epochs"] == int(np.floor(np.median(best_epochs) + 0.5))

    best = max(objectives, key=objectives.get)
    champion = client.get_run(client.get_model_version_by_alias("iris-softmax", "champion").run_id)
    assert champion.data.tags["pipeline.best_trial"] == str(best)
    assert champion.data.tags["pipeline.refit"].startswith("all 120 non-test rows")
    refit = {k: champion.data.params[f"train.early_stopping.{k}"] for k in ("monitor", "patience")}
    assert refit == {"monitor": "loss", "patience": "30"}  # no validation rows: its best loss
    assert champion.data.metrics["epochs_run"] == trials[best].data.metrics["refit_epochs"] < 30
    assert (
        champion.data.metrics["cv_mean_val_accuracy"]
        == trials[best].data.metrics["cv_mean_val_accuracy"]
    )
    assert not {"val_accuracy", "fold0_val_accuracy"} & set(champion.data.metrics)
    tested = client.get_metric_history(champion.info.run_id, "test_accuracy")
    assert len(tested) == 1  # the test split is used once, by the refit model
    parent = client.get_run(champion.data.tags["mlflow.parentRunId"])
    assert parent.data.metrics["test_accuracy"] == tested[0].value

    # Resuming it without folds would rank holdout scores against fold means: refused.
    flags[flags.index("split.folds=3")] = "split.folds=0"
    assert run.main(["search", *flags, "--trials", "3"]) == 2
    assert "scored its trials by 3-fold CV; split.folds is now 0" in capsys.readouterr().err

"""Fault injection over the whole stack: bad values in the data, a full or read-only disk,
trials that fail in every way, `predict` against broken inputs, a tracking server or database
that goes away mid-search.

Each scenario checks what the user sees (exit 2 and one paragraph, never a traceback) and what
the fault left behind (nothing RUNNING, no trial lost, a store the next run can use), and
reports it to the suite's closing `faults:` line through `fault_audit`.
"""

from __future__ import annotations

import contextlib
import math
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import FaultAudit, mlflow_server

from pipeline import run, search
from pipeline.storage import make_storage
from pipeline.trainers import Trained

TINY = ["--set", "model.hidden=[4]", "--set", "train.epochs=2"]


def cli(cwd: Path, *argv: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """`python -m pipeline.run ARGV` in `cwd`, as a user runs it."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run(
        [sys.executable, "-m", "pipeline.run", *argv],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def one_paragraph_error(err: str) -> str:
    """The `error: ...` paragraph of a failed command's stderr (and no traceback)."""
    assert "Traceback" not in err, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err[-3000:]
    return lines[0]


def integrity(db: Path) -> str:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]


# -- 2. infinite or huge feature values ------------------------------------------------------


def _csv_with(value: str, column: str = "b") -> str:
    rows = ["a,b,label"] + [f"{i},{i % 3},{'yes' if i % 2 else 'no'}" for i in range(30)]
    a, b, label = rows[8].split(",")
    rows[8] = ",".join([value if column == "a" else a, value if column == "b" else b, label])
    return "\n".join(rows) + "\n"


@pytest.mark.faults
@pytest.mark.parametrize("value", ["inf", "-inf", "1e300", "-4e38"])
def test_train_refuses_infinite_or_huge_feature_values_naming_the_column(
    workdir, capsys, fault_audit, value
):
    (workdir / "d.csv").write_text(_csv_with(value))
    code = run.main(["train", "--set", "data.source=d.csv", *TINY])
    err = capsys.readouterr().err
    fault_audit.record()
    assert code == 2, err
    msg = one_paragraph_error(err)
    assert "d.csv" in msg and "column(s) b" in msg and "data row 8" in msg
    assert not (workdir / "mlruns").exists()  # refused before any run exists


@pytest.mark.faults
def test_an_infinite_regression_target_is_refused_too(workdir, capsys, fault_audit):
    rows = ["x,price"] + [f"{i},{i * 1.5 + 0.25}" for i in range(40)]
    rows[5] = "4,inf"
    (workdir / "r.csv").write_text("\n".join(rows) + "\n")
    code = run.main(["train", "--set", "data.source=r.csv", *TINY])
    fault_audit.record()
    assert code == 2 and "column(s) price" in one_paragraph_error(capsys.readouterr().err)


# -- 3. a full disk, a read-only store -------------------------------------------------------


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tiny RAM disk at `path` (root only: skipped elsewhere, required in CI)."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        if os.environ.get("CI") == "true":
            pytest.fail(f"cannot mount a tmpfs in CI: {done.stderr}")
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(disk: Path, leave: int = 0) -> Path:
    """Fill `disk` with one file until only `leave` bytes are free (or the disk refuses more:
    a search may be writing to it at the same time); returns the file."""
    import errno

    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        while True:
            st = os.statvfs(disk)
            room = st.f_bavail * st.f_frsize - leave
            if room <= 0:
                break
            try:
                os.write(fd, b"\0" * min(room, 1 << 20))
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                break
    finally:
        os.close(fd)
    return filler


@pytest.mark.slow
@pytest.mark.faults
def test_train_on_a_full_disk_fails_cleanly_and_the_store_works_once_there_is_room(
    workdir, fault_audit
):
    from pipeline import tracking

    with tmpfs(workdir / "disk", "4m") as disk:
        store = f"sqlite:///{disk / 'mlruns' / 'mlflow.db'}"
        tracking.Tracker(store, "iris-softmax")  # the store exists; then the disk fills
        filler = fill(disk, leave=64 * 1024)

        full = cli(disk, "train", "--set", "model.hidden=[64]", "--set", "train.epochs=1")
        assert full.returncode == 2, full.stderr[-3000:]
        msg = one_paragraph_error(full.stderr)
        assert "the disk is full" in msg and str(disk / "mlruns") in msg

        filler.unlink()
        assert run.main(["train", "-p", "iris", *TINY, "--tracking-uri", store]) == 0
        assert fault_audit.running_runs(store) == []
        assert integrity(disk / "mlruns" / "mlflow.db") == "ok"
        import mlflow

        client = mlflow.MlflowClient(store)
        exps = [e.experiment_id for e in client.search_experiments()]
        runs = client.search_runs(exps)
        failed = [r for r in runs if r.info.status == "FAILED"]
        assert len(failed) == 1 and "disk is full" in failed[0].data.tags["error"]
        assert sorted(r.info.status for r in runs) == ["FAILED", "FINISHED"]
        # The failed run logged no model: every logged model belongs to a finished run.
        finished = {r.info.run_id for r in runs if r.info.status == "FINISHED"}
        assert {m.source_run_id for m in client.search_logged_models(exps)} == finished


def _remount(disk: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(disk)], check=True)


def _store_files(home: Path) -> list[str]:
    """What a store's folder holds of the database itself (its lock file is not the store)."""
    return sorted(p.name for p in home.glob("*mlflow.db*") if not p.name.endswith(".lock"))


@pytest.mark.slow
@pytest.mark.faults
def test_a_first_train_whose_disk_fills_while_it_creates_the_store_leaves_none_behind(
    workdir, fault_audit
):
    """The very first command in a fresh folder, on a disk too small for MLflow's schema:
    exit 2 saying the store is unchanged - and it is (still no store, nothing half-migrated);
    with room again the same command creates the store and trains."""
    with tmpfs(workdir / "disk", "512k") as disk:
        full = cli(disk, "train", *TINY)
        assert full.returncode == 2, full.stderr[-3000:]
        msg = one_paragraph_error(full.stderr)
        assert "the disk is full" in msg and "the store is unchanged" in msg, msg
        assert _store_files(disk / "mlruns") == []

        _remount(disk, "64m")
        again = cli(disk, "train", *TINY)
        assert again.returncode == 0, again.stderr[-3000:]
        db = disk / "mlruns" / "mlflow.db"
        assert integrity(db) == "ok" and _store_files(disk / "mlruns") == ["mlflow.db"]
        store = f"sqlite:///{db}"
        assert fault_audit.running_runs(store) == []
        import mlflow

        client = mlflow.MlflowClient(store)
        runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
        assert [r.info.status for r in runs] == ["FINISHED"]


# A first `train` that SIGKILLs itself the moment MLflow's migration has committed one of
# alembic's temporary tables (SQLite DDL is not transactional under alembic): the half-made
# state a crash or power cut leaves, at a chosen instant instead of a lucky one.
_KILLED_MID_MIGRATION = """
import os, signal, sys
import sqlalchemy

@sqlalchemy.event.listens_for(sqlalchemy.engine.Engine, "after_cursor_execute")
def _die(conn, cursor, statement, *args):
    if statement.lstrip().upper().startswith("CREATE TABLE _ALEMBIC_TMP"):
        os.kill(os.getpid(), signal.SIGKILL)

from pipeline import run
sys.exit(run.main(sys.argv[1:]))
"""


@pytest.mark.slow
@pytest.mark.faults
def test_a_first_command_killed_while_it_creates_the_store_leaves_none_behind(workdir, fault_audit):
    """SIGKILL in the middle of MLflow's schema migration: no half-made store is left, and the
    next command creates the store and runs, no traceback."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    killed = subprocess.run(
        [sys.executable, "-c", _KILLED_MID_MIGRATION, "train", *TINY],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert killed.returncode == -9, killed.stderr[-3000:]  # it did die mid-migration
    home = workdir / "mlruns"
    db = home / "mlflow.db"
    assert not db.exists() or not _half_made(db)  # no store, or a whole one: never half

    again = cli(workdir, "train", *TINY)
    assert again.returncode == 0, again.stderr[-3000:]
    assert integrity(db) == "ok" and not _half_made(db)
    assert _store_files(home) == ["mlflow.db"]  # the killed creator's temporary file is gone
    assert fault_audit.running_runs(f"sqlite:///{db}") == []


def _half_made(db: Path) -> bool:
    """A database file whose MLflow migration has begun but not finished (no schema version
    row yet, or alembic's temporary tables), read without taking a lock."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
            if not tables:
                return False
            if "alembic_version" not in tables or any(t.startswith("_alembic_tmp") for t in tables):
                return True
            return conn.execute("SELECT count(*) FROM alembic_version").fetchone()[0] == 0
    except sqlite3.Error:
        return False


def _first_trial_finished(store_db: Path, proc: subprocess.Popen[str], timeout: float) -> None:
    """Poll the SQLite store until a trial run has FINISHED (read-only queries)."""
    deadline = time.monotonic() + timeout
    query = (
        "SELECT count(*) FROM runs JOIN tags ON tags.run_uuid = runs.run_uuid "
        "WHERE tags.key = 'pipeline.trial' AND runs.status = 'FINISHED'"
    )
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(proc.communicate()[1][-3000:])
        with (
            contextlib.suppress(sqlite3.Error),
            contextlib.closing(sqlite3.connect(f"file:{store_db}?mode=ro", uri=True)) as c,
        ):
            if c.execute(query).fetchone()[0] > 0:
                return
        time.sleep(0.2)
    raise AssertionError("no trial finished in time")


SEARCH = [
    "search",
    "-p",
    "iris",
    "--set",
    "model.hidden=[4]",
    "--set",
    "train.epochs=5",
    "--set",
    "search.pruner=none",
    "--set",
    "search.n_startup_trials=2",
    "--set",
    "split.folds=0",  # the holdout path (iris.yaml cross-validates its search trials)
]


def study_audit(fault_audit: FaultAudit, store: str, journal: Path, study: str) -> dict:
    """Trials vs runs of one study: every trial that trained has exactly one run in its state,
    every trial run has its trial; counts the mismatches as lost trials. Returns states."""
    import mlflow
    import optuna

    trials = optuna.load_study(study_name=study, storage=make_storage(str(journal)).backend)
    client = mlflow.MlflowClient(store)
    exps = [e.experiment_id for e in client.search_experiments()]
    runs = [
        r
        for r in client.search_runs(exps, max_results=1000)
        if r.data.tags.get("pipeline.study") == study and "pipeline.trial" in r.data.tags
    ]
    by_run = {r.info.run_id: r for r in runs}
    lost = 0
    expected = {"COMPLETE": {"FINISHED"}, "PRUNED": {"FINISHED"}, "FAIL": {"FAILED", "KILLED"}}
    claimed, problems = set(), []
    for t in trials.trials:
        run_id = t.user_attrs.get(search.RUN_ATTR)
        if run_id is None:
            continue
        claimed.add(run_id)
        r = by_run.get(run_id)
        ok = (
            r is not None
            and r.data.tags["pipeline.trial"] == str(t.number)
            and r.data.tags.get("optuna.state") == t.state.name
            and r.info.status in expected.get(t.state.name, set())
        )
        if not ok:
            lost += 1
            keys = ("pipeline.trial", "optuna.state")
            seen = (r.info.status, [r.data.tags.get(k) for k in keys]) if r else "no such run"
            problems.append(f"trial {t.number} {t.state.name}: run {run_id} {seen}")
    unknown = set(by_run) - claimed  # a run no trial knows
    problems += [f"run {i} {by_run[i].data.tags} belongs to no trial" for i in unknown]
    lost += len(unknown)
    fault_audit.record(lost=lost)
    assert lost == 0, problems
    return {t.number: t.state.name for t in trials.trials}


@pytest.mark.slow
@pytest.mark.faults
def test_a_search_whose_disk_fills_mid_study_stops_cleanly_and_a_rerun_finishes_it(
    workdir, fault_audit
):
    with tmpfs(workdir / "disk", "16m") as disk:
        argv = [sys.executable, "-m", "pipeline.run", *SEARCH, "--trials", "8"]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
        proc = subprocess.Popen(
            argv, cwd=disk, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        _first_trial_finished(disk / "mlruns" / "mlflow.db", proc, timeout=300)
        filler = fill(disk)  # the disk fills while the study is under way
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 2, err[-3000:]
        msg = one_paragraph_error(err)
        assert "disk is full" in msg or "No space left" in msg, msg

        filler.unlink()
        again = cli(disk, *SEARCH, "--trials", "8")
        assert again.returncode == 0, again.stderr[-3000:]
        assert "champion = best trial" in again.stdout
        store = f"sqlite:///{disk / 'mlruns' / 'mlflow.db'}"
        assert fault_audit.running_runs(store) == []
        assert integrity(disk / "mlruns" / "mlflow.db") == "ok"
        states = study_audit(
            fault_audit, store, disk / "mlruns" / "optuna-journal.log", "iris-softmax"
        )
        assert list(states.values()).count("COMPLETE") == 8


@pytest.mark.faults
def test_a_journal_append_the_full_disk_refuses_leaves_the_journal_readable(workdir, fault_audit):
    import optuna

    with tmpfs(workdir / "disk", "1m") as disk:
        storage = make_storage(str(disk / "journal.log"))
        study = optuna.create_study(study_name="s", storage=storage.backend)
        study.enqueue_trial({"x": 1.0})
        filler = fill(disk, leave=2000)  # room for a part of the next record, not all of it
        with pytest.raises(OSError):
            study.set_user_attr("big", "x" * 20_000)
        filler.unlink()
        again = make_storage(str(disk / "journal.log"))  # a fresh reader of the file
        study = optuna.load_study(study_name="s", storage=again.backend)
        study.set_user_attr("after", "ok")  # appends go on where the journal was whole
        reread = optuna.load_study(
            study_name="s", storage=make_storage(str(disk / "journal.log")).backend
        )
        fault_audit.record()
        assert reread.user_attrs == {"after": "ok"} and len(reread.trials) == 1


@contextlib.contextmanager
def read_only(folder: Path) -> Iterator[None]:
    """Make `folder` read-only for everyone, root included (a read-only bind mount)."""
    done = subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True)
    if done.returncode != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("cannot bind-mount in CI")
        pytest.skip("cannot bind-mount here (needs root)")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], check=True)
        yield
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def files_of(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` by relative path, with its bytes."""
    return {
        str(f.relative_to(folder)): f.read_bytes() for f in sorted(folder.rglob("*")) if f.is_file()
    }


@pytest.mark.slow
@pytest.mark.faults
def test_a_read_only_store_is_refused_naming_the_path_and_works_again_when_writable(
    workdir, fault_audit
):
    from pipeline import tracking

    mlruns = workdir / "mlruns"
    tracking.Tracker(f"sqlite:///{mlruns / 'mlflow.db'}", "iris-softmax")  # the store exists
    before = files_of(mlruns)  # the database, its lock file, any artifacts
    assert "mlflow.db" in before
    with read_only(mlruns):
        for argv in (["train", "-p", "iris", *TINY], [*SEARCH, "--trials", "1"]):
            done = cli(workdir, *argv)
            assert done.returncode == 2, done.stderr[-3000:]
            msg = one_paragraph_error(done.stderr)
            assert "read-only" in msg.lower() and str(mlruns) in msg, msg
    assert files_of(mlruns) == before
    assert run.main(["train", "-p", "iris", *TINY]) == 0
    assert fault_audit.running_runs(f"sqlite:///{mlruns / 'mlflow.db'}") == []


# -- 4. trials that fail in every way --------------------------------------------------------


def stub_trainer(outcomes: list) -> object:
    """A `keras_trainer` stand-in whose i-th training does outcomes[i] (an exception to raise
    or a validation accuracy to report); past the list it reports 0.9."""
    calls = {"n": 0}
    import pipeline.trainers

    real = pipeline.trainers.keras_trainer  # captured before the test swaps it for this stub

    def factory(prep, tracker, *, seed):  # noqa: ANN001, ANN202 - keras_trainer's signature
        keras = real(prep, tracker, seed=seed)

        def train(params, live, on_epoch):  # noqa: ANN001, ANN202
            i = calls["n"]
            calls["n"] += 1
            outcome = outcomes[i] if i < len(outcomes) else 0.9
            on_epoch(0, {"val_accuracy": 0.5})
            if isinstance(outcome, BaseException):
                raise outcome
            if math.isfinite(outcome):  # a real model on the run: the champion is a trial's
                keras(params, live, lambda epoch, logs: False)
            return Trained({"val_accuracy": outcome, "val_loss": 1 - outcome}, 1, False)

        return train

    return factory


def _trials_and_runs(workdir: Path, study: str = "iris-softmax") -> tuple[list, dict]:
    import mlflow
    import optuna

    journal = make_storage(str(workdir / "mlruns" / "optuna-journal.log")).backend
    trials = optuna.load_study(study_name=study, storage=journal).trials
    client = mlflow.MlflowClient(f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name(study).experiment_id])
    return trials, {r.info.run_id: r for r in runs}


@pytest.mark.faults
def test_trials_that_raise_go_nan_or_inf_or_run_out_of_memory_fail_with_the_reason(
    workdir, capsys, monkeypatch, fault_audit
):
    import pipeline.trainers

    outcomes = [
        ValueError("boom: a bug in this trial"),
        math.nan,
        math.inf,
        MemoryError("simulated: cannot allocate 8.00 GiB"),
    ]
    monkeypatch.setattr(pipeline.trainers, "keras_trainer", stub_trainer(outcomes))
    assert run.main([*SEARCH, "--trials", "2"]) == 0
    trials, runs = _trials_and_runs(workdir)
    assert [t.state.name for t in trials] == ["FAIL"] * 4 + ["COMPLETE"] * 2
    reasons = [t.user_attrs[search.REASON_ATTR] for t in trials[:4]]
    expected = [
        "ValueError: boom: a bug in this trial",
        "non-finite val_accuracy: nan",
        "non-finite val_accuracy: inf",
        "MemoryError: simulated: cannot allocate 8.00 GiB",
    ]
    assert all(e in r for e, r in zip(expected, reasons, strict=True)), reasons
    for t, e in zip(trials[:4], expected, strict=True):
        r = runs[t.user_attrs[search.RUN_ATTR]]
        assert r.info.status == "FAILED" and e in r.data.tags["error"]
        assert r.data.tags["optuna.state"] == "FAIL"
    assert fault_audit.running_runs(f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}") == []
    assert "champion = best trial 4" in capsys.readouterr().out


@pytest.mark.faults
def test_when_every_trial_fails_the_search_exits_2_listing_the_reasons(
    workdir, capsys, monkeypatch, fault_audit
):
    import pipeline.trainers

    outcomes = [ValueError("bad value"), MemoryError("out of memory")] * 10
    monkeypatch.setattr(pipeline.trainers, "keras_trainer", stub_trainer(outcomes))
    code = run.main([*SEARCH, "--trials", "1"])
    msg = one_paragraph_error(capsys.readouterr().err)
    assert code == 2 and "no trial completed" in msg
    assert "5 x 'ValueError: bad value'" in msg and "5 x 'MemoryError: out of memory'" in msg
    trials, runs = _trials_and_runs(workdir)
    # It gives up instead of looping: max(2 x n_trials, 5) failures per round, and the
    # command's two rounds (its own trials, then the top-up after its workers) make 10.
    assert [t.state.name for t in trials] == ["FAIL"] * 10
    assert fault_audit.running_runs(f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}") == []
    assert not any(r.data.tags.get("pipeline.kind") == "champion" for r in runs.values())


# -- 6. predict against broken inputs --------------------------------------------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One small model logged by `train` (features a, b, c; text labels), registered as
    `faulty` with alias champion, in its own store."""
    import mlflow
    import numpy as np

    home = tmp_path_factory.mktemp("served")
    store = f"sqlite:///{home / 'mlruns' / 'mlflow.db'}"
    rng = np.random.default_rng(0)
    X = rng.uniform(size=(60, 3))
    labels = np.where(X[:, 0] + X[:, 1] > 1, "big", "small")
    lines = ["a,b,c,label"] + [
        f"{a:.4f},{b:.4f},{c:.4f},{y}" for (a, b, c), y in zip(X, labels, strict=True)
    ]
    (home / "train.csv").write_text("\n".join(lines) + "\n")
    argv = ["train", "--set", f"data.source={home / 'train.csv'}", "--tracking-uri", store]
    assert run.main([*argv, *TINY]) == 0
    client = mlflow.MlflowClient(store)
    exp = client.get_experiment_by_name("default").experiment_id
    (logged,) = client.search_logged_models([exp])
    mlflow.set_tracking_uri(store)
    version = mlflow.register_model(logged.model_uri, "faulty").version
    client.set_registered_model_alias("faulty", "champion", version)
    rows = "a,b,c\n0.9,0.8,0.1\n0.1,0.2,0.3\n0.5,0.4,0.9\n"
    (home / "rows.csv").write_text(rows)
    return {"home": home, "store": store, "uri": logged.model_uri}


def predict(served: dict, data: Path, *, model: str | None = None, out: Path | None = None):
    """`predict` in this process; returns its exit code."""
    argv = ["predict", "--model", model or served["uri"], "--data", str(data)]
    argv += ["--tracking-uri", served["store"]]
    return run.main([*argv, "--out", str(out)] if out else argv)


@pytest.mark.slow
@pytest.mark.faults
def test_predict_takes_columns_by_name_in_any_order_with_extra_ones(
    served, tmp_path, capsys, fault_audit
):
    import pandas as pd

    assert predict(served, served["home"] / "rows.csv", out=tmp_path / "plain.csv") == 0
    frame = pd.read_csv(served["home"] / "rows.csv")
    shuffled = frame.assign(note=["x", "y", "z"], label="big")[["c", "note", "a", "label", "b"]]
    shuffled.to_csv(tmp_path / "shuffled.csv", index=False)
    assert predict(served, tmp_path / "shuffled.csv", out=tmp_path / "shuffled-pred.csv") == 0
    plain = pd.read_csv(tmp_path / "plain.csv")["prediction"].tolist()
    fault_audit.record()
    assert plain == pd.read_csv(tmp_path / "shuffled-pred.csv")["prediction"].tolist()
    assert set(plain) <= {"big", "small"} and len(plain) == 3


@pytest.mark.slow
@pytest.mark.faults
@pytest.mark.parametrize(
    ("name", "text", "needle"),
    [
        ("missing", "a,b\n1,2\n", "missing feature column(s) c"),
        ("text", "a,b,c\n1,hello,3\n", "non-numeric feature column(s) b"),
        ("empty", "", "the file is empty"),
        ("header-only", "a,b,c\n", "no data rows"),
        ("infinite", "a,b,c\ninf,1,2\n", "column(s) a hold infinite"),
        ("huge", "a,b,c\n1,1e300,2\n", "column(s) b hold infinite or too large"),
        ("gaps", "a,b,c\n1,,2\n", "missing values"),
    ],
)
def test_predict_refuses_bad_rows_naming_the_file_and_column(
    served, tmp_path, capsys, fault_audit, name, text, needle
):
    data = tmp_path / f"{name}.csv"
    data.write_text(text)
    out = tmp_path / "pred.csv"
    code = predict(served, data, out=out)
    msg = one_paragraph_error(capsys.readouterr().err)
    fault_audit.record()
    assert code == 2 and needle in msg and str(data) in msg, msg
    assert not out.exists() and list(tmp_path.glob(".*partial")) == []  # nothing half-written


@pytest.mark.slow
@pytest.mark.faults
@pytest.mark.parametrize(
    ("model", "needle"),
    [
        ("models:/nosuch@champion", "models:/nosuch@champion"),
        ("models:/faulty@nosuchalias", "models:/faulty@nosuchalias"),
        ("models:/faulty/99", "models:/faulty/99"),
        ("runs:/0123456789abcdef/model", "runs:/0123456789abcdef/model"),
    ],
)
def test_predict_with_a_model_that_does_not_exist_says_which(
    served, capsys, fault_audit, model, needle
):
    code = predict(served, served["home"] / "rows.csv", model=model)
    msg = one_paragraph_error(capsys.readouterr().err)
    fault_audit.record()
    assert code == 2 and needle in msg and "cannot load it" in msg


@pytest.mark.slow
@pytest.mark.faults
def test_predict_with_a_corrupted_model_artifact_exits_2(served, tmp_path, capsys, fault_audit):
    import mlflow

    local = Path(mlflow.artifacts.download_artifacts(served["uri"], dst_path=str(tmp_path)))
    (keras_file,) = local.rglob("*.keras")
    keras_file.write_bytes(b"PK\x03\x04 not really a zip" * 10)
    code = predict(served, served["home"] / "rows.csv", model=str(local))
    msg = one_paragraph_error(capsys.readouterr().err)
    fault_audit.record()
    assert code == 2 and "cannot load it" in msg and str(local) in msg


@pytest.mark.slow
@pytest.mark.faults
def test_predict_against_a_tracking_server_that_is_down_exits_2_in_seconds(
    served, capsys, fault_audit
):
    from conftest import free_port

    started = time.monotonic()
    argv = ["predict", "--model", "models:/faulty@champion"]
    argv += ["--data", str(served["home"] / "rows.csv")]
    code = run.main([*argv, "--tracking-uri", f"http://127.0.0.1:{free_port()}"])
    msg = one_paragraph_error(capsys.readouterr().err)
    fault_audit.record()
    assert code == 2 and "unreachable" in msg and "models:/faulty@champion" in msg, msg
    assert time.monotonic() - started < 60  # bounded retries, not MLflow's default minutes


@pytest.mark.slow
@pytest.mark.faults
def test_predict_into_a_missing_folder_is_refused_before_scoring(served, tmp_path, capsys):
    code = predict(served, served["home"] / "rows.csv", out=tmp_path / "nope" / "pred.csv")
    msg = one_paragraph_error(capsys.readouterr().err)
    assert code == 2 and str(tmp_path / "nope") in msg


# -- 8. the tracking server or the database goes away mid-search ------------------------------


def _wait_for(path: Path, proc: subprocess.Popen[str], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(proc.communicate()[1][-3000:])
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not appear in {timeout:.0f} s")
        time.sleep(0.05)


@pytest.mark.faults
@pytest.mark.postgres
def test_a_dropped_postgresql_connection_mid_trial_does_not_break_the_study(workdir, fault_audit):
    """Every connection of the study's database is terminated while a trial trains; the
    worker reconnects (pool_pre_ping) and the study finishes with no trial lost or failed."""
    import psycopg
    from conftest import require_postgres
    from test_study import (
        N_TRIALS,
        check_store_agrees_with_study,
        drop_database,
        fresh_database,
        worker,
    )

    url = fresh_database(require_postgres())
    try:
        gate = workdir / "gate"
        gate.mkdir()
        proc = worker(workdir, url, N_TRIALS, "--pause-at", "2", str(gate))
        _wait_for(gate / "paused", proc)
        server, name = url.rsplit("/", 1)
        with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
            killed = conn.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            ).fetchone()[0]
        assert killed >= 1  # the worker's pooled connection really was cut
        (gate / "resume").touch()
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
        states = check_store_agrees_with_study(workdir, url)
        fault_audit.record()
        # pool_pre_ping reconnects before the next query, so not even that trial fails
        # (without it, the trial in flight fails and the study tops up).
        assert list(states.values()) == ["COMPLETE"] * N_TRIALS, states
        assert fault_audit.running_runs(f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}") == []
    finally:
        drop_database(url)


def _stop(server: subprocess.Popen[bytes]) -> None:
    import signal

    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGKILL)
    server.wait(timeout=30)


class Relay:
    """A TCP relay on 127.0.0.1 in front of a server: `down()` cuts every open connection and
    refuses new ones (to a client, the server is gone), `up()` listens again on the same port.
    An outage without the cost of restarting the server."""

    def __init__(self, target_port: int) -> None:
        import threading

        from conftest import free_port

        self.port, self.target = free_port(), target_port
        self._lock = threading.Lock()
        self._open: list = []
        self.up()

    def up(self) -> None:
        import socket
        import threading

        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", self.port))
        self._listener.listen(64)
        threading.Thread(target=self._accept, args=(self._listener,), daemon=True).start()

    def _accept(self, listener) -> None:  # noqa: ANN001 - a socket
        import socket
        import threading

        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # down()
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._open += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src, dst) -> None:  # noqa: ANN001 - sockets
        import socket

        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def down(self) -> None:
        import socket

        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        with self._lock:
            for sock in self._open:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._open.clear()


def _failed_trials(journal: Path, study: str) -> list[str]:
    import optuna

    with contextlib.suppress(KeyError):
        storage = make_storage(str(journal)).backend
        trials = optuna.load_study(study_name=study, storage=storage).trials
        return [str(t.user_attrs.get(search.REASON_ATTR)) for t in trials if t.state.name == "FAIL"]
    return []


def _trial_in_fit(journal: Path, study: str, proc: subprocess.Popen[str], *, after: int) -> None:
    """Poll the journal until a trial numbered above `after` is RUNNING and has reported an
    epoch (so its MLflow run is open and it is inside fit())."""
    import optuna

    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(proc.communicate()[1][-3000:])
        with contextlib.suppress(KeyError, OSError):
            storage = make_storage(str(journal)).backend
            running = optuna.load_study(study_name=study, storage=storage).get_trials(
                states=[optuna.trial.TrialState.RUNNING]
            )
            if any(t.number > after and t.intermediate_values for t in running):
                return
        time.sleep(0.05)
    raise AssertionError("no trial reached fit() in time")


@pytest.mark.slow
@pytest.mark.faults
def test_the_tracking_server_going_away_mid_search_and_coming_back(workdir, fault_audit):
    """The server goes away while a trial trains and comes back once a trial has failed for it:
    the search carries on (or, if it ran out of retries first, stops with a clear error);
    a rerun finishes the budget with one run per trial that trained and nothing RUNNING."""
    from conftest import free_port, wait_for_http

    port = free_port()
    server = mlflow_server(workdir, port)
    relay = Relay(port)
    uri = f"http://127.0.0.1:{relay.port}"  # the client talks to the server through the relay
    journal = workdir / "mlruns" / "optuna-journal.log"
    long_fit = [  # about a second inside fit() per trial, to be caught there
        *("--set", "data.source=digits", "--set", "train.batch_size=8"),
        *("--set", "train.epochs=8", "--set", "train.early_stopping.patience=0"),
    ]
    argv = [*SEARCH, *long_fit, "--trials", "4", "--tracking-uri", uri]
    try:
        assert wait_for_http(f"{uri}/health") == 200
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.run", *argv],
            cwd=workdir,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        _trial_in_fit(journal, "iris-softmax", proc, after=0)
        relay.down()  # the server is gone while a trial's run is open
        deadline = time.monotonic() + 300
        while not _failed_trials(journal, "iris-softmax") and proc.poll() is None:
            assert time.monotonic() < deadline, "no trial failed while the server was down"
            time.sleep(0.1)
        relay.up()  # and back
        out, err = proc.communicate(timeout=600)
        reasons = _failed_trials(journal, "iris-softmax")
        assert reasons and all("tracking store" in r for r in reasons), reasons
        if proc.returncode != 0:  # stopped: then with one clear paragraph
            assert proc.returncode == 2 and "tracking store" in one_paragraph_error(err), err
        else:  # carried on: and closed the run the server could not close while away
            assert "Traceback" not in err and fault_audit.running_runs(uri) == []

        again = cli(workdir, *argv)
        assert again.returncode == 0, again.stderr[-3000:]
        assert fault_audit.running_runs(uri) == []
        states = study_audit(fault_audit, uri, journal, "iris-softmax")
        assert list(states.values()).count("COMPLETE") == 4
    finally:
        relay.down()
        _stop(server)


@pytest.mark.faults
def test_an_unreachable_tracking_server_at_start_fails_in_seconds(workdir, capsys, fault_audit):
    from conftest import free_port

    started = time.monotonic()
    uri = f"http://127.0.0.1:{free_port()}"
    code = run.main(["train", "-p", "iris", *TINY, "--tracking-uri", uri])
    msg = one_paragraph_error(capsys.readouterr().err)
    fault_audit.record()
    assert code == 2 and uri in msg and "reachable" in msg, msg
    assert time.monotonic() - started < 30  # bounded retries, not MLflow's default minutes


@pytest.mark.slow
@pytest.mark.faults
def test_a_train_run_left_running_by_a_killed_process_is_closed_by_the_next_command(
    workdir, fault_audit
):
    long = ["--set", "train.epochs=100000", "--set", "train.early_stopping.patience=0"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.run", "train", "-p", "iris", "--set", "model.hidden=[4]"]
        + long,
        cwd=workdir,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    db = workdir / "mlruns" / "mlflow.db"
    deadline = time.monotonic() + 300
    query = "SELECT count(*) FROM runs WHERE status = 'RUNNING'"
    while True:  # until its run exists (it is then training for good)
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the train run never started"
        with (
            contextlib.suppress(sqlite3.Error),
            contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as c,
        ):
            if c.execute(query).fetchone()[0]:
                break
        time.sleep(0.2)
    proc.kill()  # SIGKILL: nothing can close its run
    proc.communicate()
    store = f"sqlite:///{db}"
    import mlflow

    client = mlflow.MlflowClient(store)
    exp = client.get_experiment_by_name("iris-softmax").experiment_id
    (left,) = client.search_runs([exp])
    assert left.info.status == "RUNNING"

    assert run.main(["train", "-p", "iris", *TINY]) == 0  # the next command on this store
    closed = client.get_run(left.info.run_id)
    assert closed.info.status == "FAILED" and str(proc.pid) in closed.data.tags["error"]
    assert fault_audit.running_runs(store) == []


_CRASH_OUTSIDE_ANY_RUN_CONTEXT = """
import sys
import mlflow
from pipeline.tracking import Tracker

tracker = Tracker(sys.argv[1], "crash")
plain = tracker.create_run("created-not-entered")  # as a study's parent before its `with`
fluent = tracker.create_run("fluent")
mlflow.start_run(run_id=fluent)  # MLflow's exit hook would end this one FINISHED
print(plain, fluent, flush=True)
raise {exc}("crashed outside any run context")
"""


@pytest.mark.faults
@pytest.mark.parametrize(
    ("exc", "status"), [("RuntimeError", "FAILED"), ("KeyboardInterrupt", "KILLED")]
)
def test_a_crash_outside_any_run_context_ends_the_runs_failed_not_finished_or_running(
    tmp_path, fault_audit, exc, status
):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    script = _CRASH_OUTSIDE_ANY_RUN_CONTEXT.format(exc=exc)
    proc = subprocess.run(
        [sys.executable, "-c", script, store], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode != 0 and exc in proc.stderr, proc.stderr[-3000:]
    import mlflow

    client = mlflow.MlflowClient(store)
    for run_id in proc.stdout.split():
        ended = client.get_run(run_id)
        assert ended.info.status == status, (ended.info.run_name, ended.info.status)
        assert f"{exc}: crashed outside any run context" in ended.data.tags["error"]
    assert fault_audit.running_runs(store) == []

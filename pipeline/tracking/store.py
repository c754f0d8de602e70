"""The local store: where it lives, created atomically, its schema lock, and the runs a
crashed process left unended (ended FAILED at exit)."""

from __future__ import annotations

import atexit
import contextlib
import functools
import logging
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipeline.errors import TrackingError
from pipeline.locks import file_lock
from pipeline.protocol import (
    ERROR_TAG,
    RunStatus,
)
from pipeline.uris import mask_secret, sqlite_path, sqlite_uri

log = logging.getLogger("pipeline.tracking")


DEFAULT_HOME = Path("mlruns")


def default_uri(home: Path = DEFAULT_HOME) -> str:
    """`sqlite:///<abs>/mlruns/mlflow.db` - absolute, so it means the same from any cwd."""
    return sqlite_uri(home / "mlflow.db")


def store_home(uri: str | None) -> Path:
    """The project's local folder for a store: the folder of a SQLite store's database, else
    `./mlruns` (a server's clients keep their local files, such as the data cache, there)."""
    db = sqlite_path(uri)
    return db.resolve().parent if db is not None else DEFAULT_HOME.resolve()


def _artifact_root(uri: str) -> str | None:
    """Where a local store keeps artifacts: `artifacts/` beside its database file. None for a
    tracking server: it decides (its --artifacts-destination)."""
    db = sqlite_path(uri)
    return (db.parent / "artifacts").resolve().as_uri() if db is not None else None


@contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """Serialise schema creation of a local SQLite store across processes (no-op for servers)."""
    db = sqlite_path(uri)
    if db is not None:
        with file_lock(f"{db}.lock"):
            yield
    else:
        yield


def _ensure_sqlite_store(db: Path, artifact_root: str | None) -> None:
    """Make sure `db` is a complete MLflow store, creating it atomically if it is missing.

    MLflow creates a SQLite store in place, one migration at a time: a disk that fills or a
    process killed part-way leaves a half-migrated file (alembic's `_alembic_tmp_*` tables)
    that MLflow can never open again. So the schema is built in a temporary file beside the
    database and renamed into place only once complete: a store is either absent or whole.
    A half-made store left by an older release is set aside and rebuilt when it holds no runs;
    one that holds runs is reported (a half-finished `mlflow db upgrade`), never touched.
    Call under `_store_lock`: the temporary files of killed creators are removed here.
    """
    for stale in db.parent.glob(f".{db.name}.creating-*"):
        stale.unlink(missing_ok=True)
    if db.exists():
        half, runs = _half_made(db)
        if not half:
            return
        if runs:
            raise TrackingError(
                f"tracking store {db}: its schema migration was interrupted (alembic's temporary "
                f"tables are still there) and it holds {runs} runs, so it was left as it is. Back "
                f"the file up, then finish the migration with `mlflow db upgrade sqlite:///{db}`."
            )
        aside = db.with_name(f"{db.name}.half-made-{time.strftime('%Y%m%d-%H%M%S')}")
        db.rename(aside)
        log.warning("tracking store %s was half-made and held no runs: set aside as %s", db, aside)
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    tmp = db.with_name(f".{db.name}.creating-{os.getpid()}")
    try:
        store = SqlAlchemyStore(sqlite_uri(tmp), artifact_root or db.parent.as_uri())
        store.engine.dispose()
        os.replace(tmp, db)
    finally:
        for leftover in (tmp, tmp.with_name(f"{tmp.name}-journal")):
            leftover.unlink(missing_ok=True)


def _half_made(db: Path) -> tuple[bool, int]:
    """(is the MLflow schema in `db` unfinished, how many runs it holds) - read with sqlite3
    itself, since MLflow cannot open such a file. An empty file counts as half-made."""
    import sqlite3

    # A generous busy timeout: other processes may be writing runs to a complete store.
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=60)) as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        done = "alembic_version" in tables and bool(
            conn.execute("SELECT count(*) FROM alembic_version").fetchone()[0]
        )
        half = not done or any(t.startswith("_alembic_tmp") for t in tables)
        runs = conn.execute("SELECT count(*) FROM runs").fetchone()[0] if "runs" in tables else 0
    return half, runs


def _bound_client_retries() -> None:
    # MLflow's defaults (7 retries, 120 s timeouts) make a dead server look like a hang.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")


# Runs this process created or reopened and has not yet tried to end: ended FAILED at exit, so
# a crash outside any `run()` context (or a bug that forgets one) never leaves them RUNNING.
# Keyed by run id: (client, pid) - a forked child never ends its parent's runs.
_UNENDED: dict[str, tuple[Any, int]] = {}


def _end_unended_runs() -> None:
    """At interpreter exit: end this process's unended runs FAILED (KILLED after Ctrl-C),
    naming the exception that ended the process. MLflow's own exit hook would mark its
    active run FINISHED; that one is ended first, the same way."""
    import mlflow

    exc = getattr(sys, "last_exc", None) or getattr(sys, "last_value", None)
    status = RunStatus.KILLED if isinstance(exc, KeyboardInterrupt) else RunStatus.FAILED
    reason = f"{type(exc).__name__}: {exc}" if exc is not None else "no exception"
    error = mask_secret(f"the process exited without ending this run ({reason})")[:5000]
    active = mlflow.active_run()
    if active is not None:
        with contextlib.suppress(Exception):
            mlflow.end_run(status)
    while _UNENDED:
        run_id, (client, pid) = _UNENDED.popitem()
        if pid != os.getpid():
            continue
        try:
            client.set_tag(run_id, ERROR_TAG, error)
            client.set_terminated(run_id, status)
        except Exception as failed:  # noqa: BLE001 - the next start closes it (reconcile)
            log.warning("run %s could not be marked %s at exit: %s", run_id, status, failed)


@functools.cache
def _end_unended_runs_at_exit() -> None:
    atexit.register(_end_unended_runs)


class _Store:
    """What the tracker's parts share: the store's client and the experiment's id."""

    client: Any
    uri: str
    display_uri: str
    experiment_id: str
    experiment_name: str
    _db_path: str | None

"""Optuna storages and the one cross-process lock that goes with each.

A journal file for one machine (the default, under `mlruns/`), PostgreSQL (Optuna's RDB
storage) for many, Optuna's gRPC proxy in front of either. The journal is Optuna's own, made
safe for what this project meets: an append the disk refuses is undone, a torn record left by a
killed writer is cut off, Ctrl-C waits for the write to finish. RDB schemas are created under a
lock (Optuna creates them without one). `Storage.lock(name)` serialises what must happen once
across every process using the storage: a file lock beside a journal, a PostgreSQL advisory
lock for PostgreSQL.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import signal
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna

from pipeline.errors import SearchError
from pipeline.locks import file_lock
from pipeline.uris import is_url, mask_secret, sqlite_path

log = logging.getLogger(__name__)


def default_storage(home: Path = Path("mlruns")) -> str:
    home.mkdir(parents=True, exist_ok=True)
    return str((home / "optuna-journal.log").resolve())


class Storage:
    """An Optuna storage plus the one cross-process lock that goes with it."""

    def __init__(self, url: str, backend: optuna.storages.BaseStorage) -> None:
        self.url = url
        self.backend = backend
        self._local = threading.Lock()

    @contextlib.contextmanager
    def lock(self, name: str) -> Iterator[None]:
        """Hold a lock named `name` across every process using this storage."""
        with self._local:
            engine = getattr(self.backend, "engine", None)  # RDBStorage's (see make_storage)
            if self.url.startswith("postgresql") and engine is not None:
                with _pg_advisory_lock_on(engine, name):
                    yield
            elif self.url.startswith("postgresql"):  # before the storage exists: its schema
                with _pg_advisory_lock(self.url, name):
                    yield
            elif not is_url(self.url) or sqlite_path(self.url) is not None:
                path = sqlite_path(self.url) or self.url
                with file_lock(f"{path}.pipeline-{_slug(name)}.lock"):
                    yield
            else:  # e.g. MySQL: only this process is serialised (documented in the README)
                yield


def _slug(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()[:12]


def _lock_key(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


@contextlib.contextmanager
def _pg_advisory_lock_on(engine: Any, name: str) -> Iterator[None]:
    """A session-level PostgreSQL advisory lock taken on the storage's own connection.

    The storage's pool holds one connection (POOL, make_storage), so the lock, the trial
    operations it guards and the heartbeat share it: a process never holds more than that one
    (and, while it opens a fresh storage, one more). A session-level lock outlives the
    transaction it was taken in, stays with the connection while the pool holds it, and is
    freed by PostgreSQL if the process dies. If the connection drops meanwhile, the lock goes
    with it; the unlock then finds no lock, and says so.
    """
    import sqlalchemy

    key = _lock_key(name)
    with engine.connect() as conn:
        conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": key})
        conn.commit()
    try:
        yield
    finally:
        with engine.connect() as conn:
            held = conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
            if not held.scalar():
                log.warning("storage lock %r was lost with a dropped connection", name)
            conn.commit()


@contextlib.contextmanager
def _pg_advisory_lock(url: str, name: str) -> Iterator[None]:
    """A session-level PostgreSQL advisory lock on its own connection (freed if we die)."""
    import sqlalchemy

    key = _lock_key(name)
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": key})
            try:
                yield
            finally:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
    finally:
        engine.dispose()


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM until the block is done, then deliver them.

    Optuna's journal lock is not interrupt-safe: a KeyboardInterrupt landing while it takes or
    releases its lock file comes out as FileNotFoundError or RuntimeError (so a Ctrl-C would
    pass for a failed trial and the search would go on) and can leave the lock held for its
    30 s grace period. Signals reach Python in the main thread only, so other threads pass.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []

    def hold(signum: int, frame: object) -> None:
        pending.append(signum)

    previous = {sig: signal.signal(sig, hold) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if pending:
            handler = previous[pending[0]]
            if callable(handler):
                handler(pending[0], None)  # e.g. default_int_handler: KeyboardInterrupt here
            elif handler == signal.SIG_DFL:
                os.kill(os.getpid(), pending[0])


def _journal_backend(path: str) -> optuna.storages.journal.BaseJournalBackend:
    """Optuna's journal file, except that an append the disk refuses is undone.

    Optuna appends each record with one write; on a full disk that write can land in part,
    and the next append then glues a full record onto the partial one, so the journal no
    longer parses. Here the file is cut back to its old length (under the journal's own lock)
    before the error propagates, so a study survives a full disk and resumes once there is room.
    A torn last record left by a process killed mid-write (Optuna's reader skips it) is cut
    off before the next append for the same reason.
    """
    from optuna.storages.journal import JournalFileBackend
    from optuna.storages.journal._file import get_lock_file

    class _AtomicAppendFile(JournalFileBackend):
        def append_logs(self, logs: list[dict[str, Any]]) -> None:
            with interrupts_deferred(), get_lock_file(self._lock):
                before = _cut_torn_tail(self._file_path)
                text = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in logs)
                try:
                    with open(self._file_path, "ab") as f:
                        f.write(text.encode("utf-8"))
                        f.flush()
                        os.fsync(f.fileno())
                except OSError:
                    with contextlib.suppress(OSError):
                        os.truncate(self._file_path, before)
                    raise

    return _AtomicAppendFile(path)


def _cut_torn_tail(path: str) -> int:
    """Cut a journal back to its last complete line (one ending in a newline); its new size."""
    with open(path, "rb+") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0 or (f.seek(size - 1) >= 0 and f.read(1) == b"\n"):
            return size  # the usual case: one byte read
        end = size
        while end > 0:
            start = max(0, end - 65536)
            f.seek(start)
            newline = f.read(end - start).rfind(b"\n")
            if newline >= 0:
                end = start + newline + 1
                break
            end = start
        f.truncate(end)
    log.warning(
        "journal %s: cut off a torn last record (%d bytes) of a killed writer", path, size - end
    )
    return end


# One connection per process: the trial operations, the heartbeat thread and the storage lock
# take turns on it (pool_timeout: how long a turn may be waited for), so 64 processes need 64
# of PostgreSQL's default 100. pool_pre_ping: a long trial survives a dropped idle connection.
POOL: dict[str, Any] = {
    "pool_size": 1,
    "max_overflow": 0,
    "pool_timeout": 120,
    "pool_pre_ping": True,
}


def make_storage(url: str | None) -> Storage:
    """A journal file (path or None) for one machine, or an RDB URL (PostgreSQL) for many.

    RDB storages hold one connection (POOL), and their schema is created under the storage
    lock: Optuna creates it without one, and several processes opening a fresh PostgreSQL
    database at once otherwise crash on a unique violation.
    """
    if url is not None and url.startswith("grpc://"):
        from optuna.storages import GrpcStorageProxy

        host, _, port = url.removeprefix("grpc://").rpartition(":")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return Storage(url, GrpcStorageProxy(host=host, port=int(port)))
    if url is None or not is_url(url):
        path = url or default_storage()
        from optuna.storages.journal import JournalStorage

        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return Storage(str(Path(path).resolve()), JournalStorage(_journal_backend(path)))
    import sqlalchemy
    from optuna.storages import RDBStorage

    probe = Storage(url, optuna.storages.InMemoryStorage())
    try:
        # The lock only while the schema may still be missing (checked again once it is held):
        # once the schema is there, opening is read-only and many workers open at once.
        # Optuna's own open needs two connections at once (its schema check inside a
        # session), so the schema is created by a throw-away storage and checked here.
        if not _schema_ready(url):
            with probe.lock("optuna-schema"):
                if not _schema_ready(url):
                    poolless = {"poolclass": sqlalchemy.pool.NullPool}
                    RDBStorage(url, engine_kwargs=poolless).engine.dispose()
        backend = RDBStorage(
            url, engine_kwargs=POOL, skip_compatibility_check=True, skip_table_creation=True
        )
        if backend.get_current_version() != backend.get_head_version():
            raise SearchError(
                f"--storage {mask_secret(url)}: its Optuna schema is older than this Optuna's; "
                f"upgrade it with `optuna storage upgrade --storage URL` and run again."
            )
    except SearchError:
        raise
    except Exception as exc:  # noqa: BLE001 - driver and connection errors vary
        raise SearchError(
            f"--storage {mask_secret(url)}: cannot open it ({type(exc).__name__}: "
            f"{mask_secret(str(exc)).splitlines()[0][:300]}). Check the URL, that the database "
            "exists and the server is reachable."
        ) from None
    return Storage(url, backend)


def _schema_ready(url: str) -> bool:
    """True if Optuna's schema is complete in this database (its version row and then alembic's
    stamp are written last)."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as conn:  # the version row, then alembic's stamp: both there
            count = (
                "SELECT (SELECT count(*) FROM version_info)"
                " * (SELECT count(*) FROM alembic_version)"
            )
            return bool(conn.execute(sqlalchemy.text(count)).scalar())
    except sqlalchemy.exc.SQLAlchemyError:
        return False  # no such table yet (or no server: RDBStorage reports that below)
    finally:
        engine.dispose()


def memory_storage() -> Storage:
    """A throw-away in-process storage (benches and tests)."""
    return Storage("memory://", optuna.storages.InMemoryStorage())


def find_study_id(backend: optuna.storages.BaseStorage, name: str) -> int | None:
    """The storage's id of study `name`, or None if there is no such study."""
    try:
        return backend.get_study_id_from_name(name)
    except KeyError:
        return None


# -- trial heartbeats ---------------------------------------------------------------------------
HEARTBEAT_ATTR = "heartbeat"  # a trial's user attr: when its worker last said it is alive
HEARTBEAT_SECONDS = 30.0
STALE_AFTER_SECONDS = 4 * HEARTBEAT_SECONDS  # a worker on another host is dead after this


class Heartbeat:
    """Stamps the trial with the time every HEARTBEAT_SECONDS, so workers on other hosts can
    tell a live trial from a dead worker's (a pid is only checkable on its own host)."""

    def __init__(self, storage: optuna.storages.BaseStorage, trial_id: int) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._beat, args=(storage, trial_id), name="pipeline-heartbeat", daemon=True
        )
        self._thread.start()

    def _beat(self, storage: optuna.storages.BaseStorage, trial_id: int) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            try:
                storage.set_trial_user_attr(trial_id, HEARTBEAT_ATTR, time.time())
            except optuna.exceptions.UpdateFinishedTrialError:
                return  # told meanwhile: nothing left to keep alive
            except Exception as exc:  # noqa: BLE001 - a storage blip: beat again next time, or
                log.debug("heartbeat of trial %d missed: %s", trial_id, exc)  # look dead

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

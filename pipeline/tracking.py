"""The project's only MLflow user: store, experiments, runs, logging, model logging, registry.

Runs are created with an explicit `MlflowClient` and passed around by id instead of MLflow's
per-thread "active run", so trial runs keep their parent under several threads or processes.
Every run is opened as a context that always ends it with an explicit status: FINISHED,
FAILED (with the reason as a tag) or KILLED (Ctrl-C / SIGTERM) - never left RUNNING; a run
created outside such a context and never ended (a crash in between) is ended FAILED at exit.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import json
import logging
import os
import socket
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pipeline.errors import TrackingError, TrialPruned
from pipeline.failures import GuardedClient, guard
from pipeline.locks import file_lock, pid_alive
from pipeline.protocol import (
    ERROR_TAG,
    KIND_TAG,
    PARENT_TAG,
    RESULT_TAG,
    STATE_TAG,
    TRIAL_TAG,
    WORKER_TAG,
    RunKind,
    RunStatus,
    TrialState,
)
from pipeline.provenance import environment_tags, version
from pipeline.uris import mask_secret, sqlite_path, sqlite_uri

log = logging.getLogger(__name__)

DEFAULT_HOME = Path("mlruns")
_MAX_PARAM_LEN = 6000
# What one MLflow log_batch may carry: params and tags, each; and entities of all kinds.
_MAX_BATCH_PARAMS = 100
_MAX_BATCH_ENTITIES = 1000
# While a run trains, its per-epoch metrics reach the store at most this often (seconds): live
# curves in the UI for a long trial, and no store round-trip per epoch for a short one.
LIVE_SECONDS = 2.0
# ... and never sooner than this many times the last write took: writing stays near 1% of
# training time on a slow store (see LiveMetrics).
WRITE_SHARE_FACTOR = 100


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


class _Reading(_Store):
    """Reading runs back: results, curves, artifacts, the runs table, the UI address."""

    def exists(self, run_id: str | None) -> bool:
        """True if the run is in this store and experiment (a resumed study's parent)."""
        if not run_id:
            return False
        try:
            run = self.client.get_run(run_id)
        except TrackingError:
            raise  # the store is unreachable: "no such run" would elect a second parent
        except Exception:  # noqa: BLE001 - MLflow raises its own not-found exception
            return False
        return run.info.experiment_id == self.experiment_id

    def running_trial_runs(self, parent_id: str) -> list[tuple[str, int]]:
        """(run id, trial number) of the parent's trial runs still marked RUNNING."""
        found = self.runs(f"tags.`{PARENT_TAG}` = '{parent_id}' and attributes.status = 'RUNNING'")
        return [
            (r.info.run_id, int(r.data.tags[TRIAL_TAG]))
            for r in found
            if r.data.tags.get(TRIAL_TAG, "").isdigit()
        ]

    def trial_result(self, run_id: str) -> tuple[TrialState, float | list[float] | None] | None:
        """(state, value) a trial run recorded once it was fully logged (a multi-objective
        trial's values as a list), or None if it never got that far (its worker died before
        the end of training and logging)."""
        try:
            tags = self.client.get_run(run_id).data.tags
        except TrackingError:
            raise
        except Exception:  # noqa: BLE001 - MLflow raises its own not-found exception
            return None
        state = tags.get(STATE_TAG)
        if state == TrialState.PRUNED:
            return TrialState.PRUNED, None
        if state == TrialState.COMPLETE and RESULT_TAG in tags:
            values = [float(v) for v in tags[RESULT_TAG].split(",")]
            return TrialState.COMPLETE, values if len(values) > 1 else values[0]
        return None

    def metric_history(self, run_id: str, key: str) -> list[float]:
        return [
            m.value
            for m in sorted(self.client.get_metric_history(run_id, key), key=lambda m: m.step)
        ]

    def run_metrics(self, run_id: str) -> dict[str, float]:
        """Each metric's latest value."""
        return dict(self.client.get_run(run_id).data.metrics)

    def download_artifact(self, run_id: str, path: str, dst: str | Path) -> Path:
        return Path(self.client.download_artifacts(run_id, path, str(dst)))

    def read_artifact(self, run_id: str, path: str) -> bytes | None:
        """A top-level artifact file of a run as bytes, or None if the run has no such file."""
        if path not in {a.path for a in self.client.list_artifacts(run_id)}:
            return None
        with tempfile.TemporaryDirectory() as tmp:
            return self.download_artifact(run_id, path, tmp).read_bytes()

    def runs(self, filter_string: str = "", max_results: int = 5000) -> list[Any]:
        return list(
            self.client.search_runs(
                [self.experiment_id], filter_string=filter_string, max_results=max_results
            )
        )

    def ui_url(self, host: str = "127.0.0.1", port: int = 5000) -> str:
        return f"http://{host}:{port}/#/experiments/{self.experiment_id}/runs"


class _Models(_Store):
    """The dataset a run used and the servable model it made."""

    def log_dataset(
        self,
        run_id: str,
        sample: Any,
        *,
        rows: int,
        digest: str,
        name: str,
        source: str,
        target: str,
        context: str = "training",
    ) -> None:
        """Data as an MLflow dataset input (name, digest, schema, profile, source); `context`
        says what it was used for (training, or test for a separate test file).

        Only a `sample` of the rows (a data frame with every column) is handed to MLflow, to
        infer the schema; the digest (of all the data, computed by the caller) and the profile
        (`rows` rows) are given. MLflow's own digest of a whole frame would need it built in
        memory (float64: 376 MB at MNIST scale) and then maps every cell to its Python type
        (peaking near 2.4 GB and 30 s there), and it hashes only the first 10 000 rows.
        """
        import mlflow.data
        from mlflow.entities import Dataset, DatasetInput, InputTag

        logged = mlflow.data.from_pandas(
            sample, source=source, name=name, targets=target, digest=digest
        )._to_mlflow_entity()
        profile = {"num_rows": rows, "num_elements": rows * sample.shape[1]}  # as from_pandas
        entity = Dataset(
            name=logged.name,
            digest=logged.digest,
            source_type=logged.source_type,
            source=logged.source,
            schema=logged.schema,
            profile=json.dumps(profile),
        )
        tags = [InputTag("mlflow.data.context", context)]
        self.client.log_inputs(run_id, datasets=[DatasetInput(entity, tags)])

    def log_model(
        self,
        run_id: str,
        *,
        code: Path,
        artifacts: Mapping[str, Path],
        input_example: Any,
        output_example: Any,
        register_as: str | None = None,
    ) -> tuple[str, str | None]:
        """Log a pyfunc "model from code": `code` is the file MLflow runs to build the model
        (its package goes along), `artifacts` the files it loads, the examples give the
        signature. Pickle-free. Registered under `register_as` with the alias `champion`.
        Returns (model URI, registered version)."""
        import mlflow
        from mlflow.models import infer_signature

        with guard(self.display_uri, "logging the model", self._db_path):
            signature = infer_signature(input_example, output_example)
            with mlflow.start_run(run_id=run_id):
                info = mlflow.pyfunc.log_model(
                    name="model",
                    python_model=str(code),
                    artifacts={k: str(v) for k, v in artifacts.items()},
                    code_paths=[str(code.parent)],
                    signature=signature,
                    input_example=input_example,
                    pip_requirements=_pip_requirements(),
                )
            # fluent end_run above marked it FINISHED; the caller's context sets the real end.
            self.client.update_run(run_id, status=RunStatus.RUNNING)
        version = None
        if register_as:
            with guard(self.display_uri, "registering the model", self._db_path):
                mv = mlflow.register_model(info.model_uri, register_as)
            version = str(mv.version)
            self.client.set_registered_model_alias(register_as, "champion", version)
        return info.model_uri, version


class Tracker(_Reading, _Models):
    """One experiment in one tracking store, with the run operations the pipeline needs."""

    live_seconds = LIVE_SECONDS  # how often live_metrics() writes (0: every epoch)

    def __init__(self, uri: str | None, experiment: str) -> None:
        _bound_client_retries()
        import mlflow
        from mlflow.tracking import MlflowClient

        self.uri = uri or default_uri()
        db = sqlite_path(self.uri)
        if db is not None:
            db.parent.mkdir(parents=True, exist_ok=True)
        elif urlparse(self.uri).scheme in ("", "file"):
            raise TrackingError(
                f"--tracking-uri {mask_secret(self.uri)}: plain file stores are refused by MLflow "
                "3; use sqlite:///path/to/mlflow.db or an http(s):// tracking server."
            )
        self.display_uri = mask_secret(self.uri)
        mlflow.set_tracking_uri(self.uri)  # for the model-logging calls that need it
        # MLflow logs SQLite errors with a traceback before raising them; guard() reports them.
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
        self.experiment_name = experiment
        # run id -> artifact location, for the runs this tracker created and has not ended
        self._artifact_uris: dict[str, str] = {}
        self._db_path = str(db) if db is not None else None
        # Several processes opening a fresh SQLite store at once race on MLflow's schema
        # migration ("duplicate column name"); the first one creates it while the rest wait.
        with guard(self.display_uri, "opening the store", self._db_path), _store_lock(self.uri):
            if self._db_path is not None:
                _ensure_sqlite_store(Path(self._db_path), _artifact_root(self.uri))
            self.client = GuardedClient(
                MlflowClient(tracking_uri=self.uri), self.display_uri, self._db_path
            )
            self.experiment_id = self._experiment(experiment)

    def _experiment(self, name: str) -> str:
        try:
            found = self.client.get_experiment_by_name(name)
            if found is not None:
                if found.lifecycle_stage == "deleted":
                    self.client.restore_experiment(found.experiment_id)
                return found.experiment_id
            return self.client.create_experiment(
                name,
                artifact_location=_artifact_root(self.uri),
                tags={"mlflow.experimentKind": "custom_model_development"},
            )
        except TrackingError:
            raise
        except Exception as exc:  # noqa: BLE001 - any store failure becomes one clear message
            code = getattr(exc, "error_code", "")
            if "RESOURCE_ALREADY_EXISTS" in f"{code} {exc}":  # another process created it
                return self.client.get_experiment_by_name(name).experiment_id
            raise TrackingError(
                f"tracking store {self.display_uri}: cannot open experiment {name!r} "
                f"({type(exc).__name__}: {mask_secret(str(exc))[:300]}). Check --tracking-uri "
                "and that the server or database is reachable."
            ) from None

    # -- runs -----------------------------------------------------------------------------

    def create_run(
        self, name: str, *, parent_id: str | None = None, tags: Mapping[str, str] | None = None
    ) -> str:
        """Create a RUNNING run and return its id; the caller ends it (or `run(resume_id=...)`
        does). Used where a run must be created under a lock, such as a study's parent."""
        all_tags = {**environment_tags(), **(tags or {})}  # a copy: the cache stays intact
        all_tags[WORKER_TAG] = f"{socket.gethostname()}:{os.getpid()}"
        if parent_id:
            all_tags[PARENT_TAG] = parent_id
        _end_unended_runs_at_exit()
        run = self.client.create_run(self.experiment_id, run_name=name, tags=all_tags)
        _UNENDED[run.info.run_id] = (self.client, os.getpid())
        self._artifact_uris[run.info.run_id] = run.info.artifact_uri
        return run.info.run_id

    @contextmanager
    def run(
        self,
        name: str,
        *,
        parent_id: str | None = None,
        tags: Mapping[str, str] | None = None,
        resume_id: str | None = None,
        failure_tags: Mapping[str, str] | None = None,
    ) -> Iterator[str]:
        """Create (or with `resume_id`, reopen) a run, yield its id, and always end it with an
        explicit status: success or a pruned trial -> FINISHED; Ctrl-C/SIGTERM -> KILLED;
        anything else -> FAILED with the reason in the `error` tag. The exception propagates,
        and a store that cannot record the end (disk full, server gone) never masks it: the
        run is then left for the next start to close (`close_dead_runs`, study reconciliation).

        `failure_tags` are written with a KILLED or FAILED end, in the same request as its
        error, so a run never ends FAILED while still tagged with a state it no longer has.
        """
        if resume_id:
            _end_unended_runs_at_exit()
            self.client.update_run(resume_id, status=RunStatus.RUNNING)
            _UNENDED[resume_id] = (self.client, os.getpid())
            run_id = resume_id
        else:
            run_id = self.create_run(name, parent_id=parent_id, tags=tags)
        try:
            yield run_id
        except TrialPruned:
            self._close_after(run_id, RunStatus.FINISHED)
            raise
        except KeyboardInterrupt:
            self._close_after(run_id, RunStatus.KILLED, None, failure_tags)
            raise
        except BaseException as exc:
            self._close_after(
                run_id, RunStatus.FAILED, f"{type(exc).__name__}: {exc}", failure_tags
            )
            raise
        self.end_run(run_id, RunStatus.FINISHED)

    def _close_after(
        self,
        run_id: str,
        status: str,
        error: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        """End a run while an exception propagates; a store failure here is only logged."""
        try:
            final = dict(tags or {})
            if error is not None:
                final[ERROR_TAG] = mask_secret(error)[:5000]
            if final:
                self.set_tags(run_id, final)
            self.end_run(run_id, status)
        except TrackingError as exc:
            log.warning("run %s could not be marked %s: %s", run_id, status, exc)

    def end_run(self, run_id: str, status: str) -> None:
        """End a run with a final status (FINISHED, FAILED, KILLED). Once tried, the run is no
        longer this process's to end at exit, even if the store refused: reconciliation on the
        next start closes it then."""
        _UNENDED.pop(run_id, None)
        self._artifact_uris.pop(run_id, None)
        self.client.set_terminated(run_id, status)

    def close_dead_runs(self) -> int:
        """Close `train` and `champion` runs left RUNNING by a process of this host that is
        gone (SIGKILL, power loss, or a full disk that refused the run's end); returns how many.

        Trial and study runs are the study's to settle (pipeline.study reconciles them with
        their Optuna trials); runs of other hosts are left alone (their pid means nothing here).
        """
        host = socket.gethostname()
        found = self.runs(f"attributes.status = 'RUNNING' and tags.`{WORKER_TAG}` LIKE '{host}:%'")
        closed = 0
        for r in found:
            tags = r.data.tags
            pid = tags.get(WORKER_TAG, "").rpartition(":")[2]
            if tags.get(KIND_TAG) not in (RunKind.TRAIN, RunKind.CHAMPION) or not pid.isdigit():
                continue
            if pid_alive(int(pid)):
                continue
            error = f"process {pid} ended without closing this run (killed, or its store failed)"
            self.set_tags(r.info.run_id, {ERROR_TAG: error})
            self.client.set_terminated(r.info.run_id, RunStatus.FAILED)
            log.warning("closed run %s: process %s left it RUNNING", r.info.run_id, pid)
            closed += 1
        return closed

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        self.client.log_batch(run_id, tags=_run_tags(tags))

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        self.client.log_batch(run_id, params=_run_params(params))  # MLflow splits big batches

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int = 0) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        self.client.log_batch(run_id, metrics=batch)

    def log_history(self, run_id: str, history: Mapping[str, list[float]]) -> None:
        """Per-epoch curves (loss, val_loss, accuracy, ..., lr) as metrics with step = epoch,
        in one write."""
        with self.live_metrics(run_id) as metrics:
            metrics.add_history(history)

    @contextmanager
    def live_metrics(self, run_id: str) -> Iterator[LiveMetrics]:
        """Metrics written to the run in few batches: per-epoch ones while it trains, the rest
        with the last epochs (see LiveMetrics). On leaving the block everything logged is in
        the store (a TrackingError if the store refused some); when the block raises, what can
        still be written is (but not its `final_tags`), and the block's error propagates."""
        live = LiveMetrics(self, run_id, every=self.live_seconds)
        try:
            yield live
        except BaseException:
            live.final_tags.clear()  # a block that failed has no result to record
            try:
                live.flush()  # the curves of a failed or interrupted run, as far as they got
            except Exception as exc:  # noqa: BLE001 - never mask the block's own error
                log.warning("run %s: per-epoch metrics not all written: %s", run_id, exc)
            raise
        live.flush()

    def log_artifact(self, run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
        """Store one file (or folder) in the run's artifacts.

        For a run this tracker created, the file goes straight to the artifact location its
        creation returned: MlflowClient.log_artifact would first read the whole run back
        (params, metrics, tags, inputs) to learn that location, on the first artifact of each
        run - a trial logs one, so that read would be a large part of its tracking time."""
        uri = self._artifact_uris.get(run_id)
        if uri is None or Path(path).is_dir():
            self.client.log_artifact(run_id, str(path), artifact_path)
            return
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
        from mlflow.utils.uri import add_databricks_profile_info_to_artifact_uri

        with guard(self.display_uri, "log_artifact", self._db_path):
            # As MlflowClient resolves a run's artifact location (a no-op but on Databricks).
            uri = add_databricks_profile_info_to_artifact_uri(uri, self.uri)
            repo = get_artifact_repository(uri, tracking_uri=self.uri)
            repo.log_artifact(str(path), artifact_path)

    def log_figure(self, run_id: str, figure: Any, name: str) -> None:
        self.client.log_figure(run_id, figure, name)

    def log_text(self, run_id: str, text: str, name: str) -> None:
        self.client.log_text(run_id, mask_secret(text), name)


class LiveMetrics:
    """One run's metrics, buffered and written in few batches: per-epoch curves while the run
    trains (live curves in the UI), then whatever the caller adds after training, in one batch
    with the last epochs.

    `log` buffers one epoch and writes the buffer when `every` seconds have passed since the
    last write, or later if the store is slow: the next write waits at least
    WRITE_SHARE_FACTOR times as long as the last one took, so writing takes at most ~1% of
    training time (SQLite, ~15 ms: every 2 s; a server at 200 ms: every 20 s). A run shorter
    than `every` writes once, at the end. `add` only buffers; `flush` writes the rest: after
    it the store holds every metric logged here, exactly once per (key, step).

    `add_params` params go into the first write (a trial's params reach its run with its first
    epochs: within `every` seconds of its start, or at its end if it is shorter), and
    `final_tags` (a trial's result and state) into the last, after its metrics (the store
    applies a batch's params, then metrics, then tags, and stops at the first failure): a run
    whose result tag is in the store holds every epoch too. A short trial's params, curves and
    result are then one round-trip instead of three.

    The writes are synchronous, on the training thread, not on MLflow's async logging thread:
    MLflow 3.17 ends a run (`set_terminated`) by joining that thread, which polls its queue
    once a second, so every run that logged asynchronously paid up to 1 s at its end.
    """

    def __init__(self, tracker: Tracker, run_id: str, *, every: float) -> None:
        self._tracker = tracker
        self._run_id = run_id
        self._every = every
        self._wait = every  # seconds from the last write to the next one
        self._pending: list[Any] = []  # mlflow Metric entities not written yet
        self._params: list[Any] = []  # mlflow Param entities not written yet
        self._last = time.monotonic()
        self.logged: set[tuple[str, int]] = set()  # (key, step) of every metric logged here
        self.final_tags: dict[str, str] = {}  # written by the last flush, after its metrics

    @property
    def run_id(self) -> str:
        return self._run_id

    def add(self, step: int, metrics: Mapping[str, float]) -> None:
        """Buffer metrics at `step` (a (key, step) already logged here is skipped)."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        for key, value in metrics.items():
            if (key, step) not in self.logged:
                self.logged.add((key, step))
                self._pending.append(Metric(key, float(value), now, step))

    def add_params(self, params: Mapping[str, Any]) -> None:
        """Buffer the run's params (as `Tracker.log_params` writes them) for the next write."""
        self._params.extend(_run_params(params))

    def add_history(self, history: Mapping[str, list[float]]) -> None:
        """Buffer per-epoch curves, each value at step = its epoch (index)."""
        for key, values in history.items():
            for step, value in enumerate(values):
                self.add(step, {key: value})

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        """Buffer one epoch's metrics at `step`; write the buffer if it is time to."""
        self.add(step, metrics)
        if self._pending and time.monotonic() - self._last >= self._wait:
            self.flush()

    def flush(self) -> None:
        """Write what is buffered in as few round-trips as MLflow's batch limits allow: params
        first, `final_tags` in the last round-trip. (MlflowClient.log_batch splits a big batch
        itself, but sends its tags with the first part, before the metrics beyond it: a result
        tag would then be in the store before some of the epochs it summarises.)"""
        metrics, self._pending = self._pending, []
        params, self._params = self._params, []
        tags, self.final_tags = _run_tags(self.final_tags), {}
        started = time.monotonic()
        while True:
            batch_params, params = params[:_MAX_BATCH_PARAMS], params[_MAX_BATCH_PARAMS:]
            room = _MAX_BATCH_ENTITIES - len(batch_params) - len(tags)
            batch_metrics, metrics = metrics[:room], metrics[room:]
            last = not params and not metrics
            batch_tags = tags if last else []
            if batch_params or batch_metrics or batch_tags:
                self._tracker.client.log_batch(
                    self._run_id, metrics=batch_metrics, params=batch_params, tags=batch_tags
                )
            if last:
                break
        self._last = time.monotonic()
        if self._every > 0:  # 0: every epoch, however long writing takes (tests)
            self._wait = max(self._every, WRITE_SHARE_FACTOR * (self._last - started))


def _run_tags(tags: Mapping[str, Any]) -> list[Any]:
    """Tags as MLflow entities. Every text that reaches the store passes mask_secret: a storage
    URL in a tag or an error message never carries its password into MLflow."""
    from mlflow.entities import RunTag

    return [RunTag(k, mask_secret(str(v))) for k, v in tags.items()]


def _run_params(params: Mapping[str, Any]) -> list[Any]:
    """Params as MLflow entities, sorted by key, each value as text (lists as JSON), masked."""
    from mlflow.entities import Param

    return [Param(k, mask_secret(_param_text(v))) for k, v in sorted(params.items())]


def _param_text(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, list | tuple | dict) else str(value)
    return text[:_MAX_PARAM_LEN]


def _pip_requirements() -> list[str]:
    names = ("tensorflow", "keras", "mlflow", "pandas", "numpy", "scikit-learn", "pyyaml")
    return [f"{n}=={version(n)}" for n in names if version(n) != "absent"]


def ui_command(uri: str, port: int = 5000) -> list[str]:
    """The `mlflow ui` command for a store, bound to 127.0.0.1."""
    cmd = [sys.executable, "-m", "mlflow", "ui", "--host", "127.0.0.1", "--port", str(port)]
    if not uri.startswith("http"):
        cmd += ["--backend-store-uri", uri]
        root = _artifact_root(uri)
        if root:
            cmd += ["--default-artifact-root", root]
    return cmd


def load_model(uri: str) -> Any:
    """Load a logged or registered model (`runs:/...`, `models:/name@champion`, `models:/m-...`).

    Pickled (cloudpickle) models are refused unless MLFLOW_ALLOW_PICKLE_DESERIALIZATION is set
    explicitly: unpickling runs whatever code the file names, and the project's own models are
    pickle-free (models from code + a Keras file loaded in safe mode).
    """
    _bound_client_retries()
    os.environ.setdefault("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
    import mlflow

    try:
        with guard(mask_secret(mlflow.get_tracking_uri()), f"loading --model {uri}"):
            return mlflow.pyfunc.load_model(uri)
    except TrackingError:
        raise  # the store is unreachable or unusable: said as such, not as a bad model
    except Exception as exc:  # noqa: BLE001
        raise TrackingError(
            f"--model {uri}: cannot load it ({type(exc).__name__}: {mask_secret(str(exc))[:300]})."
            " Use runs:/<run_id>/model, models:/<name>@champion or models:/m-<id>, and the same "
            "--tracking-uri the model was logged to."
        ) from None


def set_uri(uri: str | None) -> str:
    import mlflow

    uri = uri or default_uri()
    mlflow.set_tracking_uri(uri)
    return uri


def serve_from_code(wrapper: type) -> None:
    """Hand MLflow's models-from-code loader an instance of `wrapper` as a pyfunc model (its
    `load_context` and `predict` do the work). Called by pipeline/serving_entry.py only."""
    import mlflow.pyfunc
    from mlflow.models import set_model

    set_model(type("PipelineModel", (wrapper, mlflow.pyfunc.PythonModel), {})())


def register_for_serving() -> None:
    """What models logged by earlier releases call (their copy of the code file names it)."""
    from pipeline.serving import ServingModel

    serve_from_code(ServingModel)

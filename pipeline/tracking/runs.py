"""The Tracker: one experiment in one store, with the run operations the pipeline needs."""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pipeline.errors import TrackingError, TrialPruned
from pipeline.failures import GuardedClient, guard
from pipeline.locks import pid_alive
from pipeline.protocol import (
    ERROR_TAG,
    KIND_TAG,
    OBJECTIVE,
    PARENT_TAG,
    RESULT_TAG,
    STATE_TAG,
    TRIAL_TAG,
    WORKER_TAG,
    RunKind,
    RunStatus,
    TrialState,
)
from pipeline.provenance import environment_tags
from pipeline.tracking.live import LIVE_SECONDS, LiveMetrics, _run_params, _run_tags
from pipeline.tracking.models import _Models
from pipeline.tracking.store import (
    _UNENDED,
    _artifact_root,
    _bound_client_retries,
    _end_unended_runs_at_exit,
    _ensure_sqlite_store,
    _Store,
    _store_lock,
    default_uri,
)
from pipeline.uris import is_server, mask_secret, server_address, sqlite_path

log = logging.getLogger("pipeline.tracking")


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

    def ui_url(
        self, host: str = "127.0.0.1", port: int = 5000, *, best_first: str | None = None
    ) -> str:
        """The experiment's runs table in MLflow's model-training mode (a fresh browser opens
        MLflow 3.17 in its GenAI mode; the URL's `workflowType` selects the other one, and
        clicking "Model training" in the sidebar once keeps it), sorted by the trials'
        `objective` when `best_first` names the study's direction (maximize / minimize).
        On a tracking server, the server's own UI (`host`/`port`: where `ui` serves a local
        store); never with credentials a URI may carry."""
        query = "workflowType=machine_learning"
        if best_first is not None:
            ascending = "true" if best_first == "minimize" else "false"
            query += f"&orderByKey=metrics.%60{OBJECTIVE}%60&orderByAsc={ascending}"
        base = server_address(self.uri) if self.served else f"http://{host}:{port}"
        return f"{base}/#/experiments/{self.experiment_id}/runs?{query}"

    @property
    def served(self) -> bool:
        """Whether the store is a tracking server, whose UI is already up."""
        return is_server(self.uri)

    def ui_hint(self, *, best_first: str | None = None) -> str:
        """The console's last line: where to look at the runs."""
        url = self.ui_url(best_first=best_first)
        return (
            f"open the UI:  {url}"
            if self.served
            else f"open the UI:  python -m pipeline.run ui    then  {url}"
        )


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


@dataclass(frozen=True)
class LoggedRun:
    """What `train --from-run` needs of an earlier run: its params as logged (text), its tags
    and the name of its experiment."""

    run_id: str
    experiment: str
    params: dict[str, str]
    tags: dict[str, str]


def logged_run(uri: str | None, run_id: str) -> LoggedRun:
    """An earlier run of any experiment in the store at `uri` (default: the local store), or a
    TrackingError that names the run and the store."""
    _bound_client_retries()
    from mlflow.tracking import MlflowClient

    uri = uri or default_uri()
    display, db = mask_secret(uri), sqlite_path(uri)
    if db is not None and not db.is_file():
        raise TrackingError(
            f"--from-run {run_id}: there is no tracking store at {display} yet. Pass "
            "--tracking-uri of the store the run is in."
        )
    with guard(display, "reading a run", str(db) if db else None):
        client = GuardedClient(MlflowClient(tracking_uri=uri), display, str(db) if db else None)
        try:
            run = client.get_run(run_id)
        except TrackingError:
            raise
        except Exception:  # noqa: BLE001 - MLflow raises its own not-found exception
            raise TrackingError(
                f"--from-run {run_id}: no such run in {display}. Copy a run id from the UI, "
                "`report` or a search's output; pass --tracking-uri if it is in another store."
            ) from None
        experiment = client.get_experiment(run.info.experiment_id).name
    return LoggedRun(run_id, experiment, dict(run.data.params), dict(run.data.tags))

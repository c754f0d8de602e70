"""A run's metrics written live and in few batches while it trains, within MLflow's batch
limits; a trial's params and result travel in the same writes."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pipeline.uris import mask_secret

if TYPE_CHECKING:
    from pipeline.tracking.runs import Tracker

log = logging.getLogger("pipeline.tracking")


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

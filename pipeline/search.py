"""The Optuna study as the pipeline drives it: ask/tell, the budget, attrs, dead trials.

Training and tracking never see an Optuna object. A caller (pipeline.study) drives trials with
`SearchStudy.ask()` -> `Trial` -> `SearchStudy.tell_*()`, so it can record a trial's result in
the study *before* it closes the trial's MLflow run: that lets a restart adopt a finished trial
instead of training it again. What must happen once across processes (creating the study,
handing out sampler streams, electing a parent or a champion, reaping a dead worker's trial)
happens under `Storage.lock()` (pipeline.storage). Spaces, samplers and pruners: samplers.py.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import socket
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import TrialState

from pipeline import protocol, warmstart
from pipeline.config import SearchParams, space_fingerprint
from pipeline.errors import SearchError
from pipeline.locks import pid_alive
from pipeline.samplers import GridSampler, distributions, fit_to_space, make_pruner, make_sampler
from pipeline.storage import (
    HEARTBEAT_ATTR,
    STALE_AFTER_SECONDS,
    Heartbeat,
    Storage,
    find_study_id,
    make_storage,
)
from pipeline.uris import is_url

if TYPE_CHECKING:
    import pandas as pd
    from plotly.graph_objects import Figure

log = logging.getLogger(__name__)

# open_study's overrides of the params' sampler (called with a seed) and pruner, as types.
SamplerFactory = Callable[[int], optuna.samplers.BaseSampler]
Pruner = optuna.pruners.BasePruner
# Optuna internals with no public equivalent, named once (tests/test_search.py fails if moved):
OPTUNA_INTERNALS = {
    # whether a warm-start value still fits a distribution of the space
    "optuna.distributions.BaseDistribution._contains": "samplers.fit_to_space",
    # whether a grid search has tried every point (ask/tell has no study.stop())
    "optuna.samplers.GridSampler._get_unvisited_grid_ids": "samplers.GridSampler.exhausted",
    # the journal's lock (and JournalFileBackend._lock, ._file_path): an atomic append holds it
    "optuna.storages.journal._file.get_lock_file": "storage._journal_backend",
}
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
WORKER_ATTR = "worker"
RUN_ATTR = "mlflow_run_id"
NODE_ATTR = "node"  # the cluster node (Ray's node id) of the worker that runs the trial
REASON_ATTR = "fail_reason"
RETRY_ATTR = "retry_of"  # a retried trial: the number of the dead worker's trial it repeats
RETRY_RUN_ATTR = "retry_of_run"  # ... and that trial's MLflow run, if it had one
WARM_ATTR = "warm_start_from"  # on a warm-start trial: "<earlier study>#<its trial number>"
BASELINE_ATTR = "baseline"  # on the trial that trains the configured values (baseline_first)
SURPLUS = "not run: other workers' trials already fill n_trials"


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def budget_left(finished: int, in_flight: int, n_trials: int) -> int:
    """The budget rule, in one place: `n_trials` counts finished (complete or pruned) trials.

    Failed and skipped trials do not use it up. Trials still running (`in_flight`) are counted
    as if they will finish, so K workers stop starting trials once the budget is covered; if one
    of those then fails, whoever is left runs another.
    """
    return n_trials - finished - in_flight


@dataclass(frozen=True)
class Counts:
    complete: int = 0
    pruned: int = 0
    failed: int = 0
    running: int = 0
    skipped: int = 0  # FAIL records of surplus trials, which never ran

    @property
    def finished(self) -> int:
        return self.complete + self.pruned


@dataclass(frozen=True)
class Best:
    number: int
    value: float  # the (first) objective (one metric: carrying the tie-break, protocol.objective)
    params: dict[str, Any]
    run_id: str | None = None  # the trial's MLflow run, where its model is
    values: tuple[float, ...] = ()  # every objective, in search.metric order
    scores: dict[str, float] = field(default_factory=dict)  # metric and tie-break as measured


@dataclass(frozen=True)
class DeadTrial:
    """A RUNNING trial whose worker is gone (dead pid on this host, or no heartbeat)."""

    number: int
    trial_id: int
    run_id: str | None
    params: dict[str, Any]
    retries: int
    worker: str


# -- one trial ----------------------------------------------------------------------------------


@dataclass
class Trial:
    """One asked trial: its number, the sampled values, and the pruning hook."""

    number: int
    values: dict[str, Any]
    _trial: optuna.Trial = field(repr=False)
    _heartbeat: Heartbeat = field(repr=False)
    retry_of: int | None = None  # a dead worker's trial this one repeats (same params)
    retry_of_run: str | None = None  # that trial's MLflow run, so the new run can link to it
    warm_start_from: str | None = None  # "<earlier study>#<trial>" for a warm-start trial
    baseline: bool = False  # the trial of the configured values (search.baseline_first)
    prunable: bool = True  # False in a multi-objective study (Optuna cannot prune those)

    def should_prune(self, epoch: int, value: float) -> bool:
        """Report an intermediate value at a step (an epoch, or a fold when trials are
        cross-validated); True means the pruner wants this trial stopped."""
        if not self.prunable:
            return False
        self._trial.report(value, step=epoch)
        return self._trial.should_prune()

    def remember(self, key: str, value: str) -> None:
        """Store a string with the trial (e.g. its MLflow run id) for later reconciliation."""
        self._trial.set_user_attr(key, value)


# -- the study ----------------------------------------------------------------------------------


class SearchStudy:
    """An Optuna study as the pipeline uses it: ask/tell, budgets, attrs, locks, reaping."""

    def __init__(self, study: optuna.Study, storage: Storage, params: SearchParams) -> None:
        self._study = study
        self._storage = storage
        self._params = params
        self._space = distributions(params.space)  # what every ask samples
        self.name = study.study_name
        self._id = storage.backend.get_study_id_from_name(study.study_name)
        self.node: str | None = None  # this worker's cluster node (NODE_ATTR of its trials)
        self.lost_nodes: Callable[[], set[str]] = set  # the cluster's dead nodes

    # attributes and locks

    def exclusive(self) -> contextlib.AbstractContextManager[None]:
        """The study-wide lock across every process (parent and champion elections, reaping)."""
        return self._storage.lock(f"study:{self.name}")

    def attr(self, key: str) -> Any:
        return self._storage.backend.get_study_user_attrs(self._id).get(key)

    def set_attr(self, key: str, value: Any) -> None:
        self._storage.backend.set_study_user_attr(self._id, key, value)

    def _trial_id(self, number: int) -> int:
        """The storage's id of this study's trial `number` (what storage calls take)."""
        return self._storage.backend.get_trial_id_from_study_id_trial_number(self._id, number)

    # reading

    def _trials(self, *states: TrialState) -> list[optuna.trial.FrozenTrial]:
        return self._study.get_trials(deepcopy=False, states=states or None)

    def counts(self) -> Counts:
        n = {s: 0 for s in protocol.TrialState}
        skipped = 0  # FAIL records of surplus trials, which never ran
        for t in self._trials(*FINISHED, TrialState.FAIL, TrialState.RUNNING):
            if t.state == TrialState.FAIL and t.user_attrs.get(REASON_ATTR) == SURPLUS:
                skipped += 1
            else:
                n[protocol.TrialState(t.state.name)] += 1
        s = protocol.TrialState
        return Counts(n[s.COMPLETE], n[s.PRUNED], n[s.FAIL], n[s.RUNNING], skipped)

    def best(self) -> Best | None:
        """The best complete trial, or None if there is none. Multi-objective: the champion
        rule's pick from the Pareto front (`first`: the best on the first metric)."""
        if len(self._study.directions) > 1:
            front = self.pareto()
            return front[0] if front else None
        try:
            return _best(self._study.best_trial, self._params.metrics)
        except ValueError:
            return None

    def pareto(self) -> list[Best]:
        """The Pareto front (Optuna's best_trials) ordered by the first metric, best first, ties
        by trial number; a single-objective study's front is its best trial."""
        if len(self._study.directions) == 1:
            best = self.best()
            return [best] if best is not None else []
        sign = -1 if self._study.directions[0] == optuna.study.StudyDirection.MAXIMIZE else 1
        trials = sorted(self._study.best_trials, key=lambda t: (sign * t.values[0], t.number))
        return [_best(t, self._params.metrics) for t in trials]

    def trial_states(self) -> dict[int, protocol.TrialState]:
        """Trial number -> its state, for reconciling runs with trials."""
        return {t.number: protocol.TrialState(t.state.name) for t in self._trials()}

    def values(self) -> dict[int, float]:
        """Trial number -> (first) objective of every complete trial."""
        return {t.number: float(t.values[0]) for t in self._trials(TrialState.COMPLETE)}

    def frame(self) -> pd.DataFrame:
        """The trials table (number, state, value, params_*, user attrs, seconds) of the trials
        that started: a queued one (a warm-start or baseline trial no worker took yet) is not
        in it."""
        import pandas as pd  # Optuna's trials_dataframe has loaded it already

        frame = self._study.trials_dataframe(
            attrs=("number", "value", "state", "params", "user_attrs", "duration")
        )
        if "state" in frame:
            frame = frame[frame["state"] != TrialState.WAITING.name].reset_index(drop=True)
        # A study with named objectives calls the columns values_<metric>: the first is
        # `value` (what the tables rank by), any other goes by its metric's name.
        named = self._study.metric_names or []
        frame = frame.rename(
            columns={
                f"{v}_{m}": "value" if i == 0 else m
                for i, m in enumerate(named)
                for v in ("value", "values")
            }
        )
        if "duration" in frame:
            # a running trial has no duration yet (None): NaN seconds, not a crash
            frame["seconds"] = pd.to_timedelta(frame["duration"]).dt.total_seconds()
            frame = frame.drop(columns=["duration"])
        return frame

    def figures(self) -> dict[str, Figure]:
        """The study's interactive figures (drawn by pipeline.report from Optuna's own)."""
        from pipeline import report

        target = str(self.attr("metric") or self._params.metrics[0])
        return report.study_figures(self._study, list(self._params.space), target)

    def failure_summary(self, limit: int = 5) -> str:
        """The failed trials' reasons, most frequent first, as one sentence for an error
        message: ` Failed trials: 3 x "ValueError: ..."; 1 x "MemoryError: ...".`"""
        reasons: dict[str, int] = {}
        for t in self._trials(TrialState.FAIL):
            reason = str(t.user_attrs.get(REASON_ATTR, "no reason recorded"))
            if reason != SURPLUS:
                reasons[reason] = reasons.get(reason, 0) + 1
        if not reasons:
            return ""
        ranked = sorted(reasons.items(), key=lambda kv: -kv[1])
        shown = "; ".join(f"{n} x {r[:300]!r}" for r, n in ranked[:limit])
        more = f"; and {len(ranked) - limit} other reason(s)" if len(ranked) > limit else ""
        return f" Failed trials: {shown}{more}."

    def others_running(self) -> bool:
        """True if a live worker (not this process) still has a trial running."""
        me = worker_id()
        dead = {d.number for d in self.dead_trials()}
        return any(
            t.user_attrs.get(WORKER_ATTR) != me and t.number not in dead
            for t in self._trials(TrialState.RUNNING)
        )

    # the trial protocol

    def ask(self, n_trials: int) -> Trial | None:
        """Start the next trial, or None if finished + earlier running trials cover n_trials
        (or a grid search has tried every point).

        Between a worker's budget check and its new trial another worker may start one too; the
        later-numbered trial then steps aside, recorded as FAIL with reason SURPLUS before any
        training or MLflow run (it shows as skipped, not failed).
        """
        sampler = self._study.sampler
        if isinstance(sampler, GridSampler) and sampler.exhausted(self._study):
            return None  # every grid point has been tried (or is being tried)
        # The trial and its owner reach the study together, under the study lock: a RUNNING
        # trial without an owner is then one whose asker died in between (a full disk, a
        # SIGKILL), and dead_trials() reaps it at once instead of after STALE_AFTER_SECONDS.
        with self.exclusive():
            trial = self._study.ask(fixed_distributions=self._space)
            trial.set_user_attr(WORKER_ATTR, worker_id())
            if self.node:
                trial.set_user_attr(NODE_ATTR, self.node)
        ahead = finished = 0
        for t in self._trials(*FINISHED, TrialState.RUNNING):
            if t.state in FINISHED:
                finished += 1
            elif t.number < trial.number:
                ahead += 1
        if budget_left(finished, ahead, n_trials) <= 0:
            trial.set_user_attr(REASON_ATTR, SURPLUS)
            self._study.tell(trial, state=TrialState.FAIL)
            return None
        values = dict(trial.params)
        retry_of, retry_run = trial.user_attrs.get(RETRY_ATTR), trial.user_attrs.get(RETRY_RUN_ATTR)
        origin = trial.user_attrs.get(WARM_ATTR)
        return Trial(
            trial.number,
            values,
            trial,
            Heartbeat(self._storage.backend, self._trial_id(trial.number)),
            int(retry_of) if retry_of is not None else None,
            str(retry_run) if retry_run else None,
            warm_start_from=str(origin) if origin else None,
            baseline=bool(trial.user_attrs.get(BASELINE_ATTR)),
            prunable=len(self._study.directions) == 1,
        )

    def tell_complete(
        self, trial: Trial, value: float | list[float], scores: Mapping[str, float] | None = None
    ) -> None:
        """Record the objective (one value per metric in a multi-objective study) and, as the
        trial's user attrs, the scores it was made of (the metric as measured, the tie-break
        loss: what tables show beside the rank)."""
        trial._heartbeat.stop()
        for key, score in (scores or {}).items():
            trial._trial.set_user_attr(key, float(score))
        self._study.tell(trial._trial, value)

    def tell_pruned(self, trial: Trial) -> None:
        trial._heartbeat.stop()
        self._study.tell(trial._trial, state=TrialState.PRUNED)

    def tell_failed(self, trial: Trial, reason: str) -> None:
        trial._heartbeat.stop()
        with contextlib.suppress(Exception):  # the reason is best effort; the state is not
            trial.remember(REASON_ATTR, reason[:1000])
        self._study.tell(trial._trial, state=TrialState.FAIL)

    # first trials: warm start, baseline

    def warm_start(
        self, source: list[optuna.trial.FrozenTrial], name: str
    ) -> warmstart.WarmStart | None:
        """Queue `source` trials' params (cut to this study's space) as this study's next
        trials, once per study and source: under the study lock, and recorded in a study attr,
        so workers starting together, or a resumed study, do not queue them again. Returns
        None when that was already done."""
        key = f"warm_start:{name}"
        with self.exclusive():
            if self.attr(key) is not None:
                return None
            queued: list[dict[str, Any]] = []
            dropped: dict[str, str] = {}
            for t in source:
                kept, lost = fit_to_space(t.params, self._params.space)
                dropped.update({k: why for k, why in lost.items() if k not in dropped})
                if kept and kept not in queued:
                    self._study.enqueue_trial(kept, user_attrs={WARM_ATTR: f"{name}#{t.number}"})
                    queued.append(kept)
            self.set_attr(key, [t.number for t in source])
        return warmstart.WarmStart(name, queued, dropped)

    def baseline(self, configured: Mapping[str, Any]) -> warmstart.Baseline | None:
        """Queue the configured values of the searched keys as the study's first trial, once
        per study (under the study lock, recorded in a study attr, like `warm_start`), so the
        search starts from the model the params describe and its champion is never one that
        scored worse than it. A key whose configured value lies outside its range or choices is
        left to the sampler; when none is inside, nothing is queued. Returns None when the
        study already had its baseline (or any trial: a resumed study is not restarted)."""
        key = "baseline"
        with self.exclusive():
            if self.attr(key) is not None or self._study.get_trials(deepcopy=False):
                return None
            values = {k: configured[k] for k in self._params.space if k in configured}
            kept, dropped = fit_to_space(values, self._params.space)
            if kept:
                self._study.enqueue_trial(kept, user_attrs={BASELINE_ATTR: True})
            self.set_attr(key, kept)
        return warmstart.Baseline(kept, dropped)

    # dead workers

    def dead_trials(self) -> list[DeadTrial]:
        """RUNNING trials whose worker is gone: no heartbeat for STALE_AFTER_SECONDS (any
        host), a dead pid (this host) or a cluster node its cluster lost. Optuna's own
        heartbeat covers RDB storages only."""
        host, now, out = socket.gethostname(), time.time(), []
        running = self._trials(TrialState.RUNNING)
        lost = self.lost_nodes() if any(NODE_ATTR in t.user_attrs for t in running) else set()
        for t in running:
            worker = str(t.user_attrs.get(WORKER_ATTR, ""))
            worker_host, _, pid = worker.rpartition(":")
            beat = t.user_attrs.get(HEARTBEAT_ATTR)
            start = t.datetime_start.timestamp() if t.datetime_start else now
            dead = now - float(beat if beat is not None else start) > STALE_AFTER_SECONDS
            if not worker or t.user_attrs.get(NODE_ATTR) in lost:  # its asker died before
                dead = True  # naming itself (see ask), or its node is gone
            elif worker_host == host and pid.isdigit():  # a pid is checkable here (and may be
                dead = dead or not pid_alive(int(pid))  # reused, hence the heartbeat too)
            if dead:
                run_id = t.user_attrs.get(RUN_ATTR)
                out.append(
                    DeadTrial(
                        t.number,
                        self._trial_id(t.number),
                        str(run_id) if run_id else None,
                        dict(t.params),
                        int(t.user_attrs.get("retries", 0)),
                        worker,
                    )
                )
        return out

    def adopt(
        self, dead: DeadTrial, state: protocol.TrialState, value: float | list[float] | None
    ) -> None:
        """Record the result a dead worker's run had already logged (no retraining)."""
        complete = state == protocol.TrialState.COMPLETE
        self._study.tell(dead.number, value if complete else None, state=TrialState[state])

    def fail_dead(self, dead: DeadTrial, *, retries: int) -> bool:
        """Mark a dead worker's trial FAIL; queue its params again if retries are left."""
        backend = self._storage.backend
        backend.set_trial_user_attr(dead.trial_id, REASON_ATTR, f"worker {dead.worker} died")
        self._study.tell(dead.number, state=TrialState.FAIL)
        if dead.retries >= retries:
            return False
        attrs: dict[str, Any] = {RETRY_ATTR: dead.number, "retries": dead.retries + 1}
        if dead.run_id:
            attrs[RETRY_RUN_ATTR] = dead.run_id
        self._study.enqueue_trial(dead.params, user_attrs=attrs, skip_if_exists=False)
        return True


def _best(t: optuna.trial.FrozenTrial, metrics: tuple[str, ...]) -> Best:
    run_id = t.user_attrs.get(RUN_ATTR)
    values = tuple(float(v) for v in t.values)
    keys = (*metrics, protocol.TIEBREAK)  # what tell_complete stored as measured
    scores = {k: float(t.user_attrs[k]) for k in keys if isinstance(t.user_attrs.get(k), float)}
    return Best(t.number, values[0], dict(t.params), run_id and str(run_id), values, scores)


def _create(backend: optuna.storages.BaseStorage, name: str, params: SearchParams) -> int:
    if "auto" in (*params.metrics, *params.directions):
        raise SearchError(
            f"study {name!r}: search.metric and search.direction `auto` depend on the data's "
            "task; resolve them (stages.resolve_metric) before creating a study."
        )
    directions = [optuna.study.StudyDirection[d.upper()] for d in params.directions]
    try:
        study_id = backend.create_new_study(directions, name)
    except optuna.exceptions.DuplicatedStudyError:  # a storage without our lock (gRPC)
        return backend.get_study_id_from_name(name)
    backend.set_study_user_attr(study_id, "space", space_fingerprint(params.space))
    backend.set_study_user_attr(study_id, "metric", params.metrics[0])  # the primary one
    backend.set_study_user_attr(study_id, "metrics", list(params.metrics))
    return study_id


def _check_resumable(
    backend: optuna.storages.BaseStorage, study_id: int, name: str, params: SearchParams
) -> None:
    """Refuse a study whose search space or direction differs from the params now (`auto`
    resumes the study's own)."""
    old = backend.get_study_user_attrs(study_id).get("space")
    if old is not None and old != space_fingerprint(params.space):
        raise SearchError(
            f"study {name!r}: its search space differs from search.space in the params now, "
            "so resuming would mix incompatible trials. Run again with --new to start over, "
            "or --study NAME for a separate study."
        )
    directions = tuple(d.name.lower() for d in backend.get_study_directions(study_id))
    if "auto" not in params.directions and directions != params.directions:
        raise SearchError(
            f"study {name!r} was created to {', '.join(directions)}; search.direction is "
            f"{', '.join(params.directions)}. Use --new or another --study name."
        )


def open_study(
    name: str,
    storage: Storage,
    params: SearchParams,
    *,
    seed: int,
    max_epochs: int,
    folds: int = 0,
    new: bool = False,
    configured: Mapping[str, Any] | None = None,
    sampler: SamplerFactory | None = None,
    pruner: Pruner | None = None,
) -> SearchStudy:
    """Create or resume the study; refuse to resume one whose search space has changed.

    The sampler and pruner are those of the params (make_sampler, make_pruner) unless given:
    `sampler` is then called with this process's seed (benches compare variants this way).

    `configured` (dotted key -> value, the params as written) is the baseline a new study
    tries first when `search.baseline_first` is on, unless it warm-starts (an earlier study's
    best go first then) or samples a grid (which covers every point anyway).

    Each process that opens the study gets its own sampler stream: seed + trials already in the
    study + 7919 x (how many processes opened it at that same history before this one), counted
    under the study lock. A lone process thus proposes what it always did for a seed and a
    history, and processes started together never share a stream.
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # progress is the caller's job
    backend = storage.backend
    # An earlier study to start from is checked before anything is written.
    warm = (
        warmstart.best_trials(backend, params.warm_start, name, params.top_k)
        if params.warm_start
        else []
    )
    study_id = _find_or_create(storage, name, params, new=new)
    _check_resumable(backend, study_id, name, params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study = optuna.load_study(
            study_name=name,
            storage=backend,
            sampler=(sampler or functools.partial(make_sampler, params))(
                _stream_seed(storage, study_id, name, seed)
            ),
            pruner=pruner or make_pruner(params, max_epochs, folds),
        )
        if study.metric_names is None and "auto" not in params.metrics:
            study.set_metric_names(list(params.metrics))  # optuna-dashboard labels them
    searched = SearchStudy(study, storage, params)
    if params.warm_start:
        started = searched.warm_start(warm, params.warm_start)
        if started is not None:
            warmstart.log_warm_start(started, name)
    elif params.baseline_first and params.sampler != "grid" and configured is not None:
        queued = searched.baseline(configured)
        if queued is not None:
            warmstart.log_baseline(queued, name)
    return searched


def _find_or_create(storage: Storage, name: str, params: SearchParams, *, new: bool) -> int:
    """The study's id; created (or found created meanwhile) under the study lock, after
    discarding an existing one when `new`."""
    backend = storage.backend
    study_id = None if new else find_study_id(backend, name)
    if study_id is None:
        with storage.lock(f"study:{name}"):
            study_id = find_study_id(backend, name)
            if study_id is not None and new:
                backend.delete_study(study_id)
                study_id = None
            if study_id is None:
                study_id = _create(backend, name, params)
    return study_id


def _stream_seed(storage: Storage, study_id: int, name: str, seed: int) -> int:
    """This opener's sampler seed: seed + trials in the study + 7919 x (openers at that same
    history before this one, counted under the study lock)."""
    backend = storage.backend
    history = backend.get_n_trials(study_id)  # outside the lock: it reads every trial
    with storage.lock(f"study:{name}"):
        key = f"pipeline:openers:{history}"
        slot = int(backend.get_study_system_attrs(study_id).get(key, 0))
        backend.set_study_system_attr(study_id, key, slot + 1)
    return seed + history + 7919 * slot


def existing_study(name: str, url: str | None, params: SearchParams) -> SearchStudy | None:
    """An existing study to read (figures, trials), or None when the storage or study is not
    there. Unlike `open_study`, creates nothing: no journal file, no study, no opener slot."""
    path = url or str(Path("mlruns") / "optuna-journal.log")
    if not is_url(path) and not Path(path).is_file():
        return None
    storage = make_storage(path)
    if find_study_id(storage.backend, name) is None:
        return None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=name, storage=storage.backend)
    return SearchStudy(study, storage, params)

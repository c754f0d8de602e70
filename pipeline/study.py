"""A tracked study: one Optuna trial = one MLflow run, however many processes run it.

Read top to bottom, this module is the search engine:

1. `TrackedStudy.open` opens (or resumes) the Optuna study and elects the study's one parent
   run under the study lock, so any number of processes started at once share one parent.
2. `reconcile` squares the study with the store after a crash: a dead worker's trial whose run
   had already logged its result is adopted as is; any other is failed (and retried, with a new
   run); runs left RUNNING are closed with the state of their trial.
3. `run_trials` asks for trials until `n_trials` have finished in the whole study. Each trial's
   protocol is ordered so that a worker may die at any instant and `reconcile` still agrees
   with the store: the run is created before `fit`; per-epoch metrics reach it while it trains
   (the params with the first of them); the weights are written once training returns; then
   the last epochs and the result, in one write (the result after the epochs); then the result
   is told to Optuna; then the run is closed.
4. The finish (pipeline.champion) is done once, by the last worker standing, under the study
   lock: the parent's artifacts, then the champion (the best trial's own model, tested once,
   registered).

How a trial's params become a model is a Trainer's job (pipeline.trainers). This module uses
search.py (Optuna) and pipeline.tracking (MLflow) and never the frameworks themselves.
"""

from __future__ import annotations

import contextlib
import logging
import math
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from pipeline import config, interrupts, protocol, search, stages, trainers
from pipeline.errors import PipelineError, TrainingDiverged
from pipeline.protocol import (
    BASELINE_TAG,
    ERROR_TAG,
    HOST_TAG,
    KIND_TAG,
    RAY_NODE_TAG,
    RESULT_TAG,
    RETRY_RUN_TAG,
    RETRY_TAG,
    STATE_TAG,
    STORAGE_TAG,
    STUDY_TAG,
    TIEBREAK,
    TRIAL_TAG,
    WARM_TAG,
    RunKind,
    RunStatus,
    TrialState,
)

if TYPE_CHECKING:
    from pipeline.stages import Prepared
    from pipeline.storage import Storage
    from pipeline.tracking import LiveMetrics

log = logging.getLogger(__name__)

PARENT_ATTR = "mlflow_parent_run_id"
FOLDS_ATTR = "cv_folds"  # how the study scores its trials: 0 = a validation split, k = k folds
INTERRUPTED = "interrupted (Ctrl-C or SIGTERM)"


class StudyTracker(Protocol):
    """What a tracked study asks of its tracker to open, reconcile and run trials.

    pipeline.tracking.Tracker is the real one; a bench passes a stand-in that records nothing
    (bench/scaling.py) to measure coordination alone. The finish (pipeline.champion) needs the
    whole Tracker: it logs figures and the servable model.
    """

    def create_run(
        self, name: str, *, parent_id: str | None = None, tags: Mapping[str, str] | None = None
    ) -> str: ...

    def run(
        self,
        name: str,
        *,
        parent_id: str | None = None,
        tags: Mapping[str, str] | None = None,
        resume_id: str | None = None,
        failure_tags: Mapping[str, str] | None = None,
    ) -> contextlib.AbstractContextManager[str]: ...

    def live_metrics(self, run_id: str) -> contextlib.AbstractContextManager[LiveMetrics]: ...

    def exists(self, run_id: str | None) -> bool: ...

    def running_trial_runs(self, parent_id: str) -> list[tuple[str, int]]: ...

    def trial_result(self, run_id: str) -> tuple[TrialState, float | list[float] | None] | None: ...

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None: ...

    def end_run(self, run_id: str, status: str) -> None: ...

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None: ...

    def log_text(self, run_id: str, text: str, name: str) -> None: ...

    def log_dataset(self, run_id: str, sample: Any, **fields: Any) -> None: ...


@dataclass(frozen=True)
class TrialSummary:
    """One finished trial and the study's standing after it (for progress lines)."""

    number: int
    state: TrialState
    value: float | None
    best: search.Best | None
    counts: search.Counts
    seconds: float


@dataclass(frozen=True)
class Reconciled:
    adopted: int = 0  # dead workers' trials whose run had finished: result kept
    failed: int = 0  # dead workers' trials failed (and re-queued if retries allow)
    closed: int = 0  # runs left RUNNING, now ended with their trial's state


def _check_folds(study: search.SearchStudy, prep: Prepared) -> None:
    """Refuse to resume a study whose trials were scored another way (a validation split
    vs k folds, or another k): it would rank incomparable objectives, and a champion
    refit needs the folds' epochs. A study without the record predates split.folds, unless
    no trial of it has started yet (a new study's queued baseline or warm-start trials)."""
    folds = prep.folds.k if prep.folds is not None else 0
    stored = study.attr(FOLDS_ATTR)
    started = [s for s in study.trial_states().values() if s != TrialState.WAITING]
    if stored is None and not started:
        study.set_attr(FOLDS_ATTR, folds)
        return
    before = int(stored or 0)
    if before != folds:
        how = {0: "a validation split (split.folds off)"}.get(before, f"{before}-fold CV")
        raise PipelineError(
            f"study {study.name!r} scored its trials by {how}; split.folds is now "
            f"{folds}, so resuming would rank incomparable objectives. Run again with "
            f"--new to start over, --study NAME for a separate study, or split.folds="
            f"{before}."
        )


def _elect_parent(
    params: config.Params,
    prep: Prepared,
    tracker: StudyTracker,
    study: search.SearchStudy,
    name: str,
    storage_display: str,
) -> str:
    """Create the study's parent run unless another process just did (checked again
    under the study lock, so exactly one process creates it)."""
    with study.exclusive():
        parent_id = study.attr(PARENT_ATTR)
        if not tracker.exists(parent_id):
            parent_id = tracker.create_run(
                f"study-{name}",
                tags={
                    KIND_TAG: RunKind.STUDY,
                    STUDY_TAG: name,
                    STORAGE_TAG: storage_display,
                },
            )
            tracker.log_params(
                parent_id,
                {k: v for k, v in config.flatten(params).items() if not k.startswith("search.")},
            )
            tracker.log_text(
                parent_id, config.space_fingerprint(params.search.space), "search_space.yaml"
            )
            stages.log_dataset(tracker, parent_id, params, prep)
            study.set_attr(PARENT_ATTR, parent_id)
    return parent_id


class TrackedStudy:
    """An Optuna study whose every trial is an MLflow run nested under one parent run."""

    def __init__(
        self,
        params: config.Params,
        prep: Prepared,
        tracker: StudyTracker,
        study: search.SearchStudy,
        parent_id: str,
        *,
        storage: str,
        trainer: trainers.Trainer | None = None,
    ) -> None:
        self.params = params
        self.prep = prep
        self.tracker = tracker
        self.study = study
        self.parent_id = parent_id
        self.storage = storage  # masked URL, for tags and messages
        self.name = study.name
        default = trainers.cv_trainer if prep.folds is not None else trainers.keras_trainer
        self.trainer = trainer or default(prep, tracker, seed=params.seed)

    # -- 1. open ----------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        params: config.Params,
        prep: Prepared,
        tracker: StudyTracker,
        *,
        name: str,
        storage: Storage,
        storage_display: str,
        new: bool = False,
        trainer: trainers.Trainer | None = None,
        sampler: search.SamplerFactory | None = None,
        pruner: search.Pruner | None = None,
    ) -> TrackedStudy:
        """Open or resume the study and elect its parent run (exactly one per study); the
        sampler and pruner are the params' unless given (search.open_study)."""
        params = stages.resolve_metric(params, prep)
        study = search.open_study(
            name,
            storage,
            params.search,
            seed=params.seed,
            max_epochs=params.train.epochs,
            folds=prep.folds.k if prep.folds is not None else 0,
            new=new,
            configured=config.flatten(params),
            sampler=sampler,
            pruner=pruner,
        )
        _check_folds(study, prep)
        parent_id = study.attr(PARENT_ATTR)
        if not tracker.exists(parent_id):
            parent_id = _elect_parent(params, prep, tracker, study, name, storage_display)
        return cls(
            params, prep, tracker, study, parent_id, storage=storage_display, trainer=trainer
        )

    def place(self, node: str | None, lost_nodes: Callable[[], set[str]]) -> None:
        """Run this worker's trials as on cluster node `node` (None: on no node, a driver): its
        trials carry the node (tag and attr), and a trial whose node `lost_nodes()` names is
        a dead worker's at once."""
        self.study.node, self.study.lost_nodes = node, lost_nodes

    # -- 2. reconcile -----------------------------------------------------------------------

    def reconcile(self) -> Reconciled:
        """Settle dead workers' trials and close runs left RUNNING (under the study lock)."""
        adopted = failed = closed = 0
        if not self.study.dead_trials() and not self._orphan_runs():
            return Reconciled()  # the common case: nothing to settle, no lock taken
        with self.study.exclusive():
            for dead in self.study.dead_trials():
                result = self.tracker.trial_result(dead.run_id) if dead.run_id else None
                if result is not None:
                    state, value = result
                    self.study.adopt(dead, state, value)
                    log.warning("trial %d: its worker died after logging it; adopted", dead.number)
                    adopted += 1
                else:
                    retried = self.study.fail_dead(dead, retries=self.params.search.retries)
                    log.warning(
                        "trial %d of a dead worker marked FAIL%s",
                        dead.number,
                        " (queued again)" if retried else "",
                    )
                    failed += 1
            for run_id, state in self._orphan_runs():
                status = RunStatus.FINISHED if state.finished else RunStatus.KILLED
                tags = {STATE_TAG: state}
                if status == RunStatus.KILLED:
                    tags[ERROR_TAG] = "worker died mid-trial"
                self.tracker.set_tags(run_id, tags)
                self.tracker.end_run(run_id, status)
                closed += 1
        return Reconciled(adopted, failed, closed)

    def _orphan_runs(self) -> list[tuple[str, str]]:
        """(run id, its trial's state) of trial runs left RUNNING although their trial is not
        (or never got recorded: the worker died right after creating the run)."""
        running = self.tracker.running_trial_runs(self.parent_id)
        states = self.study.trial_states() if running else {}
        return [
            (run_id, states.get(number, TrialState.FAIL))
            for run_id, number in running
            if states.get(number, TrialState.FAIL) != TrialState.RUNNING
        ]

    # -- 3. trials --------------------------------------------------------------------------

    def budget_left(self) -> int:
        """Trials still to start in the whole study (finished and running ones count)."""
        c = self.study.counts()
        return search.budget_left(c.finished, c.running, self.params.search.n_trials)

    def run_trials(
        self,
        on_trial_end: Callable[[TrialSummary], None] | None = None,
        *,
        max_trials: int | None = None,
        deadline: float | None = None,
    ) -> int:
        """Run trials here until `n_trials` have finished in the whole study (or the timeout,
        or `max_trials` of this call); returns how many this call ran.

        The timeout is a `deadline` in seconds since the epoch (`time.time()`), so the
        processes of one command (its --workers children, and the fresh ones that replace
        recycled workers) stop starting trials at the same moment; by default it is
        `search.timeout` from now.

        Stops starting trials once finished + running trials cover the budget; the workers
        whose trials are still running top it up if one of them fails. Gives up after
        2 x n_trials failures of its own (at least 5), so a broken setup does not loop.
        """
        sp = self.params.search
        if deadline is None and sp.timeout is not None:
            deadline = time.time() + sp.timeout
        failures = ran = 0
        c = self.study.counts()
        while (deadline is None or time.time() < deadline) and ran != max_trials:
            if search.budget_left(c.finished, c.running, sp.n_trials) <= 0:
                if c.running and self.reconcile() != Reconciled():
                    c = self.study.counts()
                    continue  # dead workers' trials were holding budget
                return ran
            interrupts.check()  # never start a trial after a Ctrl-C, even a swallowed one
            trial = self.study.ask(sp.n_trials)
            if trial is None:
                return ran
            started = time.monotonic()
            state, value = self.run_trial(trial)
            ran += 1
            failures += state == TrialState.FAIL
            c = self.study.counts()  # one read per trial: progress and the next budget check
            if on_trial_end is not None:
                seconds = time.monotonic() - started
                summary = TrialSummary(trial.number, state, value, self.study.best(), c, seconds)
                on_trial_end(summary)
            if failures >= max(2 * sp.n_trials, 5):
                log.error("stopping: %d trials of this worker failed", failures)
                return ran
        return ran

    def run_trial(self, trial: search.Trial) -> tuple[TrialState, float | None]:
        """Train one trial in its own MLflow run; returns (its state, its objective value).

        Three steps: start the run (before `fit`, so its duration is real), train and record
        the result (on the run first, then in the study), or record the failure. A failure
        (exception, NaN/inf) is recorded as FAIL with the reason and the run ends FAILED;
        Ctrl-C marks the trial FAIL, ends the run KILLED and propagates.
        """
        told = False
        try:
            origin = f"trial {trial.number}"
            trial_params = config.with_values(self.params, trial.values, origin=origin)
            with self.tracker.run(
                f"trial-{trial.number:04d}",
                parent_id=self.parent_id,
                tags=self._trial_tags(trial),
                failure_tags={STATE_TAG: TrialState.FAIL},  # with the FAILED end, one write
            ) as run_id:
                trial.remember(search.RUN_ATTR, run_id)
                try:
                    state, values = self._train_and_record(trial, trial_params, run_id)
                    told = True
                    return state, values[0] if values else None
                except BaseException as exc:
                    told = self._record_failed_run(trial, run_id, exc)
                    raise  # the original error, never one from recording it
        except Exception as exc:  # recorded above, or below if the run never started
            if not told:
                self._record_failure(trial, f"{type(exc).__name__}: {exc}")
            log.warning("trial %d failed: %s: %s", trial.number, type(exc).__name__, exc)
            return TrialState.FAIL, None
        except BaseException:
            if not told:
                self._record_failure(trial, INTERRUPTED)
            raise

    def _trial_tags(self, trial: search.Trial) -> dict[str, str]:
        """What a trial's run is tagged with from its start (the UI filters on these)."""
        tags = {STUDY_TAG: self.name, TRIAL_TAG: str(trial.number), STATE_TAG: TrialState.RUNNING}
        tags[HOST_TAG] = socket.gethostname()
        if self.study.node:
            tags[RAY_NODE_TAG] = self.study.node
        if trial.retry_of is not None:  # a dead worker's trial, run again: link the two runs
            tags[RETRY_TAG] = str(trial.retry_of)
            if trial.retry_of_run:
                tags[RETRY_RUN_TAG] = trial.retry_of_run
        if trial.warm_start_from:
            tags[WARM_TAG] = trial.warm_start_from
        if trial.baseline:
            tags[BASELINE_TAG] = "true"
        return tags

    def _train_and_record(
        self, trial: search.Trial, trial_params: config.Params, run_id: str
    ) -> tuple[TrialState, list[float] | None]:
        """Train, then record the result: on the run first (with the last epochs, after them),
        then in the study; the caller then closes the run. A worker dying between any two of
        these leaves what reconcile() needs. Returns the state and the objective values."""
        metrics, directions = self.params.search.metrics, self.params.search.directions
        metric = metrics[0]  # the one that prunes (single objective) and progress shows

        def hook(epoch: int, logs: dict[str, float]) -> bool:
            interrupts.check()  # a Ctrl-C swallowed during the epoch stops the trial here
            # judged as it will be ranked: the metric, ties by the loss (protocol.objective)
            return metric in logs and trial.should_prune(
                epoch, protocol.objective(logs, metric, directions[0])
            )

        with self.tracker.live_metrics(run_id) as live:
            live.add_params(config.flatten(trial_params))  # with the first epochs
            trained = self.trainer(trial_params, live, hook)
            state, values, extra = _result(trained, metrics, directions)
            if values is not None and len(values) == 1:  # the UI's sort key (protocol)
                live.add(trained.epochs_run, {protocol.OBJECTIVE: values[0]})
            live.final_tags.update({STATE_TAG: state, **extra})
        if values is None:
            self.study.tell_pruned(trial)
        else:
            scores = {m: trained.metrics[m] for m in (metric, TIEBREAK) if m in trained.metrics}
            self.study.tell_complete(trial, values if len(values) > 1 else values[0], scores)
        return state, values

    def _record_failed_run(self, trial: search.Trial, run_id: str, exc: BaseException) -> bool:
        """The failure in the study first (it decides), then on the run; True if the study has
        it. Best effort on the run: its end status (FAILED or KILLED) says it too."""
        interrupted = isinstance(exc, KeyboardInterrupt)
        told = self._record_failure(
            trial, INTERRUPTED if interrupted else f"{type(exc).__name__}: {exc}"
        )
        with contextlib.suppress(Exception):
            self.tracker.set_tags(run_id, {STATE_TAG: TrialState.FAIL})
        return told

    def _record_failure(self, trial: search.Trial, reason: str) -> bool:
        """Tell Optuna the trial failed; False if even that fails (a storage outage): the trial
        then stays RUNNING until reconcile() finds its worker gone."""
        try:
            self.study.tell_failed(trial, reason)
            return True
        except Exception as failed:  # noqa: BLE001 - must not replace the trial's own error
            log.warning("trial %d: could not record its failure: %s", trial.number, failed)
            return False


def _result(
    trained: trainers.Trained, metrics: tuple[str, ...], directions: tuple[str, ...]
) -> tuple[TrialState, list[float] | None, dict[str, str]]:
    """A trained trial's state, objective values (None if pruned) and the tags that record
    them on its run. A non-finite objective is a failure: Optuna would store inf as COMPLETE.
    One metric: its objective carries the validation-loss tie-break (protocol.objective);
    several: each metric as it is (the Pareto rule ranks them)."""
    if trained.pruned:
        where = (
            {"pruned_after_fold": str(trained.folds_run)}
            if trained.folds_run
            else {"pruned_at_epoch": str(trained.epochs_run)}
        )
        return TrialState.PRUNED, None, where
    values = [float(trained.metrics[m]) for m in metrics]
    for m, v in zip(metrics, values, strict=True):
        if not math.isfinite(v):
            raise TrainingDiverged(f"non-finite {m}: {v}")
    if len(metrics) == 1:
        values = [protocol.objective(trained.metrics, metrics[0], directions[0])]
    return TrialState.COMPLETE, values, {RESULT_TAG: ",".join(map(repr, values))}

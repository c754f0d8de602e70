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
4. `finish` is done once, by the last worker standing, under the study lock: the parent's
   artifacts, then the champion (the best trial's own model, tested once, registered).
   A champion already made for the same best trial is reported, never made twice.

It uses search.py (Optuna) and tracking.py (MLflow) and never the frameworks themselves.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from pipeline import config, search, stages
from pipeline.errors import PipelineError, TrainingDiverged
from pipeline.protocol import (
    BASELINE_TAG,
    BEST_TRIAL_TAG,
    ERROR_TAG,
    KIND_TAG,
    REFIT_TAG,
    RESULT_TAG,
    RETRY_RUN_TAG,
    RETRY_TAG,
    STATE_TAG,
    STORAGE_TAG,
    STUDY_TAG,
    TRIAL_RUN_TAG,
    TRIAL_TAG,
    WARM_TAG,
    RunKind,
    RunStatus,
    TrialState,
    ranked,
)

if TYPE_CHECKING:
    import pandas as pd

    from pipeline.model import EpochHook, TrainResult
    from pipeline.stages import Prepared
    from pipeline.storage import Storage
    from pipeline.tracking import LiveMetrics, Tracker

log = logging.getLogger(__name__)

PARENT_ATTR = "mlflow_parent_run_id"
FOLDS_ATTR = "cv_folds"  # how the study scores its trials: 0 = a validation split, k = k folds
CHAMPION_ATTR = "champion"
INTERRUPTED = "interrupted (Ctrl-C or SIGTERM)"
STUDY_PAGE = "study_figures.html"  # the parent run's artifact with the study figures


@dataclass(frozen=True)
class Trained:
    """What training one trial produced: its final validation metrics, and whether the
    pruner stopped it (after `epochs_run` epochs, or after `folds_run` folds when the trial
    was cross-validated)."""

    metrics: dict[str, float]
    epochs_run: int
    pruned: bool
    folds_run: int = 0  # cross-validation folds trained; 0 without cross-validation


class Trainer(Protocol):
    """Trains one trial's params into its (already open) run and logs what it made.

    `live` is the run's metrics buffer (`live.run_id` the run): what the trainer adds to it
    is written with the trial's result, in one write after the trainer returns; anything else
    (artifacts) it writes itself, before returning. The default trains the Keras model
    (`keras_trainer`); benches and tests pass a stub that trains nothing, so the real search
    layer can be measured and broken on purpose.
    """

    def __call__(
        self, params: config.Params, live: LiveMetrics, on_epoch: EpochHook
    ) -> Trained: ...


def keras_trainer(prep: Prepared, tracker: Tracker, *, seed: int) -> Trainer:
    """Fit with live per-epoch curves and log the weights of the trial's model; its last
    epochs and final validation metrics are left in `live`, for the write that records the
    trial's result (so the weights are in the store before it, and the epochs with it)."""

    def train(params: config.Params, live: LiveMetrics, on_epoch: EpochHook) -> Trained:
        from pipeline import model

        try:
            result, metrics = stages.train_logged(live, params, prep, seed=seed, on_epoch=on_epoch)
            stages.log_weights(tracker, live.run_id, result)
            return Trained(metrics, result.epochs_run, result.stopped_by == "hook")
        finally:
            model.release()

    return train


def cv_trainer(prep: Prepared, tracker: Tracker, *, seed: int) -> Trainer:
    """k-fold cross-validation of one trial (`split.folds` >= 2): train on each fold in turn,
    log its curves and scores as `fold{i}_*`, and end with the mean over the folds as the
    trial's validation metrics (its objective), their spread and the epochs to refit with.

    Pruning is between folds, not epochs: after each fold but the last, the hook is given the
    running mean of the search metric with step = fold index (see search._pruner), so a trial
    whose first folds already score below the median stops early. Within a fold no epoch is
    reported (a fold-0 epoch and a fold-2 epoch are not comparable steps); early stopping
    still ends each fold. No weights are logged: the champion is trained again, once, on all
    non-test rows (TrackedStudy._make_champion).
    """
    folds = prep.folds
    if folds is None:
        raise ValueError("cv_trainer needs cross-validation folds (split.folds >= 2)")

    def train(params: config.Params, live: LiveMetrics, on_epoch: EpochHook) -> Trained:
        from pipeline import model

        run_id = live.run_id
        metric = params.search.metrics[0]  # the one that prunes (the first, if several)
        scores: list[dict[str, float]] = []
        best_epochs: list[int] = []
        seconds = 0.0
        for i in range(folds.k):
            try:
                result = stages.fit_fold(params, prep, i, seed=seed)
                scores.append(stages.log_fold(tracker, run_id, i, result, prep))
            finally:
                model.release()
            best_epochs.append(int(result.extra.get("best_epoch", result.epochs_run)))
            seconds += result.seconds
            running = sum(s[metric] for s in scores) / len(scores)
            if i < folds.k - 1 and on_epoch(i, {metric: running}):
                live.add(0, {"train_seconds": seconds})
                return Trained({metric: running}, result.epochs_run, True, folds_run=i + 1)
        means = stages.log_cv(tracker, run_id, scores, best_epochs)
        live.add(0, {"train_seconds": seconds})
        return Trained(means, stages.refit_epochs(best_epochs), False, folds_run=folds.k)

    return train


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


@dataclass(frozen=True)
class ChampionRecord:
    """The champion of a study as stored with it: made once per best trial."""

    trial: int
    run_id: str
    model: str
    test: dict[str, float]

    @classmethod
    def from_attr(cls, value: Any) -> ChampionRecord | None:
        if not isinstance(value, dict) or not {"trial", "run_id", "model", "test"} <= set(value):
            return None
        return cls(int(value["trial"]), str(value["run_id"]), str(value["model"]), value["test"])


@dataclass(frozen=True)
class Outcome:
    """How this process's part of the study ended."""

    best: search.Best | None
    champion: ChampionRecord | None
    made_here: bool  # this process trained/tested/registered the champion
    pending: str | None = None  # why no champion yet (other workers still running)


class TrackedStudy:
    """An Optuna study whose every trial is an MLflow run nested under one parent run."""

    def __init__(
        self,
        params: config.Params,
        prep: Prepared,
        tracker: Tracker,
        study: search.SearchStudy,
        parent_id: str,
        *,
        storage: str,
        trainer: Trainer | None = None,
    ) -> None:
        self.params = params
        self.prep = prep
        self.tracker = tracker
        self.study = study
        self.parent_id = parent_id
        self.storage = storage  # masked URL, for tags and messages
        self.name = study.name
        default = cv_trainer if prep.folds is not None else keras_trainer
        self.trainer = trainer or default(prep, tracker, seed=params.seed)

    # -- 1. open ----------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        params: config.Params,
        prep: Prepared,
        tracker: Tracker,
        *,
        name: str,
        storage: Storage,
        storage_display: str,
        new: bool = False,
        trainer: Trainer | None = None,
    ) -> TrackedStudy:
        """Open or resume the study and elect its parent run (exactly one per study)."""
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
        )
        cls._check_folds(study, prep)
        parent_id = study.attr(PARENT_ATTR)
        if not tracker.exists(parent_id):
            parent_id = cls._elect_parent(params, prep, tracker, study, name, storage_display)
        return cls(
            params, prep, tracker, study, parent_id, storage=storage_display, trainer=trainer
        )

    @staticmethod
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

    @staticmethod
    def _elect_parent(
        params: config.Params,
        prep: Prepared,
        tracker: Tracker,
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
                    {
                        k: v
                        for k, v in config.flatten(params).items()
                        if not k.startswith("search.")
                    },
                )
                tracker.log_text(
                    parent_id, config.space_fingerprint(params.search.space), "search_space.yaml"
                )
                stages.log_dataset(tracker, parent_id, params, prep)
                study.set_attr(PARENT_ATTR, parent_id)
        return parent_id

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
        """Train one trial in its own MLflow run; returns (Optuna state, objective value).

        A failure (exception, NaN/inf) is recorded as FAIL with the reason and the run ends
        FAILED; Ctrl-C marks the trial FAIL, ends the run KILLED and propagates.
        """
        metrics = self.params.search.metrics
        metric = metrics[0]  # the one that prunes (single objective) and progress shows
        tags = {
            STUDY_TAG: self.name,
            TRIAL_TAG: str(trial.number),
            STATE_TAG: TrialState.RUNNING,
        }
        if trial.retry_of is not None:  # a dead worker's trial, run again: link the two runs
            tags[RETRY_TAG] = str(trial.retry_of)
            if trial.retry_of_run:
                tags[RETRY_RUN_TAG] = trial.retry_of_run
        if trial.warm_start_from:
            tags[WARM_TAG] = trial.warm_start_from
        if trial.baseline:
            tags[BASELINE_TAG] = "true"
        told = False

        def hook(epoch: int, logs: dict[str, float]) -> bool:
            return metric in logs and trial.should_prune(epoch, logs[metric])

        try:
            origin = f"trial {trial.number}"
            trial_params = config.with_values(self.params, trial.values, origin=origin)
            with self.tracker.run(
                f"trial-{trial.number:04d}",
                parent_id=self.parent_id,
                tags=tags,
                failure_tags={STATE_TAG: TrialState.FAIL},  # with the FAILED end, one write
            ) as run_id:
                trial.remember(search.RUN_ATTR, run_id)
                try:
                    with self.tracker.live_metrics(run_id) as live:
                        live.add_params(config.flatten(trial_params))  # with the first epochs
                        trained = self.trainer(trial_params, live, hook)
                        if trained.pruned:
                            state, value = TrialState.PRUNED, None
                            extra = (
                                {"pruned_after_fold": str(trained.folds_run)}
                                if trained.folds_run
                                else {"pruned_at_epoch": str(trained.epochs_run)}
                            )
                        else:
                            values = [float(trained.metrics[m]) for m in metrics]
                            for m, v in zip(metrics, values, strict=True):
                                if not math.isfinite(v):  # Optuna would store inf as COMPLETE
                                    raise TrainingDiverged(f"non-finite {m}: {v}")
                            state, value = TrialState.COMPLETE, values[0]
                            extra = {RESULT_TAG: ",".join(map(repr, values))}
                        # The result goes on the run first (with the last epochs, after them),
                        # then into the study, then the run closes: a worker dying between
                        # any two of these leaves what reconcile() needs.
                        live.final_tags.update({STATE_TAG: state, **extra})
                    if value is None:
                        self.study.tell_pruned(trial)
                    else:
                        self.study.tell_complete(trial, values if len(values) > 1 else value)
                    told = True
                    return state, value
                except BaseException as exc:
                    interrupted = isinstance(exc, KeyboardInterrupt)
                    reason = INTERRUPTED if interrupted else f"{type(exc).__name__}: {exc}"
                    told = self._record_failure(trial, reason)  # the study first: it decides
                    with contextlib.suppress(Exception):  # best effort: the run's end status
                        self.tracker.set_tags(run_id, {STATE_TAG: TrialState.FAIL})  # says it too
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

    def _record_failure(self, trial: search.Trial, reason: str) -> bool:
        """Tell Optuna the trial failed; False if even that fails (a storage outage): the trial
        then stays RUNNING until reconcile() finds its worker gone."""
        try:
            self.study.tell_failed(trial, reason)
            return True
        except Exception as failed:  # noqa: BLE001 - must not replace the trial's own error
            log.warning("trial %d: could not record its failure: %s", trial.number, failed)
            return False

    # -- 4. finish --------------------------------------------------------------------------

    def finish(self) -> Outcome:
        """Parent artifacts and the champion, once, by the last worker standing."""
        best = self.study.best()
        if self.study.others_running():
            return Outcome(
                best,
                None,
                False,
                "other workers' trials are still running; the "
                "last worker to finish logs the study and elects the champion",
            )
        with self.study.exclusive():
            best = self.study.best()
            self.log_parent_artifacts()
            if best is None:
                c = self.study.counts()
                why = (
                    "no trial completed (see the failed trials' `error` tags in MLflow)"
                    if c.failed
                    else f"all {c.pruned} finished trials were pruned"
                    if c.pruned
                    else "no trial ran: search.timeout (--timeout) ended it before the first"
                    if self.params.search.timeout is not None
                    else "no trial ran"
                )
                raise PipelineError(
                    f"study {self.name!r}: {why}; nothing to evaluate or register."
                    + self.study.failure_summary()  # issue 8: say why, not only that
                )
            record = ChampionRecord.from_attr(self.study.attr(CHAMPION_ATTR))
            if record and record.trial == best.number and self.tracker.exists(record.run_id):
                return Outcome(best, record, False)  # the test split is used once per champion
            record = self._make_champion(best)
            self.study.set_attr(CHAMPION_ATTR, record.__dict__)
            return Outcome(best, record, True)

    def _make_champion(self, best: search.Best) -> ChampionRecord:
        """The best trial's own model (its logged weights and curves; no retraining), tested
        once, logged as a servable model with the scaler and label decoding, registered.

        Cross-validated trials (`split.folds`) leave k models, none trained on all the data:
        the champion is then trained once more with the best trial's params on every non-test
        row (a scaler fitted on them), for the median of its folds' best epochs, with no
        validation split, and tested and registered the same way. Having no validation rows,
        it keeps the weights of its epoch with the lowest training loss (early stopping on
        `loss` that never stops): with a noisy optimizer the last epoch can land anywhere,
        while each fold's score came from its best epoch (measured: a tanh/SGD-momentum iris
        refit ended at training accuracy 0.59 after passing 0.99 thirteen epochs earlier).
        """
        params = self.params
        if best.run_id is None:
            raise PipelineError(f"study {self.name!r}: best trial {best.number} has no run.")
        origin = f"best trial {best.number}"
        champion = config.with_values(params, best.params, origin=origin)
        if self.prep.folds is not None:
            es = "train.early_stopping."
            refit = {f"{es}monitor": "loss", f"{es}restore_best_weights": True}
            refit[f"{es}patience"] = champion.train.epochs  # never stops: the hook does
            champion = config.with_values(champion, refit, origin=f"{origin} (refit)")
        name = params.tracking.model_name or stages.experiment_name(params)
        tags = {
            STUDY_TAG: self.name,
            KIND_TAG: RunKind.CHAMPION,
            BEST_TRIAL_TAG: str(best.number),
            TRIAL_RUN_TAG: best.run_id,
        }
        with self.tracker.run("champion", parent_id=self.parent_id, tags=tags) as run_id:
            self.tracker.log_params(run_id, config.flatten(champion))
            if self.prep.folds is None:
                prep = self.prep
                result = stages.load_trained(self.tracker, best.run_id, prep)
                self.tracker.log_history(run_id, result.history)
                val = stages.score(result, prep, "val")
            else:
                prep, result, val = self._refit(run_id, champion, best)
            self.tracker.log_metrics(
                run_id, {**val, "epochs_run": result.epochs_run, "train_seconds": result.seconds}
            )
            made = stages.log_champion(
                self.tracker,
                run_id,
                champion,
                prep,
                result,
                register_as=name if params.tracking.register_model else None,
            )
        self.tracker.log_metrics(self.parent_id, made.test)
        where = (
            f"models:/{name}@champion (version {made.version})" if made.version else made.model_uri
        )
        return ChampionRecord(best.number, run_id, where, made.test)

    def _refit(
        self, run_id: str, champion: config.Params, best: search.Best
    ) -> tuple[Prepared, TrainResult, dict[str, float]]:
        """Train the cross-validated champion on all non-test rows for the epochs the best
        trial's folds chose; its cross-validation scores go on the champion run as its
        validation evidence (there is no validation split left to score)."""
        trial = self.tracker.run_metrics(str(best.run_id))
        epochs = int(trial["refit_epochs"])
        cv = {k: v for k, v in trial.items() if k.startswith(("cv_mean_", "cv_std_"))}
        prep = self.prep.refit()
        self.tracker.set_tags(
            run_id,
            {REFIT_TAG: f"all {len(prep.raw.y_train)} non-test rows, {epochs} epochs"},
        )
        result = stages.refit(champion, prep, epochs=epochs, seed=self.params.seed)
        self.tracker.log_history(run_id, result.history)
        return prep, result, {**cv, "refit_epochs": epochs, "cv_folds": trial.get("cv_folds", 0)}

    def log_parent_artifacts(self) -> pd.DataFrame:
        """Trials table, best params and study figures on the parent run; returns the table.

        The figures are Optuna's interactive ones on one offline HTML page (MLflow shows .html
        artifacts in its UI), with the top trials' validation curves beside them as a PNG.
        """
        import yaml

        from pipeline import report

        sp = self.params.search
        frame = self.study.frame()
        tracker, parent = self.tracker, self.parent_id
        tracker.log_text(parent, frame.to_csv(index=False), "trials.csv")
        best = self.study.best()
        if best is None:
            return frame
        metric = sp.metrics[0]
        best_yaml: dict[str, Any] = {"trial": best.number, metric: best.value}
        if sp.multi_objective:  # the champion rule's pick, then the whole front
            best_yaml = {"trial": best.number, **dict(zip(sp.metrics, best.values, strict=True))}
            best_yaml["champion"] = f"{sp.champion}: best {metric} on the Pareto front"
            best_yaml["pareto_front"] = [
                {"trial": b.number, **dict(zip(sp.metrics, b.values, strict=True))}
                for b in self.study.pareto()
            ]
        tracker.log_text(
            parent,
            yaml.safe_dump({**best_yaml, "params": best.params}, sort_keys=False),
            "best_params.yaml",
        )
        c = self.study.counts()
        tracker.log_metrics(
            parent,
            {
                f"best_{metric}": best.value,
                "trials_complete": c.complete,
                "trials_pruned": c.pruned,
                "trials_failed": c.failed,
            },
        )
        tracker.log_text(
            parent,
            report.study_page(f"study {self.name}: {', '.join(sp.metrics)}", self.study.figures()),
            STUDY_PAGE,
        )
        done = ranked(frame, sp.directions[0])
        col = f"user_attrs_{search.RUN_ATTR}"
        # Cross-validated trials log per-epoch curves per fold: show their first fold's.
        key = metric if self.prep.folds is None else f"fold0_{metric}"
        curves = {
            f"trial {int(row['number'])}": tracker.metric_history(row[col], key)
            for _, row in done.head(sp.top_k).iterrows()
            if col in row and isinstance(row[col], str)
        }
        tracker.log_figure(parent, report.top_trial_curves(curves, metric), "top_trials_curves.png")
        return frame

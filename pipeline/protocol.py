"""The trial protocol's vocabulary, named once: trial states, run statuses, run tags, ranking.

A trial lives in two stores, Optuna's study and MLflow's runs, and every module that reads or
writes either speaks of it with these names, so the study, `report`, the UI's filters and the
reconciliation after a crash cannot drift apart. The ranking rule (which complete trial is best)
is here too, so the champion, `report`, the console's table and the parent's trials table agree.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd


class TrialState(enum.StrEnum):
    """An Optuna trial's state, by the name Optuna gives it (and the run's `optuna.state` tag)."""

    COMPLETE = "COMPLETE"
    PRUNED = "PRUNED"
    FAIL = "FAIL"
    RUNNING = "RUNNING"
    WAITING = "WAITING"  # queued (a warm-start or baseline trial no worker took yet)

    @property
    def finished(self) -> bool:
        """Counts towards `n_trials`: complete or pruned (failed trials do not)."""
        return self in (TrialState.COMPLETE, TrialState.PRUNED)


class RunStatus(enum.StrEnum):
    """An MLflow run's status."""

    RUNNING = "RUNNING"
    FINISHED = "FINISHED"
    FAILED = "FAILED"
    KILLED = "KILLED"  # Ctrl-C, SIGTERM, or a dead worker's run closed by reconciliation


class RunKind(enum.StrEnum):
    """What a run is (its `pipeline.kind` tag); trial runs carry `pipeline.trial` instead."""

    STUDY = "study"  # a study's parent run
    CHAMPION = "champion"  # the best trial's model, tested once and registered
    TRAIN = "train"  # one `train` command


# -- run tags ------------------------------------------------------------------------------------
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own nesting tag
WORKER_TAG = "pipeline.worker"  # host:pid of the process that created the run
KIND_TAG = "pipeline.kind"  # a RunKind
STUDY_TAG = "pipeline.study"  # the study's name, on its parent, trial and champion runs
STORAGE_TAG = "optuna.storage"  # on the parent: the study's storage, password masked
TRIAL_TAG = "pipeline.trial"  # on a trial run: its trial number
STATE_TAG = "optuna.state"  # on a trial run: its TrialState
RESULT_TAG = "pipeline.objective"  # the trial's objective value(s), written before Optuna's
RETRY_TAG = "pipeline.retry_of_trial"  # on a retried trial's run: the trial it repeats
RETRY_RUN_TAG = "pipeline.retry_of_run"  # ... and that trial's run (ended KILLED)
WARM_TAG = "pipeline.warm_start_from"  # "<earlier study>#<trial>" on a warm-start trial
BASELINE_TAG = "pipeline.baseline"  # "true" on the trial of the configured values
BEST_TRIAL_TAG = "pipeline.best_trial"  # on the champion run: the trial it is the model of
TRIAL_RUN_TAG = "pipeline.trial_run"  # ... and that trial's run
REFIT_TAG = "pipeline.refit"  # on a cross-validated champion: what it was trained on again
ERROR_TAG = "error"  # why a run failed or was killed


def ranked(frame: pd.DataFrame, direction: str) -> pd.DataFrame:
    """The complete trials of a trials table (columns `number`, `state`, `value`), best first.

    The one ranking rule: by the (first) objective in the study's direction, ties by trial
    number (the earlier trial first, as Optuna's `best_trial` picks).
    """
    done = frame[frame["state"] == TrialState.COMPLETE]
    return done.sort_values(
        ["value", "number"], ascending=[direction != "maximize", True], kind="stable"
    )

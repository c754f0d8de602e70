"""The trial protocol's vocabulary, named once: trial states, run statuses, run tags, ranking.

A trial lives in two stores, Optuna's study and MLflow's runs, and every module that reads or
writes either speaks of it with these names, so the study, `report`, the UI's filters and the
reconciliation after a crash cannot drift apart. The ranking rule (which complete trial is best)
is here too, so the champion, `report`, the console's table and the parent's trials table agree.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
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
HOST_TAG = "pipeline.host"  # on a trial run: the machine that trained it
RAY_NODE_TAG = "pipeline.ray_node"  # ... and its Ray node, under `search --ray`
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
FROM_RUN_TAG = "pipeline.from_run"  # on a `train --from-run` run: the run it trains again
ERROR_TAG = "error"  # why a run failed or was killed


# -- ranking ------------------------------------------------------------------------------------
# Trials that tie on the search metric (one validation row is 0.37 % on digits, so several
# trials often score the same accuracy) are ranked by the validation loss, a continuous second
# key, never by trial order. The key rides inside the objective Optuna stores: the metric,
# nudged by less than TIE_SCALE towards worse as the loss grows. Optuna's best trial, its
# sampler and pruner, its plots, the champion, `report`, the tables and a UI sort on the
# `objective` metric therefore all see one order; a nudge below 1e-6 cannot reorder trials
# whose metric differs (a validation split would need a million rows for one row to weigh
# that little), and rounded to 4 digits the objective reads as the metric.
TIEBREAK = "val_loss"  # the second key
OBJECTIVE = "objective"  # the trial run's metric that carries the ranking (the UI sorts on it)
TIE_SCALE = 1e-6


def objective(scores: Mapping[str, float], metric: str, direction: str) -> float:
    """The value a trial is ranked by: `scores[metric]`, ties broken by `scores[TIEBREAK]`
    (lower is better) when the metric is another one and the loss is known."""
    value = float(scores[metric])
    loss = scores.get(TIEBREAK)
    if metric == TIEBREAK or loss is None or not math.isfinite(loss):
        return value
    nudge = TIE_SCALE * max(float(loss), 0.0) / (1.0 + max(float(loss), 0.0))  # in [0, 1e-6)
    return value - nudge if direction == "maximize" else value + nudge


def ranked(frame: pd.DataFrame, direction: str) -> pd.DataFrame:
    """The complete trials of a trials table (columns `number`, `state`, `value`), best first.

    The one ranking rule: by the (first) objective in the study's direction. A single-objective
    study's objective carries the validation-loss tie-break (`objective`); trial number only
    orders trials equal on both (Optuna's `best_trial` picks the earlier one too).
    """
    done = frame[frame["state"] == TrialState.COMPLETE]
    return done.sort_values(
        ["value", "number"], ascending=[direction != "maximize", True], kind="stable"
    )

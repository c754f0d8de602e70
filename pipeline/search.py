"""The project's only Optuna user: search space, study, storage, samplers, pruning, budgets.

Training and tracking reach this module only as a plain `trial_fn(TrialContext) -> float`; the
model builder never sees an Optuna trial. Storage is Optuna's journal file by default (safe for
several local processes, unlike SQLite) or any RDB URL such as PostgreSQL for many machines.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from pipeline.config import SearchParams, space_fingerprint
from pipeline.errors import SearchError, TrainingDiverged, TrialPruned

log = logging.getLogger(__name__)

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
WORKER_ATTR = "worker"
RUN_ATTR = "mlflow_run_id"
REASON_ATTR = "fail_reason"
_HEARTBEAT_SECONDS = 30


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass
class TrialContext:
    """What a trial function needs: its number, the sampled values, and the pruning hook."""

    number: int
    values: dict[str, Any]
    _trial: Any = field(repr=False)

    def should_prune(self, epoch: int, value: float) -> bool:
        """Report an intermediate value; True means the pruner wants this trial stopped."""
        self._trial.report(value, step=epoch)
        return self._trial.should_prune()

    def remember(self, key: str, value: str) -> None:
        """Store a string with the trial (e.g. its MLflow run id) for later reconciliation."""
        self._trial.set_user_attr(key, value)


@dataclass(frozen=True)
class TrialSummary:
    number: int
    state: str
    value: float | None
    best_value: float | None
    best_number: int | None
    finished: int
    pruned: int
    failed: int
    seconds: float | None


# -- storage and study ------------------------------------------------------------------------


def default_storage(home: Path = Path("mlruns")) -> str:
    home.mkdir(parents=True, exist_ok=True)
    return str((home / "optuna-journal.log").resolve())


def make_storage(url: str | None, *, retries: int) -> Any:
    """A journal file (path or None) for one machine, or an RDB URL for many.

    RDB storages get a heartbeat so a dead worker's trial is failed and retried by the others,
    and `pool_pre_ping` so a long trial survives a dropped idle connection.
    """
    if url is None or "://" not in url:
        path = url or default_storage()
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(path))
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    try:
        with warnings.catch_warnings():  # heartbeat and retries are "experimental" since v2.8
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return RDBStorage(
                url,
                engine_kwargs={"pool_pre_ping": True},
                heartbeat_interval=_HEARTBEAT_SECONDS,
                grace_period=3 * _HEARTBEAT_SECONDS,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=retries),
            )
    except Exception as exc:  # noqa: BLE001 - driver and connection errors vary
        from pipeline.tracking import mask_secret  # string helper only, no MLflow import

        raise SearchError(
            f"--storage {mask_secret(url)}: cannot open it ({type(exc).__name__}: "
            f"{mask_secret(str(exc)).splitlines()[0][:300]}). Check the URL, that the database "
            "exists and the server is reachable."
        ) from None


def _sampler(params: SearchParams, seed: int) -> Any:
    s = optuna.samplers
    if params.sampler == "random":
        return s.RandomSampler(seed=seed)
    if params.sampler == "grid":
        grid = {}
        for key, spec in params.space.items():
            if "choices" not in spec:
                raise SearchError(
                    f"search.space.{key}: the grid sampler needs {{choices: [...]}} for every "
                    "param; give choices or use sampler: tpe."
                )
            grid[key] = list(spec["choices"])
        return s.GridSampler(grid, seed=seed)
    if params.sampler == "cmaes":
        return s.CmaEsSampler(seed=seed, n_startup_trials=params.n_startup_trials)
    return s.TPESampler(seed=seed, n_startup_trials=params.n_startup_trials)


def _pruner(params: SearchParams, max_epochs: int) -> Any:
    p = optuna.pruners
    if params.pruner == "median":
        return p.MedianPruner(n_startup_trials=params.n_startup_trials, n_warmup_steps=3)
    if params.pruner == "hyperband":
        return p.HyperbandPruner(min_resource=2, max_resource=max_epochs)
    return p.NopPruner()


def open_study(
    name: str,
    storage: Any,
    params: SearchParams,
    *,
    seed: int,
    max_epochs: int,
    new: bool = False,
    worker: int = 0,
) -> Any:
    """Create or resume the study; refuse to resume one whose search space has changed.

    The sampler's seed is offset by the trials already in the study (and by the worker's
    index), so a resumed study or a second worker does not replay the first trials' proposals,
    while the same command on the same history still proposes the same trials.
    """
    fingerprint = space_fingerprint(params.space)
    summaries = {s.study_name: s for s in optuna.get_all_study_summaries(storage)}
    exists = name in summaries
    if exists and new:
        optuna.delete_study(study_name=name, storage=storage)
        exists = False
    history = summaries[name].n_trials if exists else 0
    study = optuna.create_study(
        storage=storage,
        study_name=name,
        direction=params.direction,
        sampler=_sampler(params, seed + history + 7919 * worker),
        pruner=_pruner(params, max_epochs),
        load_if_exists=True,
    )
    if exists:
        old = study.user_attrs.get("space")
        if old is not None and old != fingerprint:
            raise SearchError(
                f"study {name!r}: its search space differs from search.space in the params now, "
                "so resuming would mix incompatible trials. Run again with --new to start over, "
                "or --study NAME for a separate study."
            )
        if study.direction.name.lower() != params.direction:
            raise SearchError(
                f"study {name!r} was created to {study.direction.name.lower()}; search.direction "
                f"is {params.direction}. Use --new or another --study name."
            )
    else:
        study.set_user_attr("space", fingerprint)
        study.set_user_attr("metric", params.metric)
    return study


def study_attr(study: Any, key: str) -> Any:
    return study.user_attrs.get(key)


def set_study_attr(study: Any, key: str, value: Any) -> None:
    study.set_user_attr(key, value)


def counts(study: Any) -> dict[str, int]:
    trials = study.get_trials(deepcopy=False)
    out = {state.name: 0 for state in TrialState}
    out["SKIPPED"] = 0  # FAIL records of surplus trials, which never ran
    for t in trials:
        skipped = t.state == TrialState.FAIL and t.user_attrs.get(REASON_ATTR) == SURPLUS
        out["SKIPPED" if skipped else t.state.name] += 1
    out["finished"] = out["COMPLETE"] + out["PRUNED"]
    return out


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reap_stale_trials(study: Any, *, retries: int) -> list[tuple[int, str | None]]:
    """Fail RUNNING trials left by dead workers on this machine; re-queue them if allowed.

    Optuna's heartbeat covers RDB storages only, so for the journal store a trial whose
    recorded worker process (same host) no longer exists is marked FAIL here. Returns the
    (trial number, MLflow run id) of each so the caller can close the runs too.
    """
    host = socket.gethostname()
    reaped = []
    storage = study._storage
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = str(t.user_attrs.get(WORKER_ATTR, ""))
        worker_host, _, pid = worker.rpartition(":")
        if worker_host != host or not pid.isdigit() or _pid_alive(int(pid)):
            continue
        tries = int(t.user_attrs.get("retries", 0))
        storage.set_trial_user_attr(t._trial_id, REASON_ATTR, f"worker {worker} died mid-trial")
        storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
        reaped.append((t.number, t.user_attrs.get(RUN_ATTR)))
        if tries < retries:  # the retry gets a new trial (and so a new MLflow run)
            attrs = {"retry_of": t.number, "retries": tries + 1}
            study.enqueue_trial(t.params, user_attrs=attrs, skip_if_exists=False)
    return reaped


def trial_states(study: Any) -> dict[str, str]:
    """MLflow run id -> Optuna state name, for reconciling runs with trials."""
    return {
        str(t.user_attrs[RUN_ATTR]): t.state.name
        for t in study.get_trials(deepcopy=False)
        if RUN_ATTR in t.user_attrs
    }


# -- space and optimization -----------------------------------------------------------------


def suggest(trial: Any, space: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Sample every param of the space (all of them in every trial, so keys line up)."""
    values: dict[str, Any] = {}
    for key, spec in space.items():
        if "choices" in spec:
            values[key] = trial.suggest_categorical(key, list(spec["choices"]))
        elif all(isinstance(spec[b], int) for b in ("low", "high")) and not spec.get("log", False):
            values[key] = trial.suggest_int(
                key, spec["low"], spec["high"], step=spec.get("step", 1)
            )
        else:
            values[key] = trial.suggest_float(
                key, float(spec["low"]), float(spec["high"]), log=bool(spec.get("log", False))
            )
    return values


SURPLUS = "not run: other workers' trials already fill n_trials"


class _Surplus(Exception):  # noqa: N818 - a signal, not an error
    """A trial created after the budget was already covered by other workers."""


def _surplus(study: Any, number: int, n_trials: int) -> bool:
    """True if finished trials plus running trials created before this one fill the budget.

    Workers check the budget after each trial, but between that check and creating the next
    trial another worker may create one too; the later-numbered trial then steps aside (it is
    recorded as FAIL with reason SURPLUS, before any training or MLflow run).
    """
    ahead = 0
    finished = 0
    for t in study.get_trials(deepcopy=False):
        if t.state in FINISHED:
            finished += 1
        elif t.state == TrialState.RUNNING and t.number < number:
            ahead += 1
    return finished + ahead >= n_trials


def optimize(
    study: Any,
    trial_fn: Callable[[TrialContext], float],
    params: SearchParams,
    *,
    n_trials: int,
    timeout: float | None,
    on_trial_end: Callable[[TrialSummary], None] | None = None,
) -> None:
    """Run trials until `n_trials` have finished (complete or pruned) in the whole study.

    Failed trials (exceptions, NaN/inf) are recorded as FAIL with the reason and do not use up
    the budget; to stop a broken setup from looping, this worker gives up after 2 x `n_trials`
    failures of its own (at least 5). Ctrl-C marks the running trial FAIL and propagates.
    """
    failures = 0
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # progress is the caller's job

    def objective(trial: Any) -> float:
        trial.set_user_attr(WORKER_ATTR, worker_id())
        if _surplus(study, trial.number, n_trials):
            trial.set_user_attr(REASON_ATTR, SURPLUS)
            study.stop()
            raise _Surplus
        ctx = TrialContext(trial.number, suggest(trial, params.space), trial)
        try:
            value = float(trial_fn(ctx))
        except TrialPruned:
            raise optuna.TrialPruned() from None
        except Exception as exc:
            trial.set_user_attr(REASON_ATTR, f"{type(exc).__name__}: {exc}"[:1000])
            raise
        if not math.isfinite(value):  # Optuna would store inf as COMPLETE
            trial.set_user_attr(REASON_ATTR, f"non-finite {params.metric}: {value}")
            raise TrainingDiverged(f"{params.metric} is {value}")
        return value

    def after(study: Any, frozen: Any) -> None:
        nonlocal failures
        if frozen.user_attrs.get(REASON_ATTR) == SURPLUS:
            return
        c = counts(study)
        if frozen.state == TrialState.FAIL:
            failures += 1
        try:
            best = study.best_trial
        except ValueError:
            best = None
        if on_trial_end is not None:
            seconds = frozen.duration.total_seconds() if frozen.duration else None
            on_trial_end(
                TrialSummary(
                    frozen.number,
                    frozen.state.name,
                    frozen.value,
                    best.value if best else None,
                    best.number if best else None,
                    c["finished"],
                    c["PRUNED"],
                    c["FAIL"],
                    seconds,
                )
            )
        # Other workers' running trials will finish too: stop once they can fill the budget,
        # so K workers do not overshoot n_trials. (If one of them fails, `optimize` is simply
        # called again by the caller until the budget is met.)
        if c["finished"] + c["RUNNING"] >= n_trials:
            study.stop()
        elif failures >= max(2 * n_trials, 5):
            log.error("stopping: %d trials of this worker failed", failures)
            study.stop()

    c = counts(study)
    if c["finished"] + c["RUNNING"] >= n_trials:
        return
    study.optimize(
        objective,
        n_trials=None,
        timeout=timeout,
        catch=(Exception,),
        callbacks=[after],
        gc_after_trial=True,
    )


def trials_frame(study: Any) -> Any:
    """The trials table (number, state, value, params_*, user attrs, duration) as a DataFrame."""
    frame = study.trials_dataframe(
        attrs=("number", "value", "state", "params", "user_attrs", "duration")
    )
    if "duration" in frame:
        frame["seconds"] = frame["duration"].dt.total_seconds()
        frame = frame.drop(columns=["duration"])
    return frame


def best(study: Any) -> tuple[int, float, dict[str, Any]] | None:
    """(number, value, params) of the best complete trial, or None if there is none."""
    try:
        t = study.best_trial
    except ValueError:
        return None
    return t.number, float(t.value), dict(t.params)


def importances(study: Any) -> dict[str, float]:
    """Parameter importances, or {} when there are too few complete trials to tell."""
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(done) < 3:
        return {}
    try:
        return dict(optuna.importance.get_param_importances(study))
    except (ValueError, RuntimeError, ZeroDivisionError) as exc:
        log.info("parameter importances unavailable: %s", exc)
        return {}

"""A study's first trials: an earlier study's best param sets (warm start) or the configured
values (the baseline trial), queued before the sampler proposes anything.

What is queued is cut to the current space, and what was dropped is said (a param no longer
searched, or a value outside its new distribution): Optuna samples those instead.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import TrialState

from pipeline.errors import SearchError
from pipeline.storage import find_study_id

log = logging.getLogger("pipeline.search")


@dataclass(frozen=True)
class WarmStart:
    """What `search.warm_start` queued: an earlier study's best param sets, cut to the space."""

    source: str
    enqueued: list[dict[str, Any]]  # in the order they will be tried
    dropped: dict[str, str]  # param key -> why it was left out (Optuna samples it instead)


@dataclass(frozen=True)
class Baseline:
    """What `search.baseline_first` queued: the configured values of the searched keys."""

    enqueued: dict[str, Any]  # the first trial's values (empty: nothing was queued)
    dropped: dict[str, str]  # param key -> why it is sampled instead (outside the space)


def best_trials(
    backend: optuna.storages.BaseStorage, source: str, name: str, k: int
) -> list[optuna.trial.FrozenTrial]:
    """The best `k` complete trials of study `source` by its own direction(s), best first (a
    multi-objective study: its Pareto front, by the first objective); a missing, same-named or
    empty study is refused."""
    where = f"search.warm_start / --warm-start {source!r}"
    if source == name:
        raise SearchError(f"{where}: that is this study itself; name an earlier study.")
    if find_study_id(backend, source) is None:
        names = sorted(s.study_name for s in backend.get_all_studies())
        raise SearchError(
            f"{where}: no such study in this storage (it has: {', '.join(names) or 'none'}). "
            "Warm start reads an earlier study from the same --storage."
        )
    earlier = optuna.load_study(study_name=source, storage=backend)
    if len(earlier.directions) > 1:
        best = sorted(earlier.best_trials, key=lambda t: t.values[0])
        if earlier.directions[0] == optuna.study.StudyDirection.MAXIMIZE:
            best.reverse()
    else:
        best = sorted(
            earlier.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)),
            key=lambda t: t.value,
            reverse=earlier.direction == optuna.study.StudyDirection.MAXIMIZE,
        )
    if not best:
        raise SearchError(f"{where}: that study has no complete trial to start from.")
    return best[:k]


def log_warm_start(started: WarmStart, name: str) -> None:
    for key, why in started.dropped.items():
        log.warning(
            "warm start from study %r: dropped %s (%s); Optuna samples it instead",
            started.source,
            key,
            why,
        )
    log.info(
        "warm start: study %r tries %d param set(s) of study %r first",
        name,
        len(started.enqueued),
        started.source,
    )


def log_baseline(queued: Baseline, name: str) -> None:
    if not queued.enqueued:
        log.info(
            "study %r: no configured value lies inside search.space, so no baseline trial",
            name,
        )
        return
    shown = ", ".join(f"{k}={v}" for k, v in queued.enqueued.items())
    sampled = "".join(f"; {k} sampled: {why}" for k, why in queued.dropped.items())
    log.info(
        "study %r: trial 0 trains the configured values (%s)%s "
        "(search.baseline_first: false to sample it too)",
        name,
        shown,
        sampled,
    )

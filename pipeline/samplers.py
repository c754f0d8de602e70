"""The search space as Optuna sees it, and the samplers and pruners that search it.

`search.space` maps dotted param keys to `{choices: [...]}` or `{low, high, log}`; here those
become Optuna distributions (every trial samples all of them, so the keys of all trial runs line
up in the UI), and `search.sampler` / `search.pruner` become Optuna's own objects, seeded per
process by the study (pipeline.search).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import optuna

from pipeline.config import SearchParams
from pipeline.errors import SearchError

log = logging.getLogger(__name__)


class GridSampler(optuna.samplers.GridSampler):
    """Optuna's grid sampler without its `study.stop()` once the grid is covered (that only
    works inside `study.optimize`; this project asks and tells). `SearchStudy.ask` checks
    `exhausted` instead, so a covered grid ends the search rather than repeating points."""

    def after_trial(self, *args: Any, **kwargs: Any) -> None:
        return None

    def exhausted(self, study: optuna.Study) -> bool:
        return not self._get_unvisited_grid_ids(
            study
        )  # an Optuna internal: see search.OPTUNA_INTERNALS


def make_sampler(params: SearchParams, seed: int) -> optuna.samplers.BaseSampler:
    """The sampler of `search.sampler`, seeded (each process of a study gets its own seed)."""
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
        return GridSampler(grid, seed=seed)
    if params.sampler == "cmaes":
        return s.CmaEsSampler(seed=seed, n_startup_trials=params.n_startup_trials)
    return s.TPESampler(seed=seed, n_startup_trials=params.n_startup_trials)


def median_warmup(max_epochs: int) -> int:
    """Epochs the median pruner waits before judging a trial: a third of the budget, at least 3.

    Judged early, a trial is compared on how fast it learns, not how well it ends: a large
    batch or a decaying learning rate starts behind and often finishes ahead; judged from a
    third of the epochs, the pruned search found the no-pruner best (bench/search_variants.py,
    figures in docs/benchmarks.md).
    """
    return max(3, max_epochs // 3)


def make_pruner(params: SearchParams, max_epochs: int, folds: int = 0) -> optuna.pruners.BasePruner:
    """The pruner of `search.pruner`; its steps are epochs, or folds when `folds` >= 2.

    Cross-validated trials are judged between folds, on the running mean of the search metric
    over the folds done so far (step = fold index): `median` stops a trial whose running mean
    is worse than the median of earlier trials' after the same fold, from the first fold on
    (every trial trains the same seeded folds, so the running means are paired); `hyperband`
    treats folds as its resource. Optuna's WilcoxonPruner, built for k-fold scores, never prunes
    before a trial's third reported step and compares with the best trial alone, so with 3
    folds it could never save a fold, and with 5 at most two.
    """
    p = optuna.pruners
    if params.multi_objective:
        if params.pruner != "none":
            log.warning(
                "search.pruner %s is off: Optuna cannot prune a multi-objective study "
                "(set search.pruner: none to silence this)",
                params.pruner,
            )
        return p.NopPruner()
    if folds >= 2:
        if params.pruner == "median":
            return p.MedianPruner(n_startup_trials=params.n_startup_trials, n_warmup_steps=0)
        if params.pruner == "hyperband":
            return p.HyperbandPruner(min_resource=1, max_resource=folds)
        return p.NopPruner()
    if params.pruner == "median":
        return p.MedianPruner(
            n_startup_trials=params.n_startup_trials, n_warmup_steps=median_warmup(max_epochs)
        )
    if params.pruner == "hyperband":
        return p.HyperbandPruner(min_resource=2, max_resource=max_epochs)
    return p.NopPruner()


def _distribution(spec: Mapping[str, Any]) -> optuna.distributions.BaseDistribution:
    """The Optuna distribution `suggest` samples a space entry from."""
    d = optuna.distributions
    if "choices" in spec:
        return d.CategoricalDistribution(list(spec["choices"]))
    if all(isinstance(spec[b], int) for b in ("low", "high")) and not spec.get("log", False):
        return d.IntDistribution(spec["low"], spec["high"], step=spec.get("step", 1))
    return d.FloatDistribution(
        float(spec["low"]), float(spec["high"]), log=bool(spec.get("log", False))
    )


def fit_to_space(
    values: Mapping[str, Any], space: Mapping[str, Mapping[str, Any]]
) -> tuple[dict[str, Any], dict[str, str]]:
    """Split an earlier trial's params into those the space still admits and the others, with
    why each was dropped (no longer searched, or its value outside the new distribution)."""
    kept: dict[str, Any] = {}
    dropped: dict[str, str] = {}
    for key, value in values.items():
        if key not in space:
            dropped[key] = "not in search.space"
            continue
        dist = _distribution(space[key])
        try:
            inside = dist._contains(dist.to_internal_repr(value))  # see search.OPTUNA_INTERNALS
        except (ValueError, TypeError):  # a categorical value not among the choices
            inside = False
        if inside:
            kept[key] = value
        else:
            dropped[key] = f"{value!r} outside {dict(space[key])}"
    return kept, dropped


def distributions(
    space: Mapping[str, Mapping[str, Any]],
) -> dict[str, optuna.distributions.BaseDistribution]:
    """Every param of the space as an Optuna distribution: every trial samples all of them
    (`ask(fixed_distributions=...)`), so the keys of all trial runs line up in the UI."""
    return {key: _distribution(spec) for key, spec in space.items()}

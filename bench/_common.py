"""What the bench scripts share: the pipeline's real, MLflow-tracked search on an in-memory
study in a throw-away store, so each script compares exactly what `python -m pipeline.run`
does per trial."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from typing import Any

import optuna

from pipeline import config, run, search
from pipeline.tracking import Tracker


def tracked_search(
    params: config.Params,
    prep: run.Prepared,
    trials: int,
    *,
    name: str = "bench",
    on_ready: Callable[[], None] | None = None,
    on_trial_end: Callable[[search.TrialSummary], None] | None = None,
) -> Any:
    """Run `trials` tracked trials; `on_ready` fires after the store is set up, just before the
    first trial (start clocks there, so store creation is not counted)."""
    with tempfile.TemporaryDirectory() as tmp:
        tracker = Tracker(f"sqlite:///{tmp}/mlflow.db", "bench")
        study = search.open_study(
            name,
            optuna.storages.InMemoryStorage(),
            params.search,
            seed=params.seed,
            max_epochs=params.train.epochs,
        )
        with tracker.run("study") as parent:
            fn = run.make_trial_fn(params, prep, tracker, parent, name)
            if on_ready is not None:
                on_ready()
            search.optimize(
                study, fn, params.search, n_trials=trials, timeout=None, on_trial_end=on_trial_end
            )
    return study

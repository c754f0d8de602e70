"""What the bench scripts share: the pipeline's real, MLflow-tracked study (pipeline.study) on
an in-memory Optuna storage in a throw-away store, so each script measures exactly what
`python -m pipeline.run` does per trial."""

from __future__ import annotations

import tempfile
from collections.abc import Callable

from pipeline import config, search
from pipeline.stages import Prepared
from pipeline.study import TrackedStudy, Trainer, TrialSummary
from pipeline.tracking import Tracker


def tracked_search(
    params: config.Params,
    prep: Prepared,
    trials: int,
    *,
    name: str = "bench",
    on_ready: Callable[[], None] | None = None,
    on_trial_end: Callable[[TrialSummary], None] | None = None,
    trainer: Trainer | None = None,
) -> search.SearchStudy:
    """Run `trials` tracked trials; `on_ready` fires after the store is set up, just before the
    first trial (start clocks there, so store creation is not counted)."""
    params = config.with_values(params, {"search.n_trials": trials}, origin="bench")
    with tempfile.TemporaryDirectory() as tmp:
        tracker = Tracker(f"sqlite:///{tmp}/mlflow.db", "bench")
        study = TrackedStudy.open(
            params,
            prep,
            tracker,
            name=name,
            storage=search.memory_storage(),
            storage_display="memory",
            trainer=trainer,
        )
        with tracker.run("study", resume_id=study.parent_id):
            if on_ready is not None:
                on_ready()
            study.run_trials(on_trial_end)
    return study.study

"""What the bench scripts share: the pipeline's real, MLflow-tracked study (pipeline.study) on
an in-memory Optuna storage in a throw-away store, so each script measures exactly what
`python -m pipeline.run` does per trial (`tracked_search`); and the command itself run in a
throw-away folder, its study read back (`cli_search`)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import NamedTuple

import optuna

from pipeline import config, search
from pipeline.stages import Prepared
from pipeline.storage import default_storage, make_storage, memory_storage
from pipeline.study import TrackedStudy, TrialSummary
from pipeline.tracking import Tracker
from pipeline.trainers import Trainer


def tracked_search(
    params: config.Params,
    prep: Prepared,
    trials: int,
    *,
    name: str = "bench",
    on_ready: Callable[[], None] | None = None,
    on_trial_end: Callable[[TrialSummary], None] | None = None,
    trainer: Trainer | None = None,
    sampler: search.SamplerFactory | None = None,
    pruner: search.Pruner | None = None,
) -> search.SearchStudy:
    """Run `trials` tracked trials; `on_ready` fires after the store is set up, just before the
    first trial (start clocks there, so store creation is not counted)."""
    params = config.with_values(params, {"search.n_trials": trials}, origin="bench")
    with tempfile.TemporaryDirectory() as tmp:
        study = open_tracked(
            params, prep, Path(tmp), name=name, trainer=trainer, sampler=sampler, pruner=pruner
        )
        with study.tracker.run("study", resume_id=study.parent_id):
            if on_ready is not None:
                on_ready()
            study.run_trials(on_trial_end)
    return study.study


def open_tracked(
    params: config.Params,
    prep: Prepared,
    folder: Path,
    *,
    name: str,
    trainer: Trainer | None = None,
    sampler: search.SamplerFactory | None = None,
    pruner: search.Pruner | None = None,
) -> TrackedStudy:
    """The pipeline's tracked study as a CLI worker opens it, on an in-memory Optuna storage,
    its MLflow store a SQLite file in `folder`; the caller reopens its parent run around the
    trials (`study.tracker.run("study", resume_id=study.parent_id)`)."""
    return TrackedStudy.open(
        params,
        prep,
        Tracker(f"sqlite:///{folder}/mlflow.db", "bench"),
        name=name,
        storage=memory_storage(),
        storage_display="memory",
        trainer=trainer,
        sampler=sampler,
        pruner=pruner,
    )


class CliSearch(NamedTuple):
    """What one CLI search left in its study, and how long the command ran."""

    trials: list[optuna.trial.FrozenTrial]
    directions: list[optuna.study.StudyDirection]
    wall: float  # seconds, the command's start to its exit


def cli_search(flags: list[str], env: Mapping[str, str] | None = None) -> CliSearch:
    """`python -m pipeline.run search FLAGS` in a fresh temporary directory with its default
    stores, its study read back from its Optuna journal. Raises with the stderr tail if the
    command fails."""
    with tempfile.TemporaryDirectory() as tmp:
        argv = [sys.executable, "-m", "pipeline.run", "search", *flags]
        started = time.perf_counter()
        done = subprocess.run(
            argv,
            cwd=tmp,
            env=dict(os.environ if env is None else env),
            capture_output=True,
            text=True,
        )
        wall = time.perf_counter() - started
        if done.returncode != 0:
            raise RuntimeError(
                f"{' '.join(argv[1:])} exited {done.returncode}:\n{done.stderr[-3000:]}"
            )
        journal = default_storage(Path(tmp) / "mlruns")  # where the CLI put it
        study = optuna.load_study(study_name=None, storage=make_storage(journal).backend)
        return CliSearch(study.get_trials(deepcopy=False), study.directions, wall)

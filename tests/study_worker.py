"""A worker process for the study tests: the real search layer (pipeline.study over a real
Optuna storage and MLflow store) with a stub trainer that trains nothing.

    python tests/study_worker.py WORKDIR STORAGE N_TRIALS [--barrier DIR NAME] [--kill-at STEP]
        [--pause-at N DIR]

--barrier: import everything, touch DIR/NAME.ready, then wait for DIR/go (so that several
workers start the study at the same instant). --kill-at STEP: SIGKILL itself at STEP of its
second trial (before_fit, during_fit, result_logged, told, run_ended). --pause-at N DIR: in
its N-th training, touch DIR/paused and wait for DIR/resume (so a test can break something
mid-trial). Each training is appended to WORKDIR/trained.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

from pipeline import config, search, stages
from pipeline.storage import make_storage
from pipeline.study import TrackedStudy
from pipeline.tracking import LiveMetrics, Tracker
from pipeline.trainers import Trained

SPACE = (
    "search.space={model.activation: {choices: [relu, tanh, elu]}, "
    "model.dropout: {low: 0.0, high: 0.5}}"
)


def study_params(workdir: Path, n_trials: int) -> config.Params:
    return config.validate(
        config.apply_overrides(
            {},
            dict(
                config.parse_override(o)
                for o in (
                    "data.source=iris",
                    "name=stub",
                    f"search.n_trials={n_trials}",
                    "search.pruner=none",
                    "search.n_startup_trials=2",
                    SPACE,
                    f"tracking.uri=sqlite:///{workdir / 'mlruns' / 'mlflow.db'}",
                )
            ),
        )
    )


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("workdir", type=Path)
    ap.add_argument("storage")
    ap.add_argument("n_trials", type=int)
    ap.add_argument("--barrier", nargs=2)
    ap.add_argument("--kill-at")
    ap.add_argument("--tracking-uri")
    ap.add_argument("--pause-at", nargs=2)
    a = ap.parse_args()
    params = study_params(a.workdir, a.n_trials)
    if a.tracking_uri:
        params = config.with_values(params, {"tracking.uri": a.tracking_uri})
    prep = stages.prepare(params)
    trained_log = a.workdir / "trained.jsonl"
    calls = {"fit": 0, "tell": 0}

    def trainer(p: config.Params, live: LiveMetrics, on_epoch) -> Trained:  # noqa: ANN001
        calls["fit"] += 1
        second = calls["fit"] == 2
        if second and a.kill_at == "before_fit":
            die()
        with trained_log.open("a") as f:
            row = {"run": live.run_id, "pid": os.getpid(), "dropout": p.model.dropout}
            f.write(json.dumps(row))
            f.write("\n")
        if a.pause_at and calls["fit"] == int(a.pause_at[0]):
            folder = Path(a.pause_at[1])
            (folder / "paused").touch()
            while not (folder / "resume").exists():
                time.sleep(0.05)
        value = 1.0 - p.model.dropout + {"relu": 0.02, "tanh": 0.01}.get(p.model.activation, 0)
        for epoch in range(3):
            on_epoch(epoch, {"val_accuracy": value * (epoch + 1) / 3})
            if second and epoch == 1 and a.kill_at == "during_fit":
                die()
        return Trained({"val_accuracy": value, "val_loss": 1 - value}, 3, False)

    tell = search.SearchStudy.tell_complete

    def tell_complete(
        self: search.SearchStudy, trial: search.Trial, value: float, scores: object = None
    ) -> None:
        calls["tell"] += 1
        if calls["tell"] == 2 and a.kill_at == "result_logged":
            die()
        tell(self, trial, value, scores)  # type: ignore[arg-type]
        if calls["tell"] == 2 and a.kill_at == "told":
            die()

    search.SearchStudy.tell_complete = tell_complete  # type: ignore[method-assign]

    def on_trial_end(summary: object) -> None:
        if calls["fit"] == 2 and a.kill_at == "run_ended":
            die()

    if a.barrier:
        folder, name = Path(a.barrier[0]), a.barrier[1]
        (folder / f"{name}.ready").touch()
        while not (folder / "go").exists():
            time.sleep(0.001)
    storage = make_storage(a.storage)  # first thing after the barrier: the schema race
    tracker = Tracker(params.tracking.uri, "stub")
    tracked = TrackedStudy.open(
        params,
        prep,
        tracker,
        name="stub",
        storage=storage,
        storage_display="test",
        trainer=trainer,
    )
    tracked.reconcile()
    with tracker.run("study-stub", resume_id=tracked.parent_id):
        tracked.run_trials(on_trial_end)
    sys.exit(0)


if __name__ == "__main__":
    main()

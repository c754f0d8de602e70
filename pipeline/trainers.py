"""Trainers: how one trial's params become a trained model, its curves and its scores.

A `Trainer` trains into the trial's already open run; the study (pipeline.study) owns the
run's life and the trial's result. `keras_trainer` fits once on the validation split,
`cv_trainer` k times over folds (`split.folds`); benches and tests pass a stub that trains
nothing, so the real search layer can be measured and broken on purpose.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from pipeline import config, stages

if TYPE_CHECKING:
    from pipeline.model import EpochHook
    from pipeline.stages import Prepared
    from pipeline.tracking import LiveMetrics, Tracker


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
    running mean of the search metric with step = fold index (see samplers.make_pruner), so a trial
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
            best_epochs.append(result.best_epoch)
            seconds += result.seconds
            running = sum(s[metric] for s in scores) / len(scores)
            if i < folds.k - 1 and on_epoch(i, {metric: running}):
                live.add(0, {"train_seconds": seconds})
                return Trained({metric: running}, result.epochs_run, True, folds_run=i + 1)
        means = stages.log_cv(tracker, run_id, scores, best_epochs)
        live.add(0, {"train_seconds": seconds})
        return Trained(means, stages.refit_epochs(best_epochs), False, folds_run=folds.k)

    return train

"""A study's finish, done once by the last worker standing: the parent run's artifacts, then
the champion - the best trial's own model (no retraining), evaluated once on the test split,
logged with its scaler and label decoding, registered. A cross-validated study's champion is
trained once more on every non-test row. A champion already made for the same best trial is
reported, never made twice: the test split is touched once per champion.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipeline import config, protocol, search, stages
from pipeline.errors import PipelineError
from pipeline.protocol import (
    BEST_TRIAL_TAG,
    KIND_TAG,
    REFIT_TAG,
    STUDY_TAG,
    TRIAL_RUN_TAG,
    RunKind,
    ranked,
)

if TYPE_CHECKING:
    import pandas as pd

    from pipeline.model import TrainResult
    from pipeline.stages import Prepared
    from pipeline.study import TrackedStudy

log = logging.getLogger(__name__)

CHAMPION_ATTR = "champion"  # the study's user attr: the ChampionRecord made for it
STUDY_PAGE = "study_figures.html"  # the parent run's artifact with the study figures


@dataclass(frozen=True)
class ChampionRecord:
    """The champion of a study as stored with it: made once per best trial."""

    trial: int
    run_id: str
    model: str
    test: dict[str, float]

    @classmethod
    def from_attr(cls, value: Any) -> ChampionRecord | None:
        if not isinstance(value, dict) or not {"trial", "run_id", "model", "test"} <= set(value):
            return None
        return cls(int(value["trial"]), str(value["run_id"]), str(value["model"]), value["test"])


@dataclass(frozen=True)
class Outcome:
    """How this process's part of the study ended."""

    best: search.Best | None
    champion: ChampionRecord | None
    made_here: bool  # this process trained/tested/registered the champion
    pending: str | None = None  # why no champion yet (other workers still running)


def finish(tracked: TrackedStudy) -> Outcome:
    """Parent artifacts and the champion, once, by the last worker standing."""
    best = tracked.study.best()
    if tracked.study.others_running():
        return Outcome(
            best,
            None,
            False,
            "other workers' trials are still running; the "
            "last worker to finish logs the study and elects the champion",
        )
    with tracked.study.exclusive():
        best = tracked.study.best()
        log_parent_artifacts(tracked)
        if best is None:
            c = tracked.study.counts()
            why = (
                "no trial completed (see the failed trials' `error` tags in MLflow)"
                if c.failed
                else f"all {c.pruned} finished trials were pruned"
                if c.pruned
                else "no trial ran: search.timeout (--timeout) ended it before the first"
                if tracked.params.search.timeout is not None
                else "no trial ran"
            )
            raise PipelineError(
                f"study {tracked.name!r}: {why}; nothing to evaluate or register."
                + tracked.study.failure_summary()  # say why, not only that
            )
        record = ChampionRecord.from_attr(tracked.study.attr(CHAMPION_ATTR))
        if record and record.trial == best.number and tracked.tracker.exists(record.run_id):
            return Outcome(best, record, False)  # the test split is used once per champion
        record = _make_champion(tracked, best)
        tracked.study.set_attr(CHAMPION_ATTR, record.__dict__)
        return Outcome(best, record, True)


def _make_champion(tracked: TrackedStudy, best: search.Best) -> ChampionRecord:
    """The best trial's own model (its logged weights and curves; no retraining), tested
    once, logged as a servable model with the scaler and label decoding, registered.

    Cross-validated trials (`split.folds`) leave k models, none trained on all the data:
    the champion is then trained once more with the best trial's params on every non-test
    row (a scaler fitted on them), for the median of its folds' best epochs, with no
    validation split, and tested and registered the same way. Having no validation rows,
    it keeps the weights of its epoch with the lowest training loss (early stopping on
    `loss` that never stops): with a noisy optimizer the last epoch can land anywhere,
    while each fold's score came from its best epoch (a tanh/SGD-momentum iris refit can end
    far below the training accuracy it passed a dozen epochs earlier).
    """
    params = tracked.params
    if best.run_id is None:
        raise PipelineError(f"study {tracked.name!r}: best trial {best.number} has no run.")
    origin = f"best trial {best.number}"
    champion = config.with_values(params, best.params, origin=origin)
    if tracked.prep.folds is not None:
        es = "train.early_stopping."
        refit = {f"{es}monitor": "loss", f"{es}restore_best_weights": True}
        refit[f"{es}patience"] = champion.train.epochs  # never stops: the hook does
        champion = config.with_values(champion, refit, origin=f"{origin} (refit)")
    name = params.tracking.model_name or stages.experiment_name(params)
    tags = {
        STUDY_TAG: tracked.name,
        KIND_TAG: RunKind.CHAMPION,
        BEST_TRIAL_TAG: str(best.number),
        TRIAL_RUN_TAG: best.run_id,
    }
    with tracked.tracker.run("champion", parent_id=tracked.parent_id, tags=tags) as run_id:
        tracked.tracker.log_params(run_id, config.flatten(champion))
        if tracked.prep.folds is None:
            prep = tracked.prep
            result = stages.load_trained(tracked.tracker, best.run_id, prep)
            tracked.tracker.log_history(run_id, result.history)
            val = stages.score(result, prep, "val")
        else:
            prep, result, val = _refit(tracked, run_id, champion, best)
        tracked.tracker.log_metrics(
            run_id, {**val, "epochs_run": result.epochs_run, "train_seconds": result.seconds}
        )
        made = stages.log_champion(
            tracked.tracker,
            run_id,
            champion,
            prep,
            result,
            register_as=name if params.tracking.register_model else None,
        )
    tracked.tracker.log_metrics(tracked.parent_id, made.test)
    where = f"models:/{name}@champion (version {made.version})" if made.version else made.model_uri
    return ChampionRecord(best.number, run_id, where, made.test)


def _refit(
    tracked: TrackedStudy, run_id: str, champion: config.Params, best: search.Best
) -> tuple[Prepared, TrainResult, dict[str, float]]:
    """Train the cross-validated champion on all non-test rows for the epochs the best
    trial's folds chose; its cross-validation scores go on the champion run as its
    validation evidence (there is no validation split left to score)."""
    trial = tracked.tracker.run_metrics(str(best.run_id))
    epochs = int(trial["refit_epochs"])
    cv = {k: v for k, v in trial.items() if k.startswith(("cv_mean_", "cv_std_"))}
    prep = tracked.prep.refit()
    tracked.tracker.set_tags(
        run_id,
        {REFIT_TAG: f"all {len(prep.raw.y_train)} non-test rows, {epochs} epochs"},
    )
    result = stages.refit(champion, prep, epochs=epochs, seed=tracked.params.seed)
    tracked.tracker.log_history(run_id, result.history)
    return prep, result, {**cv, "refit_epochs": epochs, "cv_folds": trial.get("cv_folds", 0)}


def log_parent_artifacts(tracked: TrackedStudy) -> pd.DataFrame:
    """Trials table, best params and study figures on the parent run; returns the table.

    The figures are Optuna's interactive ones on one offline HTML page (MLflow shows .html
    artifacts in its UI), with the top trials' validation curves beside them as a PNG.
    """
    import yaml

    from pipeline import report

    sp = tracked.params.search
    frame = tracked.study.frame()
    tracker, parent = tracked.tracker, tracked.parent_id
    tracker.log_text(parent, frame.to_csv(index=False), "trials.csv")
    best = tracked.study.best()
    if best is None:
        return frame
    metric = sp.metrics[0]
    best_yaml = _best_yaml(tracked, best)
    tracker.log_text(
        parent,
        yaml.safe_dump({**best_yaml, "params": best.params}, sort_keys=False),
        "best_params.yaml",
    )
    c = tracked.study.counts()
    tracker.log_metrics(
        parent,
        {
            f"best_{metric}": best.scores.get(metric, best.value),  # as measured
            "trials_complete": c.complete,
            "trials_pruned": c.pruned,
            "trials_failed": c.failed,
        },
    )
    tracker.log_text(
        parent,
        report.study_page(
            f"study {tracked.name}: {', '.join(sp.metrics)}", tracked.study.figures()
        ),
        STUDY_PAGE,
    )
    done = ranked(frame, sp.directions[0])
    col = f"user_attrs_{search.RUN_ATTR}"
    # Cross-validated trials log per-epoch curves per fold: show their first fold's.
    key = metric if tracked.prep.folds is None else f"fold0_{metric}"
    curves = {
        f"trial {int(row['number'])}": tracker.metric_history(row[col], key)
        for _, row in done.head(sp.top_k).iterrows()
        if col in row and isinstance(row[col], str)
    }
    tracker.log_figure(parent, report.top_trial_curves(curves, metric), "top_trials_curves.png")
    return frame


def _best_yaml(tracked: TrackedStudy, best: search.Best) -> dict[str, Any]:
    """best_params.yaml without its params: the best trial with the metric as measured and, in
    a single-objective study, the tie-break loss and the objective that ranked it by both; in a
    multi-objective one, the champion rule's pick and then the whole Pareto front."""
    sp = tracked.params.search
    metric = sp.metrics[0]
    if sp.multi_objective:
        front = [
            {"trial": b.number, **dict(zip(sp.metrics, b.values, strict=True))}
            for b in tracked.study.pareto()
        ]
        return {
            "trial": best.number,
            **dict(zip(sp.metrics, best.values, strict=True)),
            "champion": f"{sp.champion}: best {metric} on the Pareto front",
            "pareto_front": front,
        }
    out: dict[str, Any] = {"trial": best.number, metric: best.scores.get(metric, best.value)}
    if protocol.TIEBREAK in best.scores and metric != protocol.TIEBREAK:
        out |= {protocol.TIEBREAK: best.scores[protocol.TIEBREAK], "objective": best.value}
    return out

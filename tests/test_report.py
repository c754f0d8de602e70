"""The study figures (Optuna's, on the parent run) and the `report` command's page, on a real
Optuna journal and MLflow store with a stub trainer (tests/study_worker.py's), so no Keras."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from study_worker import study_params

from pipeline import config, run, stages
from pipeline.champion import STUDY_PAGE, log_parent_artifacts
from pipeline.storage import make_storage
from pipeline.study import TrackedStudy
from pipeline.tracking import LiveMetrics, Tracker
from pipeline.trainers import Trained

FIGURES = (
    "optimization history",
    "parallel coordinates",
    "parameter importances",
    "slice",
    "contour (two most important params)",
    "intermediate values",
    "timeline",
)
SPACE_FLAGS = [
    "--set",
    "name=stub",
    "--set",
    "data.source=iris",
    "--set",
    "search.space={model.activation: {choices: [relu, tanh, elu]}, "
    "model.dropout: {low: 0.0, high: 0.5}}",
]


def stub_trainer(p: config.Params, live: LiveMetrics, on_epoch) -> Trained:  # noqa: ANN001
    value = 1.0 - p.model.dropout + {"relu": 0.02, "tanh": 0.01}.get(p.model.activation, 0)
    for epoch in range(3):
        on_epoch(epoch, {"val_accuracy": value * (epoch + 1) / 3})
    return Trained({"val_accuracy": value, "val_loss": 1 - value}, 3, False)


def tracked_study(workdir: Path, n_trials: int) -> TrackedStudy:
    params = study_params(workdir, n_trials)
    tracker = Tracker(params.tracking.uri, "stub")
    tracked = TrackedStudy.open(
        params,
        stages.prepare(params),
        tracker,
        name="stub",
        storage=make_storage(str(workdir / "mlruns" / "optuna-journal.log")),
        storage_display="test",
        trainer=stub_trainer,
    )
    with tracker.run("study-stub", resume_id=tracked.parent_id):
        tracked.run_trials()
    return tracked


def sections(page: str) -> list[str]:
    return re.findall(r'<section class="part"><h2>(.*?)</h2>', page)


def test_parent_run_carries_optunas_figures_on_one_offline_page(workdir):
    tracked = tracked_study(workdir, 6)
    log_parent_artifacts(tracked)
    page = tracked.tracker.read_artifact(tracked.parent_id, STUDY_PAGE).decode()
    assert set(FIGURES) <= set(sections(page))
    assert page.count('class="plotly-graph-div"') == len(sections(page))
    # plotly.js is inlined once (the page opens offline), not fetched from a CDN
    assert page.count("plotly.js v") == 1 and not re.search(r"<script[^>]*src=", page)
    # categorical params keep their names on the parallel-coordinates axis
    parallel = tracked.study.figures()["parallel coordinates"]
    used = {t.params["model.activation"] for t in tracked.study._trials()}
    assert used <= {a.text for a in parallel.layout.annotations}
    assert tracked.study._study.metric_names == ["val_accuracy"]  # named for optuna-dashboard


def test_too_few_trials_leave_figures_out_without_failing(workdir):
    tracked = tracked_study(workdir, 1)
    figures = tracked.study.figures()
    assert "optimization history" in figures and "parameter importances" not in figures


def test_report_writes_figures_and_one_page_with_table_figures_and_champion(workdir, capsys):
    tracked = tracked_study(workdir, 5)
    from pipeline import report

    with tracked.tracker.run(
        "champion",
        parent_id=tracked.parent_id,
        tags={"pipeline.study": "stub", "pipeline.kind": "champion"},
    ) as champion:
        curves = report.learning_curves({"loss": [1.0, 0.5], "val_loss": [1.1, 0.7]})
        tracked.tracker.log_figure(champion, curves, "learning_curves.png")
    out, page_path = workdir / "rep", workdir / "page" / "report.html"
    uri = tracked.params.tracking.uri
    argv = ["report", "--tracking-uri", uri, *SPACE_FLAGS, "--out", str(out)]
    assert run.main([*argv, "--html", str(page_path)]) == 0
    assert "5 trials" in capsys.readouterr().out
    assert (out / "study_figures.html").is_file() and (out / "top_trials_curves.png").is_file()
    page = page_path.read_text()
    heads = sections(page)
    assert heads[0] == "trials (5)" and set(FIGURES) <= set(heads)
    rows = page.split("<tbody>")[1].split("</tbody>")[0]
    assert rows.count("<tr") == 5  # one row per trial
    assert "champion: learning curves" in heads and "confusion matrix" not in page
    assert page.count("<img alt=") == 2  # top-trial curves and the champion's


def test_report_without_the_study_storage_still_lists_trials(workdir, capsys):
    tracked = tracked_study(workdir, 2)
    (workdir / "mlruns" / "optuna-journal.log").rename(workdir / "elsewhere.log")
    argv = ["report", "--tracking-uri", tracked.params.tracking.uri, *SPACE_FLAGS]
    assert run.main([*argv, "--html", "page.html"]) == 0
    out = capsys.readouterr().out
    assert "2 trials" in out and "pass --storage" in out
    assert sections((workdir / "page.html").read_text())[0] == "trials (2)"
    argv += ["--storage", str(workdir / "elsewhere.log"), "--out", "rep"]
    assert run.main(argv) == 0
    assert (workdir / "rep" / "study_figures.html").is_file()


@pytest.mark.parametrize("bad", ["postgresql://u:secret@127.0.0.1:1/none"])
def test_report_with_an_unreachable_storage_is_a_clean_error(workdir, capsys, bad):
    tracked = tracked_study(workdir, 1)
    argv = ["report", "--tracking-uri", tracked.params.tracking.uri, *SPACE_FLAGS]
    assert run.main([*argv, "--storage", bad]) == 2
    err = capsys.readouterr().err
    assert "--storage" in err and "secret" not in err and "Traceback" not in err


def tied_trainer(p: config.Params, live: LiveMetrics, on_epoch) -> Trained:  # noqa: ANN001
    """Accuracy in two steps (most trials tie at the top, as on digits' 270 validation rows);
    the validation loss, continuous, tells the tied ones apart."""
    value = 0.9 if p.model.activation != "elu" else 0.8
    loss = 0.6 - p.model.dropout
    for epoch in range(3):
        on_epoch(epoch, {"val_accuracy": value, "val_loss": loss})
    return Trained({"val_accuracy": value, "val_loss": loss}, 3, False)


def test_trials_tied_on_the_metric_rank_by_validation_loss_in_study_report_table_and_ui_sort(
    workdir, capsys
):
    import mlflow
    import yaml

    from pipeline.commands.search import _print_study

    params = study_params(workdir, 8)
    tracker = Tracker(params.tracking.uri, "stub")
    tracked = TrackedStudy.open(
        params,
        stages.prepare(params),
        tracker,
        name="stub",
        storage=make_storage(str(workdir / "mlruns" / "optuna-journal.log")),
        storage_display="test",
        trainer=tied_trainer,
    )
    with tracker.run("study-stub", resume_id=tracked.parent_id):
        tracked.run_trials()
        frame = log_parent_artifacts(tracked)
    tied = frame[frame["user_attrs_val_accuracy"] == 0.9]
    lowest = int(tied.loc[tied["user_attrs_val_loss"].idxmin(), "number"])
    assert len(tied) >= 2 and lowest != int(tied["number"].min())  # trial order would differ
    best = tracked.study.best()
    assert best is not None and best.number == lowest
    assert best.scores == {"val_accuracy": 0.9, "val_loss": tied["user_attrs_val_loss"].min()}

    client = mlflow.MlflowClient(params.tracking.uri)
    parent = client.get_run(tracked.parent_id)
    got = client.download_artifacts(parent.info.run_id, "best_params.yaml", str(workdir))
    best_yaml = yaml.safe_load(Path(got).read_text())
    assert best_yaml["trial"] == lowest and best_yaml["val_accuracy"] == 0.9
    assert best_yaml["val_loss"] == best.scores["val_loss"]
    # the UI's sort on the trial runs' `objective` metric puts the same trial first
    by_objective = client.search_runs(
        [parent.info.experiment_id],
        "tags.`pipeline.trial` != ''",
        order_by=["metrics.objective DESC"],
        max_results=1,
    )
    assert by_objective[0].data.tags["pipeline.trial"] == str(lowest)

    _print_study(tracked, tracked.params)  # the console's table after a search
    table = capsys.readouterr().out.splitlines()
    assert table[2].split()[:2] == ["number", "value"] and "val_loss" in table[2]
    assert table[4].split()[0] == str(lowest)
    argv = ["report", "--tracking-uri", params.tracking.uri, *SPACE_FLAGS, "--top", "3"]
    assert run.main(argv) == 0
    rows = capsys.readouterr().out.splitlines()
    assert rows[1].split()[:3] == ["trial", "val_accuracy", "val_loss"]
    assert rows[3].split()[0] == str(lowest)

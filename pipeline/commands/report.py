"""`report`: the trials of a study read back from the tracking store, the study figures from the
Optuna storage, and (`--html`) all of it with the champion's plots on one offline page."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline import protocol
from pipeline.commands.common import add_common, load_params, make_tracker
from pipeline.errors import PipelineError

if TYPE_CHECKING:
    import pandas as pd

    from pipeline.config import SearchParams
    from pipeline.tracking import Tracker

# The champion run's images that the --html page shows, with their section titles.
CHAMPION_IMAGES = {
    "learning_curves.png": "champion: learning curves",
    "confusion_matrix.png": "champion: confusion matrix (test split)",
    "residuals.png": "champion: residuals (test split)",
}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="trials of a study, its Optuna figures, an HTML page")
    add_common(p)
    p.add_argument("--study", help="study name (default: the experiment name)")
    p.add_argument("--top", type=int, default=10, help="how many trials to list")
    p.add_argument("--out", type=Path, default=None, help="folder for the figures")
    p.add_argument(
        "--storage", help="Optuna storage of the study (default: journal file in mlruns/)"
    )
    p.add_argument("--html", type=Path, default=None, help="write one self-contained page here")


def _scalar(text: str | None) -> Any:
    """MLflow stores params as text; give numbers back as numbers for tables and plots."""
    try:
        return float(text) if text is not None and not text.isalpha() else text
    except ValueError:
        return text


def trials_frame(
    tracker: Tracker, study: str, sp: SearchParams, keys: list[str]
) -> tuple[pd.DataFrame, list[str], list[str]]:
    """One row per trial run of the study in the tracking store (no Optuna storage needed),
    with the metric(s) and direction(s) it was searched by: `auto` in the params means what its
    trial runs logged (the metric `auto` resolved to for the study's data). `value` is the
    first metric; a multi-objective study's other metrics get a column each."""
    import pandas as pd
    import yaml

    from pipeline.config import direction_of

    runs = tracker.runs(f"tags.`{protocol.STUDY_TAG}` = '{study}'")
    trials = [r for r in runs if protocol.TRIAL_TAG in r.data.tags]
    if not trials:
        raise PipelineError(
            f"no trials of study {study!r} in {tracker.display_uri} (experiment "
            f"{tracker.experiment_name!r}). Run `search` first, or pass --study, -p or "
            "--tracking-uri."
        )
    logged = yaml.safe_load(trials[0].data.params.get("search.metric", "val_accuracy"))
    metrics = list(sp.metrics) if sp.metric != "auto" else _as_list(logged)
    given = sp.directions if sp.metric != "auto" else ("auto",) * len(metrics)
    directions = [
        d if d != "auto" else direction_of(m) or "maximize"
        for m, d in zip(metrics, given, strict=True)
    ]
    rows = []
    for r in trials:
        row = {
            "number": int(r.data.tags[protocol.TRIAL_TAG]),
            "state": r.data.tags.get(protocol.STATE_TAG, "?"),
            # the objective the study ranked by (with the tie-break); runs logged before the
            # tie-break existed rank by the metric alone
            "value": r.data.metrics.get(
                protocol.OBJECTIVE if len(metrics) == 1 else metrics[0],
                r.data.metrics.get(metrics[0]),
            ),
            **{m: r.data.metrics.get(m) for m in metrics[1:]},
            protocol.TIEBREAK: r.data.metrics.get(protocol.TIEBREAK),
            "epochs": r.data.metrics.get("epochs_run"),
            "run_id": r.info.run_id,
        }
        row.update({f"params_{k}": _scalar(r.data.params.get(k)) for k in keys})
        rows.append(row)
    return pd.DataFrame(rows).sort_values("number"), metrics, directions


def _top_rows(top: pd.DataFrame, metrics: list[str], keys: list[str]) -> list[dict[str, Any]]:
    """The console table's rows of the top trials: the objective (under the first metric's
    name), any other metric, the tie-break loss, the epochs and the params."""
    return [
        {
            "trial": r["number"],
            metrics[0]: r["value"],
            **{m: r[m] for m in metrics[1:]},
            protocol.TIEBREAK: r[protocol.TIEBREAK],
            "epochs": r["epochs"],
            **{k: r[f"params_{k}"] for k in keys},
        }
        for _, r in top.iterrows()
    ]


def _as_list(value: Any) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


def _champion_run(tracker: Tracker, study: str) -> str | None:
    """The study's latest champion run, if one was made."""
    runs = tracker.runs(
        f"tags.`{protocol.STUDY_TAG}` = '{study}' and "
        f"tags.`{protocol.KIND_TAG}` = '{protocol.RunKind.CHAMPION}'"
    )
    return max(runs, key=lambda r: r.info.start_time).info.run_id if runs else None


def main(args: argparse.Namespace) -> int:
    """Top trials (tracking store), Optuna figures (study storage), optionally one HTML page."""
    from pipeline import report, search, stages

    params = load_params(args)
    tracker = make_tracker(params)
    study = args.study or stages.experiment_name(params)
    keys = list(params.search.space)
    frame, metrics, directions = trials_frame(tracker, study, params.search, keys)
    metric, others = metrics[0], metrics[1:]
    ranked = protocol.ranked(frame, directions[0])
    shown = _top_rows(ranked.head(args.top), metrics, keys)
    tie = [] if others or metric == protocol.TIEBREAK else [protocol.TIEBREAK]  # second key
    print(f"study {study!r}: {len(frame)} trials {frame['state'].value_counts().to_dict()}")
    print(report.table(shown, ["trial", metric, *others, *tie, "epochs", *keys]))

    opened = search.existing_study(study, args.storage, params.search)
    if others and opened is not None:
        goals = ", ".join(f"{m} {d}" for m, d in zip(metrics, directions, strict=True))
        front = [
            {"trial": b.number, **dict(zip(metrics, b.values, strict=True))}
            for b in opened.pareto()
        ]
        print(f"Pareto front ({goals}; the champion: best {metric} among them):")
        print(report.table(front, ["trial", *metrics]))
    figures = opened.figures() if opened is not None else {}
    if opened is None:
        where = args.storage or "mlruns/optuna-journal.log"
        print(f"no study {study!r} in {where}: study figures need it (pass --storage)")
    out = args.out or Path("mlruns") / "reports" / study
    out.mkdir(parents=True, exist_ok=True)
    title = f"study {study}: {metric}"
    if opened is not None:
        (out / "study_figures.html").write_text(report.study_page(title, figures))
    curves = {
        f"trial {r['number']}": tracker.metric_history(r["run_id"], metric)
        for _, r in ranked.head(min(args.top, 5)).iterrows()
    }
    curves_png = report.figure_png(report.top_trial_curves(curves, metric))
    (out / "top_trials_curves.png").write_bytes(curves_png)
    print(f"figures written to {out}/")
    if args.html is not None:
        sections = [(f"trials ({len(frame)})", report.frame_html(frame))]
        sections += report.figure_sections(figures)
        sections.append((f"{metric} per epoch, top trials", report.png_html(curves_png, metric)))
        sections += _champion_sections(tracker, study)
        args.html.parent.mkdir(parents=True, exist_ok=True)
        partial = args.html.with_name(args.html.name + ".partial")
        partial.write_text(report.html_page(title, sections))
        partial.replace(args.html)  # whole or not at all
        print(f"page written to {args.html}")
    return 0


def _champion_sections(tracker: Tracker, study: str) -> list[tuple[str, str]]:
    """The champion run's images (confusion matrix, curves...) as page sections, if any."""
    from pipeline import report

    champion = _champion_run(tracker, study)
    sections = []
    for name, head in CHAMPION_IMAGES.items():
        image = tracker.read_artifact(champion, name) if champion else None
        if image is not None:
            sections.append((head, report.png_html(image, head)))
    return sections

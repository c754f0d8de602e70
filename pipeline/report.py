"""Plots, tables and pages: pure functions from arrays, data frames and figures to matplotlib
figures, text and HTML.

Nothing here tracks, searches or trains; the orchestrator decides where the results go. The
study figures are Optuna's own (interactive Plotly, from `optuna.visualization`: nothing is
hand-drawn here); this module picks them for a study and lays them out as self-contained
HTML, with plotly.js inlined once per page so a page opens offline
(Plotly's static image export needs Chrome, which is not a given).
"""

from __future__ import annotations

import base64
import html
import io
import logging
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.protocol import TrialState

if TYPE_CHECKING:
    import optuna
    import pandas as pd
    from plotly.graph_objects import Figure

log = logging.getLogger(__name__)


def _figure(width: float = 7.0, height: float = 4.5) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    return fig, fig.add_subplot(1, 1, 1)


def learning_curves(history: Mapping[str, Sequence[float]], title: str = "") -> Any:
    """Train vs validation curves for every metric Keras recorded, plus the learning rate."""
    names = [k for k in history if not k.startswith("val_") and k != "lr"]
    cols = len(names) + (1 if "lr" in history else 0)
    fig, _ = _figure(4.0 * max(cols, 1), 3.6)
    fig.clear()
    for i, name in enumerate(names):
        ax = fig.add_subplot(1, cols, i + 1)
        epochs = np.arange(1, len(history[name]) + 1)
        ax.plot(epochs, history[name], label="train")
        if f"val_{name}" in history:
            ax.plot(epochs, history[f"val_{name}"], label="validation")
        ax.set_xlabel("epoch")
        ax.set_title(name)
        ax.legend()
    if "lr" in history:
        ax = fig.add_subplot(1, cols, cols)
        ax.plot(np.arange(1, len(history["lr"]) + 1), history["lr"])
        ax.set_title("learning rate")
        ax.set_xlabel("epoch")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def confusion_matrix_figure(y_true: np.ndarray, y_pred: np.ndarray, classes: Sequence) -> Any:
    """Counts of true (rows) vs predicted (columns) classes, with the numbers written in."""
    from sklearn.metrics import confusion_matrix

    cm = confusion_matrix(y_true, y_pred, labels=list(range(len(classes))))
    size = max(4.0, 0.5 * len(classes) + 2)
    fig, ax = _figure(size, size)
    ax.imshow(cm, cmap="Blues")
    ticks = np.arange(len(classes))
    ax.set_xticks(ticks, [str(c) for c in classes], rotation=45, ha="right")
    ax.set_yticks(ticks, [str(c) for c in classes])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    limit = cm.max() / 2 if cm.size else 0
    for (i, j), v in np.ndenumerate(cm):
        ax.text(j, i, str(v), ha="center", va="center", color="white" if v > limit else "black")
    ax.set_title("confusion matrix (test split)")
    fig.tight_layout()
    return fig


def classification_report_text(y_true: np.ndarray, y_pred: np.ndarray, classes: Sequence) -> str:
    from sklearn.metrics import classification_report

    return classification_report(
        y_true,
        y_pred,
        labels=list(range(len(classes))),
        target_names=[str(c) for c in classes],
        zero_division=0,
    )


def residual_figure(y_true: np.ndarray, y_pred: np.ndarray) -> Any:
    """Residuals against predictions: structure here means the model misses a pattern."""
    fig, ax = _figure()
    ax.scatter(y_pred, np.asarray(y_true) - np.asarray(y_pred), s=10, alpha=0.6)
    ax.axhline(0.0, color="black", lw=1)
    ax.set_xlabel("prediction")
    ax.set_ylabel("true - prediction")
    ax.set_title("residuals (test split)")
    fig.tight_layout()
    return fig


# -- study plots ----------------------------------------------------------------------------


def top_trial_curves(curves: Mapping[str, Sequence[float]], metric: str) -> Any:
    """The validation curve of each of the top trials, to see how they trained."""
    fig, ax = _figure()
    for label, values in curves.items():
        ax.plot(np.arange(1, len(values) + 1), values, label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} per epoch, top trials")
    if curves:
        ax.legend()
    fig.tight_layout()
    return fig


# -- HTML pages -----------------------------------------------------------------------------

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; margin-top: 1.8em; }
table.trials { border-collapse: collapse; font-size: 0.85em; }
table.trials th, table.trials td { border: 1px solid #ccc; padding: 2px 6px; text-align: right; }
img { max-width: 100%; }
"""


def html_page(title: str, sections: Sequence[tuple[str, str]]) -> str:
    """One self-contained page: a heading and (heading, HTML fragment) sections in order."""
    body = "\n".join(
        f'<section class="part"><h2>{html.escape(head)}</h2>\n{fragment}\n</section>'
        for head, fragment in sections
    )
    return (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_STYLE}</style></head>\n<body><h1>{html.escape(title)}</h1>\n{body}\n"
        "</body></html>\n"
    )


def figure_sections(figures: Mapping[str, Figure]) -> list[tuple[str, str]]:
    """(title, div) per interactive figure; plotly.js goes inline with the first one only, so
    the page works offline and carries the library once."""
    return [
        (title, fig.to_html(full_html=False, include_plotlyjs=i == 0))
        for i, (title, fig) in enumerate(figures.items())
    ]


def study_page(title: str, figures: Mapping[str, Figure]) -> str:
    """The study figures on one offline page (what the parent run carries)."""
    if not figures:
        return html_page(title, [("figures", "<p>No complete trial yet: nothing to draw.</p>")])
    return html_page(title, figure_sections(figures))


def frame_html(frame: pd.DataFrame) -> str:
    """A data frame as an HTML table, one row per frame row (numbers to 4 significant digits)."""
    return frame.to_html(
        index=False, classes="trials", na_rep="", float_format=lambda v: f"{v:.4g}", border=0
    )


def png_html(image: bytes, alt: str) -> str:
    """A PNG embedded in the page itself (no file beside it to lose)."""
    data = base64.b64encode(image).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def figure_png(figure: Any) -> bytes:
    """A matplotlib figure as PNG bytes."""
    buf = io.BytesIO()
    figure.savefig(buf, format="png")
    return buf.getvalue()


# -- tables ---------------------------------------------------------------------------------


def table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """A plain fixed-width text table (no extra dependency, copy-pastes into an issue)."""

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return "" if v is None else str(v)

    grid = [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c), *(len(g[i]) for g in grid)]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(g, widths, strict=True)) for g in grid]
    return "\n".join(lines)


# -- study figures (Optuna draws them) ---------------------------------------------------------


def _trials(study: optuna.Study, *states: TrialState) -> list[optuna.trial.FrozenTrial]:
    """The study's trials in these states, without copying them."""
    from optuna.trial import TrialState as OptunaState

    return study.get_trials(deepcopy=False, states=tuple(OptunaState[s] for s in states))


def _first_objective(study: optuna.Study) -> Callable[[optuna.trial.FrozenTrial], float] | None:
    """What figures and importances read in a multi-objective study (its first metric;
    Optuna needs a target there); None for a single objective."""
    if len(study.directions) == 1:
        return None
    return lambda t: t.values[0]


def _importance_target(study: optuna.Study) -> Callable[[optuna.trial.FrozenTrial], float] | None:
    """The first objective as Optuna's importance evaluator reads a custom target: lower is
    better (negated when it is maximized); None for a single objective."""
    if len(study.directions) == 1:
        return None
    if study.directions[0].name == "MAXIMIZE":
        return lambda t: -t.values[0]
    return lambda t: t.values[0]


def importances(study: optuna.Study) -> dict[str, float]:
    """Parameter importances, or {} when there are too few complete trials to tell."""
    import optuna

    if len(_trials(study, TrialState.COMPLETE)) < 3:
        return {}
    try:
        with warnings.catch_warnings():  # "give a lower-is-better target": it is one
            warnings.filterwarnings("ignore", message="PedAnovaImportanceEvaluator computes")
            return dict(
                optuna.importance.get_param_importances(study, target=_importance_target(study))
            )
    except (ValueError, RuntimeError, ZeroDivisionError) as exc:
        log.info("parameter importances unavailable: %s", exc)
        return {}


def study_figures(study: optuna.Study, space: list[str], target: str) -> dict[str, Figure]:
    """The study's interactive figures from `optuna.visualization`, by title.

    History, parallel coordinates (categorical params keep their names), importances,
    slice, contour of the two most important params, intermediate values, timeline and
    the empirical distribution; a multi-objective study's figures show its first metric,
    with its Pareto front beside them. A figure Optuna cannot draw yet (too few complete
    trials, a single param, nothing reported per epoch) is left out: figures never stop a
    search.
    """
    complete = _trials(study, TrialState.COMPLETE)
    if not complete:
        return {}
    import optuna
    import optuna.visualization as vis

    first = _first_objective(study)
    # The study's own params (in search.space order), so a report run with other params
    # still draws what the study searched.
    seen = {k for t in complete for k in t.params}
    keys = [k for k in space if k in seen] + sorted(seen - set(space))
    ranked = list(importances(study)) or keys
    makers: dict[str, Callable[[], Figure]] = {
        "optimization history": lambda: vis.plot_optimization_history(
            study, target=first, target_name=target
        ),
        "parallel coordinates": lambda: vis.plot_parallel_coordinate(
            study, params=keys, target=first, target_name=target
        ),
        "slice": lambda: vis.plot_slice(study, params=keys, target=first, target_name=target),
        "timeline": lambda: vis.plot_timeline(study),
        "empirical distribution": lambda: vis.plot_edf(study, target=first, target_name=target),
    }
    if first is not None:
        names = study.metric_names or [f"objective {i}" for i in range(len(study.directions))]
        makers["Pareto front"] = lambda: vis.plot_pareto_front(study, target_names=names)
    if len(complete) >= 2:
        makers["parameter importances"] = lambda: vis.plot_param_importances(
            study, target=_importance_target(study), target_name=target
        )
    if len(keys) >= 2:
        makers["contour (two most important params)"] = lambda: vis.plot_contour(
            study, params=ranked[:2], target=first, target_name=target
        )
    if any(t.intermediate_values for t in _trials(study, TrialState.COMPLETE, TrialState.PRUNED)):
        makers["intermediate values"] = lambda: vis.plot_intermediate_values(study)
    out: dict[str, Figure] = {}
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # "too few trials" notices
    try:
        for title, make in makers.items():
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # experimental-API notices
                    out[title] = make()
            except Exception as exc:  # noqa: BLE001 - a missing figure must not end a study
                log.info("study figure %r unavailable: %s", title, exc)
    finally:
        optuna.logging.set_verbosity(verbosity)
    return out

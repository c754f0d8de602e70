"""Plots, tables and pages: pure functions from arrays, data frames and figures to matplotlib
figures, text and HTML.

Nothing here tracks, searches or trains; the orchestrator decides where the results go. The
study figures are Optuna's own (interactive Plotly, drawn in search.py); this module only lays
them out as self-contained HTML, with plotly.js inlined once per page so a page opens offline
(Plotly's static image export needs Chrome, which is not a given).
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd
    from plotly.graph_objects import Figure


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

"""Plots and tables: pure functions from arrays or data frames to matplotlib figures and text.

Nothing here tracks, searches or trains; the orchestrator decides where the results go. The
study plots are drawn from the trials table itself, so they work for any storage and need no
browser or image-export service (Plotly's static export needs Chrome, which is not a given).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd


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


def optimization_history(trials: pd.DataFrame, metric: str, maximize: bool) -> Any:
    """Each finished trial's value and the best-so-far line, by trial number."""
    fig, ax = _figure()
    done = trials[trials["state"] == "COMPLETE"].sort_values("number")
    ax.scatter(done["number"], done["value"], label="trial", s=18)
    if len(done):
        best = done["value"].cummax() if maximize else done["value"].cummin()
        ax.step(done["number"], best, where="post", color="C3", label="best so far")
    pruned = trials[trials["state"] == "PRUNED"]
    if len(pruned):
        ax.scatter(pruned["number"], [np.nan] * len(pruned), label=f"pruned ({len(pruned)})")
    ax.set_xlabel("trial")
    ax.set_ylabel(metric)
    ax.set_title("optimization history")
    ax.legend()
    fig.tight_layout()
    return fig


def importance_figure(importances: Mapping[str, float]) -> Any:
    """Horizontal bars of each parameter's importance (fANOVA, from the study)."""
    fig, ax = _figure()
    items = sorted(importances.items(), key=lambda kv: kv[1])
    ax.barh([k for k, _ in items], [v for _, v in items])
    ax.set_xlabel("importance")
    ax.set_title("parameter importances")
    fig.tight_layout()
    return fig


def parallel_coordinates(trials: pd.DataFrame, params: Sequence[str], metric: str) -> Any:
    """One line per complete trial across the searched params, coloured by the metric."""
    import matplotlib

    fig, ax = _figure(max(7.0, 1.6 * (len(params) + 1)), 4.5)
    done = trials[trials["state"] == "COMPLETE"]
    axes = list(params) + ["value"]
    if done.empty or not params:
        ax.set_title("parallel coordinates (no complete trials)")
        return fig
    cols = []
    for name in axes:
        col = done[name if name == "value" else f"params_{name}"]
        if pd.api.types.is_numeric_dtype(col):
            values = col.astype(float).to_numpy()
        else:
            values = pd.Categorical(col.astype(str)).codes.astype(float)
        span = values.max() - values.min()
        cols.append((values - values.min()) / span if span > 0 else np.full_like(values, 0.5))
    matrix = np.vstack(cols).T
    norm = matplotlib.colors.Normalize(done["value"].min(), done["value"].max())
    cmap = matplotlib.colormaps["viridis"]
    for row, value in zip(matrix, done["value"], strict=True):
        ax.plot(range(len(axes)), row, color=cmap(norm(value)), alpha=0.8)
    ax.set_xticks(range(len(axes)), [*params, metric], rotation=20, ha="right")
    ax.set_yticks([])
    ax.set_title("parallel coordinates (each axis scaled to its range)")
    fig.tight_layout()
    return fig


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

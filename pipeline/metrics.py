"""Validation metrics in numpy, from one forward pass's scores: every metric `search.metric`
may name, with Keras's names and formulas (tests/test_model.py checks them against Keras's
`evaluate` and scikit-learn).
"""

from __future__ import annotations

import math

import numpy as np


def validation_logs(
    scores: np.ndarray, y: np.ndarray, task: str, n_classes: int = 0
) -> dict[str, float]:
    """Every metric `search.metric` may name, Keras-named (val_loss, val_accuracy, val_precision,
    val_recall, val_f1, val_roc_auc | val_loss, val_mse, val_rmse, val_mae, val_r2), in numpy.

    Computed from one forward pass instead of Keras's per-epoch `evaluate`, whose set-up costs
    more than the pass itself on small data. The loss and accuracy use the compiled loss's
    formulas; precision, recall and F1 are macro averages over all `n_classes` classes with 0 for
    an empty class, as scikit-learn's (and so `evaluate`'s). ROC AUC is given for two classes
    when both occur in `y`; R² when it is defined (two rows or more).
    """
    eps = 1e-7
    if task == "regression":
        pred = scores.reshape(-1).astype(np.float64)
        err = pred - y
        mse = float(np.mean(err**2))
        out = {
            "val_loss": mse,
            "val_mse": mse,
            "val_rmse": math.sqrt(mse),
            "val_mae": float(np.mean(np.abs(err))),
        }
        if len(y) > 1:
            total = float(np.sum((y - np.mean(y)) ** 2))
            residual = float(np.sum(err**2))
            # scikit-learn's convention for a constant target: 1 if exact, else 0
            out["val_r2"] = 1.0 - residual / total if total > 0 else float(residual == 0)
        return out
    if scores.shape[1] == 1:
        p = np.clip(scores[:, 0].astype(np.float64), eps, 1 - eps)
        loss = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
        pred = (p >= 0.5).astype(np.int64)
    else:
        p = np.clip(scores.astype(np.float64), eps, 1.0)
        loss = -np.mean(np.log(p[np.arange(len(y)), y]))
        pred = scores.argmax(axis=1)
    k = max(n_classes, scores.shape[1], 2)
    hits = np.bincount(y[pred == y], minlength=k).astype(np.float64)
    predicted = np.bincount(pred, minlength=k).astype(np.float64)
    actual = np.bincount(y, minlength=k).astype(np.float64)
    out = {
        "val_loss": float(loss),
        "val_accuracy": float(np.mean(pred == y)),
        "val_precision": float(np.mean(_ratio(hits, predicted))),
        "val_recall": float(np.mean(_ratio(hits, actual))),
        "val_f1": float(np.mean(_ratio(2 * hits, predicted + actual))),
    }
    if scores.shape[1] == 1 and 0 < actual[1] < len(y):
        out["val_roc_auc"] = _roc_auc(scores[:, 0].astype(np.float64), y)
    return out


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den per class, 0 where den is 0 (scikit-learn's zero_division=0)."""
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def _roc_auc(score: np.ndarray, y: np.ndarray) -> float:
    """Binary ROC AUC as the Mann-Whitney statistic (tied scores share their average rank)."""
    _, inverse, counts = np.unique(score, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    ranks = ((ends - counts + 1 + ends) / 2.0)[inverse]
    n_pos = float(np.sum(y == 1))
    n_neg = len(y) - n_pos
    return float((np.sum(ranks[y == 1]) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))

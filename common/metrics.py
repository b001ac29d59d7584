"""Evaluation metrics as pure numpy functions.

Classification (accuracy, macro-F1), language modelling (perplexity) and forecasting (MSE,
MAE); generated text is scored in simulations/generate.py. They take plain arrays or lists so
that the coordinator, the clients and the baselines compute them the same way, without
torch. Empty or mismatched inputs raise DataError rather than returning NaN, which would
otherwise flow silently into reports.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from common.errors import DataError

# ------------------------------------------------------------------ classification


def _class_predictions(
    y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray, what: str
) -> tuple[np.ndarray, np.ndarray]:
    """Labels (N,) and predicted labels (N,); scores (N, K) are argmax-ed."""
    true = np.asarray(y_true)
    pred = np.asarray(y_pred)
    if pred.ndim == 2:
        pred = pred.argmax(axis=1)
    if true.ndim != 1 or pred.ndim != 1:
        raise DataError(
            f"{what}: expected labels (N,) and predictions (N,) or scores (N, K); "
            f"got shapes {true.shape} and {np.asarray(y_pred).shape}."
        )
    if len(true) != len(pred):
        raise DataError(f"{what}: {len(true)} labels but {len(pred)} predictions.")
    if len(true) == 0:
        raise DataError(f"{what} needs at least one example; got none.")
    return true.astype(np.int64), pred.astype(np.int64)


def accuracy(y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray) -> float:
    """Share of correct predictions; ``y_pred`` may be labels (N,) or scores (N, K)."""
    true, pred = _class_predictions(y_true, y_pred, "accuracy")
    return float((true == pred).mean())


def macro_f1(
    y_true: Sequence[int] | np.ndarray,
    y_pred: Sequence[int] | np.ndarray,
    *,
    num_classes: int | None = None,
) -> float:
    """Unweighted mean of per-class F1 = 2·TP / (2·TP + FP + FN).

    Averaged over ``range(num_classes)`` if given, else over the classes present in
    labels or predictions (as scikit-learn does). A class with no true and no predicted
    example has F1 = 0 when it is listed by ``num_classes`` (it was asked for).
    """
    true, pred = _class_predictions(y_true, y_pred, "macro_f1")
    classes = np.arange(num_classes) if num_classes is not None else np.union1d(true, pred)
    f1s = []
    for c in classes:
        tp = np.sum((pred == c) & (true == c))
        fp = np.sum((pred == c) & (true != c))
        fn = np.sum((pred != c) & (true == c))
        denom = 2 * tp + fp + fn
        f1s.append(0.0 if denom == 0 else 2 * tp / denom)
    return float(np.mean(f1s))


# ------------------------------------------------------------------ language modelling


def perplexity(mean_nll: float) -> float:
    """exp(mean negative log-likelihood per token, in nats); inf if it overflows."""
    value = float(mean_nll)
    if not math.isfinite(value) or value < 0:
        raise DataError(f"perplexity needs a finite, non-negative mean NLL (nats); got {mean_nll}.")
    return math.exp(value) if value < 700 else math.inf


# ------------------------------------------------------------------ forecasting


def _pair(
    y_true: np.ndarray | Sequence[float], y_pred: np.ndarray | Sequence[float], what: str
) -> np.ndarray:
    true = np.asarray(y_true, dtype=np.float64)
    pred = np.asarray(y_pred, dtype=np.float64)
    if true.shape != pred.shape:
        raise DataError(f"{what}: targets {true.shape} and predictions {pred.shape} differ.")
    if true.size == 0:
        raise DataError(f"{what} needs at least one value; got none.")
    return pred - true


def mse(y_true: np.ndarray | Sequence[float], y_pred: np.ndarray | Sequence[float]) -> float:
    """Mean squared error over all elements."""
    return float(np.mean(_pair(y_true, y_pred, "mse") ** 2))


def mae(y_true: np.ndarray | Sequence[float], y_pred: np.ndarray | Sequence[float]) -> float:
    """Mean absolute error over all elements."""
    return float(np.mean(np.abs(_pair(y_true, y_pred, "mae"))))


__all__ = [
    "accuracy",
    "macro_f1",
    "mae",
    "mse",
    "perplexity",
]


def mean_interval(values: Sequence[float]) -> tuple[float, float, float]:
    """Mean and two-sided 95% Student-t interval (the interval is (nan, nan) for n < 2)."""
    from scipy import stats

    arr = np.asarray(values, dtype=float)
    mean = float(arr.mean())
    if len(arr) < 2:
        return mean, float("nan"), float("nan")
    half = float(stats.t.ppf(0.975, len(arr) - 1) * arr.std(ddof=1) / np.sqrt(len(arr)))
    return mean, mean - half, mean + half

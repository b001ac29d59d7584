"""Metrics against values computed by hand (each case says how)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from common.errors import DataError
from common.metrics import (
    accuracy,
    macro_f1,
    mae,
    mse,
    perplexity,
)


@pytest.mark.parametrize(
    ("y_true", "y_pred", "expected"),
    [
        pytest.param([0, 1, 1, 0], [0, 1, 0, 0], 0.75, id="3 of 4 right"),
        pytest.param([2, 2], [[0.1, 0.2, 0.7], [0.9, 0.05, 0.05]], 0.5, id="scores are argmax-ed"),
        pytest.param([1], [1], 1.0, id="single example"),
    ],
)
def test_accuracy(y_true: list[int], y_pred: list, expected: float) -> None:
    assert accuracy(y_true, y_pred) == pytest.approx(expected)


def test_macro_f1_hand_computed() -> None:
    # class 0: TP=1 FP=1 FN=1 -> F1 = 2/(2+1+1) = 0.5
    # class 1: TP=1 FP=0 FN=1 -> F1 = 2/(2+0+1) = 2/3
    # class 2: TP=1 FP=1 FN=0 -> F1 = 2/(2+1+0) = 2/3
    y_true = [0, 0, 1, 1, 2]
    y_pred = [0, 2, 1, 0, 2]
    assert macro_f1(y_true, y_pred) == pytest.approx((0.5 + 2 / 3 + 2 / 3) / 3)
    # A fourth class asked for but absent everywhere counts as F1 = 0.
    assert macro_f1(y_true, y_pred, num_classes=4) == pytest.approx((0.5 + 2 / 3 + 2 / 3) / 4)


def test_macro_f1_matches_sklearn() -> None:
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(3)
    y_true, y_pred = rng.integers(0, 5, 200), rng.integers(0, 5, 200)
    assert macro_f1(y_true, y_pred) == pytest.approx(f1_score(y_true, y_pred, average="macro"))


def test_perplexity() -> None:
    assert perplexity(0.0) == 1.0
    assert perplexity(math.log(50.0)) == pytest.approx(50.0)
    with pytest.raises(DataError, match="NLL"):
        perplexity(float("nan"))


def test_mse_mae() -> None:
    y, p = [[1.0, 2.0], [3.0, 4.0]], [[2.0, 2.0], [1.0, 4.0]]
    # errors 1, 0, -2, 0 -> MSE (1 + 4)/4, MAE (1 + 2)/4
    assert mse(y, p) == pytest.approx(1.25)
    assert mae(y, p) == pytest.approx(0.75)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        pytest.param(lambda: accuracy([], []), "at least one", id="accuracy empty"),
        pytest.param(lambda: accuracy([0, 1], [0]), "2 labels but 1", id="accuracy length"),
        pytest.param(lambda: mse([1.0], [1.0, 2.0]), "differ", id="mse shapes"),
        pytest.param(lambda: mae([], []), "at least one", id="mae empty"),
    ],
)
def test_bad_input_raises_data_error(call, match: str) -> None:
    with pytest.raises(DataError, match=match):
        call()

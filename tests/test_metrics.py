"""Metrics against values computed by hand (each case says how)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from common.errors import DataError
from common.metrics import (
    accuracy,
    distinct_n,
    macro_f1,
    mae,
    mse,
    perplexity,
    spelling_error_rate,
    syntax_error_rate,
    word_entropy,
    word_vocabulary,
    words,
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


def test_word_entropy_and_distinct() -> None:
    # words a a b b: p = (1/2, 1/2) -> 1 bit; a a a a: 0 bits.
    assert word_entropy("a a b b") == pytest.approx(1.0)
    assert word_entropy(["a a", "a a"]) == pytest.approx(0.0)
    # "the cat the cat": bigrams (the,cat) (cat,the) (the,cat) -> 2 unique of 3.
    assert distinct_n("the cat the cat", 2) == pytest.approx(2 / 3)
    # unigrams: 2 unique of 4.
    assert distinct_n(["the cat", "the cat"], 1) == pytest.approx(0.5)


def test_spelling_error_rate() -> None:
    vocab = word_vocabulary(["The cat sat.", "A dog ran!"])
    assert vocab == {"the", "cat", "sat", "a", "dog", "ran"}
    # "the cat sta on teh mat": sta, teh, on, mat absent -> 4 of 6.
    assert spelling_error_rate("the cat sta on teh mat", vocab) == pytest.approx(4 / 6)
    assert spelling_error_rate("The CAT", vocab) == 0.0
    assert words("don't stop 42 times") == ["don't", "stop", "times"]


def test_syntax_error_rate() -> None:
    snippets = ["x = 1", "def f(:\n    pass", "for i in range(3):\n    print(i)", "x = (", "a\0b"]
    assert syntax_error_rate(snippets) == pytest.approx(3 / 5)


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
        pytest.param(lambda: spelling_error_rate("x", []), "vocabulary", id="empty vocab"),
        pytest.param(lambda: distinct_n("one", 2), "2-gram", id="no bigram"),
        pytest.param(lambda: word_entropy("123"), "no words", id="no words"),
        pytest.param(lambda: syntax_error_rate([]), "at least one", id="no snippets"),
    ],
)
def test_bad_input_raises_data_error(call, match: str) -> None:
    with pytest.raises(DataError, match=match):
        call()

"""Aggregation rules against independent references, in labelled tables."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence

import numpy as np
import pytest
from scipy import stats

from common.errors import ConfigError
from coordinator.aggregation import AGGREGATORS, get_aggregator

Replies = list[np.ndarray]


# ------------------------------------------------------------- independent references
# Deliberately written differently from the implementations: loops over clients and
# coordinates, the standard library's median, scipy's trimmed mean.
def _renorm(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0, None)
    out = np.empty_like(x)
    for i, row in enumerate(x):
        s = row.sum()
        out[i] = row / s if s > 0 else np.full(len(row), 1 / len(row))
    return out


def ref_mean(replies: Replies, counts: Sequence[int]) -> np.ndarray:
    total = np.zeros_like(replies[0])
    for r in replies:
        total = total + r
    return _renorm(total / len(replies))


def ref_weighted_mean(replies: Replies, counts: Sequence[int]) -> np.ndarray:
    total = np.zeros_like(replies[0])
    for r, n in zip(replies, counts, strict=True):
        total = total + n * r
    return _renorm(total / sum(counts))


def ref_median(replies: Replies, counts: Sequence[int]) -> np.ndarray:
    m, c = replies[0].shape
    out = np.array(
        [[statistics.median(r[i, j] for r in replies) for j in range(c)] for i in range(m)]
    )
    return _renorm(out)


def ref_trimmed_mean(trim: float) -> Callable[[Replies, Sequence[int]], np.ndarray]:
    def ref(replies: Replies, counts: Sequence[int]) -> np.ndarray:
        return _renorm(stats.trim_mean(np.array(replies), trim, axis=0))

    return ref


def ref_era(temperature: float) -> Callable[[Replies, Sequence[int]], np.ndarray]:
    def ref(replies: Replies, counts: Sequence[int]) -> np.ndarray:
        avg = ref_mean(replies, counts)  # rows of a mean of probabilities already sum to 1
        out = np.empty_like(avg)
        for i, row in enumerate(avg):
            e = [math.exp(v / temperature) for v in row]
            out[i] = [v / sum(e) for v in e]
        return out

    return ref


def ref_power(temperature: float) -> Callable[[Replies, Sequence[int]], np.ndarray]:
    def ref(replies: Replies, counts: Sequence[int]) -> np.ndarray:
        avg = ref_mean(replies, counts)
        powered = np.array([[v ** (1 / temperature) for v in row] for row in avg])
        return _renorm(powered)

    return ref


def _replies(k: int, m: int, c: int, seed: int, alpha: float = 0.5) -> Replies:
    rng = np.random.default_rng(seed)
    return [rng.dirichlet(np.full(c, alpha), size=m) for _ in range(k)]


COUNTS = [10, 250, 31, 7, 120, 64, 3]

REFERENCE_CASES = [
    pytest.param("mean", {}, ref_mean, 5, id="mean"),
    pytest.param("weighted-mean", {}, ref_weighted_mean, 5, id="weighted_mean"),
    pytest.param("median", {}, ref_median, 5, id="median-odd-K"),
    pytest.param("median", {}, ref_median, 4, id="median-even-K"),
    pytest.param("trimmed-mean", {}, ref_trimmed_mean(0.1), 7, id="trimmed-default-0.1"),
    pytest.param(
        "trimmed-mean", {"trim_fraction": 0.2}, ref_trimmed_mean(0.2), 7, id="trimmed-0.2"
    ),
    pytest.param("trimmed-mean", {"trim_fraction": 0.0}, ref_mean, 4, id="trimmed-0-is-mean"),
    pytest.param("dsfl", {}, ref_power(0.1), 5, id="dsfl-default-power-T0.1"),
    pytest.param("dsfl", {"temperature": 0.5}, ref_power(0.5), 3, id="dsfl-power-T0.5"),
    pytest.param(
        "dsfl", {"temperature": 0.1, "method": "era"}, ref_era(0.1), 5, id="dsfl-era-T0.1"
    ),
    pytest.param(
        "dsfl", {"temperature": 0.5, "method": "era"}, ref_era(0.5), 3, id="dsfl-era-T0.5"
    ),
]


@pytest.mark.parametrize(("name", "params", "reference", "k"), REFERENCE_CASES)
def test_matches_independent_reference(
    name: str,
    params: dict[str, float],
    reference: Callable[[Replies, Sequence[int]], np.ndarray],
    k: int,
) -> None:
    replies = _replies(k, m=6, c=5, seed=k)
    counts = COUNTS[:k]
    aggregate = get_aggregator(name, **params)(replies, counts)
    assert aggregate.dtype == np.float32 and aggregate.shape == (6, 5)
    np.testing.assert_allclose(aggregate, reference(replies, counts), atol=1e-6)
    np.testing.assert_allclose(aggregate.sum(axis=1), 1.0, atol=1e-6)


# Small cases worked out by hand.
HAND_CASES = [
    pytest.param("mean", {}, [[[1, 0]], [[0, 1]]], [1, 1], [[0.5, 0.5]], id="mean-two"),
    pytest.param(
        "weighted-mean", {}, [[[1, 0]], [[0, 1]]], [3, 1], [[0.75, 0.25]], id="weighted-3-1"
    ),
    pytest.param(
        "weighted-mean", {}, [[[1, 0]], [[0, 1]]], [0, 5], [[0.0, 1.0]], id="weighted-zero-count"
    ),
    pytest.param(
        "median",
        {},
        [[[1, 0, 0]], [[0, 1, 0]], [[0, 0, 1]]],
        [1, 1, 1],
        [[1 / 3, 1 / 3, 1 / 3]],
        id="median-no-consensus-uniform",
    ),
    pytest.param(
        "median",
        {},
        [[[0.6, 0.4]], [[0.8, 0.2]], [[0.0, 1.0]]],
        [1, 1, 1],
        [[0.6, 0.4]],
        id="median-three",
    ),
    pytest.param(
        "trimmed-mean",
        {"trim_fraction": 0.25},
        [[[0.5, 0.5]], [[0.7, 0.3]], [[0.9, 0.1]], [[0.0, 1.0]]],
        [1, 1, 1, 1],
        [[0.6, 0.4]],
        id="trimmed-cut-one-each-end",
    ),
    pytest.param(
        "dsfl",
        {"temperature": 0.1, "method": "era"},
        [[[0.6, 0.4]]],
        [1],
        [[1 / (1 + math.exp(-2)), 1 - 1 / (1 + math.exp(-2))]],
        id="dsfl-era-softmax-6-4",
    ),
    pytest.param(
        "dsfl",
        {"temperature": 0.5, "method": "power"},
        [[[0.8, 0.2]], [[0.4, 0.6]]],
        [1, 1],
        [[0.36 / 0.52, 0.16 / 0.52]],
        id="dsfl-power-mean-then-square",
    ),
]


@pytest.mark.parametrize(("name", "params", "replies", "counts", "expected"), HAND_CASES)
def test_hand_computed(
    name: str,
    params: dict[str, float],
    replies: list[list[list[float]]],
    counts: list[int],
    expected: list[list[float]],
) -> None:
    arrays = [np.array(r, dtype=np.float32) for r in replies]
    aggregate = get_aggregator(name, **params)(arrays, counts)
    np.testing.assert_allclose(aggregate, np.array(expected), atol=1e-6)


# ----------------------------------------------------------------------- robustness
@pytest.mark.parametrize(
    ("name", "params"),
    [
        pytest.param("median", {}, id="median"),
        pytest.param("trimmed-mean", {"trim_fraction": 0.2}, id="trimmed-0.2"),
    ],
)
def test_robust_rules_ignore_one_wild_client(name: str, params: dict[str, float]) -> None:
    rng = np.random.default_rng(3)
    truth = rng.dirichlet(np.ones(8), size=20)  # (m, C)
    honest = [np.abs(truth + rng.normal(0, 0.005, truth.shape)) for _ in range(4)]
    honest = [h / h.sum(axis=1, keepdims=True) for h in honest]
    wild = np.zeros_like(truth)
    wild[np.arange(20), truth.argmin(axis=1)] = 1.0  # all mass on the least likely class
    replies, counts = [*honest, wild], [100] * 5

    robust = get_aggregator(name, **params)(replies, counts)
    naive = get_aggregator("mean")(replies, counts)
    assert np.abs(robust - truth).max() < 0.05
    assert np.abs(naive - truth).max() > 0.1  # the wild client does move a plain mean
    assert np.array_equal(robust.argmax(axis=1), truth.argmax(axis=1))


# ------------------------------------------------------------------------- errors
def test_registry_names() -> None:
    assert set(AGGREGATORS) == {"mean", "weighted-mean", "median", "trimmed-mean", "dsfl"}
    # The module spelling works too, for the same rule.
    replies, counts = _replies(3, 2, 4, seed=1), [1, 5, 2]
    np.testing.assert_array_equal(
        get_aggregator("weighted_mean")(replies, counts),
        get_aggregator("weighted-mean")(replies, counts),
    )


BAD_CONFIGS = [
    pytest.param("krum", {}, r"Unknown aggregation rule 'krum'.*mean, weighted-mean", id="name"),
    pytest.param("mean", {"temperature": 0.1}, r"no parameter\(s\) \['temperature'\]", id="param"),
    pytest.param("trimmed-mean", {"trim_fraction": 0.5}, "trim_fraction.*0.5", id="trim-0.5"),
    pytest.param("trimmed-mean", {"trim_fraction": -0.1}, "trim_fraction.*-0.1", id="trim-neg"),
    pytest.param("trimmed-mean", {"trim_fraction": math.nan}, "trim_fraction.*nan", id="trim-nan"),
    pytest.param("dsfl", {"temperature": 0.0}, "temperature.*0.0", id="dsfl-T0"),
    pytest.param("dsfl", {"temperature": -2}, "temperature.*-2", id="dsfl-T-neg"),
    pytest.param("dsfl", {"method": "max"}, "Unknown DS-FL method 'max'.*power, era", id="dsfl-m"),
]


@pytest.mark.parametrize(("name", "params", "message"), BAD_CONFIGS)
def test_bad_configuration_is_a_config_error(
    name: str, params: dict[str, float], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        get_aggregator(name, **params)


BAD_INPUTS = [
    pytest.param([], [], "empty list of replies", id="empty"),
    pytest.param([np.ones((2, 3)) / 3] * 2, [1], "2 replies but 1 example counts", id="counts"),
    pytest.param(
        [np.ones((2, 3)) / 3, np.ones((2, 4)) / 4],
        [1, 1],
        r"reply 1 has shape \(2, 4\)",
        id="shape",
    ),
    pytest.param([np.ones(3) / 3], [1], r"\(m, C\) matrix, reply 0 has shape \(3,\)", id="1-d"),
    pytest.param([np.full((1, 2), np.nan)], [1], "non-finite", id="nan"),
]


@pytest.mark.parametrize("name", sorted(AGGREGATORS))
@pytest.mark.parametrize(("replies", "counts", "message"), BAD_INPUTS)
def test_bad_replies_raise_value_error(
    name: str, replies: Replies, counts: list[int], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        get_aggregator(name)(replies, counts)


@pytest.mark.parametrize(
    ("counts", "message"),
    [
        pytest.param([0, 0], "sum to 0", id="all-zero"),
        pytest.param([5, -1], r"finite and >= 0, found \[5, -1\]", id="negative"),
    ],
)
def test_weighted_mean_needs_positive_counts(counts: list[int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        get_aggregator("weighted-mean")([np.ones((1, 2)) / 2] * 2, counts)

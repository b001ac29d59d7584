"""Aggregation rules against independent references, in labelled tables."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence

import numpy as np
import pytest
from scipy import stats

from common.config import AGGREGATIONS, FedConfig
from common.errors import ConfigError
from coordinator.aggregation import AGGREGATORS, aggregator_from_config, get_aggregator
from coordinator.aggregation.filter import norm_filter

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
    assert set(AGGREGATORS) == {
        "mean",
        "weighted-mean",
        "median",
        "trimmed-mean",
        "dsfl",
        "norm-filter",
    }
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


# -------------------------------------------------------------------- norm-filter
def _around(rng: np.random.Generator, truth: np.ndarray, concentration: float) -> np.ndarray:
    """An honest student's reply: each row drawn from Dirichlet(concentration · truth row)."""
    return np.stack([rng.dirichlet(concentration * row + 0.05) for row in truth])


def _honest_and_colluders(
    k: int = 10, attackers: int = 3, m: int = 40, c: int = 6, seed: int = 7
) -> tuple[np.ndarray, Replies, Replies]:
    """A truth (m, C), k - attackers noisy honest replies, and identical one-hot colluders
    pushing class 0 (as ``client.attacks.poison(..., "collude")``)."""
    rng = np.random.default_rng(seed)
    truth = rng.dirichlet(np.ones(c), size=m)
    truth[:, 0] *= 0.1  # class 0 is unlikely, so pushing it is a real attack
    truth /= truth.sum(axis=1, keepdims=True)
    honest = [_around(rng, truth, 200) for _ in range(k - attackers)]
    colluders = [np.eye(c)[np.zeros(m, dtype=int)] for _ in range(attackers)]
    return truth, honest, colluders


def test_norm_filter_resists_30_percent_colluding_one_hot_replies() -> None:
    truth, honest, colluders = _honest_and_colluders()
    counts = [50, 80, 120, 60, 90, 70, 40] + [200] * 3  # attackers claim large counts
    replies = [*honest, *colluders]
    honest_mean = ref_weighted_mean(honest, counts[:7])

    filtered = get_aggregator("norm-filter")(replies, counts)
    naive = get_aggregator("weighted-mean")(replies, counts)
    assert filtered.dtype == np.float32 and filtered.shape == truth.shape
    # Every colluder is dropped: exactly the honest weighted mean.
    np.testing.assert_allclose(filtered, honest_mean, atol=1e-6)
    assert np.abs(naive - honest_mean).max() > 0.3  # the plain mean is pulled to class 0
    assert (naive.argmax(axis=1) == 0).mean() > 0.5
    assert np.abs(filtered - truth).max() < 0.1  # and the honest mean is near the truth


def test_norm_filter_keeps_every_identical_honest_reply() -> None:
    """Distances all 0: the absolute floor keeps them (a pure ratio would be 0 * 2)."""
    reply = _replies(1, 5, 4, seed=2)[0]
    aggregate = get_aggregator("norm-filter")([reply] * 4, [1, 2, 3, 4])
    np.testing.assert_allclose(aggregate, reply, atol=1e-6)


def test_norm_filter_without_attack_is_the_weighted_mean() -> None:
    _, honest, _ = _honest_and_colluders(k=6, attackers=0)
    counts = [5, 9, 2, 7, 3, 8]
    aggregate = get_aggregator("norm-filter")(honest, counts)
    np.testing.assert_allclose(aggregate, ref_weighted_mean(honest, counts), atol=1e-6)


def test_min_entropy_drops_confident_one_hot_replies() -> None:
    """One-hot replies on *plausible* classes are close to the consensus in L1 when the
    honest replies are confident; the entropy floor catches them all the same."""
    rng = np.random.default_rng(11)
    m, c = 30, 4
    truth = np.full((m, c), 0.05)
    truth[np.arange(m), rng.integers(0, c, size=m)] = 0.85
    honest = [_around(rng, truth, 30) for _ in range(7)]
    onehot = [np.eye(c)[truth.argmax(axis=1)] for _ in range(3)]
    replies, counts = [*honest, *onehot], [10] * 10
    entropy_honest = min(float(np.mean(-np.sum(h * np.log(h), axis=1))) for h in honest)
    assert entropy_honest > 0.3

    distance_only = get_aggregator("norm-filter")(replies, counts)
    with_entropy = get_aggregator("norm-filter", min_entropy=0.1)(replies, counts)
    honest_mean = ref_mean(honest, counts[:7])
    assert np.abs(distance_only - honest_mean).max() > 0.02  # the one-hots got in
    np.testing.assert_allclose(with_entropy, honest_mean, atol=1e-6)


def test_norm_filter_falls_back_to_the_median_when_most_replies_are_dropped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Five replies, each certain of a different class: the median row is uniform-ish and
    # the entropy floor rejects all five, so fewer than half survive.
    replies = [np.eye(5)[[k, (k + 1) % 5]] for k in range(5)]
    counts = [1, 2, 3, 4, 5]
    with caplog.at_level("DEBUG", logger="coordinator.aggregation.filter"):
        aggregate = get_aggregator("norm-filter", min_entropy=0.5)(replies, counts)
    np.testing.assert_allclose(aggregate, ref_median(replies, counts), atol=1e-6)
    assert "falling back to the coordinate-wise median" in caplog.text


def test_norm_filter_falls_back_when_distances_split_the_replies() -> None:
    # 2 tight replies, 3 spread ones: with a small ratio only the tight pair is kept.
    rng = np.random.default_rng(5)
    base = rng.dirichlet(np.ones(4), size=8)
    replies = [base, base, *(rng.dirichlet(np.ones(4), size=8) for _ in range(3))]
    counts = [1] * 5
    aggregate = get_aggregator("norm-filter", filter_ratio=0.01)(replies, counts)
    np.testing.assert_allclose(aggregate, ref_median(replies, counts), atol=1e-6)


NORM_FILTER_BAD = [
    pytest.param({"filter_ratio": 0.0}, "filter_ratio.*0.0", id="ratio-0"),
    pytest.param({"filter_ratio": -1}, "filter_ratio.*-1", id="ratio-neg"),
    pytest.param({"filter_ratio": math.inf}, "filter_ratio.*inf", id="ratio-inf"),
    pytest.param({"filter_ratio": math.nan}, "filter_ratio.*nan", id="ratio-nan"),
    pytest.param({"filter_ratio": "2"}, "filter_ratio.*'2'", id="ratio-str"),
    pytest.param({"filter_ratio": True}, "filter_ratio.*True", id="ratio-bool"),
    pytest.param({"min_entropy": -0.1}, "min_entropy.*-0.1", id="entropy-neg"),
    pytest.param({"min_entropy": math.nan}, "min_entropy.*nan", id="entropy-nan"),
    pytest.param({"min_entropy": None}, "min_entropy.*None", id="entropy-none"),
]


@pytest.mark.parametrize(("params", "message"), NORM_FILTER_BAD)
def test_norm_filter_rejects_bad_parameters(params: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        get_aggregator("norm-filter", **params)
    with pytest.raises(ConfigError, match=message):
        norm_filter([np.ones((1, 2)) / 2], [1], **params)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", AGGREGATIONS)
def test_aggregator_from_config_builds_every_configured_rule(name: str) -> None:
    cfg = FedConfig(
        aggregation=name,
        trim_fraction=0.3,
        dsfl_temperature=0.25,
        filter_ratio=3.0,
        filter_min_entropy=0.2,
    )
    rule = aggregator_from_config(cfg)
    assert isinstance(rule, AGGREGATORS[name])
    expected = {
        "trimmed-mean": {"trim_fraction": 0.3},
        "dsfl": {"temperature": 0.25},
        "norm-filter": {"filter_ratio": 3.0, "min_entropy": 0.2},
    }.get(name, {})
    for param, value in expected.items():
        assert getattr(rule, param) == value
    assert rule == get_aggregator(name, **expected)
    replies, counts = _replies(3, 4, 5, seed=9), [3, 1, 2]
    out = rule(replies, counts)
    assert out.shape == (4, 5) and np.allclose(out.sum(axis=1), 1, atol=1e-6)


def test_every_registered_rule_is_configurable() -> None:
    assert set(AGGREGATIONS) == set(AGGREGATORS)


@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        ({"filter-ratio": 0}, "filter-ratio=0"),
        ({"filter-ratio": -2.0}, "filter-ratio=-2.0"),
        ({"filter-ratio": math.inf}, "filter-ratio=inf"),
        ({"filter-min-entropy": -0.5}, "filter-min-entropy=-0.5"),
        ({"filter-min-entropy": math.nan}, "filter-min-entropy=nan"),
    ],
)
def test_run_config_validates_norm_filter_keys(values: dict, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        FedConfig.from_mapping(values)
    assert fragment in str(info.value)

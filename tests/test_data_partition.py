"""Partition schemes: disjoint, complete, deterministic, non-empty; α behaviour; errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console

from common.data import partition, partition_stats, partition_table, plot_partition
from common.data.partition import label_entropy, summarize_partition
from common.errors import ConfigError, DataError

LABELS = np.random.default_rng(0).integers(0, 10, 1000)
GROUPS = np.random.default_rng(1).integers(0, 60, 1000)

CASES = [
    pytest.param(dict(scheme="iid"), id="iid"),
    pytest.param(dict(scheme="dirichlet", alpha=0.5), id="dirichlet-0.5"),
    pytest.param(dict(scheme="dirichlet", alpha=0.05), id="dirichlet-0.05"),
    pytest.param(dict(scheme="shards", shards_per_client=2), id="shards-2"),
    pytest.param(dict(scheme="natural", groups=GROUPS), id="natural"),
]


def assert_valid(parts: list[np.ndarray], n: int, num_clients: int) -> None:
    assert len(parts) == num_clients
    assert all(len(p) > 0 for p in parts), [len(p) for p in parts]
    joined = np.concatenate(parts)
    assert len(joined) == n, "not complete or not disjoint"
    assert np.array_equal(np.sort(joined), np.arange(n)), "not a partition of range(n)"
    assert all(p.dtype == np.int64 and np.all(np.diff(p) > 0) for p in parts), "not sorted"


@pytest.mark.parametrize("kwargs", CASES)
def test_scheme_is_a_deterministic_partition(kwargs: dict) -> None:
    parts = partition(LABELS, 10, seed=7, **kwargs)
    assert_valid(parts, len(LABELS), 10)
    again = partition(LABELS, 10, seed=7, **kwargs)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    other = partition(LABELS, 10, seed=8, **kwargs)
    assert not all(np.array_equal(a, b) for a, b in zip(parts, other, strict=True))


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(20, 400),
    num_clients=st.integers(1, 20),
    num_classes=st.integers(1, 8),
    seed=st.integers(0, 2**31),
    scheme=st.sampled_from(["iid", "dirichlet", "shards"]),
)
def test_property_partition(
    n: int, num_clients: int, num_classes: int, seed: int, scheme: str
) -> None:
    labels = np.random.default_rng(seed).integers(0, num_classes, n)
    try:
        parts = partition(labels, num_clients, scheme=scheme, alpha=1.0, seed=seed)
    except DataError:
        # Allowed only where the request is infeasible or Dirichlet kept leaving a client empty.
        assert scheme == "dirichlet" or num_clients * 2 > n
        return
    assert_valid(parts, n, num_clients)


def mean_entropy(alpha: float) -> float:
    stats = partition_stats(
        partition(LABELS, 10, scheme="dirichlet", alpha=alpha, seed=0), LABELS, num_classes=10
    )
    return summarize_partition(stats)["mean_label_entropy"]


def test_small_alpha_is_more_skewed_than_large_alpha() -> None:
    low, mid, high = mean_entropy(0.1), mean_entropy(1.0), mean_entropy(100.0)
    assert low < mid < high
    assert high > 3.2  # near log2(10) = 3.32: almost IID
    assert low < 2.0


def test_shards_give_few_labels_per_client() -> None:
    labels = np.repeat(np.arange(10), 100)  # 100 per class, shards of 50
    parts = partition(labels, 10, scheme="shards", shards_per_client=2, seed=0)
    assert all(len(np.unique(labels[p])) <= 2 for p in parts)


def test_natural_keeps_groups_whole_and_balances() -> None:
    parts = partition(len(GROUPS), 6, scheme="natural", groups=GROUPS, seed=0)
    owners = [set(GROUPS[p].tolist()) for p in parts]
    for a in range(6):
        for b in range(a + 1, 6):
            assert not owners[a] & owners[b], "a group was split across clients"
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= np.bincount(GROUPS).max()


def test_iid_takes_a_count() -> None:
    parts = partition(10, 3)
    assert [len(p) for p in parts] == [4, 3, 3]


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        pytest.param(
            (LABELS, 5),
            dict(scheme="dirichlet", alpha=0.0),
            ConfigError,
            "alpha=0.0",
            id="alpha zero",
        ),
        pytest.param(
            (LABELS, 5),
            dict(scheme="dirichlet", alpha=-1),
            ConfigError,
            "alpha=-1",
            id="alpha negative",
        ),
        pytest.param(
            (LABELS, 5),
            dict(scheme="dirichlet", alpha=float("nan")),
            ConfigError,
            "alpha=nan",
            id="alpha nan",
        ),
        pytest.param(
            (np.arange(3) % 2, 4),
            {},
            DataError,
            "at most 3 clients",
            id="more clients than examples",
        ),
        pytest.param((LABELS, 0), {}, ConfigError, "num_clients", id="zero clients"),
        pytest.param((LABELS, 5), dict(scheme="bogus"), ConfigError, "bogus", id="unknown scheme"),
        pytest.param(
            (100, 5),
            dict(scheme="dirichlet"),
            DataError,
            "needs integer class labels",
            id="dirichlet without labels",
        ),
        pytest.param(
            (LABELS, 5),
            dict(scheme="natural"),
            DataError,
            "needs groups",
            id="natural without groups",
        ),
        pytest.param(
            (LABELS, 100),
            dict(scheme="natural", groups=GROUPS),
            DataError,
            "60 groups for 100 clients",
            id="fewer groups than clients",
        ),
        pytest.param(
            (LABELS[:30], 10),
            dict(scheme="shards", shards_per_client=4),
            DataError,
            "40 shards exceed",
            id="too many shards",
        ),
        pytest.param((np.zeros(0, dtype=int), 1), {}, DataError, "empty", id="empty pool"),
        pytest.param(
            (LABELS[:40], 20),
            dict(scheme="dirichlet", alpha=0.01, max_tries=3),
            DataError,
            "raise alpha",
            id="dirichlet cannot fill clients",
        ),
    ],
)
def test_bad_partitions(args: tuple, kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        partition(*args, **kwargs)


def test_stats_table_and_plot(tmp_path: Path) -> None:
    parts = partition(LABELS, 4, scheme="dirichlet", alpha=0.3, seed=2)
    stats = partition_stats(parts, LABELS, num_classes=10)
    assert [s["size"] for s in stats] == [len(p) for p in parts]
    assert all(sum(s["label_counts"]) == s["size"] for s in stats)
    total = np.sum([s["label_counts"] for s in stats], axis=0)
    assert np.array_equal(total, np.bincount(LABELS, minlength=10))
    assert label_entropy([5, 5]) == pytest.approx(1.0) and label_entropy([3, 0]) == 0.0

    console = Console(record=True, width=200)
    console.print(partition_table(stats, title="demo"))
    text = console.export_text()
    assert "entropy" in text and str(stats[0]["size"]) in text

    out = plot_partition(stats, tmp_path / "sub" / "partition.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    sizes_only = partition_stats(parts, None)
    assert "label_counts" not in sizes_only[0]
    plot_partition(sizes_only, tmp_path / "sizes.png")

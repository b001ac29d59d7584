"""Plain mean of the clients' soft labels (every reply counts the same)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from coordinator.aggregation.utils import renormalise_rows, stack_replies

__all__ = ["Mean", "mean"]


def mean(replies: Sequence[np.ndarray], counts: Sequence[int]) -> np.ndarray:
    """Coordinate-wise mean of K (m, C) replies; ``counts`` are checked but unused.

    Unweighted on purpose: a client's example count is private-ish metadata (DESIGN.md
    releases it only bucketed), and one client with a large partition should not
    dominate the teacher's target.
    """
    stacked = stack_replies(replies, counts)  # (K, m, C)
    return renormalise_rows(stacked.mean(axis=0))


@dataclass(frozen=True)
class Mean:
    """The :func:`mean` rule as an ``Aggregator`` (no parameters)."""

    def __call__(self, replies: Sequence[np.ndarray], counts: Sequence[int]) -> np.ndarray:
        return mean(replies, counts)

"""Plain mean of the clients' soft labels (every reply counts the same)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from coordinator.aggregation.utils import finish, stack_replies

__all__ = ["Mean", "mean"]


def mean(replies: Sequence[np.ndarray], counts: Sequence[int], *,
         simplex: bool = True) -> np.ndarray:
    """Coordinate-wise mean of K (m, C) replies; ``counts`` are checked but unused.

    Unweighted on purpose: a client's example count is private-ish metadata (DESIGN.md
    releases it only bucketed), and one client with a large partition should not
    dominate the teacher's target.
    """
    stacked = stack_replies(replies, counts)  # (K, m, C)
    return finish(stacked.mean(axis=0), simplex)


@dataclass(frozen=True)
class Mean:
    """The :func:`mean` rule as an ``Aggregator``; ``simplex=False`` for forecasts."""

    simplex: bool = True

    def __call__(self, replies: Sequence[np.ndarray], counts: Sequence[int]) -> np.ndarray:
        return mean(replies, counts, simplex=self.simplex)

"""Coordinate-wise median of the clients' soft labels (robust to poisoned replies)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from coordinator.aggregation.utils import finish, stack_replies

__all__ = ["Median", "median"]


def median(replies: Sequence[np.ndarray], counts: Sequence[int], *,
           simplex: bool = True) -> np.ndarray:
    """Coordinate-wise median over K (m, C) replies, rows renormalised.

    The coordinate-wise median tolerates fewer than half of the replies being arbitrary
    (Yin et al. 2018, "Byzantine-Robust Distributed Learning: Towards Optimal Statistical
    Rates"). Medians of a probability vector's entries do not sum to 1, hence the
    renormalisation; an all-zero row becomes uniform (see ``renormalise_rows``).
    """
    stacked = stack_replies(replies, counts)  # (K, m, C)
    return finish(np.median(stacked, axis=0), simplex)


@dataclass(frozen=True)
class Median:
    """The :func:`median` rule as an ``Aggregator``; ``simplex=False`` for forecasts."""

    simplex: bool = True

    def __call__(self, replies: Sequence[np.ndarray], counts: Sequence[int]) -> np.ndarray:
        return median(replies, counts, simplex=self.simplex)

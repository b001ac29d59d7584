"""Mean of the clients' soft labels weighted by their example counts (FedAvg-style)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from coordinator.aggregation.utils import finish, stack_replies, weights_from_counts

__all__ = ["WeightedMean", "weighted_mean"]


def weighted_mean(replies: Sequence[np.ndarray], counts: Sequence[int], *,
                  simplex: bool = True) -> np.ndarray:
    """Σ_k n_k y_k / Σ_k n_k over K (m, C) replies with example counts n_k.

    The same weighting as FedAvg (McMahan et al. 2017); it is also what SecAgg+ can
    compute, as a weighted sum divided by the summed counts.
    """
    stacked = stack_replies(replies, counts)  # (K, m, C)
    weights = weights_from_counts(counts)  # (K,)
    return finish(np.tensordot(weights, stacked, axes=1), simplex)  # (m, C)


@dataclass(frozen=True)
class WeightedMean:
    """The :func:`weighted_mean` rule as an ``Aggregator``; ``simplex=False`` for forecasts."""

    simplex: bool = True

    def __call__(self, replies: Sequence[np.ndarray], counts: Sequence[int]) -> np.ndarray:
        return weighted_mean(replies, counts, simplex=self.simplex)

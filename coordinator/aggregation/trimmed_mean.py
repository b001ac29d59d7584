"""Coordinate-wise trimmed mean of the clients' soft labels."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from common.errors import ConfigError
from coordinator.aggregation.utils import finish, stack_replies

__all__ = ["TrimmedMean", "trimmed_mean"]


def _check_trim_fraction(trim_fraction: float) -> None:
    if (
        not isinstance(trim_fraction, int | float)
        or isinstance(trim_fraction, bool)
        or not math.isfinite(trim_fraction)
        or not 0 <= trim_fraction < 0.5
    ):
        raise ConfigError(
            f"trim_fraction must be a number in [0, 0.5), found {trim_fraction!r}; "
            "it is the share of replies dropped at each end of every coordinate"
        )


def trimmed_mean(
    replies: Sequence[np.ndarray], counts: Sequence[int], *, trim_fraction: float = 0.1,
    simplex: bool = True,
) -> np.ndarray:
    """Per coordinate, drop the ``floor(trim_fraction · K)`` lowest and highest of the K
    values and average the rest; rows renormalised.

    The β-trimmed mean of Yin et al. 2018 ("Byzantine-Robust Distributed Learning"):
    it tolerates up to ``floor(trim_fraction · K)`` arbitrary replies. With
    ``trim_fraction`` 0 it is the plain mean; with too few replies to trim anything
    (K < 1 / trim_fraction) it is the plain mean as well — choose K accordingly.

    Parameters
    ----------
    trim_fraction : float
        Share cut at each end, in [0, 0.5) (default: 0.1).
    """
    _check_trim_fraction(trim_fraction)
    stacked = stack_replies(replies, counts)  # (K, m, C)
    num_replies = stacked.shape[0]
    cut = math.floor(trim_fraction * num_replies)
    ordered = np.sort(stacked, axis=0)  # sorted over clients, per coordinate
    kept = ordered[cut : num_replies - cut]  # (K - 2 cut, m, C), never empty
    return finish(kept.mean(axis=0), simplex)


@dataclass(frozen=True)
class TrimmedMean:
    """The :func:`trimmed_mean` rule as an ``Aggregator``.

    Parameters
    ----------
    trim_fraction : float
        Share cut at each end of every coordinate, in [0, 0.5) (default: 0.1).
    """

    trim_fraction: float = 0.1
    simplex: bool = True  # False for forecasts: no renormalisation

    def __post_init__(self) -> None:
        _check_trim_fraction(self.trim_fraction)

    def __call__(self, replies: Sequence[np.ndarray], counts: Sequence[int]) -> np.ndarray:
        return trimmed_mean(replies, counts, trim_fraction=self.trim_fraction,
                            simplex=self.simplex)

"""Distance (and entropy) filtering of whole replies, then a weighted mean of the rest."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from common.errors import ConfigError
from coordinator.aggregation.utils import renormalise_rows, stack_replies, weights_from_counts

__all__ = ["DISTANCE_FLOOR", "NormFilter", "norm_filter", "reply_distances", "reply_entropies"]

log = logging.getLogger(__name__)

# Absolute slack (mean L1 per row) added to the distance threshold. When the honest
# replies agree (almost) exactly, the median distance is ~0 and any ratio of it would
# drop honest replies over float rounding; 1e-3 is below the float16 codec's error.
DISTANCE_FLOOR = 1e-3


def _check_params(filter_ratio: float, min_entropy: float) -> None:
    for name, value, ok, rule in (
        ("filter_ratio", filter_ratio, lambda v: v > 0, "> 0"),
        ("min_entropy", min_entropy, lambda v: v >= 0, ">= 0"),
    ):
        if (
            not isinstance(value, int | float)
            or isinstance(value, bool)
            or not math.isfinite(value)
            or not ok(value)
        ):
            raise ConfigError(f"{name} must be a finite number {rule}, found {value!r}")


def reply_distances(stacked: np.ndarray) -> np.ndarray:
    """Each reply's mean-over-rows L1 distance to the coordinate-wise median, (K,) float64.

    ``stacked`` is (K, m, C). The reference is the coordinate-wise median with rows
    renormalised, a point on the simplex that fewer than half of the replies cannot move
    far; two points on the simplex are at most 2 apart in L1, so every distance is in
    [0, 2] for validated replies.
    """
    centre = renormalise_rows(np.median(stacked, axis=0)).astype(np.float64)  # (m, C)
    return np.abs(stacked - centre[None]).sum(axis=2).mean(axis=1)


def reply_entropies(stacked: np.ndarray) -> np.ndarray:
    """Each reply's mean row entropy in nats (0 log 0 = 0), (K,) float64."""
    p = np.clip(stacked, 0.0, None)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, -p * np.log(p), 0.0)
    return terms.sum(axis=2).mean(axis=1)


def norm_filter(
    replies: Sequence[np.ndarray],
    counts: Sequence[int],
    *,
    filter_ratio: float = 2.0,
    min_entropy: float = 0.0,
) -> np.ndarray:
    """Drop whole replies far from the consensus (or too confident), then average.

    1. The coordinate-wise median of the K (m, C) replies is the reference point (it
       tolerates fewer than half of the replies being arbitrary).
    2. Each reply's distance is the mean over rows of the L1 distance of its row to the
       reference row. Soft labels live on the simplex, so every distance lies in [0, 2]
       and a single scale-free threshold fits every task.
    3. A reply is kept if its distance is at most ``filter_ratio`` × the median of the
       K distances (+ :data:`DISTANCE_FLOOR`, so identical honest replies are never
       dropped), and, when ``min_entropy`` > 0, its mean row entropy (nats) is at least
       ``min_entropy``: confident one-hot replies (label-flipping or colluding
       attackers) carry ~0 entropy, which honest students trained with temperature
       rarely do.
    4. The kept replies are averaged weighted by their example counts (as FedAvg), rows
       renormalised.

    This is the distance-based filtering of Krum (Blanchard et al. 2017, "Machine
    Learning with Adversaries: Byzantine Tolerant Gradient Descent") and of FLTrust
    (Cao et al. 2021), which score each update against the others or a trusted
    reference, applied to whole soft-label matrices: unlike a coordinate-wise median or
    trimmed mean it keeps the honest replies' weighted mean intact, so it loses no
    statistical efficiency when nobody attacks. If fewer than half of the replies
    survive, the consensus itself is in doubt and the coordinate-wise median is returned
    instead (logged at debug level).

    Parameters
    ----------
    filter_ratio : float
        Keep replies within this multiple of the median distance, > 0 (default: 2.0).
    min_entropy : float
        Drop replies whose mean row entropy is below this, in nats, >= 0; 0 disables
        the check (default: 0.0). ln C is the uniform row's entropy.
    """
    _check_params(filter_ratio, min_entropy)
    stacked = stack_replies(replies, counts)  # (K, m, C)
    weights = weights_from_counts(counts)  # (K,), validates the counts
    num_replies = stacked.shape[0]

    distances = reply_distances(stacked)
    threshold = filter_ratio * float(np.median(distances)) + DISTANCE_FLOOR
    keep = distances <= threshold
    if min_entropy > 0:
        keep &= reply_entropies(stacked) >= min_entropy

    kept = int(keep.sum())
    if 2 * kept < num_replies:
        log.debug(
            "norm-filter: only %d of %d replies pass (distance <= %.4g, entropy >= %g); "
            "falling back to the coordinate-wise median",
            kept,
            num_replies,
            threshold,
            min_entropy,
        )
        return renormalise_rows(np.median(stacked, axis=0))
    if kept < num_replies:
        log.debug(
            "norm-filter: dropped replies %s of %d (distances %s, threshold %.4g)",
            np.flatnonzero(~keep).tolist(),
            num_replies,
            np.round(distances[~keep], 4).tolist(),
            threshold,
        )
    kept_weights = weights[keep]
    if kept_weights.sum() <= 0:  # only zero-count replies survived: weigh them equally
        kept_weights = np.ones_like(kept_weights)
    kept_weights = kept_weights / kept_weights.sum()
    return renormalise_rows(np.tensordot(kept_weights, stacked[keep], axes=1))  # (m, C)


@dataclass(frozen=True)
class NormFilter:
    """The :func:`norm_filter` rule as an ``Aggregator``.

    Parameters
    ----------
    filter_ratio : float
        Keep replies within this multiple of the median distance, > 0 (default: 2.0).
    min_entropy : float
        Drop replies less uncertain than this (mean row entropy, nats), >= 0; 0 is off
        (default: 0.0).
    """

    filter_ratio: float = 2.0
    min_entropy: float = 0.0

    def __post_init__(self) -> None:
        _check_params(self.filter_ratio, self.min_entropy)

    def __call__(self, replies: Sequence[np.ndarray], counts: Sequence[int]) -> np.ndarray:
        return norm_filter(
            replies, counts, filter_ratio=self.filter_ratio, min_entropy=self.min_entropy
        )

"""Helpers shared by the aggregation rules: input checks and snapping onto the simplex.

The coordinate-wise rules (mean, weighted mean, median, trimmed mean) also combine
forecasts, rows of real numbers; :func:`finish` puts an aggregate back on the simplex only
where the rows are probabilities (``simplex=True``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

__all__ = ["finish", "renormalise_rows", "stack_replies", "weights_from_counts"]

log = logging.getLogger(__name__)


def stack_replies(replies: Sequence[np.ndarray], counts: Sequence[int]) -> np.ndarray:
    """Stack K validated (m, C) replies into a float64 (K, m, C) array.

    Replies reach an aggregator after ``decode_knowledge`` accepted them, so a problem
    here is the caller's bug (not a client's): it raises ``ValueError`` with the values.
    """
    if len(replies) == 0:
        raise ValueError("cannot aggregate an empty list of replies")
    if len(counts) != len(replies):
        raise ValueError(f"got {len(replies)} replies but {len(counts)} example counts")
    shape = np.shape(replies[0])
    if len(shape) != 2:
        raise ValueError(f"each reply must be an (m, C) matrix, reply 0 has shape {shape}")
    for k, reply in enumerate(replies):
        if np.shape(reply) != shape:
            raise ValueError(f"reply {k} has shape {np.shape(reply)}, reply 0 has {shape}")
    stacked = np.stack([np.asarray(r, dtype=np.float64) for r in replies])  # (K, m, C)
    if not np.all(np.isfinite(stacked)):
        raise ValueError("replies contain non-finite values")
    return stacked


def weights_from_counts(counts: Sequence[int]) -> np.ndarray:
    """Normalised float64 (K,) weights proportional to the example counts."""
    arr = np.asarray(counts, dtype=np.float64)
    if arr.ndim != 1 or not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise ValueError(f"example counts must be finite and >= 0, found {list(counts)}")
    total = arr.sum()
    if total <= 0:
        raise ValueError(f"example counts sum to {total:g}; at least one must be > 0")
    return arr / total


def renormalise_rows(aggregate: np.ndarray) -> np.ndarray:
    """Clip (m, C) to >= 0 and divide each row by its sum; returns float32.

    Coordinate-wise robust statistics (median, trimmed mean) do not preserve row sums,
    and can give an all-zero row when the clients disagree completely (e.g. three
    clients, each certain of a different class). Such a row carries no consensus, so it
    becomes uniform rather than an arbitrary class.
    """
    clipped = np.clip(aggregate, 0.0, None)
    sums = clipped.sum(axis=1, keepdims=True)  # (m, 1)
    empty = sums[:, 0] <= 0
    if empty.any():
        log.debug("aggregation: %s rows without consensus set to uniform", int(empty.sum()))
        clipped[empty] = 1.0
        sums[empty] = clipped.shape[1]
    return (clipped / sums).astype(np.float32)


def finish(aggregate: np.ndarray, simplex: bool) -> np.ndarray:
    """Rows of probabilities renormalised (:func:`renormalise_rows`); forecasts as they
    are, float32."""
    return renormalise_rows(aggregate) if simplex else aggregate.astype(np.float32)

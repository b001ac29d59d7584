"""Aggregation rules for soft labels: one rule per module, chosen by name.

An :data:`Aggregator` takes K validated replies, each an (m, C) matrix of probabilities,
and the K clients' example counts, and returns the (m, C) aggregate with rows on the
simplex (float32). Build one from the run config with :func:`get_aggregator`::

    aggregate = get_aggregator("trimmed-mean", trim_fraction=0.2)
    knowledge = aggregate(replies, counts)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import fields
from typing import Any

import numpy as np

from common.errors import ConfigError
from coordinator.aggregation.dsfl import DsFl
from coordinator.aggregation.mean import Mean
from coordinator.aggregation.median import Median
from coordinator.aggregation.trimmed_mean import TrimmedMean
from coordinator.aggregation.weighted_mean import WeightedMean

__all__ = ["AGGREGATORS", "Aggregator", "get_aggregator"]

Aggregator = Callable[[Sequence[np.ndarray], Sequence[int]], np.ndarray]

# Name → frozen dataclass whose fields are the rule's parameters (validated on creation).
# Names are spelled as in the run config (kebab-case); get_aggregator also accepts "_".
AGGREGATORS: dict[str, type] = {
    "mean": Mean,
    "weighted-mean": WeightedMean,
    "median": Median,
    "trimmed-mean": TrimmedMean,
    "dsfl": DsFl,
}


def get_aggregator(name: str, **params: Any) -> Aggregator:
    """The aggregation rule ``name`` with its parameters, validated now, not mid-run.

    ``name`` is a key of :data:`AGGREGATORS`; ``weighted_mean`` spells ``weighted-mean``.

    Raises
    ------
    ConfigError
        Unknown name (the message lists the known ones), unknown parameter, or a
        parameter value out of range (the message quotes it).
    """
    key = name.replace("_", "-") if isinstance(name, str) else name
    if key not in AGGREGATORS:
        raise ConfigError(
            f"Unknown aggregation rule {name!r}; choose one of {', '.join(AGGREGATORS)}."
        )
    rule = AGGREGATORS[key]
    accepted = [f.name for f in fields(rule)]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ConfigError(
            f"Aggregation rule {name!r} has no parameter(s) {unknown}; "
            f"it accepts {accepted or 'none'}."
        )
    aggregator: Aggregator = rule(**params)
    return aggregator

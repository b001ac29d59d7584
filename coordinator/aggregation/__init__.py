"""Aggregation rules for soft labels: one rule per module, chosen by name.

An :data:`Aggregator` takes K validated replies, each an (m, C) matrix of probabilities,
and the K clients' example counts, and returns the (m, C) aggregate with rows on the
simplex (float32). Build one by name with :func:`get_aggregator`, or from a parsed
run config with :func:`aggregator_from_config`::

    aggregate = get_aggregator("trimmed-mean", trim_fraction=0.2)
    aggregate = aggregator_from_config(cfg)  # cfg.aggregation with cfg's parameters
    knowledge = aggregate(replies, counts)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import fields
from typing import TYPE_CHECKING, Any

import numpy as np

from common.errors import ConfigError
from coordinator.aggregation.dsfl import DsFl
from coordinator.aggregation.filter import NormFilter
from coordinator.aggregation.mean import Mean
from coordinator.aggregation.median import Median
from coordinator.aggregation.trimmed_mean import TrimmedMean
from coordinator.aggregation.weighted_mean import WeightedMean

if TYPE_CHECKING:
    from common.config import FedConfig

__all__ = ["AGGREGATORS", "CONFIG_PARAMS", "Aggregator", "aggregator_from_config", "get_aggregator"]

Aggregator = Callable[[Sequence[np.ndarray], Sequence[int]], np.ndarray]

# Name → frozen dataclass whose fields are the rule's parameters (validated on creation).
# Names are spelled as in the run config (kebab-case); get_aggregator also accepts "_".
AGGREGATORS: dict[str, type] = {
    "mean": Mean,
    "weighted-mean": WeightedMean,
    "median": Median,
    "trimmed-mean": TrimmedMean,
    "dsfl": DsFl,
    "norm-filter": NormFilter,
}

# Rule name → {rule parameter: FedConfig field}, for the rules that take parameters.
CONFIG_PARAMS: dict[str, dict[str, str]] = {
    "trimmed-mean": {"trim_fraction": "trim_fraction"},
    "dsfl": {"temperature": "dsfl_temperature"},
    "norm-filter": {"filter_ratio": "filter_ratio", "min_entropy": "filter_min_entropy"},
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


def aggregator_from_config(cfg: FedConfig, *, simplex: bool = True) -> Aggregator:
    """The rule ``cfg.aggregation`` with its parameters taken from ``cfg``.

    ``simplex=False`` (forecasts) leaves the aggregate's rows as the rule computes them;
    only the coordinate-wise rules take it (common/task.py ``check_fits`` refuses the
    others for forecasts before a run starts).

    The one place that maps run-config keys (``trim-fraction``, ``dsfl-temperature``,
    ``filter-ratio``, ``filter-min-entropy``) onto rule parameters; see
    :data:`CONFIG_PARAMS`.

    Raises
    ------
    ConfigError
        As :func:`get_aggregator`.
    """
    mapping = CONFIG_PARAMS.get(cfg.aggregation, {})
    params = {param: getattr(cfg, field) for param, field in mapping.items()}
    if not simplex:
        params["simplex"] = False
    return get_aggregator(cfg.aggregation, **params)

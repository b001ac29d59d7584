"""A node's privacy policy: what the node allows, whatever a run config asks.

The coordinator writes the run config; the node owns its data. So the ε budget, δ,
whether non-DP training is ever allowed and whether the node answers without secure
aggregation come from the node: its ``--node-config`` (deployment) or the
``policy.toml`` in its state directory (written by ``fedistill simulate`` for each
simulated node, from the simulation's own settings). A run config can ask for less
privacy; the node declines it. It can ask for more (a smaller ε): that is honoured.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import tomli_w

from common.errors import ConfigError

__all__ = ["POLICY_FILE", "NodePolicy", "Refusal"]

POLICY_FILE = "policy.toml"
DELTA_FACTOR = 10  # δ must stay below 1 / (DELTA_FACTOR · n) for a node holding n examples


class Refusal:
    """The reason codes a node sends instead of text (full text stays in its own log)."""

    BUDGET = "budget-exhausted"
    NON_DP = "non-dp-refused"
    UNMASKED = "secure-aggregation-required"
    DELTA = "delta-too-large"
    ALREADY_SPENT = "round-already-recorded"
    PUBLIC_ONLY = "private-training-off"
    FAILED = "round-failed"


@dataclass(frozen=True)
class NodePolicy:
    """The node's own privacy rules (keys in node config / policy.toml in kebab case)."""

    epsilon: float = 8.0  # the ε budget over every round of every run on this node's data
    delta: float = 1e-5  # δ of that budget; fixed for good by the ledger's first record
    allow_non_dp: bool = False  # never train on private data without DP unless set
    require_secure_aggregation: bool = True  # answer only rounds masked by SecAgg+

    def __post_init__(self) -> None:
        if not _real(self.epsilon) or not 0 < self.epsilon < math.inf:
            raise ConfigError(f"node policy: epsilon must be a finite number > 0, found "
                              f"{self.epsilon!r}.")
        if not _real(self.delta) or not 0 < self.delta < 1:
            raise ConfigError(f"node policy: delta must be in (0, 1), found {self.delta!r}.")
        for name in ("allow_non_dp", "require_secure_aggregation"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"node policy: {name.replace('_', '-')} must be true or "
                                  f"false, found {getattr(self, name)!r}.")
        object.__setattr__(self, "epsilon", float(self.epsilon))
        object.__setattr__(self, "delta", float(self.delta))

    @classmethod
    def load(cls, state_dir: Path, node_config: Mapping[str, Any]) -> NodePolicy:
        """``policy.toml`` in ``state_dir`` (if any), overridden by ``node_config`` keys."""
        values: dict[str, Any] = {}
        path = state_dir / POLICY_FILE
        if path.exists():
            try:
                values.update(tomllib.loads(path.read_text()))
            except (OSError, tomllib.TOMLDecodeError) as exc:
                raise ConfigError(f"{path} cannot be read as TOML: {exc}") from exc
        values.update({k: v for k, v in node_config.items() if k in _KEYS})
        unknown = sorted(set(values) - set(_KEYS))
        if unknown:
            raise ConfigError(f"{path}: unknown policy keys {unknown}; known: {sorted(_KEYS)}")
        return cls(**{_KEYS[k]: _coerce(_KEYS[k], v) for k, v in values.items()})

    def save(self, state_dir: Path) -> Path:
        """Write ``policy.toml`` (what a simulation does for each of its nodes)."""
        state_dir.mkdir(parents=True, exist_ok=True)
        path = state_dir / POLICY_FILE
        path.write_text(tomli_w.dumps({k.replace("_", "-"): v for k, v in asdict(self).items()}))
        return path

    def budget(self, requested: float) -> float:
        """The ε budget for a run that asks for ``requested``: never more than the node's."""
        return min(self.epsilon, requested) if requested > 0 else self.epsilon

    @staticmethod
    def delta_fits(delta: float, num_examples: int) -> bool:
        """δ < 1 / (10 n): below the chance of releasing one of n records outright."""
        return num_examples > 0 and delta < 1.0 / (DELTA_FACTOR * num_examples)


_KEYS = {f.name.replace("_", "-"): f.name for f in fields(NodePolicy)}


def _real(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _coerce(name: str, value: Any) -> Any:
    """Flower's --node-config gives strings for some values; the file gives TOML types."""
    if name in ("epsilon", "delta") and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value  # __post_init__ names the bad value
    if name in ("allow_non_dp", "require_secure_aggregation") and isinstance(value, str):
        return {"true": True, "false": False}.get(value.lower(), value)
    return value

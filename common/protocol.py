"""The wire protocol of one round: record names and (de)serialisation helpers.

The coordinator and the client never import each other; both speak through the names
defined here. Every helper that reads network input validates it and raises
:class:`~common.errors.KnowledgeError` with a reason rather than letting a KeyError or a
numpy error escape.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from common.errors import KnowledgeError

# Coordinator -> client
ROUND = "round"  # ConfigRecord: round, run-id, fingerprint, rounds, evaluate, encoding
PUBLIC = "public"  # ArrayRecord: {"indices": int64 (m,)}
KNOWLEDGE = "knowledge"  # ArrayRecord: the teacher's encoded soft labels on the batch
# Client -> coordinator
SOFT_LABELS = "soft-labels"  # ArrayRecord: the student's encoded soft labels on the batch
TEST_SOFT_LABELS = "test-soft-labels"  # ArrayRecord, evaluate rounds: on the test inputs
METRICS = "metrics"  # MetricRecord: epsilon, num-examples, declined, dp-steps, sigma
INFO = "info"  # ConfigRecord: student family, decline reason

REPLY_METRICS = ("epsilon", "num-examples", "declined", "dp-steps", "noise-multiplier")


@dataclass(frozen=True)
class RoundPlan:
    """What the coordinator tells every sampled client about this round."""

    round: int
    run_id: str
    rounds: int
    fingerprint: str
    evaluate: bool

    def to_record(self) -> ConfigRecord:
        return ConfigRecord(
            {"round": self.round, "run-id": self.run_id, "rounds": self.rounds,
             "fingerprint": self.fingerprint, "evaluate": self.evaluate}
        )

    @classmethod
    def from_record(cls, rec: ConfigRecord) -> RoundPlan:
        try:
            return cls(int(rec["round"]), str(rec["run-id"]), int(rec["rounds"]),
                       str(rec["fingerprint"]), bool(rec["evaluate"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise KnowledgeError(f"round plan is malformed: {exc!r}") from exc


def to_array_record(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})


def from_array_record(content: RecordDict, name: str) -> dict[str, np.ndarray]:
    """The numpy arrays of record ``name``; a missing record is a KnowledgeError."""
    if name not in content.array_records:
        raise KnowledgeError(f"reply has no {name!r} array record")
    try:
        return {k: v.numpy() for k, v in content.array_records[name].items()}
    except Exception as exc:  # a corrupt Array from the network, whatever the cause
        raise KnowledgeError(f"array record {name!r} cannot be read: {exc!r}") from exc


def read_metrics(content: RecordDict) -> dict[str, float]:
    """The reply's metrics, checked for presence and finiteness."""
    if METRICS not in content.metric_records:
        raise KnowledgeError(f"reply has no {METRICS!r} metric record")
    rec: MetricRecord = content.metric_records[METRICS]
    out: dict[str, float] = {}
    for key in REPLY_METRICS:
        if key not in rec:
            raise KnowledgeError(f"reply metrics miss {key!r}")
        value = rec[key]
        if not isinstance(value, int | float) or not np.isfinite(value) or value < 0:
            raise KnowledgeError(f"reply metric {key}={value!r} is not a finite number >= 0")
        out[key] = float(value)
    return out

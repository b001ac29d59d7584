"""The wire protocol of one round: record names and (de)serialisation helpers.

The coordinator and the client never import each other; both speak through the names
defined here. Every helper that reads network input validates it and raises
:class:`~common.errors.KnowledgeError` with a reason rather than letting a KeyError or a
numpy error escape.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from common.errors import KnowledgeError

_HEX64 = re.compile(r"[0-9a-f]{64}")
_FINGERPRINT = re.compile(r"sha256:[0-9a-f]{64}")

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
REFUSED = "refused"  # INFO key of a reply that refuses the round: a policy reason code
COUNT_BUCKET = 100  # example counts leave a node rounded up to a multiple of this


def released_count(num_examples: int, aggregation: str) -> int:
    """The example count a node may release: only the weighted mean needs it, and then
    only rounded up to a public bucket (the exact count is private-data-derived)."""
    if aggregation != "weighted-mean":
        return 1
    return max(COUNT_BUCKET, -(-num_examples // COUNT_BUCKET) * COUNT_BUCKET)


def refusal_record(code: str) -> RecordDict:
    """A reply that answers a round with a policy refusal and nothing else."""
    return RecordDict({INFO: ConfigRecord({REFUSED: code})})


@dataclass(frozen=True)
class LedgerHead:
    """The ledger's last hash, its length and its key's fingerprint, as a reply carries
    them: the coordinator keeps them so an audit catches truncation, rollback, a new key."""

    head: str
    records: int
    key: str

    def to_info(self) -> dict[str, str | int]:
        return {"ledger-head": self.head, "ledger-records": self.records,
                "ledger-key": self.key}

    @classmethod
    def from_info(cls, info: Mapping[str, object]) -> LedgerHead:
        """Parse what a reply claims; malformed values are a KnowledgeError."""
        head, records, key = (info.get(k) for k in ("ledger-head", "ledger-records",
                                                     "ledger-key"))
        if not (isinstance(head, str) and _HEX64.fullmatch(head)):
            raise KnowledgeError(f"ledger-head={_short_repr(head)} is not a sha256 hex digest")
        if not isinstance(records, int) or isinstance(records, bool) or records < 0:
            raise KnowledgeError(f"ledger-records={_short_repr(records)} is not a count >= 0")
        if not (isinstance(key, str) and _FINGERPRINT.fullmatch(key)):
            raise KnowledgeError(f"ledger-key={_short_repr(key)} is not a key fingerprint")
        return cls(head, records, key)


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
        arrays = {k: v.numpy() for k, v in content.array_records[name].items()}
    except Exception as exc:  # a corrupt Array from the network, whatever the cause
        raise KnowledgeError(f"array record {name!r} cannot be read: {exc!r}") from exc
    for key, value in arrays.items():
        if type(value) is not np.ndarray:  # np.load turns zip bytes into an NpzFile
            raise KnowledgeError(
                f"array {key!r} of record {name!r} is a {type(value).__name__}, not a numpy array"
            )
    return arrays


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
        number = _finite_float(value)
        if number is None or number < 0:
            raise KnowledgeError(
                f"reply metric {key}={_short_repr(value)} is not a finite number >= 0"
            )
        out[key] = number
    return out


def _finite_float(value: object) -> float | None:
    """``value`` as a finite float, or None: not a number, or too big for a float.

    MetricRecord takes Python ints of any size (``np.isfinite(10**30)`` raises TypeError
    and ``float(10**400)`` OverflowError) and lists, so nothing is assumed.
    """
    if not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _short_repr(value: object) -> str:
    """A repr fit for a log line (an int past 4,300 digits has none)."""
    try:
        text = repr(value)
    except Exception:
        return f"<{type(value).__name__}>"
    return text if len(text) <= 40 else f"{text[:37]}..."


# --------------------------------------------------------------------------- secure mode
# Under SecAgg+ (secure-aggregation = true) a round travels as Flower's legacy FitIns /
# FitRes, the only form secaggplus_mod masks: the instructions are the parameters
# [indices, *knowledge arrays in sorted key order] with the round plan as the config; the
# reply's parameters are [soft labels on the public batch (m*C,), and in evaluate rounds
# on the test set (n*C,)], its metrics those below (visible: SecAgg+ masks only arrays).
FITINS_PARAMETERS = "fitins.parameters"
SECURE_REPLY_METRICS = ("epsilon", "declined", "dp-steps", "noise-multiplier",
                        "test-accuracy", "student", "client-id", "reason", "non-private",
                        "ledger-head", "ledger-records", "ledger-key")


def pack_secure_instructions(
    plan: RoundPlan, indices: np.ndarray, knowledge: Mapping[str, np.ndarray],
) -> tuple[list[np.ndarray], dict[str, bool | int | float | str]]:
    """The FitIns parameters and config of a secure round."""
    keys = sorted(knowledge)
    config = {**dict(plan.to_record()), "knowledge-keys": ",".join(keys)}
    return [np.asarray(indices, dtype=np.int64), *(knowledge[k] for k in keys)], config


def unpack_secure_instructions(
    parameters: list[np.ndarray], config: Mapping[str, object],
) -> tuple[RoundPlan, np.ndarray, dict[str, np.ndarray]]:
    """Inverse of :func:`pack_secure_instructions`; malformed input is a KnowledgeError."""
    plan = RoundPlan.from_record(ConfigRecord(dict(config)))  # type: ignore[arg-type]
    keys = [k for k in str(config.get("knowledge-keys", "")).split(",") if k]
    if len(parameters) != 1 + len(keys):
        raise KnowledgeError(f"secure instructions carry {len(parameters)} arrays, expected "
                             f"{1 + len(keys)} (indices and {keys})")
    return plan, parameters[0], dict(zip(keys, parameters[1:], strict=True))

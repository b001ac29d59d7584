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
from flwr.common import parameters_to_ndarrays
from flwr.compat.common import recorddict_compat as compat

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
    return check_metrics(_metric_record(content))


def check_metrics(rec: Mapping[str, object]) -> dict[str, float]:
    """:data:`REPLY_METRICS` from ``rec``, each a finite number >= 0, else KnowledgeError."""
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


# --------------------------------------------------------------------------- one reply
@dataclass(frozen=True)
class ReplyMeta:
    """What a reply says besides its soft labels.

    Built once by the client and parsed and checked once by the coordinator, the same on
    the plain path (a MetricRecord of numbers and a ConfigRecord of the rest) and under
    SecAgg+ (the FitRes metrics that travel beside the masked vector, and its weight).
    """

    client_id: str
    student: str
    epsilon: float  # ε so far at the node's δ; finite (see ``non_private``)
    weight: int  # the released, bucketed example count (released_count)
    declined: bool
    reason: str  # a policy reason code, or ""
    dp_steps: int
    noise_multiplier: float
    non_private: bool  # private data was used without DP: no finite ε holds
    ledger: LedgerHead | None
    test_accuracy: float | None = None  # SecAgg+ only: the student's own test accuracy

    @property
    def reported_epsilon(self) -> float:
        return math.inf if self.non_private else self.epsilon

    def metrics(self) -> dict[str, int | float]:
        return {"epsilon": self.epsilon, "num-examples": self.weight,
                "declined": int(self.declined), "dp-steps": self.dp_steps,
                "noise-multiplier": self.noise_multiplier}

    def info(self) -> dict[str, str | int | bool]:
        ledger = self.ledger.to_info() if self.ledger is not None else {}
        return {"client-id": self.client_id, "student": self.student, "reason": self.reason,
                "non-private": self.non_private, **ledger}

    def flat(self) -> dict[str, str | int | float | bool]:
        """Everything in one mapping (SecAgg+'s FitRes metrics; the weight travels apart)."""
        test = -1.0 if self.test_accuracy is None else self.test_accuracy
        return {**self.metrics(), **self.info(), "test-accuracy": test}

    @classmethod
    def parse(cls, metrics: Mapping[str, object], info: Mapping[str, object]) -> ReplyMeta:
        """Check and type what a reply claims; any bad value is a KnowledgeError."""
        numbers = check_metrics(metrics)
        test = info.get("test-accuracy")
        if test is not None and (_finite_float(test) is None or not -1 <= float(test) <= 1):
            raise KnowledgeError(f"test-accuracy={_short_repr(test)} is not in [0, 1] or -1")
        return cls(
            client_id=_text(info, "client-id"), student=_text(info, "student"),
            epsilon=numbers["epsilon"], weight=int(numbers["num-examples"]),
            declined=bool(numbers["declined"]), reason=_text(info, "reason"),
            dp_steps=int(numbers["dp-steps"]),
            noise_multiplier=numbers["noise-multiplier"],
            non_private=info.get("non-private") is True,
            ledger=LedgerHead.from_info(info) if "ledger-head" in info else None,
            test_accuracy=None if test is None or float(test) < 0 else float(test),
        )

    @classmethod
    def parse_flat(cls, values: Mapping[str, object], weight: object) -> ReplyMeta:
        """:meth:`parse` of SecAgg+'s metrics, with the FitRes weight as the count."""
        metrics = {k: values.get(k) for k in REPLY_METRICS if k in values}
        metrics["num-examples"] = weight
        return cls.parse(metrics, values)


def _text(info: Mapping[str, object], key: str) -> str:
    """A label for logs and records: whatever came, as text of at most 256 characters."""
    value = info.get(key, "")
    return (value if isinstance(value, str) else _short_repr(value))[:256]


def plain_reply(meta: ReplyMeta, soft_labels: Mapping[str, np.ndarray],
                test_soft_labels: Mapping[str, np.ndarray] | None) -> RecordDict:
    """A plain reply: encoded soft labels (and test soft labels) with ``meta``."""
    content = RecordDict()
    content[SOFT_LABELS] = to_array_record(soft_labels)
    if test_soft_labels is not None:
        content[TEST_SOFT_LABELS] = to_array_record(test_soft_labels)
    content[METRICS] = MetricRecord(meta.metrics())
    content[INFO] = ConfigRecord(meta.info())
    return content


def parse_plain_meta(content: RecordDict) -> ReplyMeta:
    """The :class:`ReplyMeta` of a plain reply (KnowledgeError when malformed)."""
    info = content.config_records[INFO] if INFO in content.config_records else {}
    return ReplyMeta.parse(_metric_record(content), info)


def _metric_record(content: RecordDict) -> Mapping[str, object]:
    if METRICS not in content.metric_records:
        raise KnowledgeError(f"reply has no {METRICS!r} metric record")
    return content.metric_records[METRICS]


# --------------------------------------------------------------------------- secure mode
# Under SecAgg+ (secure-aggregation = true) a round travels as Flower's legacy FitIns /
# FitRes, the only form secaggplus_mod masks: the instructions are the parameters
# [indices, *knowledge arrays in sorted key order] with the round plan as the config; the
# reply's parameters are [soft labels on the public batch (m*C,), and in evaluate rounds
# on the test set (n*C,)], its metrics ReplyMeta.flat() (visible: SecAgg+ masks only arrays).
FITINS_PARAMETERS = "fitins.parameters"
FITRES_PARAMETERS = "fitres.parameters"  # the FitRes record of a secure reply


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


def read_instructions(content: RecordDict) -> tuple[RoundPlan, np.ndarray, dict[str, np.ndarray]]:
    """The round plan, the public indices and the teacher's knowledge of an instruction,
    plain or secure (the legacy FitIns that secaggplus_mod needs)."""
    if FITINS_PARAMETERS in content.array_records:
        fitins = compat.recorddict_to_fitins(content, keep_input=True)
        return unpack_secure_instructions(parameters_to_ndarrays(fitins.parameters),
                                          fitins.config)
    return (RoundPlan.from_record(content.config_records[ROUND]),
            from_array_record(content, PUBLIC)["indices"],
            from_array_record(content, KNOWLEDGE))

"""Reply validation: every bad reply is rejected with a reason, never raised."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from client.attacks import corrupt, poison
from common.distill.codec import encode_knowledge
from common.errors import KnowledgeError
from common.protocol import (
    INFO,
    METRICS,
    SOFT_LABELS,
    LedgerHead,
    ReplyMeta,
    parse_plain_meta,
    plain_reply,
    to_array_record,
)
from coordinator.replies import Rejection, ValidReply, validate_content

M, C = 6, 3


def _probs() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.dirichlet(np.ones(C), size=M).astype(np.float32)


def _content(arrays: dict[str, np.ndarray] | None = None,
             metrics: dict[str, float] | None = None) -> RecordDict:
    content = RecordDict()
    content[SOFT_LABELS] = to_array_record(arrays if arrays is not None
                                           else encode_knowledge(_probs(), "float16"))
    content[METRICS] = MetricRecord(metrics if metrics is not None else {
        "epsilon": 1.5, "num-examples": 40, "declined": 0, "dp-steps": 3,
        "noise-multiplier": 1.1})
    content[INFO] = ConfigRecord({"student": "cnn", "reason": "", "client-id": "client-7"})
    return content


def _without(key: str) -> Callable[[], RecordDict]:
    def make() -> RecordDict:
        content = _content()
        del content[key]
        return content
    return make


def _metrics_without(key: str) -> Callable[[], RecordDict]:
    def make() -> RecordDict:
        metrics = {"epsilon": 1.5, "num-examples": 40, "declined": 0, "dp-steps": 3,
                   "noise-multiplier": 1.1}
        del metrics[key]
        return _content(metrics=metrics)
    return make


BAD = {
    "wrong-shape": (lambda: _content(corrupt(encode_knowledge(_probs(), "float16"), "shape")),
                    "shape"),
    "nan": (lambda: _content(corrupt(encode_knowledge(_probs(), "float16"), "nan")), ""),
    "out-of-range": (lambda: _content({"probs": np.full((M, C), 1.5, np.float16)}), ""),
    "rows-not-summing-to-1": (lambda: _content({"probs": np.full((M, C), 0.1, np.float16)}),
                              "sum"),
    "wrong-dtype": (lambda: _content({"probs": _probs().astype(np.float64)}), ""),
    "missing-soft-labels": (_without(SOFT_LABELS), SOFT_LABELS),
    "missing-metrics": (_without(METRICS), METRICS),
    "missing-epsilon": (_metrics_without("epsilon"), "epsilon"),
    "negative-epsilon": (lambda: _content(metrics={"epsilon": -1.0, "num-examples": 40,
                                                   "declined": 0, "dp-steps": 3,
                                                   "noise-multiplier": 1.0}), "epsilon"),
    "zero-examples": (lambda: _content(metrics={"epsilon": 1.0, "num-examples": 0,
                                                "declined": 0, "dp-steps": 3,
                                                "noise-multiplier": 1.0}), "num-examples"),
    "empty-array-record": (lambda: _content({}), ""),
}


@pytest.mark.parametrize("case", sorted(BAD), ids=sorted(BAD))
def test_bad_reply_is_rejected_with_a_reason(case: str) -> None:
    make, fragment = BAD[case]
    result = validate_content(make(), 42, encoding="float16", num_rows=M, num_classes=C,
                              num_test=None)
    assert isinstance(result, Rejection), result
    assert result.node_id == 42 and result.reason
    assert fragment.lower() in result.reason.lower()


def test_good_reply_is_decoded() -> None:
    result = validate_content(_content(), 42, encoding="float16", num_rows=M, num_classes=C,
                              num_test=None)
    assert isinstance(result, ValidReply)
    assert result.client_id == "client-7" and result.num_examples == 40
    np.testing.assert_allclose(result.probs, _probs(), atol=1e-3)


@pytest.mark.parametrize("kind", ["flip", "noise", "wrong-onehot", "collude"])
def test_poisoned_soft_labels_stay_valid(kind: str) -> None:
    """Poisoning passes validation: only robust aggregation can bound it."""
    probs = poison(_probs(), kind, seed=123)
    assert not np.allclose(probs, _probs())
    result = validate_content(_content(encode_knowledge(probs, "float16")), 1,
                              encoding="float16", num_rows=M, num_classes=C, num_test=None)
    assert isinstance(result, ValidReply)


def test_array_record_type_is_what_flower_carries() -> None:
    assert isinstance(to_array_record({"x": np.zeros(2)}), ArrayRecord)


# ---------------------------------------------------------------- one reply, both paths
META = ReplyMeta(client_id="client-3", student="cnn", epsilon=2.5, weight=700, declined=False,
                 reason="", dp_steps=6, noise_multiplier=1.1, non_private=False,
                 ledger=LedgerHead("ab" * 32, 4, "sha256:" + "cd" * 32), test_accuracy=0.7)


def test_reply_meta_round_trips_on_both_paths() -> None:
    plain = parse_plain_meta(plain_reply(META, encode_knowledge(np.full((2, 2), 0.5,
                                                                        np.float32),
                                                                "float16"), None))
    assert plain == replace(META, test_accuracy=None)  # plain: the coordinator computes it
    assert ReplyMeta.parse_flat(META.flat(), META.weight) == META


@pytest.mark.parametrize(("key", "value"), [
    ("epsilon", float("nan")), ("epsilon", -1.0), ("epsilon", "8"), ("dp-steps", 10**400),
    ("noise-multiplier", float("inf")), ("declined", None), ("test-accuracy", 7.0),
    ("test-accuracy", "high"), ("ledger-head", "zz"), ("ledger-records", -1),
    ("ledger-key", 3),
])
def test_hostile_secure_metadata_is_refused_with_a_reason(key: str, value: object) -> None:
    """The metadata that travels in plain beside a masked vector gets the plain path's
    checks (before, the secure path used it unchecked and a bad value raised)."""
    with pytest.raises(KnowledgeError) as info:
        ReplyMeta.parse_flat({**META.flat(), key: value}, META.weight)
    assert info.value.reason


def test_a_failed_client_is_rejected_with_its_exception_line_not_the_traceback() -> None:
    from flwr.app import Error, Message

    from coordinator.replies import validate_reply
    from simulations.inprocess import restore_task_identity, set_task_identity

    saved = set_task_identity(1)
    try:
        sent = Message(RecordDict(), dst_node_id=7, message_type="train")
        reason = ("ClientApp raised an exception\nTraceback (most recent call last):\n"
                  '  File "client/app.py", line 9, in fit\n'
                  "client.errors.NodeRoundFailed: round-failed\n'>")
        reply = Message(Error(code=1, reason=reason), reply_to=sent)
        result = validate_reply(reply, node_id=7, encoding="float16", num_rows=2,
                                num_classes=2, num_test=None)
    finally:
        restore_task_identity(saved)
    assert isinstance(result, Rejection)
    assert result.reason == "client error: client.errors.NodeRoundFailed: round-failed"

"""Validation of client replies: a bad reply is rejected with a reason, never raised.

One bad client never stops a round (Flower's strategies do the same): each reply is
decoded and checked here, and the round loop only ever sees :class:`ValidReply` objects
or a logged rejection carrying the node id.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import Message, RecordDict

from common.distill.codec import decode_knowledge, payload_nbytes
from common.errors import KnowledgeError
from common.protocol import (
    INFO,
    REFUSED,
    SOFT_LABELS,
    TEST_SOFT_LABELS,
    LedgerHead,
    ReplyMeta,
    from_array_record,
    parse_plain_meta,
)


@dataclass(frozen=True)
class ValidReply:
    """A reply that passed every check, decoded."""

    node_id: int
    meta: ReplyMeta  # what the client says besides its soft labels (common/protocol.py)
    probs: np.ndarray  # (m, C) soft labels (or (m, width) forecasts) on the public batch
    test_probs: np.ndarray | None  # (n_test, C) in evaluate rounds
    nbytes: int

    @property
    def client_id(self) -> str:
        return self.meta.client_id or str(self.node_id)

    @property
    def epsilon(self) -> float:
        return self.meta.reported_epsilon  # ∞ once the node trained without DP

    @property
    def num_examples(self) -> int:
        return self.meta.weight

    @property
    def ledger(self) -> LedgerHead | None:
        return self.meta.ledger


@dataclass(frozen=True)
class Rejection:
    node_id: int
    reason: str


# the task's knowledge decoder (common/task_kinds.py): probabilities or forecasts
Decoder = Callable[..., np.ndarray]


def validate_reply(
    reply: Message, *, node_id: int, encoding: str, num_rows: int, num_classes: int,
    num_test: int | None, decode: Decoder = decode_knowledge,
) -> ValidReply | Rejection:
    """Decode and check one reply of node ``node_id``; any problem becomes a Rejection.

    ``num_classes`` is the width of a knowledge row (classes, or forecast steps), and
    ``decode`` the task's knowledge decoder (default: class probabilities)."""
    if not reply.has_content():
        why = _last_line(reply.error.reason) if reply.has_error() else "no content"
        return Rejection(node_id, f"client error: {why}")
    return validate_content(reply.content, node_id, encoding=encoding, num_rows=num_rows,
                            num_classes=num_classes, num_test=num_test, decode=decode)


_EXCEPTION_LINE = re.compile(r"^[\w.]+: \S")


def _last_line(reason: str) -> str:
    """The exception line of a failed ClientApp's reason (``module.Name: message``), not
    the traceback around it: the node's own log keeps that."""
    lines = [line.strip() for line in str(reason).splitlines() if line.strip()]
    exceptions = [line for line in lines if _EXCEPTION_LINE.match(line)]
    chosen = exceptions[-1] if exceptions else (lines[0] if lines else "no reason given")
    return chosen[:300]


def validate_content(
    content: RecordDict, node_id: int, *, encoding: str, num_rows: int, num_classes: int,
    num_test: int | None, decode: Decoder = decode_knowledge,
) -> ValidReply | Rejection:
    """The checks of :func:`validate_reply` on a reply's records (testable without Flower)."""
    info = content.config_records[INFO] if INFO in content.config_records else {}
    if REFUSED in info:  # the node's policy refuses this round (a reason code, no data)
        return Rejection(node_id, f"refused by the node's policy: {str(info[REFUSED])[:64]}")
    try:
        arrays = from_array_record(content, SOFT_LABELS)
        probs = decode(arrays, encoding, num_rows=num_rows, num_classes=num_classes)
        test_probs = None
        if num_test is not None:
            test_arrays = from_array_record(content, TEST_SOFT_LABELS)
            test_probs = decode(test_arrays, "float16", num_rows=num_test,
                                num_classes=num_classes)
        meta = parse_plain_meta(content)
    except KnowledgeError as exc:
        return Rejection(node_id, exc.reason)
    if meta.weight < 1:
        return Rejection(node_id, f"num-examples={meta.weight} must be >= 1")
    return ValidReply(node_id, meta, probs, test_probs, payload_nbytes(arrays))


# ---------------------------------------------------------------- ledger keys
def pinned_ledger_keys(history: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """Each client's ledger key fingerprint as first seen in this run's metrics (pinned:
    a later reply signed by another key is refused, and an audit can name the key)."""
    pins: dict[str, str] = {}
    for record in history:
        for client_id, head in record.get("ledgers", {}).items():
            pins.setdefault(client_id, head["key"])
    return pins


def check_pinned_keys(valid: list[ValidReply],
                      pins: dict[str, str]) -> tuple[list[ValidReply], list[Rejection]]:
    """Refuse replies whose ledger key differs from the pinned one; pin new clients."""
    kept: list[ValidReply] = []
    rejected: list[Rejection] = []
    for reply in valid:
        if reply.ledger is None:
            kept.append(reply)
            continue
        pinned = pins.setdefault(reply.client_id, reply.ledger.key)
        if pinned != reply.ledger.key:
            rejected.append(Rejection(reply.node_id, f"{reply.client_id}'s ledger key "
                                      f"{reply.ledger.key[:19]} is not the pinned {pinned[:19]}"))
        else:
            kept.append(reply)
    return kept, rejected

"""A Grid that delivers each message to a ClientApp in this process (tests, benchmarks).

Flower's own engines run every node in another process; to check or time one protocol
(SecAgg+'s four stages) without them, this Grid hands each message to a real ClientApp
with one Context per node, as SuperNodes would: the message is deep-copied first (a node
never shares objects with the coordinator), given an id as the SuperLink would, and a
raising ClientApp becomes an error reply, as a SuperNode reports it.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Iterable
from typing import Any

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.supercore.task_identity import TaskIdentity

FIRST_NODE_ID = 100


class InProcessGrid:
    """Nodes ``FIRST_NODE_ID + k`` for k < ``num_nodes``, partition id k each."""

    def __init__(self, app: ClientApp, run_config: dict[str, Any], num_nodes: int,
                 run_id: int = 1) -> None:
        self.app = app
        self.contexts = {
            FIRST_NODE_ID + k: Context(run_id=run_id, node_id=FIRST_NODE_ID + k,
                                       node_config={"partition-id": k,
                                                    "num-partitions": num_nodes},
                                       state=RecordDict(), run_config=dict(run_config))
            for k in range(num_nodes)
        }

    def get_node_ids(self) -> list[int]:
        return list(self.contexts)

    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: float | None = None) -> list[Message]:
        replies = []
        for original in messages:
            msg = copy.deepcopy(original)  # as if sent over the wire
            msg.metadata.__dict__["_message_id"] = uuid.uuid4().hex  # the SuperLink's job
            original.metadata.__dict__["_message_id"] = msg.metadata.message_id
            try:
                replies.append(self.app(msg, self.contexts[msg.metadata.dst_node_id]))
            except Exception as exc:  # as a SuperNode reports a failed ClientApp
                replies.append(Message(Error(code=1, reason=repr(exc)), reply_to=msg))
        return replies


def set_task_identity(run_id: int, node_id: int = 0) -> tuple[Any, Any, Any]:
    """Messages take their run and sender from the process's task identity, which Flower
    sets in a real run; returns the previous values for :func:`restore_task_identity`."""
    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = run_id, node_id, 1
    return saved


def restore_task_identity(saved: tuple[Any, Any, Any]) -> None:
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved

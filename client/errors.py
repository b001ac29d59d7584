"""How a client node's round fails, shared by the ClientApp and its mods."""

from __future__ import annotations


class NodeRoundFailed(RuntimeError):
    """What the coordinator learns of a failed round: a reason code, never the text.

    Exception text can quote private data (a label value, a column name, a path); the full
    traceback stays in this node's own log.
    """

"""Secure aggregation of soft labels with Flower's SecAgg+ (``secure-aggregation = true``).

SecAgg+ ships in Flower 1.42 only on the legacy path: :class:`SecAggPlusWorkflow` driven
with a :class:`LegacyContext` (a strategy and a client manager) here, and
``secaggplus_mod`` on the clients (client/app.py). Each client masks
``[w, w · soft labels]`` with pairwise and private masks; the coordinator learns only the
sum, from which the workflow returns the weighted mean ``Σ w_k p_k / Σ w_k``. What it
hides and what it does not is in docs/THREAT_MODEL.md ("Secure aggregation").

The instructions travel as the legacy ``FitIns`` (``common/protocol.py``
``pack_secure_instructions``), the reply as a ``FitRes`` whose parameters are the soft
labels on the public batch (and on the test set in evaluate rounds).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from logging import INFO, WARNING
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Context, Error, Message
from flwr.common import (
    FitRes,
    Parameters,
    Scalar,
    bytes_to_ndarray,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.common.logger import log
from flwr.common.secure_aggregation.secaggplus_constants import (
    RECORD_KEY_CONFIGS,
)
from flwr.common.secure_aggregation.secaggplus_constants import (
    Key as SecAggKey,
)
from flwr.compat.common import recorddict_compat as compat
from flwr.server.client_manager import SimpleClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.strategy import FedAvg
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.serverapp import Grid

from common.config import FedConfig
from common.errors import ConfigError, KnowledgeError
from common.protocol import ReplyMeta, RoundPlan, pack_secure_instructions

MODULUS = 2**32  # Flower's largest modulus_range: masks are drawn in [0, 2^32)
CLIPPING_RANGE = 1.0  # probabilities, and count-weighted probabilities, lie in [0, 1]
MIN_QUANTIZATION = 2**16  # a step of 2c/Q = 3e-5: coarser would blur soft labels


@dataclass(frozen=True)
class SecAggSettings:
    """SecAgg+ parameters for one round, checked against overflow of the modulus."""

    num_shares: int | float
    threshold: int | float
    max_weight: float
    quantization_range: int
    clipping_range: float = CLIPPING_RANGE
    modulus_range: int = MODULUS


def secagg_settings(cfg: FedConfig, num_clients: int) -> SecAggSettings:
    """Choose the quantization range from the number of clients; refuse overflow.

    The sum of N quantized vectors (each entry in [0, Q]) and of N weight factors (each
    ≤ Q, counts being capped at ``secagg-max-weight``) must stay below the modulus 2^32,
    or the unmasked sum wraps around and the aggregate is silently wrong.
    """
    if num_clients < 2:
        raise ConfigError(f"secure aggregation needs at least 2 clients a round, found "
                          f"{num_clients}: sample more clients or turn it off.")
    limit = (MODULUS - 1) // num_clients  # N · Q must stay < 2^32
    q = cfg.secagg_quantization_range
    if q == 0:
        q = 2 ** int(math.floor(math.log2(limit)))
    elif q > limit:
        raise ConfigError(
            f"secagg-quantization-range={q} with {num_clients} clients a round can "
            f"overflow the 2^32 modulus ({num_clients} × {q} = {num_clients * q:,} ≥ "
            f"{MODULUS:,}): use at most {limit:,}, or 0 to choose it automatically.")
    if q < MIN_QUANTIZATION:
        raise ConfigError(
            f"secagg-quantization-range={q} for {num_clients} clients is too coarse "
            f"(< {MIN_QUANTIZATION}: soft labels would lose more than 1e-5): sample fewer "
            "clients per round (clients-per-round) or raise the range.")
    return SecAggSettings(
        num_shares=_neighbours(cfg.secagg_num_shares, num_clients),
        threshold=_share_or_count(cfg.secagg_threshold),
        max_weight=float(cfg.secagg_max_weight if cfg.aggregation == "weighted-mean" else 1),
        quantization_range=q,
    )


def _share_or_count(value: float) -> int | float:
    """Flower reads a float as a share of the sampled clients and an int as a count."""
    return float(value) if value <= 1 else int(value)


def _neighbours(value: float, num_clients: int) -> int | float:
    """Each client's neighbourhood: a count, capped at the clients sampled (then: all).

    SecAgg+ keys and masks every pair of neighbours: with everyone a neighbour of
    everyone (SecAgg) a round costs O(N^2) key agreements and masks, 1,378 s for 100
    clients against 34 s with 11 neighbours (docs/BENCHMARKS.md, benchmark 5).
    """
    if value <= 1 or value >= num_clients:
        return 1.0 if value >= num_clients else float(value)
    return int(value)


@dataclass(frozen=True)
class SecureOutcome:
    """What the coordinator learns from one secure round: sums, and the visible metadata."""

    aggregate: np.ndarray  # (m, C) weighted mean of the soft labels
    test_aggregate: np.ndarray | None  # (n_test, C) in evaluate rounds
    clients: list[tuple[int, ReplyMeta]]  # per contributing client: node id, metadata
    invalid: list[str]  # clients whose visible metadata failed the checks (their soft
    #                     labels are in the sum all the same: SecAgg+ cannot take them out)
    dropped: int  # sampled clients that left the protocol or whose reply was refused
    reasons: list[str]  # why, as far as the error replies say (deduplicated)


class _SoftLabelStrategy(FedAvg):
    """FedAvg's sampling and FitIns; ``aggregate_fit`` keeps SecAgg+'s result as is.

    The workflow replaces every result's parameters by the unmasked aggregate before
    calling ``aggregate_fit``: averaging identical arrays again would only add rounding.
    """

    def __init__(self, num_clients: int, config: dict[str, Scalar]) -> None:
        super().__init__(fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=num_clients,
                         min_available_clients=num_clients, accept_failures=True,
                         on_fit_config_fn=lambda _rnd: dict(config))
        self.results: list[tuple[int, FitRes]] = []
        self.reasons: list[str] = []

    def aggregate_fit(self, server_round: int, results: list[tuple[ClientProxy, FitRes]],
                      failures: list[Any]) -> tuple[Parameters | None, dict[str, Scalar]]:
        # ``failures`` is not a count of clients: Flower lists a lost masked vector twice.
        self.results = [(int(proxy.node_id), res) for proxy, res in results]
        self.reasons = sorted({_reason(failure) for failure in failures})
        if not results:
            return None, {}
        return results[0][1].parameters, {}


def run_secure_round(
    grid: Grid, context: Context, cfg: FedConfig, sampled: list[int], plan: RoundPlan,
    indices: np.ndarray, knowledge: dict[str, np.ndarray], shapes: list[tuple[int, int]],
) -> SecureOutcome | None:
    """One round of SecAgg+ over the ``sampled`` nodes; None when the protocol halted.

    ``shapes`` are the (rows, classes) of each aggregated matrix: the public batch, and
    the test set in evaluate rounds. Replies whose masked vector has another shape are
    refused before summing (as a dropout), so a malformed reply cannot stop the round.
    """
    settings = secagg_settings(cfg, len(sampled))
    parameters, config = pack_secure_instructions(plan, indices, knowledge)
    strategy = _SoftLabelStrategy(len(sampled), config)
    manager = SimpleClientManager()
    for node in sampled:
        manager.register(GridClientProxy(node, grid, int(context.run_id)))
    legacy = LegacyContext(context, strategy=strategy, client_manager=manager)
    legacy.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord(
        {WorkflowKey.CURRENT_ROUND: plan.round})
    legacy.state.array_records[MAIN_PARAMS_RECORD] = compat.parameters_to_arrayrecord(
        ndarrays_to_parameters(parameters), keep_input=True)
    workflow = SecAggPlusWorkflow(
        num_shares=settings.num_shares, reconstruction_threshold=settings.threshold,
        max_weight=settings.max_weight, clipping_range=settings.clipping_range,
        quantization_range=settings.quantization_range, modulus_range=settings.modulus_range,
        timeout=cfg.round_timeout)
    workflow(_ShapeCheckedGrid(grid, shapes), legacy)
    if not strategy.results:
        return None
    arrays = parameters_to_ndarrays(strategy.results[0][1].parameters)
    metas = [(node, client_meta(res)) for node, res in strategy.results]
    dropped = len(sampled) - len(strategy.results)
    log(INFO, "SecAgg+: aggregate of %s clients (%s dropped), quantization range %s",
        len(strategy.results), dropped, settings.quantization_range)
    return SecureOutcome(
        aggregate=np.asarray(arrays[0], dtype=np.float64).reshape(shapes[0]),
        test_aggregate=(np.asarray(arrays[1], dtype=np.float64).reshape(shapes[1])
                        if len(shapes) > 1 else None),
        clients=[(node, meta) for node, meta in metas if isinstance(meta, ReplyMeta)],
        invalid=[f"node {node}: {meta}" for node, meta in metas if isinstance(meta, str)],
        dropped=dropped,
        reasons=strategy.reasons,
    )


def _reason(failure: Any) -> str:
    """The reason of an error reply, which the workflow wraps in an Exception."""
    error = failure.args[0] if isinstance(failure, BaseException) and failure.args else failure
    return str(getattr(error, "reason", None) or error)


def client_meta(res: FitRes) -> ReplyMeta | str:
    """The metadata SecAgg+ does not hide, checked as a plain reply's; a reason if bad."""
    try:
        return ReplyMeta.parse_flat(res.metrics, res.num_examples)
    except KnowledgeError as exc:
        return exc.reason


class _ShapeCheckedGrid:
    """A Grid whose replies carrying a masked vector of the wrong shape become errors.

    Flower sums the masked vectors without checking them: one reply of another shape
    would raise inside the workflow and stop the round. Turned into an error reply, it
    counts as a dropout, which SecAgg+ tolerates up to its reconstruction threshold.
    """

    def __init__(self, grid: Grid, shapes: list[tuple[int, int]]) -> None:
        self._grid = grid
        # The workflow prepends the weight factor as a 1-element vector.
        self._sizes = [1, *(rows * cols for rows, cols in shapes)]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)

    def send_and_receive(self, messages: Any, *, timeout: float | None = None) -> list[Message]:
        messages = list(messages)
        replies = list(self._grid.send_and_receive(messages, timeout=timeout))
        sent = {msg.metadata.message_id: msg for msg in messages}  # ids are set when pushed
        return [self._checked(reply, sent) for reply in replies]

    def _checked(self, reply: Message, sent: dict[str, Message]) -> Message:
        if reply.has_error() or RECORD_KEY_CONFIGS not in reply.content.config_records:
            return reply
        record = reply.content.config_records[RECORD_KEY_CONFIGS]
        original = sent.get(reply.metadata.reply_to_message_id)
        if SecAggKey.MASKED_PARAMETERS not in record or original is None:
            return reply
        sizes = _masked_sizes(record[SecAggKey.MASKED_PARAMETERS])
        if sizes == self._sizes:
            return reply
        reason = f"masked vector sizes {sizes} differ from {self._sizes}: refused"
        log(WARNING, "SecAgg+: node %s: %s", reply.metadata.src_node_id, reason)
        return Message(Error(code=0, reason=reason), reply_to=original)


def _masked_sizes(value: Any) -> list[int] | None:
    try:
        return [int(bytes_to_ndarray(b).size) for b in value]
    except Exception:  # malformed bytes from the network: the reply is refused
        return None

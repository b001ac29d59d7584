"""The ServerApp: hosts the teacher and runs the rounds of DESIGN.md "One round".

Read top to bottom: set-up (task, teacher, checkpoint), then one :func:`_run_round` per
round, each followed by a line in ``metrics.jsonl`` and a checkpoint, then the summary.
"""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import Context, Message, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from common.config import FedConfig
from common.device import resolve_device
from common.distill.codec import downlink_encoding, payload_nbytes
from common.errors import FedistillError, KnowledgeError
from common.models import build_model, count_parameters
from common.protocol import KNOWLEDGE, PUBLIC, ROUND, ReplyMeta, RoundPlan, to_array_record
from common.task import PreparedTask, test_scores
from common.task_kinds import Knowledge
from coordinator.aggregation import aggregator_from_config
from coordinator.checkpoint import (
    Checkpoint,
    capture_rng,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
)
from coordinator.replies import (
    Rejection,
    ValidReply,
    check_pinned_keys,
    pinned_ledger_keys,
    validate_reply,
)
from coordinator.report import (
    append_metrics,
    rewrite_metrics,
    save_round_replies,
    write_summary,
)
from coordinator.secure import run_secure_round
from coordinator.teacher import (
    FoldGuard,
    guarded_update,
    pretrain_teacher,
    sent_soft_labels,
    teacher_config,
    teacher_task,
)

app = ServerApp()


MASKED_ENTRY_BYTES = 8  # SecAgg+ sends each masked entry as an int64


class RoundFailedError(FedistillError):
    """Fewer valid replies than ``min-replies`` arrived within the round timeout."""


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Pre-train (or resume) the teacher, then run every planned round."""
    cfg = FedConfig.from_mapping(context.run_config)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    task = teacher_task(cfg)
    if task.tokenizer_json:  # images have none
        (out / "tokenizer.json").write_text(task.tokenizer_json)
    rng, np_rng = random.Random(cfg.seed), np.random.default_rng(cfg.seed)

    # --- teacher: resume from our own checkpoint, load a given one, or pre-train
    teacher = build_model(teacher_config(cfg, task))
    ckpt_path = out / "checkpoint.pt"
    ckpt = load_checkpoint(ckpt_path)
    if ckpt is not None:
        teacher.load_state_dict(ckpt.teacher_state)
        restore_rng(ckpt.rng_state, rng, np_rng)
        run_id, start, history = ckpt.run_id, ckpt.round + 1, list(ckpt.history)
        rewrite_metrics(out, history)  # drop a line written after the last checkpoint
        log(INFO, "Resuming run %s after round %s from %s", run_id, ckpt.round, ckpt_path)
    else:
        initial = _initial_teacher(cfg, task, teacher, device)
        torch.save(teacher.state_dict(), out / "teacher-round0.pt")  # before any round
        run_id, start, history = str(context.run_id), 1, [initial]
        append_metrics(out, initial)
    guard = _fold_guard(cfg, task, ckpt, device)
    if ckpt is None:
        save_checkpoint(ckpt_path, Checkpoint(run_id, 0, teacher.state_dict(),
                                              capture_rng(rng, np_rng), history,
                                              _shadow_states(guard)))
    _log_summary(cfg, task, teacher, run_id)

    # --- rounds
    nodes = _wait_for_nodes(grid, cfg)
    pins = pinned_ledger_keys(history)
    for rnd in range(start, cfg.rounds + 1):
        record = _run_round(grid, context, cfg, task, (teacher, guard), rnd, run_id, nodes,
                            rng, np_rng, device, pins)
        history.append(record)
        append_metrics(out, record)
        save_checkpoint(ckpt_path, Checkpoint(run_id, rnd, teacher.state_dict(),
                                              capture_rng(rng, np_rng), history,
                                              _shadow_states(guard)))
    torch.save(teacher.state_dict(), out / "teacher.pt")
    write_summary(out, cfg, history, task.task)


def _fold_guard(cfg: FedConfig, task: PreparedTask, ckpt: Checkpoint | None,
                device: torch.device) -> FoldGuard | None:
    """``teacher-folds``' shadow teachers: pre-trained, or as the checkpoint left them."""
    guard = FoldGuard.build(cfg, task, device)
    if guard is not None and ckpt is not None and ckpt.shadow_states:
        guard.load(ckpt.shadow_states)
    return guard


def _shadow_states(guard: FoldGuard | None) -> list[dict[str, Any]] | None:
    return None if guard is None else guard.states()


def _initial_teacher(cfg: FedConfig, task: PreparedTask, teacher: torch.nn.Module,
                     device: torch.device) -> dict[str, Any]:
    """Load ``teacher-checkpoint`` or pre-train on the labeled teacher set (round 0)."""
    start = time.monotonic()
    if cfg.teacher_checkpoint:
        teacher.load_state_dict(torch.load(cfg.teacher_checkpoint, map_location="cpu",
                                           weights_only=True))
    else:
        pretrain_teacher(cfg, task, teacher, device)
    record = _teacher_scores(task, teacher, device)
    name = task.kind.knowledge.metric_name
    log(INFO, "Round 0: teacher test %s %.4f (pre-trained on %s labeled examples)",
        name, record[f"teacher_{name}"], len(task.teacher_x))
    return {"round": 0, **record, "seconds": time.monotonic() - start}


def _teacher_scores(task: PreparedTask, teacher: torch.nn.Module,
                    device: torch.device) -> dict[str, Any]:
    """The teacher's test scores as a record holds them: ``teacher_accuracy`` for
    classification, ``teacher_mse`` and ``teacher_mae`` for forecasts; and which is the
    main one (``metric``)."""
    scores = test_scores(task, teacher, device)
    return {"metric": task.kind.knowledge.metric_name,
            **{f"teacher_{name}": value for name, value in scores.items()}}


def _log_summary(cfg: FedConfig, task: PreparedTask, teacher: torch.nn.Module,
                 run_id: str) -> None:
    log(INFO, "fedistill run %s: dataset=%s clients=%s rounds=%s aggregation=%s "
        "encoding=%s epsilon=%s delta=%s", run_id, cfg.dataset, cfg.num_clients, cfg.rounds,
        cfg.aggregation, cfg.encoding, cfg.epsilon, cfg.delta)
    log(INFO, "teacher %s/%s: %s parameters; students %s/%s; data private=%s public=%s "
        "teacher=%s test=%s", cfg.teacher_family, cfg.teacher_size, count_parameters(teacher),
        cfg.students, cfg.student_size, len(task.private_y), len(task.public_x),
        len(task.teacher_x), len(task.test_x))


def _wait_for_nodes(grid: Grid, cfg: FedConfig) -> list[int]:
    """Wait until every expected node is connected, or at least ``min-replies`` of them."""
    deadline = time.monotonic() + cfg.round_timeout
    while True:
        nodes = list(grid.get_node_ids())
        if len(nodes) >= cfg.num_clients:
            return nodes
        if time.monotonic() > deadline:
            if len(nodes) >= cfg.min_replies:
                log(WARNING, "Only %s of %s nodes connected; going on", len(nodes),
                    cfg.num_clients)
                return nodes
            raise RoundFailedError(
                f"only {len(nodes)} node(s) connected within round-timeout="
                f"{cfg.round_timeout}s; min-replies={cfg.min_replies}. Start more nodes."
            )
        time.sleep(1.0)


@dataclass(frozen=True)
class ClientOutcome:
    """One client that contributed to a round, plain or secure, as the record reports it."""

    node_id: int | None
    meta: ReplyMeta  # what it said besides its soft labels, checked (common/protocol.py)
    test_accuracy: float | None  # its student's main test score, in evaluate rounds

    @property
    def client_id(self) -> str:
        return self.meta.client_id or str(self.node_id)


@dataclass(frozen=True)
class RoundOutcome:
    """What a round's replies gave the coordinator, plain or secure, before distilling."""

    aggregate: np.ndarray | None  # (m, C); None when a secure aggregate was refused
    test_aggregate: np.ndarray | None  # (n_test, C) in evaluate rounds
    clients: list[ClientOutcome]
    rejected: list[dict[str, Any]]  # node id and reason of each refused reply
    bytes_up: int


def _run_round(
    grid: Grid, context: Context, cfg: FedConfig, task: PreparedTask,
    teachers: tuple[torch.nn.Module, FoldGuard | None], rnd: int, run_id: str,
    nodes: list[int], rng: random.Random, np_rng: np.random.Generator, device: torch.device,
    pins: dict[str, str],
) -> dict[str, Any]:
    """One round: send knowledge, validate and aggregate replies, distil, evaluate."""
    start = time.monotonic()
    teacher, guard = teachers
    sampled = rng.sample(nodes, min(cfg.sampled_per_round, len(nodes)))  # uint64 stays int
    m = min(cfg.public_batch_size, len(task.public_x))
    indices = np.sort(np_rng.choice(len(task.public_x), size=m, replace=False)).astype(np.int64)
    public_x = task.public_x[torch.as_tensor(indices)]
    teacher_probs = sent_soft_labels(cfg, teacher, public_x, device, task.kind.knowledge)
    knowledge = task.kind.knowledge.encode(teacher_probs.numpy(), downlink_encoding(cfg.encoding),
                                           topk=cfg.topk)
    evaluate = rnd % cfg.evaluate_every == 0 or rnd == cfg.rounds
    plan = RoundPlan(rnd, run_id, cfg.rounds, task.fingerprint, evaluate)

    if cfg.secure_aggregation:
        outcome = _secure_outcome(grid, context, cfg, task, sampled, plan, indices, knowledge)
    else:
        outcome = _plain_outcome(grid, cfg, task, sampled, plan, indices, knowledge, pins)
    if len(outcome.clients) < cfg.min_replies:
        raise RoundFailedError(
            f"round {rnd}: {len(outcome.clients)} valid replies of {len(sampled)} sampled, "
            f"fewer than min-replies={cfg.min_replies}; rejected: "
            f"{[r['reason'] for r in outcome.rejected]}"
        )

    # --- distil the teacher on (S_t, aggregate), evaluate
    update = "no aggregate"
    if outcome.aggregate is not None:
        update = guarded_update(cfg, task, teacher, public_x, outcome.aggregate, rnd, device,
                                guard)
    if update != "applied":
        log(WARNING, "Round %s: the teacher update is not applied: %s", rnd, update)
    record = _evaluate(task, teacher, outcome, evaluate, device)
    record["teacher_update"] = update
    clients = outcome.clients
    record.update({
        "round": rnd,
        "sampled": len(sampled),
        "replies": len(clients),
        "rejected": outcome.rejected,
        "declined": sorted(c.client_id for c in clients if c.meta.declined),
        "epsilon": {c.client_id: c.meta.reported_epsilon for c in clients},
        "epsilon_max": max(c.meta.reported_epsilon for c in clients),
        "ledgers": {c.client_id: asdict(c.meta.ledger) for c in clients if c.meta.ledger},
        "bytes_down": len(sampled) * (payload_nbytes(knowledge) + indices.nbytes),
        "bytes_up": outcome.bytes_up,
        "secure_aggregation": cfg.secure_aggregation,
        "aggregate_sha256": _digest(outcome.aggregate),
        "seconds": time.monotonic() - start,
    })
    name = record["metric"]
    log(INFO, "Round %s: %s teacher %.4f ensemble %s students %s eps_max %.3f replies %s/%s "
        "(%.1fs)", rnd, name, record[f"teacher_{name}"], record.get(f"ensemble_{name}"),
        record.get(f"student_{name}_mean"), record["epsilon_max"], len(clients), len(sampled),
        record["seconds"])
    return record


def _digest(aggregate: np.ndarray | None) -> str | None:
    """A fingerprint of the round's aggregate: two runs that agree on it to the bit
    received the same soft labels (reruns with the same seed and node secrets do)."""
    if aggregate is None:
        return None
    return hashlib.sha256(np.ascontiguousarray(aggregate, dtype=np.float32).tobytes()).hexdigest()


def _plain_outcome(grid: Grid, cfg: FedConfig, task: PreparedTask, sampled: list[int],
                   plan: RoundPlan, indices: np.ndarray, knowledge: dict[str, np.ndarray],
                   pins: dict[str, str]) -> RoundOutcome:
    """Send, receive and validate every reply; aggregate with the configured rule."""
    messages = [_train_message(plan, indices, knowledge, node) for node in sampled]
    replies = list(grid.send_and_receive(messages, timeout=cfg.round_timeout))
    # An error reply made by the SuperLink for a lost node carries the SuperLink's own id
    # as sender: name the node the message went to instead (ids are set when pushed).
    sent_to = {msg.metadata.message_id: msg.metadata.dst_node_id for msg in messages}
    valid, rejected = _validate_all(replies, cfg, task, len(indices), plan.evaluate, sent_to)
    valid, swapped = check_pinned_keys(valid, pins)
    rejected += swapped
    if cfg.save_replies:
        save_round_replies(Path(cfg.out_dir), plan.round, indices, [r.probs for r in valid],
                           [r.num_examples for r in valid], [r.client_id for r in valid])
    counts = [r.num_examples for r in valid]
    rule = aggregator_from_config(cfg, simplex=task.kind.knowledge.simplex)
    aggregate = rule([r.probs for r in valid], counts) if valid else None
    test_aggregate = None
    if plan.evaluate and valid:
        test_aggregate = rule([r.test_probs for r in valid], counts)
    y, metric = task.test_y.numpy(), task.kind.knowledge.metric
    clients = [ClientOutcome(r.node_id, r.meta,
                             None if r.test_probs is None else metric(y, r.test_probs))
               for r in valid]
    return RoundOutcome(aggregate, test_aggregate, clients,
                        [{"node_id": r.node_id, "reason": r.reason} for r in rejected],
                        sum(r.nbytes for r in valid))


def _secure_outcome(grid: Grid, context: Context, cfg: FedConfig, task: PreparedTask,
                    sampled: list[int], plan: RoundPlan, indices: np.ndarray,
                    knowledge: dict[str, np.ndarray]) -> RoundOutcome:
    """SecAgg+ over the sampled nodes: the coordinator gets sums, never one reply."""
    shapes = [(len(indices), task.width)]
    if plan.evaluate:
        shapes.append((len(task.test_x), task.width))
    result = run_secure_round(grid, context, cfg, sampled, plan, indices, knowledge, shapes)
    if result is None:
        raise RoundFailedError(
            f"round {plan.round}: SecAgg+ halted: fewer clients than the reconstruction "
            f"threshold (secagg-threshold={cfg.secagg_threshold}) stayed in the protocol."
        )
    knowledge = task.kind.knowledge
    aggregate, rejected = _checked_aggregate(result.aggregate, plan.round, knowledge)
    test_aggregate = None
    if result.test_aggregate is not None:
        test_aggregate, _ = _checked_aggregate(result.test_aggregate, plan.round, knowledge)
    clients = [ClientOutcome(node, meta, meta.test_accuracy) for node, meta in result.clients]
    rejected += [{"node_id": None, "reason": f"metadata refused (its soft labels are in the "
                                             f"secure sum): {why}"} for why in result.invalid]
    if result.dropped:
        why = "; ".join(result.reasons) or "no reply"
        rejected.append({"node_id": None, "reason": f"{result.dropped} client(s) dropped out "
                                                    f"of SecAgg+: {why}"})
    entries = 1 + sum(rows * cols for rows, cols in shapes)  # weight + masked soft labels
    return RoundOutcome(aggregate, test_aggregate, clients, rejected,
                        len(clients) * entries * MASKED_ENTRY_BYTES)


def _checked_aggregate(aggregate: np.ndarray, rnd: int, knowledge: Knowledge,
                       ) -> tuple[np.ndarray | None, list[dict[str, Any]]]:
    """A secure sum that fails the knowledge's check (off the simplex, forecasts out of
    bounds: a client sent garbage) is refused, not distilled."""
    try:
        probs = knowledge.decode({knowledge.key: aggregate.astype(np.float32)}, "float32",
                                 num_rows=aggregate.shape[0], num_classes=aggregate.shape[1])
    except KnowledgeError as exc:
        log(WARNING, "Round %s: the secure aggregate is refused: %s", rnd, exc.reason)
        return None, [{"node_id": None, "reason": f"secure aggregate refused: {exc.reason}"}]
    return probs, []


def _train_message(plan: RoundPlan, indices: np.ndarray, knowledge: dict[str, np.ndarray],
                   node: int) -> Message:
    content = RecordDict({
        ROUND: plan.to_record(),
        PUBLIC: to_array_record({"indices": indices}),
        KNOWLEDGE: to_array_record(knowledge),
    })
    return Message(content=content, dst_node_id=node, message_type="train")


def _validate_all(replies: list[Message], cfg: FedConfig, task: PreparedTask, m: int,
                  evaluate: bool, sent_to: dict[str, int],
                  ) -> tuple[list[ValidReply], list[Rejection]]:
    valid: list[ValidReply] = []
    rejected: list[Rejection] = []
    for reply in replies:
        node_id = sent_to.get(reply.metadata.reply_to_message_id,
                              reply.metadata.src_node_id)
        result = validate_reply(reply, node_id=int(node_id), encoding=cfg.encoding, num_rows=m,
                                num_classes=task.width,
                                num_test=len(task.test_x) if evaluate else None,
                                decode=_decoder(task))
        if isinstance(result, Rejection):
            log(WARNING, "Rejected the reply of node %s: %s", result.node_id, result.reason)
            rejected.append(result)
        else:
            valid.append(result)
    return valid, rejected


def _decoder(task: PreparedTask) -> Callable[..., np.ndarray]:
    """The task's knowledge decoder as validate_reply calls it: ``num_classes`` is always
    the task's width, and the task adds what else its rows need (next tokens: T)."""
    def decode(arrays: Any, encoding: str, *, num_rows: int, num_classes: int) -> np.ndarray:
        del num_classes  # task.width, which validate_reply was given
        return task.decode(arrays, encoding, num_rows=num_rows)
    return decode


def _evaluate(task: PreparedTask, teacher: torch.nn.Module, outcome: RoundOutcome,
              evaluate: bool, device: torch.device) -> dict[str, Any]:
    """Test scores of the teacher, and in evaluate rounds of the ensemble and students
    (keys named by the task's metric: ``teacher_accuracy``, or ``teacher_mse`` ...)."""
    record = _teacher_scores(task, teacher, device)
    if not evaluate:
        return record
    name = record["metric"]
    per_client = {c.client_id: c.test_accuracy for c in outcome.clients
                  if c.test_accuracy is not None}
    if outcome.test_aggregate is not None:
        scores = task.kind.knowledge.scores(task.test_y.numpy(), outcome.test_aggregate)
        record.update({f"ensemble_{key}": value for key, value in scores.items()})
    record[f"student_{name}"] = per_client
    record[f"student_{name}_mean"] = (float(np.mean(list(per_client.values())))
                                      if per_client else None)
    record["students"] = {c.client_id: c.meta.student for c in outcome.clients}
    return record

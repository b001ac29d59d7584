"""The ClientApp: one round of a client, following DESIGN.md "One round", step 2.

(a) check the round against the node's own privacy policy and its ledger, and decline
rather than exceed the budget, train without DP, or answer unmasked where the policy
forbids it; (b) distil the student towards the teacher's knowledge on the public batch
(no ε); (c) DP-SGD on the private partition with Opacus, its sampling and noise seeded
from the node's secret; (d) the ledger records the event *before* training, so a crash can
only over-count, never lose budget, and what Opacus ran is checked against it before
anything is sent; (e) reply with the student's soft labels on the public batch, ε so far,
the ledger's head, a bucketed example count, and reason codes instead of error text.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from flwr.app import Context, Message, RecordDict
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.compat.common import recorddict_compat as compat

from client.attacks import attack_mod
from client.errors import NodeRoundFailed
from client.private_data import load_private_dir
from client.state import ClientState
from common.config import FedConfig
from common.device import resolve_device
from common.distill.codec import downlink_encoding, sent_rows
from common.errors import KnowledgeError, PolicyRefusal
from common.models import ModelConfig, build_model
from common.privacy.accounting import check_budget
from common.privacy.planner import (
    NoisePlan,
    check_ran_as_planned,
    plan_noise,
    sample_rate_and_steps,
)
from common.privacy.policy import NodePolicy, Refusal
from common.privacy.secrets import DpSeeds
from common.protocol import (
    FITINS_PARAMETERS,
    LedgerHead,
    ReplyMeta,
    RoundPlan,
    plain_reply,
    read_instructions,
    refusal_record,
    released_count,
)
from common.task import (
    PreparedTask,
    client_partitions,
    encode_texts,
    model_config,
    prepare_task,
    task_for,
)
from common.task_kinds import Knowledge
from common.training import distill, dp_train, predict_logits, train_supervised

log = logging.getLogger(__name__)


def _secaggplus_when_asked(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Run Flower's SecAgg+ client protocol only for the messages of a secure round."""
    if msg.has_content() and RECORD_KEY_CONFIGS in msg.content.config_records:
        return secaggplus_mod(msg, context, call_next)
    return call_next(msg, context)


# attack_mod sits inside the SecAgg+ mod: a malicious client's reply is attacked before
# it is masked; it passes every message through unless the run config asks for an attack.
app = ClientApp(mods=[_secaggplus_when_asked, attack_mod])


@dataclass(frozen=True)
class NodeSettings:
    """What differs between client nodes: parsed once from ``context.node_config``."""

    partition_id: int
    num_partitions: int
    state_dir: Path
    policy: NodePolicy  # the node's privacy rules (common/privacy/policy.py)
    data_dir: Path | None = None  # a deployed node's own files replace the simulated partition

    @classmethod
    def from_context(cls, context: Context, cfg: FedConfig) -> NodeSettings:
        nc = context.node_config
        pid = int(nc.get("partition-id", 0))
        state_dir = Path(str(nc.get("state-dir")
                             or Path(cfg.out_dir) / "clients" / f"client-{pid}"))
        data_dir = nc.get("data-dir")
        return cls(pid, int(nc.get("num-partitions", cfg.num_clients)), state_dir,
                   NodePolicy.load(state_dir, nc),
                   Path(str(data_dir)).expanduser() if data_dir else None)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """One round of federated distillation on this client (plain or under SecAgg+)."""
    torch.set_num_threads(1)  # two simulated clients share a 2-core machine
    cfg = FedConfig.from_mapping(context.run_config)
    node = NodeSettings.from_context(context, cfg)
    secure = FITINS_PARAMETERS in msg.content.array_records
    try:
        if not secure and node.policy.require_secure_aggregation:
            raise PolicyRefusal(Refusal.UNMASKED, "this node answers only rounds under "
                                "SecAgg+ (its policy: require-secure-aggregation = true)")
        plan, indices, knowledge = read_instructions(msg.content)
        result = _client_round(cfg, node, plan, indices, knowledge)
        content = _secure_reply(cfg, result) if secure else _plain_reply(cfg, result)
    except PolicyRefusal as exc:
        log.warning("client-%s refuses the round: %s", node.partition_id, exc)
        return Message(refusal_record(exc.code), reply_to=msg)
    except Exception:
        log.exception("client-%s: the round failed; the coordinator gets only the code %r",
                      node.partition_id, Refusal.FAILED)
        raise NodeRoundFailed(Refusal.FAILED) from None
    return Message(content, reply_to=msg)


@dataclass(frozen=True)
class RoundResult:
    """What one client round produced, before it is encoded for either kind of reply."""

    round: int
    probs: np.ndarray  # (m, C) softened soft labels (or (m, width) forecasts) on the batch
    test_probs: np.ndarray | None  # (n_test, C) at T=1, in evaluate rounds
    test_accuracy: float | None  # the task's main metric (accuracy; MSE for forecasts)
    epsilon: float  # of the ledger's events, at its δ
    num_examples: int  # already bucketed: what may leave the node (released_count)
    non_private: bool  # private data was ever used without DP on this node: ε is ∞
    private: PrivateOutcome
    student: str
    client_id: str
    ledger: LedgerHead
    knowledge: Knowledge  # the task's: how the reply is encoded


def _client_round(cfg: FedConfig, node: NodeSettings, plan: RoundPlan, indices: np.ndarray,
                  knowledge: dict[str, np.ndarray]) -> RoundResult:
    """Steps (a)–(e) of the module docstring for one round."""
    family = cfg.student_for(node.partition_id)
    task = task_for(cfg, prepare_task(cfg.dataset, cfg.seed, cfg.vocab_size, cfg.max_len),
                    family)
    if plan.fingerprint != task.fingerprint:
        raise KnowledgeError(
            f"fingerprint {task.fingerprint[:12]} differs from the coordinator's "
            f"{plan.fingerprint[:12]}: both sides must load the same dataset, vocab-size "
            "and backbone weights."
        )
    device = resolve_device(cfg.device)
    state = ClientState(node.state_dir)
    # Public randomness from the public seed (init, dropout); DP randomness never uses
    # torch's global generator (common/training/dp.py).
    torch.manual_seed(int(np.random.SeedSequence(
        [cfg.seed, node.partition_id, plan.round]).generate_state(1)[0]))
    student = build_model(_student_config(cfg, task, family))
    state.load_student(student)
    client_id = f"client-{node.partition_id}"

    # (b) distil towards the teacher's knowledge on the public batch: public data, no ε
    rows = torch.as_tensor(indices, dtype=torch.long)
    kind = task.kind.knowledge
    teacher = task.decode(knowledge, downlink_encoding(cfg.encoding), num_rows=len(rows))
    public_x = task.public_x[rows]
    distill(student, public_x, torch.as_tensor(teacher), temperature=cfg.temperature,
            epochs=cfg.student_distill_epochs, lr=cfg.student_distill_lr, device=device,
            seed=cfg.seed + plan.round, loss_fn=kind.loss)

    # (a, c, d) private training under DP, within the node's budget
    x_priv, y_priv = _private_data(cfg, node, task)
    private = _private_round(cfg, plan, state, student, x_priv, y_priv, policy=node.policy,
                             device=device, client_id=client_id, criterion=kind.criterion())
    state.save_student(student)

    # (e) soft labels (forecasts) on the public batch (post-processing: no ε)
    probs = kind.from_outputs(predict_logits(student, public_x, device=device),
                              cfg.temperature).numpy()
    test_probs, test_accuracy = None, None
    if plan.evaluate:
        test_probs = kind.from_outputs(predict_logits(student, task.test_x, device=device),
                                       1.0).numpy()
        test_accuracy = kind.metric(task.test_y.numpy(), test_probs)
    head, records = state.ledger.head()
    return RoundResult(
        round=plan.round, probs=probs, test_probs=test_probs, test_accuracy=test_accuracy,
        epsilon=state.ledger.epsilon(accountant=cfg.accountant),
        num_examples=released_count(len(y_priv), cfg.aggregation),
        non_private=state.trained_without_dp(), private=private,
        student=family, client_id=client_id,
        ledger=LedgerHead(head, records, state.key_fingerprint), knowledge=kind,
    )


def _meta(result: RoundResult) -> ReplyMeta:
    """What the reply says besides the soft labels, the same on both paths."""
    return ReplyMeta(
        client_id=result.client_id, student=result.student, epsilon=result.epsilon,
        weight=result.num_examples, declined=result.private.declined,
        reason=result.private.reason, dp_steps=result.private.steps,
        noise_multiplier=result.private.sigma, non_private=result.non_private,
        ledger=result.ledger, test_accuracy=result.test_accuracy,
    )


def _plain_reply(cfg: FedConfig, result: RoundResult) -> RecordDict:
    """The soft labels as encoded arrays, with metrics: the coordinator sees each reply."""
    encode = result.knowledge.encode
    test = None if result.test_probs is None else encode(result.test_probs, "float16")
    return plain_reply(_meta(result), encode(result.probs, cfg.encoding, topk=cfg.topk), test)


def _secure_reply(cfg: FedConfig, result: RoundResult) -> RecordDict:
    """A FitRes for secaggplus_mod to mask: only the sum of these arrays is ever seen.

    Its weight is the bucketed count (1 unless the rule is the weighted mean), capped at
    ``secagg-max-weight`` so the masked sum cannot overflow; it and the metadata stay
    visible.
    """
    arrays = [sent_rows(result.probs, cfg.encoding).astype(np.float64).reshape(-1)]
    if result.test_probs is not None:
        arrays.append(result.test_probs.astype(np.float64).reshape(-1))
    meta = _meta(result)
    fitres = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(arrays),
                    min(meta.weight, cfg.secagg_max_weight), meta.flat())
    return compat.fitres_to_recorddict(fitres, keep_input=True)


def _private_data(cfg: FedConfig, node: NodeSettings,
                  task: PreparedTask) -> tuple[torch.Tensor, torch.Tensor]:
    """A deployed node's own files, else the simulated partition of this client."""
    if node.data_dir is not None:  # client/private_data.py
        # features of private texts are cached in the node's own folder, never shared
        encode = functools.partial(encode_texts, cfg, cfg.student_for(node.partition_id),
                                   feature_dir=node.state_dir / "cache")
        return load_private_dir(node.data_dir, task, dataset=cfg.dataset, seed=cfg.seed,
                                max_len=cfg.max_len, encode=encode)
    part = client_partitions(cfg.dataset, cfg.seed, cfg.vocab_size, cfg.max_len,
                             node.num_partitions, cfg.partition, cfg.alpha)[node.partition_id]
    return task.private_x[part], task.private_y[part]


def _student_config(cfg: FedConfig, task: PreparedTask, family: str) -> ModelConfig:
    return model_config(cfg, task, family, cfg.student_size)


@dataclass(frozen=True)
class PrivateOutcome:
    """What step (c) did: trained under DP, declined (with a reason code), or neither."""

    declined: bool = False
    reason: str = ""  # a Refusal code; the full text stays in the node's log
    sigma: float = 0.0
    steps: int = 0
    non_private: bool = False  # private data used without DP (only if the policy allows)


def _private_round(
    cfg: FedConfig, plan: RoundPlan, state: ClientState, student: torch.nn.Module,
    x: torch.Tensor, y: torch.Tensor, *, policy: NodePolicy, device: torch.device,
    client_id: str, criterion: torch.nn.Module,
) -> PrivateOutcome:
    """Train on the private partition if the node's policy and budget allow it, with the
    task's ``criterion`` (cross-entropy on class ids; MSE of forecasts)."""
    if not cfg.private_training:
        return PrivateOutcome(reason=Refusal.PUBLIC_ONLY)
    if state.ledger.has_round(plan.run_id, plan.round):
        # The event is already recorded (a retry after a crash): never spend it twice.
        return _decline(client_id, Refusal.ALREADY_SPENT,
                        f"round {plan.round} of run {plan.run_id} is already in the ledger")
    if not cfg.dp:  # the run asks for no DP: only a node whose policy allows it complies
        if not policy.allow_non_dp:
            return _decline(client_id, Refusal.NON_DP, "the run asks for training without "
                            "DP; this node's policy never allows it (allow-non-dp = false)")
        return _non_private_round(cfg, plan, state, student, x, y, device=device,
                                  criterion=criterion)
    delta = state.ledger.delta() or policy.delta  # the ledger's first record fixes δ
    if not policy.delta_fits(delta, len(x)):
        return _decline(client_id, Refusal.DELTA,
                        f"δ={delta:g} is not below 1/(10·n) for n={len(x)} examples")
    budget = policy.budget(cfg.epsilon)
    noise = _noise_plan(cfg, plan, state, len(x), budget=budget, delta=delta)
    event = noise.event()
    check = check_budget(state.ledger.events(), event, delta=delta, budget=budget,
                         accountant=cfg.accountant)
    if not check.fits:
        return _decline(client_id, Refusal.BUDGET, check.reason, sigma=event.noise_multiplier)
    record = state.ledger.append(run_id=plan.run_id, round=plan.round, client_id=client_id,
                                 event=event, accountant=cfg.accountant, delta=delta)
    ran = dp_train(student, x, y, noise_multiplier=event.noise_multiplier,
                   max_grad_norm=cfg.max_grad_norm, expected_batch_size=cfg.dp_batch_size,
                   steps=event.steps, lr=cfg.dp_lr, optimizer=cfg.dp_optimizer,
                   trainable=cfg.dp_trainable, grad_sample_mode=cfg.grad_sample_mode,
                   max_physical_batch_size=cfg.max_physical_batch_size, device=device,
                   seeds=DpSeeds.for_ledger_record(state.secret, record.index),
                   adapter_rank=cfg.dp_adapter_rank, criterion=criterion)
    check_ran_as_planned(event, noise_multiplier=ran.noise_multiplier,
                         sample_rate=ran.sample_rate, steps=ran.steps,
                         max_grad_norm=ran.max_grad_norm,
                         planned_max_grad_norm=cfg.max_grad_norm)
    return PrivateOutcome(sigma=event.noise_multiplier, steps=event.steps)


def _decline(client_id: str, code: str, why: str, *, sigma: float = 0.0) -> PrivateOutcome:
    # a warning: the node's operator must see it in the SuperNode's log, where INFO lines
    # of the ClientApp's own loggers do not reach
    log.warning("%s declines the private step (%s): %s", client_id, code, why)
    return PrivateOutcome(declined=True, reason=code, sigma=sigma)


def _non_private_round(cfg: FedConfig, plan: RoundPlan, state: ClientState,
                       student: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                       device: torch.device, criterion: torch.nn.Module) -> PrivateOutcome:
    """``dp = false`` on a node that allows it: plain training, and ε is ∞ from now on."""
    state.mark_trained_without_dp()  # before training: from now on its ε is ∞
    steps = max(1, math.ceil(cfg.dp_epochs * len(x) / cfg.dp_batch_size))
    # The same data without DP, with the plain loop's AdamW (at the distillation lr).
    train_supervised(student, x, y, epochs=max(1, round(cfg.dp_epochs)),
                     lr=cfg.student_distill_lr, batch_size=cfg.dp_batch_size, device=device,
                     seed=cfg.seed + plan.round, loss_fn=criterion)
    return PrivateOutcome(steps=steps, non_private=True)


def _noise_plan(cfg: FedConfig, plan: RoundPlan, state: ClientState, n: int, *,
                budget: float, delta: float) -> NoisePlan:
    """σ for this run's remaining rounds, calibrated once and kept on disk.

    A saved plan is reused only while it describes this data: if the number of private
    examples changed (so q or the steps did), the rest of the run is planned anew after
    what the ledger already holds, so the recorded q is always the q that is run.
    """
    q, steps = sample_rate_and_steps(n, cfg.dp_batch_size, cfg.dp_epochs)
    saved = state.plan(plan.run_id)
    if saved is not None and (saved.sample_rate, saved.steps_per_round) == (q, steps):
        return saved
    rounds = plan.rounds if saved is None else max(1, plan.rounds - plan.round + 1)
    noise = plan_noise(budget=budget, delta=delta, num_examples=n,
                       expected_batch_size=cfg.dp_batch_size, epochs_per_round=cfg.dp_epochs,
                       rounds=rounds, previous=state.ledger.events(),
                       accountant=cfg.accountant, noise_multiplier=cfg.noise_multiplier)
    state.save_plan(plan.run_id, noise)
    return noise

"""The ClientApp: one round of a client, following DESIGN.md "One round", step 2.

(a) check the round's DP plan against the ledger and decline rather than exceed the
budget; (b) distil the student towards the teacher's knowledge on the public batch (no
ε); (c) DP-SGD on the private partition with Opacus; (d) the ledger records the event
*before* training, so a crash can only over-count, never lose budget; (e) reply with the
student's soft labels on the public batch, ε so far and the example count.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.compat.common import recorddict_compat as compat

from client.attacks import FAULTS, POISONING, corrupt, is_malicious, poison
from client.private_data import load_private_dir
from client.state import ClientState, NoisePlan
from common.config import FedConfig
from common.device import resolve_device
from common.distill.codec import decode_knowledge, encode_knowledge
from common.distill.losses import soften
from common.errors import KnowledgeError
from common.models import ModelConfig, build_model
from common.privacy.accounting import (
    DpEvent,
    calibrate_noise_multiplier,
    check_budget,
    epsilon_from_events,
)
from common.protocol import (
    FITINS_PARAMETERS,
    INFO,
    KNOWLEDGE,
    METRICS,
    PUBLIC,
    ROUND,
    SOFT_LABELS,
    TEST_SOFT_LABELS,
    RoundPlan,
    from_array_record,
    to_array_record,
    unpack_secure_instructions,
)
from common.task import PreparedTask, client_partitions, prepare_task
from common.training import distill, dp_train, predict_logits, steps_per_epoch, train_supervised

log = logging.getLogger(__name__)


def _secaggplus_when_asked(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Run Flower's SecAgg+ client protocol only for the messages of a secure round."""
    if msg.has_content() and RECORD_KEY_CONFIGS in msg.content.config_records:
        return secaggplus_mod(msg, context, call_next)
    return call_next(msg, context)


app = ClientApp(mods=[_secaggplus_when_asked])


@dataclass(frozen=True)
class NodeSettings:
    """What differs between client nodes: parsed once from ``context.node_config``."""

    partition_id: int
    num_partitions: int
    state_dir: Path
    epsilon: float | None  # a node's own budget overrides the run's
    data_dir: Path | None = None  # a deployed node's own files replace the simulated partition

    @classmethod
    def from_context(cls, context: Context, cfg: FedConfig) -> NodeSettings:
        nc = context.node_config
        pid = int(nc.get("partition-id", 0))
        state_dir = nc.get("state-dir") or str(Path(cfg.out_dir) / "clients" / f"client-{pid}")
        eps = nc.get("epsilon")
        data_dir = nc.get("data-dir")
        return cls(pid, int(nc.get("num-partitions", cfg.num_clients)), Path(str(state_dir)),
                   float(eps) if eps is not None else None,
                   Path(str(data_dir)).expanduser() if data_dir else None)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """One round of federated distillation on this client (plain or under SecAgg+)."""
    torch.set_num_threads(1)  # two simulated clients share a 2-core machine
    cfg = FedConfig.from_mapping(context.run_config)
    node = NodeSettings.from_context(context, cfg)
    secure = FITINS_PARAMETERS in msg.content.array_records
    if secure:  # the legacy FitIns that secaggplus_mod needs (common/protocol.py)
        fitins = compat.recorddict_to_fitins(msg.content, keep_input=True)
        plan, indices, knowledge = unpack_secure_instructions(
            parameters_to_ndarrays(fitins.parameters), fitins.config)
    else:
        plan = RoundPlan.from_record(msg.content.config_records[ROUND])
        indices = from_array_record(msg.content, PUBLIC)["indices"]
        knowledge = from_array_record(msg.content, KNOWLEDGE)
    result = _client_round(cfg, node, plan, indices, knowledge)
    content = _secure_reply(cfg, node, result) if secure else _plain_reply(cfg, node, result)
    return Message(content, reply_to=msg)


@dataclass(frozen=True)
class RoundResult:
    """What one client round produced, before it is encoded for either kind of reply."""

    round: int
    probs: np.ndarray  # (m, C) softened soft labels on the public batch
    test_probs: np.ndarray | None  # (n_test, C) at T=1, in evaluate rounds
    test_accuracy: float | None
    epsilon: float
    num_examples: int
    declined: bool
    reason: str
    steps: int
    sigma: float
    student: str
    client_id: str


def _client_round(cfg: FedConfig, node: NodeSettings, plan: RoundPlan, indices: np.ndarray,
                  knowledge: dict[str, np.ndarray]) -> RoundResult:
    """Steps (a)–(e) of the module docstring for one round."""
    task = prepare_task(cfg.dataset, cfg.seed, cfg.vocab_size, cfg.max_len)
    if plan.fingerprint != task.fingerprint:
        raise KnowledgeError(
            f"tokenizer fingerprint {task.fingerprint[:12]} differs from the coordinator's "
            f"{plan.fingerprint[:12]}: both sides must load the same dataset and vocab-size."
        )
    device = resolve_device(cfg.device)
    state = ClientState(node.state_dir)
    family = cfg.student_for(node.partition_id)
    student = build_model(_student_config(cfg, task, family))
    state.load_student(student)
    client_id = f"client-{node.partition_id}"

    # (b) distil towards the teacher's knowledge on the public batch: public data, no ε
    rows = torch.as_tensor(indices, dtype=torch.long)
    teacher = decode_knowledge(knowledge, cfg.encoding, num_rows=len(rows),
                               num_classes=task.num_classes)
    public_x = task.public_x[rows]
    distill(student, public_x, torch.as_tensor(teacher), temperature=cfg.temperature,
            epochs=cfg.student_distill_epochs, lr=cfg.student_distill_lr, device=device,
            seed=cfg.seed + plan.round)

    # (a, c, d) private training under DP, within the budget
    x_priv, y_priv = _private_data(cfg, node, task)
    budget = node.epsilon if node.epsilon is not None else cfg.epsilon
    declined, reason, sigma, steps = _private_round(
        cfg, plan, state, student, x_priv, y_priv, budget=budget, device=device,
        client_id=client_id,
    )
    state.save_student(student)

    # (e) soft labels on the public batch (post-processing: no ε)
    probs = soften(predict_logits(student, public_x, device=device), cfg.temperature).numpy()
    test_probs, test_accuracy = None, None
    if plan.evaluate:
        test_probs = soften(predict_logits(student, task.test_x, device=device), 1.0).numpy()
        test_accuracy = float((test_probs.argmax(1) == task.test_y.numpy()).mean())
    return RoundResult(
        round=plan.round, probs=probs, test_probs=test_probs, test_accuracy=test_accuracy,
        epsilon=state.ledger.epsilon(delta=cfg.delta, accountant=cfg.accountant),
        num_examples=int(len(y_priv)), declined=declined, reason=reason, steps=int(steps),
        sigma=float(sigma), student=family, client_id=client_id,
    )


def _plain_reply(cfg: FedConfig, node: NodeSettings, result: RoundResult) -> RecordDict:
    """The soft labels as encoded arrays, with metrics: the coordinator sees each reply."""
    content = RecordDict()
    content[SOFT_LABELS] = to_array_record(_encode_reply(cfg, node, result.probs,
                                                         result.round))
    if result.test_probs is not None:
        content[TEST_SOFT_LABELS] = to_array_record(
            encode_knowledge(result.test_probs, "float16"))
    content[METRICS] = MetricRecord({
        "epsilon": result.epsilon,
        "num-examples": result.num_examples,
        "declined": int(result.declined),
        "dp-steps": result.steps,
        "noise-multiplier": result.sigma,
    })
    content[INFO] = ConfigRecord({"student": result.student, "reason": result.reason,
                                  "client-id": result.client_id})
    return content


def _secure_reply(cfg: FedConfig, node: NodeSettings, result: RoundResult) -> RecordDict:
    """A FitRes for secaggplus_mod to mask: only the sum of these arrays is ever seen.

    The count is the weight of the weighted mean, capped at ``secagg-max-weight`` so the
    masked sum cannot overflow (1 for the plain mean). It and the metrics stay visible.
    """
    probs = _attacked(cfg, node, result.probs, result.round)
    arrays = [probs.astype(np.float64).reshape(-1)]
    if result.test_probs is not None:
        arrays.append(result.test_probs.astype(np.float64).reshape(-1))
    weight = min(result.num_examples, cfg.secagg_max_weight)
    metrics = {
        "epsilon": result.epsilon, "declined": int(result.declined), "dp-steps": result.steps,
        "noise-multiplier": result.sigma, "student": result.student,
        "client-id": result.client_id, "reason": result.reason,
        "test-accuracy": -1.0 if result.test_accuracy is None else result.test_accuracy,
    }
    fitres = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(arrays),
                    weight if cfg.aggregation == "weighted-mean" else 1, metrics)
    return compat.fitres_to_recorddict(fitres, keep_input=True)


def _attacked(cfg: FedConfig, node: NodeSettings, probs: np.ndarray, rnd: int) -> np.ndarray:
    """A malicious client's secure reply: poisoned, or malformed (nan, shape), or raising."""
    malicious = is_malicious(node.partition_id, node.num_partitions, cfg.attack_fraction)
    attack = cfg.attack if malicious else "none"
    if attack in POISONING:
        return poison(probs, attack, seed=cfg.seed * 1000 + rnd)
    if attack == "raise":
        corrupt({}, attack)  # raises InjectedFault: this client drops out mid-round
    if attack == "nan":
        return np.full_like(probs, np.nan)
    if attack == "shape":
        return probs[:-1]
    return probs


def _private_data(cfg: FedConfig, node: NodeSettings,
                  task: PreparedTask) -> tuple[torch.Tensor, torch.Tensor]:
    """A deployed node's own files, else the simulated partition of this client."""
    if node.data_dir is not None:  # client/private_data.py
        return load_private_dir(node.data_dir, task, dataset=cfg.dataset, seed=cfg.seed,
                                max_len=cfg.max_len)
    part = client_partitions(cfg.dataset, cfg.seed, cfg.vocab_size, cfg.max_len,
                             node.num_partitions, cfg.partition, cfg.alpha)[node.partition_id]
    return task.private_x[part], task.private_y[part]


def _encode_reply(cfg: FedConfig, node: NodeSettings, probs: np.ndarray,
                  rnd: int) -> dict[str, np.ndarray]:
    """Encode the soft labels; a client configured as an attacker poisons or corrupts them."""
    malicious = is_malicious(node.partition_id, node.num_partitions, cfg.attack_fraction)
    attack = cfg.attack if malicious else "none"
    if attack in POISONING:
        probs = poison(probs, attack, seed=cfg.seed * 1000 + rnd)
    knowledge = encode_knowledge(probs, cfg.encoding, topk=cfg.topk)
    return corrupt(knowledge, attack) if attack in FAULTS else knowledge


def _student_config(cfg: FedConfig, task: PreparedTask, family: str) -> ModelConfig:
    return ModelConfig(family=family, size=cfg.student_size, vocab_size=task.vocab_size,
                       num_classes=task.num_classes, max_len=cfg.max_len)


def _private_round(
    cfg: FedConfig, plan: RoundPlan, state: ClientState, student: torch.nn.Module,
    x: torch.Tensor, y: torch.Tensor, *, budget: float, device: torch.device, client_id: str,
) -> tuple[bool, str, float, int]:
    """Train on the private partition if the plan fits; returns (declined, reason, σ, steps)."""
    if not cfg.private_training:
        return False, "private training is off (public-only ablation)", 0.0, 0
    if state.ledger.has_round(plan.run_id, plan.round):
        # The event is already recorded (a retry after a crash): never spend it twice.
        return True, f"round {plan.round} of run {plan.run_id} is already in the ledger", 0.0, 0
    if not cfg.dp:
        steps = max(1, math.ceil(cfg.dp_epochs * len(x) / cfg.dp_batch_size))
        # The same data without DP, with the plain loop's AdamW (at the distillation lr).
        train_supervised(student, x, y, epochs=max(1, round(cfg.dp_epochs)),
                         lr=cfg.student_distill_lr,
                         batch_size=cfg.dp_batch_size, device=device, seed=cfg.seed + plan.round)
        return False, "non-private training (dp = false): no privacy guarantee", 0.0, steps
    noise = _noise_plan(cfg, plan, state, len(x), budget)
    event = DpEvent(noise.noise_multiplier, noise.sample_rate, noise.steps_per_round)
    check = check_budget(state.ledger.events(), event, delta=cfg.delta, budget=budget,
                         accountant=cfg.accountant)
    if not check.fits:
        log.info("%s declines round %s: %s", client_id, plan.round, check.reason)
        return True, check.reason, noise.noise_multiplier, 0
    state.ledger.append(run_id=plan.run_id, round=plan.round, client_id=client_id, event=event,
                        accountant=cfg.accountant, delta=cfg.delta)
    dp_train(student, x, y, noise_multiplier=noise.noise_multiplier,
             max_grad_norm=cfg.max_grad_norm, expected_batch_size=cfg.dp_batch_size,
             steps=noise.steps_per_round, lr=cfg.dp_lr, optimizer=cfg.dp_optimizer,
             trainable=cfg.dp_trainable, grad_sample_mode=cfg.grad_sample_mode,
             max_physical_batch_size=cfg.max_physical_batch_size, device=device,
             seed=cfg.seed * 1000 + plan.round, adapter_rank=cfg.dp_adapter_rank)
    return False, "", noise.noise_multiplier, noise.steps_per_round


def _noise_plan(cfg: FedConfig, plan: RoundPlan, state: ClientState, n: int,
                budget: float) -> NoisePlan:
    """σ for all of this run's planned rounds, calibrated once and kept on disk."""
    saved = state.plan(plan.run_id)
    if saved is not None:
        return saved
    q, per_epoch = steps_per_epoch(n, cfg.dp_batch_size)
    steps = max(1, math.ceil(cfg.dp_epochs * per_epoch))
    if cfg.noise_multiplier > 0:
        sigma = cfg.noise_multiplier
    else:
        sigma = _calibrate(state, cfg, q, steps * plan.rounds, budget)
    noise = NoisePlan(sigma, q, steps, plan.rounds)
    state.save_plan(plan.run_id, noise)
    return noise


def _calibrate(state: ClientState, cfg: FedConfig, q: float, total_steps: int,
               budget: float) -> float:
    """The smallest σ whose planned steps, after any earlier runs' events, fit the budget."""
    previous = state.ledger.events()
    if not previous:
        return calibrate_noise_multiplier(target_epsilon=budget, delta=cfg.delta,
                                          sample_rate=q, steps=total_steps,
                                          accountant=cfg.accountant)

    def eps(sigma: float) -> float:
        return epsilon_from_events([*previous, DpEvent(sigma, q, total_steps)],
                                   delta=cfg.delta, accountant=cfg.accountant)

    lo, hi = 0.3, 64.0
    if eps(hi) > budget:  # what is left cannot pay for these rounds: decline them later
        return hi
    for _ in range(30):
        mid = math.sqrt(lo * hi)
        lo, hi = (lo, mid) if eps(mid) <= budget else (mid, hi)
    return hi

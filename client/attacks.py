"""Malicious and faulty clients, for robustness tests and the attack harness.

A client whose partition id falls in the first ``attack-fraction`` of the federation
replaces its honest soft labels with one of these. Poisoning attacks return valid
probabilities (they pass validation and must be bounded by robust aggregation);
faults return malformed payloads or raise (they must be rejected with a reason while the
round goes on).

:func:`attacked_payload` is the one attack sequence (poison, encode, then corrupt or
raise); :func:`attack_mod` applies it to a simulated client's reply, plain or before
SecAgg+ masks it, and the robustness replay (simulations/robustness/) applies it to
recorded honest replies, so both attack the same way with the same seed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from flwr.app import Context, Message, RecordDict
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import FitRes, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.compat.common import recorddict_compat as compat

from client.errors import NodeRoundFailed
from common.config import ATTACKS, FedConfig
from common.distill.codec import decode_knowledge, downlink_encoding, encode_knowledge
from common.privacy.policy import Refusal
from common.protocol import (
    FITRES_PARAMETERS,
    SOFT_LABELS,
    TEST_SOFT_LABELS,
    from_array_record,
    parse_plain_meta,
    plain_reply,
    read_instructions,
)

log = logging.getLogger(__name__)

POISONING = ATTACKS[1:6]  # flip, noise, wrong-onehot, collude, adaptive
FAULTS = ATTACKS[6:]  # nan, shape, raise
# an adaptive attacker stays this far inside the bound it estimates for a distance filter
INSIDE = 0.9


class InjectedFault(RuntimeError):
    """Raised by a client configured with ``attack = "raise"``."""


def is_malicious(partition_id: int, num_partitions: int, fraction: float) -> bool:
    """The first ``round(fraction * num_partitions)`` clients are the malicious ones."""
    return partition_id < round(fraction * num_partitions)


@dataclass(frozen=True)
class AttackerView:
    """What a malicious client knows besides its own soft labels: the teacher's soft
    labels it was sent this round, and the run's aggregation rule (the run config is
    public to every node)."""

    teacher: np.ndarray  # (m, C)
    rule: str
    filter_ratio: float

    @classmethod
    def of(cls, teacher: np.ndarray, cfg: FedConfig) -> AttackerView:
        return cls(teacher, cfg.aggregation, cfg.filter_ratio)


def poison(probs: np.ndarray, kind: str, *, seed: int,
           view: AttackerView | None = None) -> np.ndarray:
    """Replace honest soft labels (m, C) by an attack's, still on the simplex."""
    m, c = probs.shape
    rng = np.random.default_rng(seed)
    if kind == "adaptive":
        if view is None:
            raise ValueError("the adaptive attack needs what the attacker sees (view)")
        return adaptive(probs, view, rng)
    if kind == "flip":  # label-flipped: the class order reversed
        return probs[:, ::-1].copy()
    if kind == "noise":  # uniform noise on the simplex
        return rng.dirichlet(np.ones(c), size=m).astype(np.float32)
    if kind == "wrong-onehot":  # confident and wrong: all mass on another class
        wrong = (probs.argmax(1) + rng.integers(1, c, size=m)) % c
        return np.eye(c, dtype=np.float32)[wrong]
    if kind == "collude":  # every malicious client pushes class 0
        return np.eye(c, dtype=np.float32)[np.zeros(m, dtype=int)]
    raise ValueError(f"{kind!r} is not a poisoning attack; choose one of {POISONING}")


def adaptive(probs: np.ndarray, view: AttackerView, rng: np.random.Generator) -> np.ndarray:
    """An attacker that knows the rule: all mass on a wrong class, unless the rule drops
    replies far from the consensus; then as far towards it as the rule lets a reply go.

    The wrong class is the one after the consensus (its own and the teacher's labels),
    rotated by the round's public seed so that colluders agree. Against the median, the
    trimmed mean and the mean, the boundary value (a one-hot) moves the statistic most.
    Against ``norm-filter`` the reply walks from its honest labels towards that one-hot
    while its mean L1 distance to the teacher's labels (its estimate of the consensus)
    stays within ``filter-ratio`` times its own honest distance (its estimate of the
    median distance) times :data:`INSIDE`.
    """
    m, c = probs.shape
    consensus = (probs + view.teacher).argmax(1)
    wrong = np.eye(c, dtype=np.float32)[(consensus + rng.integers(1, c, size=m)) % c]
    if view.rule != "norm-filter":
        return wrong
    bound = INSIDE * view.filter_ratio * _distance(probs, view.teacher)
    low, high = 0.0, 1.0
    for _ in range(30):  # the distance is convex in the step: bisect for the largest
        step = (low + high) / 2
        if _distance((1 - step) * probs + step * wrong, view.teacher) <= bound:
            low = step
        else:
            high = step
    return ((1 - low) * probs + low * wrong).astype(np.float32)


def _distance(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over rows of the L1 distance, as ``norm-filter`` measures replies."""
    return float(np.abs(a - b).sum(axis=1).mean())


def corrupt(arrays: dict[str, np.ndarray], kind: str) -> dict[str, np.ndarray]:
    """Turn a valid encoded payload into a malformed one (or raise, for ``raise``)."""
    if kind == "raise":
        raise InjectedFault("injected client failure (attack = 'raise')")
    if kind == "nan":
        return {k: np.full(v.shape, np.nan, dtype=np.float32) for k, v in arrays.items()}
    if kind == "shape":
        return {k: v[:-1] for k, v in arrays.items()}
    raise ValueError(f"{kind!r} is not a fault; choose one of {FAULTS}")


def attack_seed(seed: int, rnd: int) -> int:
    """The poisoning seed of a round: public (from the run's seed), the same for every
    malicious client, so colluders draw alike and a replay redraws what a run drew."""
    return seed * 1000 + rnd


Encoder = Callable[[np.ndarray], dict[str, np.ndarray]]


def attacked_payload(probs: np.ndarray, attack: str, *, seed: int, rnd: int,
                     encode: Encoder, view: AttackerView | None = None
                     ) -> dict[str, np.ndarray]:
    """What a client running ``attack`` sends for its soft labels ``probs`` (m, C).

    Poisoning replaces the labels before ``encode``; a fault corrupts the encoded payload
    (or raises :class:`InjectedFault`); ``"none"`` sends the honest encoding.
    """
    if attack in POISONING:
        probs = poison(probs, attack, seed=attack_seed(seed, rnd), view=view)
    payload = encode(probs)
    return corrupt(payload, attack) if attack in FAULTS else payload


def wire_encoder(encoding: str, topk: int) -> Encoder:
    """The plain reply's encoding of soft labels (common/distill/codec.py)."""
    return lambda probs: encode_knowledge(probs, encoding, topk=topk)


def attack_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """A Flower client mod: a malicious client attacks the reply its ClientApp produced.

    Listed inside secaggplus_mod, so a secure reply is attacked before it is masked. It
    passes every message through unchanged unless the run config names an attack and
    this node is one of the first ``attack-fraction`` partitions (:func:`is_malicious`).
    """
    cfg = FedConfig.from_mapping(context.run_config)
    attack = _attack_of(context, cfg)
    if attack == "none" or not msg.has_content():
        return call_next(msg, context)
    reply = call_next(msg, context)
    records = reply.content.array_records if reply.has_content() else {}
    attack_reply = (_attack_secure if FITRES_PARAMETERS in records
                    else _attack_plain if SOFT_LABELS in records
                    else None)  # a refusal: nothing to attack
    if attack_reply is None:
        return reply
    plan, indices, knowledge = read_instructions(msg.content)
    try:
        content = attack_reply(reply.content, attack, cfg, plan.round,
                               _Sent(len(indices), knowledge))
    except InjectedFault:
        log.exception("the round fails on purpose; the coordinator gets only the code %r",
                      Refusal.FAILED)
        raise NodeRoundFailed(Refusal.FAILED) from None
    return Message(content, reply_to=msg)


def _attack_of(context: Context, cfg: FedConfig) -> str:
    """The run's attack if this node is a malicious one, else ``"none"``."""
    if cfg.attack == "none":
        return cfg.attack
    nc = context.node_config
    num_partitions = int(nc.get("num-partitions", cfg.num_clients))
    malicious = is_malicious(int(nc.get("partition-id", 0)), num_partitions,
                             cfg.attack_fraction)
    return cfg.attack if malicious else "none"


@dataclass(frozen=True)
class _Sent:
    """What the coordinator sent this round: the public rows, the teacher's knowledge."""

    rows: int
    knowledge: dict[str, np.ndarray]

    def view(self, attack: str, cfg: FedConfig, num_classes: int) -> AttackerView | None:
        """What an adaptive attacker reads from it (no other attack reads it)."""
        if attack != "adaptive":
            return None
        teacher = decode_knowledge(self.knowledge, downlink_encoding(cfg.encoding),
                                   num_rows=self.rows,
                                   num_classes=num_classes)
        return AttackerView.of(teacher, cfg)


def _attack_plain(content: RecordDict, attack: str, cfg: FedConfig, rnd: int,
                  sent: _Sent) -> RecordDict:
    """Parse the plain reply, attack its soft labels, build it again."""
    encoded = from_array_record(content, SOFT_LABELS)
    test = (from_array_record(content, TEST_SOFT_LABELS)
            if TEST_SOFT_LABELS in content.array_records else None)
    if attack in FAULTS:  # corrupt what it would send: any knowledge, probabilities or not
        return plain_reply(parse_plain_meta(content), corrupt(encoded, attack), test)
    probs = decode_knowledge(encoded, cfg.encoding, num_rows=sent.rows,
                             num_classes=_num_classes(cfg, encoded))
    payload = attacked_payload(probs, attack, seed=cfg.seed, rnd=rnd,
                               encode=wire_encoder(cfg.encoding, cfg.topk),
                               view=sent.view(attack, cfg, probs.shape[1]))
    return plain_reply(parse_plain_meta(content), payload, test)


def _attack_secure(content: RecordDict, attack: str, cfg: FedConfig, rnd: int,
                   sent: _Sent) -> RecordDict:
    """Attack the first array of the FitRes (the soft labels, flat) before masking."""
    fitres = compat.recorddict_to_fitres(content, keep_input=True)
    first, *rest = parameters_to_ndarrays(fitres.parameters)
    probs = first.reshape(sent.rows, -1)
    payload = attacked_payload(probs, attack, seed=cfg.seed, rnd=rnd,
                               encode=lambda probs: {"probs": probs},
                               view=sent.view(attack, cfg, probs.shape[1]))
    arrays = [payload["probs"].astype(np.float64).reshape(-1), *rest]
    attacked = FitRes(fitres.status, ndarrays_to_parameters(arrays), fitres.num_examples,
                      fitres.metrics)
    return compat.fitres_to_recorddict(attacked, keep_input=True)


def _num_classes(cfg: FedConfig, encoded: dict[str, np.ndarray]) -> int:
    """C of the encoded soft labels: their width, or the task's where topk or votes hide
    it."""
    if cfg.encoding not in ("topk", "votes"):  # (m, C) probabilities or int8 codes
        return int(encoded["codes" if cfg.encoding == "int8" else "probs"].shape[1])
    from common.task import prepare_task  # cached: the ClientApp just prepared it

    return prepare_task(cfg.dataset, cfg.seed, cfg.vocab_size, cfg.max_len).num_classes

"""client/attacks.py's attack_mod on the replies client/app.py builds, plain and secure."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Context, Message, RecordDict
from flwr.common import (
    Code,
    FitIns,
    FitRes,
    Status,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.compat.common import recorddict_compat as compat

from client.attacks import (
    INSIDE,
    AttackerView,
    attack_mod,
    attacked_payload,
    poison,
    wire_encoder,
)
from client.errors import NodeRoundFailed
from common.config import FedConfig
from common.distill.codec import decode_knowledge, encode_knowledge
from common.privacy.policy import Refusal
from common.protocol import (
    KNOWLEDGE,
    PUBLIC,
    ROUND,
    SOFT_LABELS,
    ReplyMeta,
    RoundPlan,
    from_array_record,
    pack_secure_instructions,
    parse_plain_meta,
    plain_reply,
    to_array_record,
)
from coordinator.aggregation.filter import DISTANCE_FLOOR, reply_distances
from simulations.inprocess import restore_task_identity, set_task_identity

M, C, RND = 6, 3, 4
PLAN = RoundPlan(RND, "run-a", 5, "fp", False)
META = ReplyMeta(client_id="client-0", student="cnn", epsilon=1.5, weight=100,
                 declined=False, reason="", dp_steps=3, noise_multiplier=1.1,
                 non_private=False, ledger=None)


@pytest.fixture(autouse=True)
def _task_identity():
    """Flower's Messages need a run id: this process plays run 1."""
    saved = set_task_identity(1)
    yield
    restore_task_identity(saved)


def _probs() -> np.ndarray:
    return np.random.default_rng(0).dirichlet(np.ones(C), size=M).astype(np.float32)


def _context(cfg: FedConfig, partition: int) -> Context:
    return Context(run_id=1, node_id=1, state=RecordDict(), run_config=cfg.to_run_config(),
                   node_config={"partition-id": partition, "num-partitions": 4})


def _plain_round(cfg: FedConfig, partition: int,
                 teacher: np.ndarray | None = None) -> tuple[Message, Message]:
    """(the reply attack_mod returns, the honest reply the ClientApp made)."""
    sent = _probs() if teacher is None else teacher
    content = RecordDict({
        ROUND: PLAN.to_record(),
        PUBLIC: to_array_record({"indices": np.arange(M, dtype=np.int64)}),
        KNOWLEDGE: to_array_record(encode_knowledge(sent, cfg.encoding)),
    })
    msg = Message(content=content, dst_node_id=1, message_type="train")
    honest = Message(plain_reply(META, encode_knowledge(_probs(), cfg.encoding), None),
                     reply_to=msg)
    return attack_mod(msg, _context(cfg, partition), lambda m, c: honest), honest


def _secure_round(cfg: FedConfig, partition: int) -> list[np.ndarray]:
    """The FitRes arrays attack_mod hands to secaggplus_mod for masking."""
    params, config = pack_secure_instructions(PLAN, np.arange(M, dtype=np.int64),
                                              encode_knowledge(_probs(), "float32"))
    fitins = FitIns(ndarrays_to_parameters(params), config)
    msg = Message(content=compat.fitins_to_recorddict(fitins, keep_input=True),
                  dst_node_id=1, message_type="train")
    fitres = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(
        [_probs().astype(np.float64).reshape(-1)]), 100, META.flat())
    honest = Message(compat.fitres_to_recorddict(fitres, keep_input=True), reply_to=msg)
    reply = attack_mod(msg, _context(cfg, partition), lambda m, c: honest)
    return parameters_to_ndarrays(
        compat.recorddict_to_fitres(reply.content, keep_input=True).parameters)


@pytest.mark.parametrize("attack", ["flip", "noise", "wrong-onehot", "collude", "nan", "shape"])
def test_a_malicious_plain_reply_carries_the_attack_sequence(attack: str) -> None:
    cfg = FedConfig(attack=attack, attack_fraction=0.5, seed=7, encoding="float16")
    reply, honest = _plain_round(cfg, partition=0)
    probs = decode_knowledge(from_array_record(honest.content, SOFT_LABELS), "float16",
                             num_rows=M, num_classes=C)
    want = attacked_payload(probs, attack, seed=7, rnd=RND, encode=wire_encoder("float16", 2))
    got = from_array_record(reply.content, SOFT_LABELS)
    assert got.keys() == want.keys()
    for key in want:
        np.testing.assert_array_equal(got[key], want[key])
    assert parse_plain_meta(reply.content) == META  # the rest of the reply is untouched


def test_an_honest_node_and_a_run_without_attack_pass_the_reply_through() -> None:
    reply, honest = _plain_round(FedConfig(attack="flip", attack_fraction=0.5), partition=2)
    assert reply is honest
    reply, honest = _plain_round(FedConfig(), partition=0)
    assert reply is honest


def test_an_injected_failure_leaves_only_the_reason_code() -> None:
    with pytest.raises(NodeRoundFailed) as info:
        _plain_round(FedConfig(attack="raise", attack_fraction=0.5), partition=0)
    assert str(info.value) == Refusal.FAILED and info.value.__cause__ is None


def test_a_secure_reply_is_attacked_before_masking() -> None:
    cfg = FedConfig(attack="collude", attack_fraction=0.5, secure_aggregation=True)
    (first,) = _secure_round(cfg, partition=0)
    np.testing.assert_array_equal(first.reshape(M, C), np.eye(C)[np.zeros(M, dtype=int)])
    (first,) = _secure_round(cfg.replace(attack="shape"), partition=0)
    assert first.shape == ((M - 1) * C,)  # one row short: SecAgg+ refuses it as a dropout
    (first,) = _secure_round(cfg, partition=3)
    np.testing.assert_array_equal(first, _probs().astype(np.float64).reshape(-1))


def _l1(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).sum(axis=1).mean())


def _honest(teacher: np.ndarray, k: int) -> list[np.ndarray]:
    """k students that mostly agree with the teacher, each in its own way."""
    rng = np.random.default_rng(1)
    mixed = [0.7 * teacher + 0.3 * rng.dirichlet(np.ones(C), size=len(teacher))
             for _ in range(k)]
    return [m.astype(np.float32) for m in mixed]


def test_the_adaptive_attacker_stays_inside_the_norm_filters_bound() -> None:
    teacher = np.random.default_rng(0).dirichlet(np.ones(C), size=300).astype(np.float32)
    honest = _honest(teacher, 10)
    view = AttackerView(teacher, "norm-filter", 2.0)
    sent = poison(honest[0], "adaptive", seed=3, view=view)
    assert np.allclose(sent.sum(axis=1), 1.0) and (sent >= 0).all()
    assert _l1(sent, teacher) <= INSIDE * 2.0 * _l1(honest[0], teacher) + 1e-6
    assert _l1(sent, honest[0]) > 0.1  # it did move, as far as its estimate allows
    # three such replies among ten pass the filter, where wrong one-hots do not
    stacked = np.stack([sent] * 3 + honest[3:])
    distances = reply_distances(stacked)
    assert (distances[:3] <= 2.0 * np.median(distances) + DISTANCE_FLOOR).all()
    onehot = poison(honest[0], "wrong-onehot", seed=3)
    distances = reply_distances(np.stack([onehot] * 3 + honest[3:]))
    assert (distances[:3] > 2.0 * np.median(distances) + DISTANCE_FLOOR).all()


@pytest.mark.parametrize("rule", ["mean", "median", "trimmed-mean"])
def test_the_adaptive_attacker_sends_the_boundary_value_to_other_rules(rule: str) -> None:
    teacher = np.random.default_rng(0).dirichlet(np.ones(C), size=50).astype(np.float32)
    honest = _honest(teacher, 1)[0]
    sent = poison(honest, "adaptive", seed=3, view=AttackerView(teacher, rule, 2.0))
    assert set(np.unique(sent)) == {0.0, 1.0}  # a one-hot per row
    assert (sent.argmax(1) != (honest + teacher).argmax(1)).all()  # never the consensus


def test_an_adaptive_plain_reply_answers_the_teacher_it_was_sent() -> None:
    cfg = FedConfig(attack="adaptive", attack_fraction=0.5, seed=7, encoding="float32",
                    aggregation="norm-filter")
    teacher = np.random.default_rng(5).dirichlet(np.ones(C), size=M).astype(np.float32)
    reply, honest = _plain_round(cfg, partition=0, teacher=teacher)
    view = AttackerView(teacher, "norm-filter", cfg.filter_ratio)
    want = attacked_payload(_probs(), "adaptive", seed=7, rnd=RND,
                            encode=wire_encoder("float32", 2), view=view)
    np.testing.assert_array_equal(from_array_record(reply.content, SOFT_LABELS)["probs"],
                                  want["probs"])
    assert not np.array_equal(want["probs"], _probs())

"""The node's privacy, tested so that each test fails when its safeguard is removed.

docs/THREAT_MODEL.md names these tests beside the claims they back, and
tests/test_mutations.py removes each safeguard in a copy of the code to prove it.
"""

from __future__ import annotations

import math
import os
import stat
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
from flwr.app import Message, RecordDict
from torch import nn

from client.app import _private_round
from client.attacks import attack_seed
from client.state import ClientState
from common.config import FedConfig
from common.distill.codec import encode_knowledge
from common.errors import CryptoError, LedgerError, PrivacyMismatchError
from common.privacy.accounting import DpEvent
from common.privacy.planner import check_ran_as_planned, plan_noise
from common.privacy.policy import NodePolicy, Refusal
from common.privacy.secrets import DpSeeds, derive_seed, load_or_create_secret
from common.protocol import (
    KNOWLEDGE,
    PUBLIC,
    ROUND,
    ReplyMeta,
    RoundPlan,
    plain_reply,
    refusal_record,
    released_count,
    to_array_record,
)
from common.training import distill, dp_train
from coordinator.replies import Rejection, validate_content, validate_reply
from simulations.inprocess import FIRST_NODE_ID

CPU = torch.device("cpu")
OPEN = NodePolicy(epsilon=100.0, delta=1e-5, require_secure_aggregation=False)

CE = torch.nn.CrossEntropyLoss()  # the criterion of a classification task


class Recorder(nn.Module):
    """A tiny classifier that records the example ids of every batch it sees.

    The list is a class attribute so that dp_train's deep copy records into it too.
    """

    seen: ClassVar[list[list[int]]] = []

    def __init__(self, n: int) -> None:
        super().__init__()
        self.tok_emb = nn.Embedding(n, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        Recorder.seen.append(sorted(x[:, 0].tolist()))
        return self.head(self.tok_emb(x).mean(1))


def _ids(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs whose first token is the example's id, labels alternating."""
    x = torch.stack([torch.arange(n), torch.arange(n)], dim=1)
    return x, (torch.arange(n) % 2).long()


def _batches(seeds: DpSeeds, n: int = 64, steps: int = 12) -> list[list[int]]:
    Recorder.seen.clear()
    x, y = _ids(n)
    dp_train(Recorder(n), x, y, noise_multiplier=1.0, max_grad_norm=1.0,
             expected_batch_size=8, steps=steps, lr=0.1, device=CPU, seeds=seeds)
    return [b for b in Recorder.seen if b]


def _client_batches(state: ClientState, cfg: FedConfig, plan: RoundPlan,
                    n: int = 64) -> list[list[int]]:
    """The batches of the client's own private step (client/app.py), as run."""
    Recorder.seen.clear()
    x, y = _ids(n)
    out = _private_round(cfg, plan, state, Recorder(n), x, y, policy=OPEN, device=CPU,
                         client_id="c0", criterion=CE)
    assert not out.declined and out.steps > 0
    return [b for b in Recorder.seen if b]


# ---------------------------------------------------------------- secret randomness
def test_node_secret_is_created_once_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "node" / "node_secret"
    first = load_or_create_secret(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and len(first) == 32
    assert load_or_create_secret(path) == first
    os.chmod(path, 0o644)
    with pytest.raises(CryptoError, match="readable by others"):
        load_or_create_secret(path)


def test_same_seeds_rerun_bit_identically_and_other_seeds_differ() -> None:
    x, y = _ids(64)
    models = []
    for seeds in (DpSeeds(11, 12), DpSeeds(11, 12), DpSeeds(11, 99), DpSeeds(77, 12)):
        torch.manual_seed(0)
        model = Recorder(64)
        dp_train(model, x, y, noise_multiplier=1.0, max_grad_norm=1.0, expected_batch_size=8,
                 steps=5, lr=0.1, device=CPU, seeds=seeds)
        models.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.equal(models[0], models[1])  # same secret, same config: same run
    assert not torch.equal(models[0], models[2])  # other noise
    assert not torch.equal(models[0], models[3])  # other batches
    assert _batches(DpSeeds(11, 12)) == _batches(DpSeeds(11, 99))  # sampling ≠ noise seed
    assert _batches(DpSeeds(11, 12)) != _batches(DpSeeds(77, 12))


def test_the_client_samples_from_its_secret_not_from_public_values(tmp_path: Path) -> None:
    """The coordinator knows the seed, the run id and the round; none predicts a batch."""
    cfg = FedConfig(seed=3, noise_multiplier=1.0, dp_batch_size=8, dp_epochs=1.5,
                    dp_trainable="all")
    plan = RoundPlan(2, "run-x", 5, "fp", False)
    a = ClientState(tmp_path / "a")
    seen_a = _client_batches(a, cfg, plan)
    expected = _batches(DpSeeds.for_ledger_record(a.secret, 0), steps=len(seen_a))
    assert seen_a == expected  # the batches are those of the node's secret ...
    public = {attack_seed(cfg.seed, plan.round), cfg.seed, plan.round, cfg.seed + plan.round, 0}
    for guess in public:  # ... and not those of any value the coordinator knows
        assert _batches(DpSeeds(guess, guess), steps=len(seen_a)) != seen_a
    # another DP event of the same node (another run, same round): fresh batches, never
    # the same ones twice (the composition behind ε assumes independent steps)
    assert _client_batches(a, cfg, RoundPlan(2, "run-y", 5, "fp", False)) != seen_a
    b = ClientState(tmp_path / "b")  # another node, same public values: other batches
    assert _client_batches(b, cfg, plan) != seen_a
    assert derive_seed(a.secret, "poisson-sampling", "ledger-record", 0) != derive_seed(
        b.secret, "poisson-sampling", "ledger-record", 0)


# ---------------------------------------------------------------- the mechanism itself
def test_poisson_sampling_gives_batches_of_varying_size() -> None:
    sizes = [len(b) for b in _batches(DpSeeds(5, 6), n=200, steps=60)]
    assert len(set(sizes)) > 3  # a fixed-size loader would give one size
    assert sum(sizes) / len(sizes) == pytest.approx(8.0, rel=0.25)  # q·n = 200/25


def test_noise_std_is_sigma_times_clip_over_batch() -> None:
    """Zero inputs give zero gradients: the first update is the Gaussian noise alone,
    whose std must be σ·C/B (Opacus divides the noisy sum by the expected batch)."""
    d, n, batch, sigma, clip = 5000, 64, 16, 1.3, 0.7
    model = nn.Linear(d, 2, bias=False)
    nn.init.zeros_(model.weight)
    x, y = torch.zeros(n, d), (torch.arange(n) % 2).long()
    dp_train(model, x, y, noise_multiplier=sigma, max_grad_norm=clip, expected_batch_size=batch,
             steps=1, lr=1.0, trainable="all", device=CPU, seeds=DpSeeds(1, 2))
    std = float(model.weight.detach().std())
    assert std == pytest.approx(sigma * clip / batch, rel=0.05)


def test_a_run_that_differs_from_the_recorded_event_is_stopped() -> None:
    event = DpEvent(1.0, 0.25, 4)
    check_ran_as_planned(event, noise_multiplier=1.0, sample_rate=0.25, steps=4,
                         max_grad_norm=1.0, planned_max_grad_norm=1.0)
    for ran in ((0.5, 0.25, 4, 1.0), (1.0, 1 / 3, 4, 1.0), (1.0, 0.25, 5, 1.0),
                (1.0, 0.25, 4, 2.0)):
        with pytest.raises(PrivacyMismatchError):
            check_ran_as_planned(event, noise_multiplier=ran[0], sample_rate=ran[1],
                                 steps=ran[2], max_grad_norm=ran[3], planned_max_grad_norm=1.0)


def test_the_recorded_q_follows_the_data_when_it_changes_mid_run(tmp_path: Path) -> None:
    cfg = FedConfig(noise_multiplier=1.0, dp_batch_size=16, dp_epochs=1.0)
    state = ClientState(tmp_path / "c")
    for rnd, n in ((1, 64), (2, 48)):  # a node whose data shrank between two rounds
        x, y = _ids(n)
        out = _private_round(cfg, RoundPlan(rnd, "run-q", 3, "fp", False), state, Recorder(n),
                             x, y, policy=OPEN, device=CPU, client_id="c0", criterion=CE)
        assert not out.declined
    assert [e.sample_rate for e in state.ledger.events()] == [1 / 4, 1 / 3]


def test_the_planner_fits_the_budget_after_earlier_events() -> None:
    earlier = [DpEvent(2.0, 0.1, 100)]
    plan = plan_noise(budget=8.0, delta=1e-5, num_examples=640, expected_batch_size=64,
                      epochs_per_round=1.0, rounds=5, previous=earlier)
    from common.privacy.accounting import epsilon_from_events

    after = epsilon_from_events([*earlier, *[plan.event()] * 5], delta=1e-5)
    assert after <= 8.0 and after > 7.5  # within the budget, and not wastefully below it


# ---------------------------------------------------------------- the node's policy
def _trained(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten().clone() for p in model.parameters()])


def test_a_run_cannot_switch_dp_off_on_a_node_that_forbids_it(tmp_path: Path) -> None:
    cfg = FedConfig(dp=False, dp_batch_size=16)
    state = ClientState(tmp_path / "c")
    x, y = _ids(64)
    model = Recorder(64)
    before = _trained(model)
    out = _private_round(cfg, RoundPlan(1, "r", 1, "fp", False), state, model, x, y,
                         policy=NodePolicy(require_secure_aggregation=False), device=CPU,
                         client_id="c0", criterion=CE)
    assert out.declined and out.reason == Refusal.NON_DP
    assert torch.equal(_trained(model), before)  # the private data was not touched
    assert not state.trained_without_dp()


def test_non_dp_training_where_allowed_makes_the_reported_epsilon_infinite(
        tmp_path: Path) -> None:
    cfg = FedConfig(dp=False, dp_batch_size=16)
    state = ClientState(tmp_path / "c")
    x, y = _ids(64)
    out = _private_round(cfg, RoundPlan(1, "r", 1, "fp", False), state, Recorder(64), x, y,
                         policy=NodePolicy(allow_non_dp=True), device=CPU, client_id="c0",
                         criterion=CE)
    assert out.non_private and not out.declined
    assert ClientState(tmp_path / "c").trained_without_dp()  # for good, across restarts
    meta = ReplyMeta(client_id="c0", student="cnn", epsilon=state.ledger.epsilon(), weight=1,
                     declined=False, reason="", dp_steps=0, noise_multiplier=0.0,
                     non_private=True, ledger=None)
    labels = encode_knowledge(np.full((4, 2), 0.5, dtype=np.float32), "float16")
    result = validate_content(plain_reply(meta, labels, None), 1, encoding="float16",
                              num_rows=4, num_classes=2, num_test=None)
    assert result.epsilon == math.inf  # what the coordinator records for this node


def test_the_run_config_cannot_raise_the_nodes_budget(tmp_path: Path) -> None:
    cfg = FedConfig(epsilon=1000.0, noise_multiplier=0.6, dp_batch_size=16)
    state = ClientState(tmp_path / "c")
    x, y = _ids(64)
    policy = NodePolicy(epsilon=2.0, require_secure_aggregation=False)
    outcomes = [_private_round(cfg, RoundPlan(r, "r", 50, "fp", False), state, Recorder(64),
                               x, y, policy=policy, device=CPU, client_id="c0", criterion=CE)
                for r in range(1, 6)]
    assert outcomes[-1].declined and outcomes[-1].reason == Refusal.BUDGET
    assert state.ledger.epsilon() <= 2.0


def test_a_larger_delta_in_a_later_run_does_not_free_a_spent_budget(tmp_path: Path) -> None:
    # σ=3, q=1/4, 4 steps a round: 4 rounds fit ε=2 at δ=1e-6, 12 at δ=1e-3
    cfg = FedConfig(noise_multiplier=3.0, dp_batch_size=16)
    state = ClientState(tmp_path / "c")
    x, y = _ids(64)
    strict = NodePolicy(epsilon=2.0, delta=1e-6, require_secure_aggregation=False)
    rnd = 0
    while not _private_round(cfg, RoundPlan(rnd := rnd + 1, "run-1", 50, "fp", False), state,
                             Recorder(64), x, y, policy=strict, device=CPU,
                             client_id="c0", criterion=CE).declined:
        pass
    spent = state.ledger.epsilon()
    assert len(state.ledger.events()) == 4
    loose = NodePolicy(epsilon=2.0, delta=1e-3, require_secure_aggregation=False)
    out = _private_round(cfg, RoundPlan(1, "run-2", 50, "fp", False), state, Recorder(64), x,
                         y, policy=loose, device=CPU, client_id="c0", criterion=CE)
    assert out.declined and out.reason == Refusal.BUDGET  # δ=1e-3 would have "freed" ε
    assert state.ledger.delta() == 1e-6 and state.ledger.epsilon() == spent
    with pytest.raises(LedgerError, match="δ"):
        state.ledger.append(run_id="run-2", round=9, client_id="c0", event=DpEvent(1, 0.5, 1),
                            accountant="rdp", delta=1e-3)


def test_delta_must_stay_below_one_over_ten_n(tmp_path: Path) -> None:
    cfg = FedConfig(noise_multiplier=1.0, dp_batch_size=16)
    x, y = _ids(64)  # 1 / (10 · 64) ≈ 1.6e-3
    out = _private_round(cfg, RoundPlan(1, "r", 1, "fp", False), ClientState(tmp_path / "c"),
                         Recorder(64), x, y,
                         policy=NodePolicy(delta=2e-3, require_secure_aggregation=False),
                         device=CPU, client_id="c0", criterion=CE)
    assert out.declined and out.reason == Refusal.DELTA


def test_policy_file_and_node_config(tmp_path: Path) -> None:
    NodePolicy(epsilon=3.0, allow_non_dp=True).save(tmp_path)
    policy = NodePolicy.load(tmp_path, {"delta": "1e-6", "partition-id": 2})
    assert policy == NodePolicy(epsilon=3.0, delta=1e-6, allow_non_dp=True)
    assert NodePolicy.load(tmp_path / "none", {}) == NodePolicy()  # strict defaults
    assert NodePolicy().require_secure_aggregation and not NodePolicy().allow_non_dp
    assert policy.budget(8.0) == 3.0 and policy.budget(1.0) == 1.0


# ---------------------------------------------------------------- what leaves the node
def test_counts_leave_only_bucketed_and_only_when_the_rule_needs_them() -> None:
    assert released_count(669, "weighted-mean") == 700
    assert released_count(3, "weighted-mean") == 100
    assert released_count(669, "median") == released_count(12, "mean") == 1


def test_a_refusal_is_a_rejection_with_its_code_at_the_coordinator() -> None:
    result = validate_content(refusal_record(Refusal.UNMASKED), 7, encoding="float16",
                              num_rows=4, num_classes=2, num_test=None)
    assert isinstance(result, Rejection) and Refusal.UNMASKED in result.reason


def test_public_distillation_depends_on_public_inputs_only(tmp_path: Path) -> None:
    """Two nodes with different private data, the same DP student: their public step gives
    bit-identical students, and it records nothing in either ledger."""
    cfg = FedConfig(noise_multiplier=1.0, dp_batch_size=16)
    start = ClientState(tmp_path / "dp")
    model = Recorder(64)
    x, y = _ids(64)
    _private_round(cfg, RoundPlan(1, "r", 1, "fp", False), start, model, x, y, policy=OPEN,
                   device=CPU, client_id="c0", criterion=CE)
    public_x = torch.randint(0, 64, (32, 2), generator=torch.Generator().manual_seed(1))
    teacher = torch.softmax(torch.randn(32, 2, generator=torch.Generator().manual_seed(2)), 1)
    outputs = []
    for name, (px, py) in (("a", (x[:32], y[:32])), ("b", (x[32:], 1 - y[32:]))):
        node = ClientState(tmp_path / name)
        student = Recorder(64)
        student.load_state_dict(model.state_dict())
        assert len(px) == len(py)  # private data the public step must not see
        distill(student, public_x, teacher, temperature=2.0, epochs=2, lr=1e-2, device=CPU,
                seed=4)
        assert node.ledger.events() == []
        outputs.append(_trained(student))
    assert torch.equal(outputs[0], outputs[1])
    assert not torch.equal(outputs[0], _trained(model))  # it did train


def _one_round_through_the_client_app(out: Path) -> Message:
    """A plain round sent to client/app.py's real ClientApp (Flower's Message path)."""
    from client.app import app
    from simulations.inprocess import InProcessGrid, restore_task_identity, set_task_identity

    saved = set_task_identity(1)
    try:
        grid = InProcessGrid(app, FedConfig(out_dir=str(out)).to_run_config(), 1)
        content = RecordDict({
            ROUND: RoundPlan(1, "r", 1, "not-the-real-fingerprint", False).to_record(),
            PUBLIC: to_array_record({"indices": np.arange(4, dtype=np.int64)}),
            KNOWLEDGE: to_array_record({"probs": np.full((4, 2), 0.5, dtype=np.float16)}),
        })
        msg = Message(content=content, dst_node_id=FIRST_NODE_ID, message_type="train")
        (reply,) = grid.send_and_receive([msg])
    finally:
        restore_task_identity(saved)
    return reply


def test_a_node_refuses_an_unmasked_round_unless_its_policy_allows_it(tmp_path: Path) -> None:
    reply = _one_round_through_the_client_app(tmp_path)  # no policy file: strict defaults
    result = validate_reply(reply, node_id=FIRST_NODE_ID, encoding="float16", num_rows=4,
                            num_classes=2, num_test=None)
    assert isinstance(result, Rejection) and Refusal.UNMASKED in result.reason
    NodePolicy(require_secure_aggregation=False).save(tmp_path / "clients" / "client-0")
    reply = _one_round_through_the_client_app(tmp_path)
    result = validate_reply(reply, node_id=FIRST_NODE_ID, encoding="float16", num_rows=4,
                            num_classes=2, num_test=None)
    assert isinstance(result, Rejection) and Refusal.UNMASKED not in result.reason


def test_a_failed_round_sends_a_reason_code_never_the_exception_text(tmp_path: Path) -> None:
    """The round fails inside the client (a fingerprint mismatch whose message quotes
    values); the coordinator gets the fixed code only."""
    NodePolicy(require_secure_aggregation=False).save(tmp_path / "clients" / "client-0")
    reply = _one_round_through_the_client_app(tmp_path)
    assert reply.has_error()
    assert Refusal.FAILED in reply.error.reason
    assert "fingerprint" not in reply.error.reason and "not-the-real" not in reply.error.reason

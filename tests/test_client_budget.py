"""The client's budget: it declines rather than pass ε, and only DP steps cost ε."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from client.app import _private_round
from client.state import ClientState
from common.config import FedConfig
from common.models import ModelConfig, build_model
from common.privacy.accounting import DpEvent, epsilon_from_events
from common.privacy.policy import NodePolicy, Refusal
from common.privacy.secrets import DpSeeds
from common.protocol import RoundPlan
from common.training import distill, dp_train

CPU = torch.device("cpu")
POLICY = NodePolicy(epsilon=100.0, delta=1e-5, require_secure_aggregation=False)

CE = torch.nn.CrossEntropyLoss()  # the criterion of a classification task


def _toy(n: int = 64, t: int = 8, vocab: int = 50) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(1, vocab, (n, t), generator=gen)
    return x, (x[:, 0] % 2).long()


def _student() -> torch.nn.Module:
    return build_model(ModelConfig(family="cnn", size="tiny", vocab_size=50, num_classes=2,
                                   max_len=8))


def test_client_declines_the_round_that_would_pass_its_budget(tmp_path: Path) -> None:
    cfg = FedConfig(epsilon=4.0, noise_multiplier=2.0, dp_batch_size=16, dp_epochs=1.0,
                    delta=1e-5, accountant="rdp")
    state = ClientState(tmp_path / "client")
    x, y = _toy()
    student = _student()
    outcomes = []
    for rnd in range(1, 41):
        plan = RoundPlan(rnd, "run-a", 40, "fp", False)
        out = _private_round(cfg, plan, state, student, x, y, policy=POLICY, device=CPU,
                             client_id="c0", criterion=CE)
        eps = state.ledger.epsilon(delta=cfg.delta, accountant=cfg.accountant)
        assert eps <= cfg.epsilon  # no ledger ever passes the budget
        outcomes.append((out.declined, out.steps, eps, out.reason))
        if out.declined:
            break
    declined, steps, eps, reason = outcomes[-1]
    assert declined and steps == 0
    assert reason == Refusal.BUDGET
    # It declined only because one more round's event would have passed the budget.
    events = state.ledger.events()
    one_more = epsilon_from_events([*events, events[-1]], delta=cfg.delta, accountant="rdp")
    assert one_more > cfg.epsilon
    assert len(events) == len(outcomes) - 1


def test_retry_of_a_recorded_round_never_spends_twice(tmp_path: Path) -> None:
    cfg = FedConfig(epsilon=8.0, noise_multiplier=1.0, dp_batch_size=16)
    state = ClientState(tmp_path / "client")
    x, y = _toy()
    plan = RoundPlan(1, "run-b", 3, "fp", False)
    first = _private_round(cfg, plan, state, _student(), x, y, policy=POLICY, device=CPU,
                           client_id="c0", criterion=CE)
    again = _private_round(cfg, plan, state, _student(), x, y, policy=POLICY, device=CPU,
                           client_id="c0", criterion=CE)
    assert not first.declined and first.steps > 0
    assert again.declined and again.steps == 0 and again.reason == Refusal.ALREADY_SPENT
    assert len(state.ledger.events()) == 1


def test_public_distillation_costs_no_epsilon(tmp_path: Path) -> None:
    cfg = FedConfig(epsilon=8.0, noise_multiplier=1.2, dp_batch_size=16, dp_epochs=1.0)
    state = ClientState(tmp_path / "client")
    x, y = _toy()
    student = _student()
    soft = torch.softmax(torch.randn(len(x), 2), dim=1)
    distill(student, x, soft, temperature=2.0, epochs=3, lr=1e-3, device=CPU)
    assert state.ledger.events() == []
    plan = RoundPlan(1, "run-c", 1, "fp", False)
    out = _private_round(cfg, plan, state, student, x, y, policy=POLICY, device=CPU,
                         client_id="c0", criterion=CE)
    sigma, steps = out.sigma, out.steps
    distill(student, x, soft, temperature=2.0, epochs=3, lr=1e-3, device=CPU)
    events = state.ledger.events()
    assert events == [DpEvent(sigma, 1 / 4, steps)]  # 64 examples / batch 16 = 4 batches
    assert steps == 4


def test_dp_train_takes_exactly_the_planned_steps() -> None:
    x, y = _toy()
    result = dp_train(_student(), x, y, noise_multiplier=1.0, max_grad_norm=1.0,
                      expected_batch_size=16, steps=7, lr=0.05, device=CPU,
                      seeds=DpSeeds(1, 2))
    assert result.steps == 7 and len(result.losses) == 7
    assert result.sample_rate == pytest.approx(0.25)

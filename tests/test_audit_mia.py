"""Fixed-seed membership-inference audits of a tiny CNN student, with and without DP.

Synthetic token data keeps them fast: ordinary examples whose label is a function of the
first token (learnable), and canaries of random tokens with random labels (only
memorisation fits them). The same data, seed and coins serve both runs, so the only
difference is DP.
"""

from __future__ import annotations

import math

import pytest
import torch

from common.errors import ConfigError
from simulations.mia import AuditData, CanaryAuditConfig, run_canary_audit

pytestmark = [
    pytest.mark.filterwarnings("ignore:Optimal order is the:UserWarning"),
    pytest.mark.filterwarnings("ignore:Secure RNG turned off:UserWarning"),
    pytest.mark.filterwarnings("ignore:Full backward hook:UserWarning"),
]
VOCAB, T, N, M = 60, 16, 100, 100


def synthetic_data(seed: int = 0) -> AuditData:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(3, VOCAB, (N + M, T), generator=gen)
    y = (x[:, 0] % 2).long()
    return AuditData(x[:N], y[:N], x[N:], torch.randint(0, 2, (M,), generator=gen), VOCAB, 2)


def _config(epsilon: float, epochs: int) -> CanaryAuditConfig:
    return CanaryAuditConfig(epsilon=epsilon, canaries=M, train_size=N, epochs=epochs,
                             batch_size=32, seed=0)


@pytest.fixture(scope="module")
def non_private():  # noqa: ANN201 - a CanaryAuditResult
    # module-scoped fixtures run before conftest's per-test one-thread fixture
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run_canary_audit(_config(math.inf, 20), synthetic_data())
    finally:
        torch.set_num_threads(before)


def test_overfit_non_private_student_is_caught(non_private) -> None:  # noqa: ANN001
    assert non_private.attack.auc > 0.6
    assert non_private.attack.advantage > 0.3
    assert non_private.one_run.epsilon_lower_bound > 0.5  # rises clearly above chance
    assert non_private.epsilon_claimed == math.inf and non_private.consistent


def test_dp_student_at_epsilon_one_stays_below_the_claim(non_private) -> None:  # noqa: ANN001
    result = run_canary_audit(_config(1.0, 3), synthetic_data())
    assert result.noise_multiplier is not None and result.steps > 0
    assert result.epsilon_claimed <= 1.0
    assert result.one_run.epsilon_lower_bound <= result.epsilon_claimed
    assert result.consistent
    # same data and coins as the non-private run: DP is what removed the signal
    assert result.included == non_private.included
    assert result.attack.auc < non_private.attack.auc
    assert result.one_run.correct < non_private.one_run.correct


def test_config_is_validated() -> None:
    with pytest.raises(ConfigError, match="canaries must be >= 10"):
        CanaryAuditConfig(canaries=4)
    with pytest.raises(ConfigError, match="epsilon must be > 0"):
        CanaryAuditConfig(epsilon=0.0)
    with pytest.raises(ConfigError, match="guesses"):
        CanaryAuditConfig(canaries=20, guesses=11)
    assert CanaryAuditConfig(canaries=200).guesses_per_side == 50

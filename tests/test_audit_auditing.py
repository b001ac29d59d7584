"""The pure auditing maths: attack metrics and the one-run ε lower bound."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from common.errors import ConfigError
from common.privacy.auditing import (
    clopper_pearson_epsilon,
    loss_threshold_attack,
    membership_advantage,
    one_run_audit,
    one_run_epsilon_lower_bound,
    one_run_guesses,
    one_run_p_value,
    roc_auc,
    tpr_at_fpr,
)


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


# ---------------------------------------------------------------- attack metrics
def _auc_reference(pos: np.ndarray, neg: np.ndarray) -> float:
    """Pairwise definition: P[pos > neg] + ½ P[pos == neg]."""
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0) + 0.5 * (diff == 0)).mean())


@pytest.mark.parametrize(
    ("label", "pos", "neg", "auc"),
    [
        ("perfect", [3, 4, 5], [0, 1, 2], 1.0),
        ("reversed", [0, 1], [2, 3], 0.0),
        ("constant scores", [1, 1, 1], [1, 1], 0.5),
        ("one tie", [1, 2], [1, 0], 0.875),
    ],
)
def test_roc_auc_table(label: str, pos: list, neg: list, auc: float) -> None:
    assert roc_auc(pos, neg) == pytest.approx(auc), label


def test_roc_auc_matches_the_pairwise_definition_with_ties() -> None:
    rng = np.random.default_rng(0)
    pos, neg = rng.integers(0, 6, 40).astype(float), rng.integers(0, 5, 55).astype(float)
    assert roc_auc(pos, neg) == pytest.approx(_auc_reference(pos, neg))


def test_tpr_at_fpr_and_advantage_by_hand() -> None:
    members = [10, 9, 8, 2]  # three members above every non-member
    nonmembers = [7, 6, 5, 4, 3, 1, 0, -1, -2, -3]
    assert tpr_at_fpr(members, nonmembers, 0.0) == 0.75
    assert tpr_at_fpr(members, nonmembers, 0.1) == 0.75  # one more FP buys nothing here
    assert tpr_at_fpr(members, nonmembers, 0.5) == 1.0
    # best rule: score >= 8 gives TPR .75, FPR 0; score >= 2 gives TPR 1, FPR .5
    assert membership_advantage(members, nonmembers) == pytest.approx(0.75)
    assert membership_advantage([0, 0], [1, 1]) == 0.0  # never below chance


def test_loss_threshold_attack_scores_low_loss_as_member() -> None:
    attack = loss_threshold_attack([0.01, 0.02, 0.03], [1.0, 2.0, 0.5, 0.9])
    assert attack.auc == 1.0 and attack.advantage == 1.0 and attack.tpr_at_1pct_fpr == 1.0
    assert (attack.members, attack.nonmembers) == (3, 4)
    with pytest.raises(ConfigError, match="non-finite"):
        loss_threshold_attack([float("nan")], [1.0])
    with pytest.raises(ConfigError, match="empty"):
        loss_threshold_attack([], [1.0])


# ---------------------------------------------------------------- one-run bound
@pytest.mark.parametrize("r", [10, 40, 100])
def test_all_correct_guesses_match_the_closed_form(r: int) -> None:
    """δ = 0, v = r: P[W >= r] = q^r with q = e^ε/(1+e^ε); it equals 1 - conf at
    ε = logit((1 - conf)^(1/r))."""
    bound = one_run_epsilon_lower_bound(1000, r, r, delta=0.0, confidence=0.95)
    assert bound == pytest.approx(_logit(0.05 ** (1 / r)), abs=1e-5)


def test_hand_checked_values() -> None:
    # logit(0.05^(1/10)) = 1.05187..., computed by hand from the closed form above
    assert one_run_epsilon_lower_bound(100, 10, 10, delta=0.0) == pytest.approx(1.0519, abs=1e-4)
    # more correct guesses, more evidence: a larger bound
    bounds = [one_run_epsilon_lower_bound(1000, r, r, delta=1e-5) for r in (5, 10, 50, 200)]
    assert 0 < bounds[0] < bounds[1] < bounds[2] < bounds[3]
    # chance-level guessing proves nothing
    assert one_run_epsilon_lower_bound(1000, 200, 100, delta=1e-5) == 0.0
    assert one_run_epsilon_lower_bound(1000, 200, 105, delta=1e-5) == 0.0
    assert one_run_epsilon_lower_bound(1000, 0, 0, delta=1e-5) == 0.0


@pytest.mark.parametrize(("r", "v"), [(50, 40), (100, 75), (500, 300), (1000, 700), (30, 30)])
def test_delta_zero_equals_the_clopper_pearson_bound(r: int, v: int) -> None:
    """For δ = 0 the test is the one-sided Binomial test, whose inversion is the
    Clopper-Pearson limit: an independent formula (the Beta quantile)."""
    ours = one_run_epsilon_lower_bound(r, r, v, delta=0.0, confidence=0.95)
    assert ours == pytest.approx(clopper_pearson_epsilon(r, v, 0.95), abs=1e-5)


def test_delta_only_weakens_the_bound() -> None:
    for r, v in [(100, 90), (200, 150), (50, 50)]:
        no_delta = one_run_epsilon_lower_bound(1000, r, v, delta=0.0)
        small = one_run_epsilon_lower_bound(1000, r, v, delta=1e-6)
        large = one_run_epsilon_lower_bound(1000, r, v, delta=1e-4)
        assert no_delta >= small >= large > 0


def test_p_value_reference_with_delta() -> None:
    """Theorem 5.2 written out term by term with scipy, for one small case."""
    m, r, v, eps, delta = 20, 10, 8, 0.5, 1e-3
    q = math.exp(eps) / (1 + math.exp(eps))
    f = [stats.binom.sf(u - 1, r, q) if u > 0 else 1.0 for u in range(v + 1)]  # f(u)
    alpha = max((f[v - i] - f[v]) / i for i in range(1, v + 1))
    expected = f[v] + 2 * m * delta * alpha
    assert one_run_p_value(m, r, v, epsilon=eps, delta=delta) == pytest.approx(expected)


@settings(max_examples=40, deadline=None)
@given(r=st.integers(1, 300), data=st.data())
def test_bound_grows_with_correct_guesses(r: int, data: st.DataObject) -> None:
    v = data.draw(st.integers(0, r - 1))
    low = one_run_epsilon_lower_bound(1000, r, v, delta=1e-5)
    high = one_run_epsilon_lower_bound(1000, r, v + 1, delta=1e-5)
    assert 0 <= low <= high + 1e-6


def test_bound_is_valid_for_randomised_response() -> None:
    """Coverage check: guesses of ε-randomised response (right w.p. e^ε/(1+e^ε), the
    worst case of Theorem 5.2) give a bound above the true ε in at most ~5% of runs."""
    rng = np.random.default_rng(1)
    eps, r, trials = 1.0, 200, 300
    correct = rng.binomial(r, math.exp(eps) / (1 + math.exp(eps)), size=trials)
    bounds = [one_run_epsilon_lower_bound(r, r, int(v), delta=0.0) for v in correct]
    assert np.mean(np.asarray(bounds) > eps) <= 0.08
    assert np.median(bounds) > 0.3  # and it is not vacuous either


def test_guesses_and_audit() -> None:
    scores = [0.9, 0.8, 0.1, 0.7, 0.2, 0.0]
    member = [True, True, False, False, False, True]
    # top 2 (0.9, 0.8) guessed in: both right; bottom 2 (0.1, 0.0) guessed out: one right
    assert one_run_guesses(scores, member, k_pos=2, k_neg=2) == (4, 3)
    assert one_run_guesses(scores, member, k_pos=0, k_neg=0) == (0, 0)
    audit = one_run_audit(scores, member, k_pos=2, k_neg=2, delta=1e-5)
    assert (audit.canaries, audit.guesses, audit.correct) == (6, 4, 3)
    assert audit.epsilon_lower_bound == 0.0  # four guesses prove nothing at 95%
    with pytest.raises(ConfigError, match="k_pos"):
        one_run_guesses(scores, member, k_pos=4, k_neg=3)
    with pytest.raises(ConfigError, match="v <= r|guesses <= canaries"):
        one_run_p_value(5, 3, 4, epsilon=1.0, delta=0.0)

"""Privacy accounting: pinned Opacus values, an independent RDP reference, properties."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import gammaln, logsumexp

from common.errors import BudgetExceededError, ConfigError
from common.privacy.accounting import (
    ACCOUNTANTS,
    BudgetCheck,
    DpEvent,
    calibrate_noise_multiplier,
    check_budget,
    epsilon_from_events,
)

DELTA = 1e-5

# Opacus warns when the optimal RDP order sits at the edge of its grid; that is about
# tightness, not correctness, and the property tests wander there on purpose.
pytestmark = pytest.mark.filterwarnings("ignore:Optimal order is the:UserWarning")


# --------------------------------------------------------------------------- pinned
# ε after 1000 steps at q = 0.01, δ = 1e-5 (Opacus 1.6; cf. shared/notes/OPACUS.md).
PINNED_EPSILON = [
    pytest.param("rdp", 0.5, 15.464268471279555, id="rdp-sigma0.5"),
    pytest.param("rdp", 1.0, 2.1013652716430564, id="rdp-sigma1.0"),
    pytest.param("rdp", 1.5, 1.0129527672164003, id="rdp-sigma1.5"),
    pytest.param("prv", 1.0, 1.838371637017295, id="prv-sigma1.0"),
]


@pytest.mark.parametrize(("accountant", "sigma", "expected"), PINNED_EPSILON)
def test_pinned_epsilon(accountant: str, sigma: float, expected: float) -> None:
    eps = epsilon_from_events([DpEvent(sigma, 0.01, 1000)], delta=DELTA, accountant=accountant)
    assert eps == pytest.approx(expected, rel=1e-6)


# get_noise_multiplier(target ε, δ=1e-5, q=0.01, 1000 steps) with RDP (Opacus 1.6).
PINNED_SIGMA = [
    pytest.param(1.0, 1.5234375, id="eps1"),
    pytest.param(3.0, 0.865478515625, id="eps3"),
    pytest.param(8.0, 0.6158447265625, id="eps8"),
]


@pytest.mark.parametrize(("target", "expected_sigma"), PINNED_SIGMA)
def test_calibrate_pinned_and_round_trip(target: float, expected_sigma: float) -> None:
    sigma = calibrate_noise_multiplier(
        target_epsilon=target, delta=DELTA, sample_rate=0.01, steps=1000
    )
    assert sigma == pytest.approx(expected_sigma, rel=1e-9)
    eps = epsilon_from_events([DpEvent(sigma, 0.01, 1000)], delta=DELTA)
    # Within the budget, and not wastefully below it (Opacus' search tolerance is 0.01).
    assert target - 0.01 <= eps <= target


# ----------------------------------------------------------- independent reference
def _rdp_sampled_gaussian(q: float, sigma: float, alpha: int) -> float:
    """RDP of the Poisson-sampled Gaussian at integer order α (Mironov, Talwar & Zhang
    2019, Sec. 3.3): log Σ_k C(α,k) (1-q)^(α-k) q^k exp((k²-k) / 2σ²) / (α-1)."""
    if q == 1.0:
        return alpha / (2 * sigma**2)
    k = np.arange(alpha + 1)
    log_binom = gammaln(alpha + 1) - gammaln(k + 1) - gammaln(alpha - k + 1)
    terms = log_binom + (alpha - k) * np.log1p(-q) + k * np.log(q) + (k * k - k) / (2 * sigma**2)
    return float(logsumexp(terms)) / (alpha - 1)


def _reference_epsilon(history: list[tuple[float, float, int]], delta: float) -> float:
    """RDP → (ε, δ) with Balle et al. 2020, Thm. 21, minimised over integer orders."""
    best = math.inf
    for alpha in range(2, 64):
        rdp = sum(steps * _rdp_sampled_gaussian(q, s, alpha) for s, q, steps in history)
        eps = rdp + math.log1p(-1 / alpha) - (math.log(delta) + math.log(alpha)) / (alpha - 1)
        best = min(best, eps)
    return best


REFERENCE_CASES = [
    pytest.param([(1.0, 0.01, 1000)], id="one-run"),
    pytest.param([(1.5, 0.01, 1000)], id="optimum-at-integer-order"),
    pytest.param([(1.0, 0.01, 300), (2.0, 0.05, 200)], id="two-mechanisms"),
    pytest.param([(0.8, 0.1, 50)], id="large-q"),
    pytest.param([(3.0, 1.0, 10)], id="full-batch"),
]


@pytest.mark.parametrize("history", REFERENCE_CASES)
def test_rdp_matches_independent_reference(history: list[tuple[float, float, int]]) -> None:
    eps = epsilon_from_events([DpEvent(*h) for h in history], delta=DELTA)
    reference = _reference_epsilon(history, DELTA)
    # Opacus also searches fractional orders, so it can only be tighter, and not by much.
    assert eps <= reference + 1e-9
    assert reference <= eps * 1.05


# ---------------------------------------------------------------------- composition
@pytest.mark.parametrize("accountant", ACCOUNTANTS)
def test_rounds_compose_like_one_long_run(accountant: str) -> None:
    rounds = [DpEvent(1.0, 0.01, steps) for steps in (300, 200, 0, 500)]
    split = epsilon_from_events(rounds, delta=DELTA, accountant=accountant)
    single = epsilon_from_events([DpEvent(1.0, 0.01, 1000)], delta=DELTA, accountant=accountant)
    assert split == single


def test_heterogeneous_composition_exceeds_each_part() -> None:
    a, b = DpEvent(1.0, 0.01, 500), DpEvent(2.0, 0.05, 500)
    both = epsilon_from_events([a, b], delta=DELTA)
    assert both > epsilon_from_events([a], delta=DELTA)
    assert both > epsilon_from_events([b], delta=DELTA)
    assert both == epsilon_from_events([b, a], delta=DELTA)  # order does not matter


@pytest.mark.parametrize(
    "events",
    [pytest.param([], id="no-events"), pytest.param([DpEvent(1.0, 0.5, 0)], id="zero-steps")],
)
@pytest.mark.parametrize("accountant", ACCOUNTANTS)
def test_nothing_spent_is_zero(events: list[DpEvent], accountant: str) -> None:
    assert epsilon_from_events(events, delta=DELTA, accountant=accountant) == 0.0


# ----------------------------------------------------------------------- properties
sigmas = st.floats(0.5, 5.0)
rates = st.floats(1e-3, 0.2)
step_counts = st.integers(0, 5000)


@settings(max_examples=25, deadline=None)
@given(sigma=sigmas, q=rates, s1=step_counts, s2=step_counts)
def test_epsilon_non_decreasing_in_steps(sigma: float, q: float, s1: int, s2: int) -> None:
    lo, hi = sorted((s1, s2))
    eps_lo = epsilon_from_events([DpEvent(sigma, q, lo)], delta=DELTA)
    eps_hi = epsilon_from_events([DpEvent(sigma, q, hi)], delta=DELTA)
    assert eps_lo <= eps_hi + 1e-12


@settings(max_examples=25, deadline=None)
@given(sig1=sigmas, sig2=sigmas, q=rates, steps=st.integers(1, 5000))
def test_epsilon_non_increasing_in_sigma(sig1: float, sig2: float, q: float, steps: int) -> None:
    lo, hi = sorted((sig1, sig2))
    eps_noisier = epsilon_from_events([DpEvent(hi, q, steps)], delta=DELTA)
    eps_quieter = epsilon_from_events([DpEvent(lo, q, steps)], delta=DELTA)
    assert eps_noisier <= eps_quieter + 1e-12


@settings(max_examples=4, deadline=None)
@given(target=st.floats(0.5, 10.0), q=st.floats(1e-3, 0.1), steps=st.integers(10, 3000))
def test_calibrated_sigma_stays_within_target(target: float, q: float, steps: int) -> None:
    sigma = calibrate_noise_multiplier(
        target_epsilon=target, delta=DELTA, sample_rate=q, steps=steps
    )
    assert epsilon_from_events([DpEvent(sigma, q, steps)], delta=DELTA) <= target


# ---------------------------------------------------------------------- budget check
def test_check_budget_is_a_dry_run() -> None:
    spent = (DpEvent(1.0, 0.01, 500),)
    planned = DpEvent(1.0, 0.01, 500)
    now = epsilon_from_events(spent, delta=DELTA)
    after = epsilon_from_events([*spent, planned], delta=DELTA)

    ok = check_budget(spent, planned, delta=DELTA, budget=after, accountant="rdp")
    assert ok == BudgetCheck(True, now, after, ok.reason)  # exactly at the budget fits
    assert "within the budget" in ok.reason
    ok.raise_if_exceeded()

    no = check_budget(spent, planned, delta=DELTA, budget=after - 1e-6, accountant="rdp")
    assert (no.fits, no.epsilon_now, no.epsilon_after) == (False, now, after)
    assert "past the budget" in no.reason and f"{after:.4g}" in no.reason
    with pytest.raises(BudgetExceededError, match="past the budget"):
        no.raise_if_exceeded()
    assert spent == (DpEvent(1.0, 0.01, 500),)


# ----------------------------------------------------------------------- validation
BAD_EVENTS = [
    pytest.param({"noise_multiplier": 0.0}, "noise_multiplier.*0.0", id="sigma-zero"),
    pytest.param({"noise_multiplier": -1.0}, "noise_multiplier.*-1.0", id="sigma-negative"),
    pytest.param({"noise_multiplier": math.nan}, "noise_multiplier.*nan", id="sigma-nan"),
    pytest.param({"noise_multiplier": True}, "noise_multiplier.*True", id="sigma-bool"),
    pytest.param({"sample_rate": 0.0}, "sample_rate.*0.0", id="q-zero"),
    pytest.param({"sample_rate": 1.5}, "sample_rate.*1.5", id="q-above-one"),
    pytest.param({"sample_rate": "0.1"}, "sample_rate.*'0.1'", id="q-string"),
    pytest.param({"steps": -1}, "steps.*-1", id="steps-negative"),
    pytest.param({"steps": 2.5}, "steps.*2.5", id="steps-float"),
]


@pytest.mark.parametrize(("override", "message"), BAD_EVENTS)
def test_dp_event_rejects_bad_values(override: dict[str, object], message: str) -> None:
    kwargs: dict[str, object] = {"noise_multiplier": 1.0, "sample_rate": 0.01, "steps": 10}
    kwargs.update(override)
    with pytest.raises(ConfigError, match=message):
        DpEvent(**kwargs)  # type: ignore[arg-type]


def test_dp_event_is_immutable_and_normalised() -> None:
    event = DpEvent(1, 1, 3)
    assert event == DpEvent(1.0, 1.0, 3) and isinstance(event.noise_multiplier, float)
    with pytest.raises(AttributeError):
        event.steps = 4  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"delta": 0.0}, "delta.*0.0", id="delta-zero"),
        pytest.param({"delta": 1.0}, "delta.*1.0", id="delta-one"),
        pytest.param({"accountant": "gdp"}, "Unknown accountant 'gdp'.*rdp, prv", id="gdp"),
    ],
)
def test_epsilon_rejects_bad_arguments(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"delta": DELTA, "accountant": "rdp"} | kwargs
    with pytest.raises(ConfigError, match=message):
        epsilon_from_events([DpEvent(1.0, 0.01, 10)], **args)  # type: ignore[arg-type]


def test_calibrate_rejects_impossible_and_bad_targets() -> None:
    with pytest.raises(ConfigError, match="target_epsilon.*-1"):
        calibrate_noise_multiplier(target_epsilon=-1, delta=DELTA, sample_rate=0.01, steps=10)
    with pytest.raises(ConfigError, match="steps must be >= 1.*0"):
        calibrate_noise_multiplier(target_epsilon=1, delta=DELTA, sample_rate=0.01, steps=0)
    with pytest.raises(ConfigError, match="No noise multiplier reaches"):
        calibrate_noise_multiplier(target_epsilon=1e-9, delta=1e-10, sample_rate=1.0, steps=10**6)


def test_budget_check_rejects_bad_budget() -> None:
    with pytest.raises(ConfigError, match="budget.*0"):
        check_budget([], DpEvent(1.0, 0.01, 1), delta=DELTA, budget=0, accountant="rdp")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a plain check emits no warning
        check_budget([], DpEvent(1.0, 0.01, 1), delta=DELTA, budget=1, accountant="rdp")


@pytest.mark.parametrize("n, batch", [(3346, 32), (669, 128), (100, 128), (6692, 7)])
def test_the_planned_sample_rate_is_the_one_opacus_accounts(n: int, batch: int) -> None:
    """For some n Opacus accounts q = 1 / int(1 / (1 / batches)), one batch short (3346
    examples in batches of 32: 1/104, not 1/105); a plan that records otherwise makes
    every round of such a node fail its ran-as-planned check."""
    import torch

    from common.models import ModelConfig, build_model
    from common.privacy.planner import sample_rate_and_steps
    from common.privacy.secrets import fresh_seeds
    from common.training import dp_train

    model = build_model(ModelConfig(family="probe", num_classes=2, feature_dim=4))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ran = dp_train(model, torch.randn(n, 4), torch.randint(0, 2, (n,)),
                       noise_multiplier=1.0, max_grad_norm=1.0, expected_batch_size=batch,
                       steps=1, lr=0.1, device=torch.device("cpu"), seeds=fresh_seeds())
    assert sample_rate_and_steps(n, batch, 1.0)[0] == ran.sample_rate

"""The second accountant (dp_accounting) against Opacus: where they agree, where not."""

from __future__ import annotations

import math

import dp_accounting
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from opacus.accountants import RDPAccountant

from common.privacy.accounting import DpEvent
from common.privacy.independent import (
    INTEGER_ORDERS,
    OPACUS_ORDERS,
    IndependentEpsilon,
    dp_accounting_event,
    epsilon_pld,
    epsilon_rdp,
    independent_epsilons,
    rdp_curve,
)
from simulations.ledger_audit import rdp_agreement_findings

pytestmark = pytest.mark.filterwarnings("ignore:Optimal order is the:UserWarning")


def _opacus(sigma: float, q: float, steps: int, delta: float,
            orders: tuple[float, ...] = OPACUS_ORDERS) -> tuple[float, float]:
    """Opacus' own RDP accountant: (ε, best order)."""
    accountant = RDPAccountant()
    accountant.history = [(sigma, q, steps)]
    eps, order = accountant.get_privacy_spent(delta=delta, alphas=list(orders))
    return float(eps), float(order)


# label, σ, q, steps, δ, Opacus' ε over all its orders (Opacus 1.6.0, pinned), and how
# far above it dp_accounting 0.6.0's ε over the same orders is (its fractional orders
# are looser; 0 when Opacus' best order is an integer)
PINNED = [
    ("fractional best order", 1.1, 0.02, 100, 1e-5, 1.460390481587595, 4.966e-7),
    ("long, small q", 0.8, 0.004, 2000, 1e-5, 2.2025145989869204, 2.285e-6),
    ("integer best order", 2.0, 0.01, 1000, 1e-6, 0.7827964235975876, 0.0),
    ("large q", 4.0, 0.3, 50, 1e-3, 1.7507905053267192, 1.3568e-4),
    ("tiny δ, low σ", 0.6, 0.05, 500, 1e-8, 35.14800168794167, 0.23764),
    ("no subsampling", 1.0, 1.0, 10, 1e-5, 19.05359753163139, 0.0),
    ("10k steps", 1.5, 0.001, 10000, 1e-5, 0.33170403714088553, 0.0),
    ("high σ", 10.0, 0.1, 100, 1e-5, 0.38343005634353095, 0.0),
]
CASES = ("label", "sigma", "q", "steps", "delta", "pinned", "gap")


@pytest.fixture(scope="module")
def computed() -> dict[str, tuple[float, float, float, IndependentEpsilon]]:
    """Each pinned case once: Opacus (all orders, its best order, integer orders) and
    dp_accounting (~0.1-0.3 s a case)."""
    out = {}
    for label, sigma, q, steps, delta, _, _ in PINNED:
        eps_all, best = _opacus(sigma, q, steps, delta)
        eps_int, _ = _opacus(sigma, q, steps, delta, INTEGER_ORDERS)
        out[label] = (eps_all, best, eps_int,
                      independent_epsilons([DpEvent(sigma, q, steps)], delta=delta))
    return out


@pytest.mark.parametrize(CASES, PINNED)
def test_both_libraries_agree_at_the_integer_orders(
    computed: dict, label: str, sigma: float, q: float, steps: int, delta: float,
    pinned: float, gap: float,
) -> None:
    eps_all, best, eps_int, ind = computed[label]
    assert eps_all == pytest.approx(pinned, abs=1e-9), label
    assert not ind.kl_bound_used
    assert abs(eps_int - ind.rdp_integer) <= 1e-9, label  # measured: <= 1.5e-11
    # Opacus' ε over all orders lies in the bracket dp_accounting alone gives ...
    assert ind.rdp_lower - 1e-9 <= eps_all <= ind.rdp_integer + 1e-9, label
    # ... and dp_accounting's own ε over those orders is above it by the pinned gap:
    # none when the best order is an integer (or q = 1, a closed form at every order).
    assert ind.rdp - eps_all == pytest.approx(gap, rel=2e-3, abs=1e-9), label
    if best.is_integer() or q == 1.0:
        assert gap == 0.0, label


@settings(max_examples=40, deadline=None)
@given(
    sigma=st.floats(0.5, 20.0),
    q=st.floats(1e-4, 1.0),
    steps=st.integers(1, 10_000),
    delta=st.sampled_from([1e-9, 1e-7, 1e-5, 1e-3]),
)
def test_integer_order_agreement_holds_everywhere(sigma: float, q: float, steps: int,
                                                  delta: float) -> None:
    events = [DpEvent(sigma, q, steps)]
    curve = rdp_curve(events, INTEGER_ORDERS)
    assume(not np.any(delta**2 + np.expm1(-curve) > 0))  # dp_accounting's KL shortcut
    eps_opacus, _ = _opacus(sigma, q, steps, delta, INTEGER_ORDERS)
    eps_dpa = epsilon_rdp(events, delta=delta, orders=INTEGER_ORDERS)
    assert abs(eps_opacus - eps_dpa) <= 1e-6 * max(1.0, eps_opacus)


@pytest.mark.parametrize(CASES, PINNED)
def test_pld_is_tighter_than_rdp(computed: dict, label: str, sigma: float, q: float,
                                 steps: int, delta: float, pinned: float, gap: float) -> None:
    """PLD is (nearly) exact, RDP an upper bound; the pessimistic grid of 1e-3 may only
    add a little. Measured PLD/RDP here: 0.77 - 0.94."""
    eps_all, _, _, ind = computed[label]
    assert ind.pld <= eps_all + 1e-3, label
    assert ind.pld >= 0.5 * eps_all, label  # and not absurdly small


def test_the_pld_interval_costs_little_accuracy() -> None:
    """The chosen grid (1e-3) against a 10x finer one: pessimistic, so only above."""
    events = [DpEvent(1.0, 0.01, 5000)]
    coarse = epsilon_pld(events, delta=1e-5)
    fine = epsilon_pld(events, delta=1e-5, value_discretization_interval=1e-4)
    assert fine <= coarse <= fine + 0.01


def test_events_become_composed_poisson_gaussians_and_splitting_is_exact() -> None:
    split = [DpEvent(1.1, 0.02, 40), DpEvent(0.9, 0.05, 0), DpEvent(1.1, 0.02, 60)]
    event = dp_accounting_event(split)
    assert event == dp_accounting.ComposedDpEvent([
        dp_accounting.SelfComposedDpEvent(
            dp_accounting.PoissonSampledDpEvent(0.02, dp_accounting.GaussianDpEvent(1.1)), 100)
    ])
    merged = [DpEvent(1.1, 0.02, 100)]
    assert epsilon_pld(split, delta=1e-5) == epsilon_pld(merged, delta=1e-5)
    assert independent_epsilons([], delta=1e-5) == IndependentEpsilon(
        1e-5, 0.0, 0.0, 0.0, 0.0, kl_bound_used=False)
    assert independent_epsilons([DpEvent(1.0, 0.1, 0)], delta=1e-5).pld == 0.0


def _ind(**overrides: float | bool) -> IndependentEpsilon:
    values: dict = {"delta": 1e-5, "rdp": 3.0, "pld": 2.5, "rdp_integer": 3.1,
                    "rdp_lower": 2.8, "kl_bound_used": False}
    return IndependentEpsilon(**{**values, **overrides})


@pytest.mark.parametrize(
    ("label", "eps_all", "eps_int", "ind", "expect"),
    [
        ("consistent", 2.9, 3.1, _ind(), []),
        ("consistent to 1e-6", 2.9, 3.1 + 9e-7, _ind(), []),
        ("integer orders disagree", 2.9, 3.1 + 2e-6, _ind(), ["disagree on RDP"]),
        ("above the integer-order ε", 3.2, 3.1, _ind(), ["exceeds"]),
        ("below the lower bound", 2.7, 3.1, _ind(), ["under-reports"]),
        ("both infinite", math.inf, math.inf, _ind(rdp_integer=math.inf, rdp=math.inf), []),
        ("one infinite", 2.9, math.inf, _ind(), ["disagree on RDP"]),
    ],
)
def test_rdp_agreement_decisions(label: str, eps_all: float, eps_int: float,
                                 ind: IndependentEpsilon, expect: list[str]) -> None:
    findings = rdp_agreement_findings("l", eps_all, eps_int, ind)
    assert [f.severity for f in findings] == ["error"] * len(expect), label
    assert all(e in f.message for e, f in zip(expect, findings, strict=True)), label


def test_below_delta_squared_the_kl_shortcut_is_a_note_not_an_error() -> None:
    """σ = 30, q = 1e-4, one step: RDP < δ², where dp_accounting answers ε = 0 by the
    KL bound and Opacus (Balle et al. only) a small positive ε."""
    events = [DpEvent(30.0, 1e-4, 1)]
    ind = independent_epsilons(events, delta=1e-3)
    eps_all, _ = _opacus(30.0, 1e-4, 1, 1e-3)
    eps_int, _ = _opacus(30.0, 1e-4, 1, 1e-3, INTEGER_ORDERS)
    assert ind.kl_bound_used and ind.rdp_integer == 0.0 < eps_int
    findings = rdp_agreement_findings("l", eps_all, eps_int, ind)
    assert [f.severity for f in findings] == ["note"]
    assert "KL bound" in findings[0].message

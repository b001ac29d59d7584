"""A second, independent accountant: ε recomputed with Google's ``dp_accounting``.

The ledger's ε comes from Opacus (:mod:`common.privacy.accounting`). An auditor who
trusts neither the client nor one library recomputes it here from the same
:class:`~common.privacy.accounting.DpEvent` list with ``dp_accounting``: each event is
``SelfComposedDpEvent(PoissonSampledDpEvent(q, GaussianDpEvent(σ)), steps)``, and a
ledger is the ``ComposedDpEvent`` of its events. Every function is pure.

RDP: Opacus and ``dp_accounting`` differ, and only in one place (measured with
dp-accounting 0.6.0 and Opacus 1.6.0 on σ ∈ [0.5, 30], q ∈ [1e-4, 1], steps ∈ [1, 1e5],
δ ∈ {1e-3, 1e-5, 1e-8}):

- The RDP → (ε, δ) conversion is the same formula in both, Balle et al. 2020
  ("Hypothesis testing interpretations and Rényi DP", Thm. 21; dp_accounting cites it as
  Asoodeh et al. 2020, Prop. 12): ``ε = r + log(1 - 1/α) - log(δ α) / (α - 1)``,
  minimised over the orders. ``dp_accounting`` adds two things Opacus lacks: it clamps ε
  at 0, and at an order whose RDP ``r`` is so small that ``δ² + expm1(-r) > 0`` it uses
  the KL bound ε = 0 (:attr:`IndependentEpsilon.kl_bound_used`; needs r < δ², e.g.
  σ = 30, q = 1e-4, one step). Outside that regime the conversions agree exactly.
- The RDP of the subsampled Gaussian at *integer* orders is the same closed-form sum in
  both (Mironov, Talwar & Zhang 2019, §3.3). At the 61 integer orders of Opacus'
  ``RDPAccountant.DEFAULT_ALPHAS`` (2..10, 12..63) the two ε agree to 1.5e-11 absolute
  (at ε = 4.7e4) and 3.8e-11 relative, far inside the audit's 1e-6.
- At *fractional* orders (1.1 .. 10.9) they do not: ``dp_accounting`` sums the absolute
  values of the series' terms (dropping the alternating signs of the binomial
  coefficients) and gives up after 1000 terms (order excluded: RDP = inf), which is a
  valid but looser upper bound. Opacus keeps the signs and matches a numerical integral
  of ``E[(μ/μ0)^α]`` to ~1e-11 (two cases checked with scipy's quad). The RDP values
  differ by up to 25x (σ = 8, q = 0.3), and ε differs whenever the optimal order is
  fractional: in 185 of 560 grid cases by more than 1e-6, up to 1.9x for extreme ε
  (σ = 0.5, q = 0.1, 1e4 steps: 761 vs 2225).

So the exact cross-check (:func:`independent_epsilons`, ``rdp_integer``) compares the two
libraries at the integer orders, and the ε Opacus reports over *all* its orders is
checked to lie in a bracket computed from ``dp_accounting`` alone:
``rdp_lower <= ε_opacus <= rdp_integer``. The upper end holds because adding orders can
only lower a minimum; the lower end because ``f(α) = (α - 1) RDP(α)`` is a cumulant
generating function (convex, f(1) = 0) and RDP is non-decreasing in α, so chords of the
integer orders extended past their ends, and the value at the integer order below,
bound the exact RDP at every fractional order from below (:func:`rdp_lower_bound`).
No case of the grid (840, Opacus' ε from 0.01 to 2e4) falls outside the bracket. The
lower end is loose, though: a median 4 % (90th percentile 20 %) below Opacus' ε where
0.3 < ε < 30, so it catches only gross under-reporting; the integer-order comparison is
the exact check. ``rdp`` (all of Opacus' orders through ``dp_accounting``) is reported
as well: it is at least Opacus' ε, equal when the optimal order is an integer. It costs
0.02 - 0.25 s per distinct (σ, q) on this CPU, the fractional orders most of it.

PLD: ``dp_accounting.pld.PLDAccountant`` (pessimistic discretisation, add-or-remove
neighbours like Opacus' RDP) with ``value_discretization_interval`` =
:data:`PLD_VALUE_DISCRETIZATION_INTERVAL` = 1e-3. Measured on ledgers of up to two
(σ, q) pairs and 23,000 steps: 0.07 - 0.2 s each on this 2-core CPU (1e-4 takes
0.6 - 2 s), and ε at most 0.008 (0.14 %) above ε at 1e-4. Pessimistic means the
coarser grid only overestimates ε; 1e-2 overestimates enough (6.54 vs 5.77) to exceed
RDP on long ledgers, which is why it is not used. Even at 1e-3, PLD is not always below
RDP: for a small ε after 1e4 steps the grid's excess can pass RDP's slack (σ = 4,
q = 1e-3, δ = 1e-3: PLD 0.073, RDP 0.049). For ε in the hundreds PLD takes up to 2 s and
may return inf (the distribution's support is truncated). PLD is reported, not judged.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import version

import dp_accounting
import numpy as np
from dp_accounting import pld, rdp
from opacus.accountants.rdp import RDPAccountant

from common.errors import ConfigError
from common.privacy.accounting import DpEvent

__all__ = [
    "DP_ACCOUNTING_VERSION",
    "INTEGER_ORDERS",
    "OPACUS_ORDERS",
    "PLD_VALUE_DISCRETIZATION_INTERVAL",
    "IndependentEpsilon",
    "dp_accounting_event",
    "epsilon_pld",
    "epsilon_rdp",
    "independent_epsilons",
    "rdp_curve",
    "rdp_lower_bound",
]

DP_ACCOUNTING_VERSION = version("dp-accounting")
# Opacus' RDP orders, so that both libraries minimise over the same set.
OPACUS_ORDERS: tuple[float, ...] = tuple(float(a) for a in RDPAccountant.DEFAULT_ALPHAS)
# The orders at which both libraries compute the same closed form (see the docstring).
INTEGER_ORDERS: tuple[float, ...] = tuple(a for a in OPACUS_ORDERS if a.is_integer())
# PLD grid: fine enough that a 10x finer one moves ε negligibly, coarse enough to be
# quick per ledger (the module docstring says how it was checked).
PLD_VALUE_DISCRETIZATION_INTERVAL = 1e-3


@contextmanager
def _quiet_dp_accounting() -> Iterator[None]:
    """dp_accounting logs a warning (through absl) for every fractional order whose
    series it gives up on; that is expected here (docstring), so keep it off the CLI."""
    logger = logging.getLogger("absl")
    before = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(before)


def _merged(events: Sequence[DpEvent]) -> list[tuple[float, float, int]]:
    """``[(σ, q, steps)]`` with equal (σ, q) merged: composition is commutative, so this
    is exact, and it keeps the PLD to one self-composition per distinct mechanism."""
    merged: dict[tuple[float, float], int] = {}
    for event in events:
        if not isinstance(event, DpEvent):
            raise ConfigError(f"expected DpEvent objects, found {type(event).__name__}")
        if event.steps:
            key = (event.noise_multiplier, event.sample_rate)
            merged[key] = merged.get(key, 0) + event.steps
    return [(sigma, q, steps) for (sigma, q), steps in merged.items()]


def dp_accounting_event(events: Sequence[DpEvent]) -> dp_accounting.DpEvent:
    """The ``dp_accounting`` event of a ledger: the composition of Poisson-subsampled
    Gaussians, each self-composed ``steps`` times (zero-step events cost nothing)."""
    return dp_accounting.ComposedDpEvent([
        dp_accounting.SelfComposedDpEvent(
            dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)),
            steps,
        )
        for sigma, q, steps in _merged(events)
    ])


def rdp_curve(events: Sequence[DpEvent], orders: Sequence[float] = OPACUS_ORDERS) -> np.ndarray:
    """RDP of the composed ``events`` at ``orders`` (inf where dp_accounting gives up)."""
    accountant = rdp.RdpAccountant(orders=list(orders))
    with _quiet_dp_accounting():
        accountant.compose(dp_accounting_event(events))
    return accountant.rdp


def _epsilon(orders: Sequence[float], curve: np.ndarray, delta: float) -> float:
    return float(rdp.compute_epsilon(list(orders), list(curve), delta)[0])


def epsilon_rdp(
    events: Sequence[DpEvent], *, delta: float, orders: Sequence[float] = OPACUS_ORDERS
) -> float:
    """ε of ``events`` at ``delta`` with dp_accounting's RDP accountant at ``orders``."""
    _check_delta(delta)
    return _epsilon(orders, rdp_curve(events, orders), delta)


def epsilon_pld(
    events: Sequence[DpEvent],
    *,
    delta: float,
    value_discretization_interval: float = PLD_VALUE_DISCRETIZATION_INTERVAL,
) -> float:
    """ε of ``events`` at ``delta`` with dp_accounting's (pessimistic) PLD accountant."""
    _check_delta(delta)
    if not _merged(events):
        return 0.0
    accountant = pld.PLDAccountant(value_discretization_interval=value_discretization_interval)
    accountant.compose(dp_accounting_event(events))
    return float(accountant.get_epsilon(delta))


def rdp_lower_bound(
    integer_orders: Sequence[float],
    integer_rdp: Sequence[float],
    *,
    delta: float,
    orders: Sequence[float] = OPACUS_ORDERS,
) -> float:
    """A lower bound on the ε that the *exact* RDP at ``orders`` gives, from RDP at
    integer orders only (the Balle et al. 2020 conversion Opacus uses, unclamped).

    ``f(α) = (α - 1) RDP(α) = log E[(μ/μ0)^α]`` is convex with ``f(1) = 0``, so the chord
    through two neighbouring integer orders, extended beyond them, is below ``f``; and
    RDP is non-decreasing, so ``RDP(α) >= RDP(⌊α⌋)``. The largest of these bounds the
    exact RDP at a fractional α from below, and the conversion increases with RDP.
    """
    _check_delta(delta)
    xs = np.array([1.0, *integer_orders])
    fs = np.concatenate([[0.0], (xs[1:] - 1.0) * np.asarray(integer_rdp, dtype=float)])
    alphas = np.asarray(orders, dtype=float)
    r_lower = np.array([_f_lower(xs, fs, a) / (a - 1.0) for a in alphas])
    eps = r_lower + np.log1p(-1.0 / alphas) - np.log(delta * alphas) / (alphas - 1.0)
    return float(np.min(eps))


def _f_lower(xs: np.ndarray, fs: np.ndarray, alpha: float) -> float:
    """Largest lower bound on the convex ``f`` at ``alpha`` from the nodes ``(xs, fs)``."""
    k = int(np.searchsorted(xs, alpha, side="right")) - 1  # xs[k] <= alpha
    if xs[k] == alpha:
        return float(fs[k])
    bounds = [0.0, (alpha - 1.0) * (fs[k] / (xs[k] - 1.0) if k else 0.0)]
    if k >= 1:  # chord of (xs[k-1], xs[k]) extended to the right
        bounds.append(_line(xs[k - 1], fs[k - 1], xs[k], fs[k], alpha))
    if k + 2 < len(xs):  # chord of (xs[k+1], xs[k+2]) extended to the left
        bounds.append(_line(xs[k + 1], fs[k + 1], xs[k + 2], fs[k + 2], alpha))
    return max(b for b in bounds if not math.isnan(b))


def _line(x0: float, y0: float, x1: float, y1: float, x: float) -> float:
    if math.isinf(y0) or math.isinf(y1):
        return math.nan  # no finite chord; the other bounds still hold
    return y0 + (y1 - y0) * (x - x0) / (x1 - x0)


@dataclass(frozen=True)
class IndependentEpsilon:
    """ε of one ledger recomputed with dp_accounting, at one δ.

    Parameters
    ----------
    rdp : float
        RDP accountant at all of Opacus' orders (>= Opacus' ε; module docstring).
    pld : float
        PLD accountant, interval :data:`PLD_VALUE_DISCRETIZATION_INTERVAL`.
    rdp_integer : float
        RDP accountant at :data:`INTEGER_ORDERS`: must equal Opacus' ε at those orders.
    rdp_lower : float
        :func:`rdp_lower_bound`: Opacus' ε at all its orders cannot be lower.
    kl_bound_used : bool
        dp_accounting used its KL shortcut (ε = 0) at an integer order, where Opacus
        has no such rule: the two then legitimately differ.
    """

    delta: float
    rdp: float
    pld: float
    rdp_integer: float
    rdp_lower: float
    kl_bound_used: bool


def independent_epsilons(events: Sequence[DpEvent], *, delta: float) -> IndependentEpsilon:
    """Every ε of ``events`` that dp_accounting gives, for the audit's cross-checks."""
    _check_delta(delta)
    if not _merged(events):  # nothing spent: Opacus says 0 too
        return IndependentEpsilon(delta, 0.0, 0.0, 0.0, 0.0, kl_bound_used=False)
    curve = rdp_curve(events, OPACUS_ORDERS)
    integer = curve[np.array([a.is_integer() for a in OPACUS_ORDERS])]
    return IndependentEpsilon(
        delta=delta,
        rdp=_epsilon(OPACUS_ORDERS, curve, delta),
        pld=epsilon_pld(events, delta=delta),
        rdp_integer=_epsilon(INTEGER_ORDERS, integer, delta),
        rdp_lower=rdp_lower_bound(INTEGER_ORDERS, integer, delta=delta),
        kl_bound_used=bool(np.any(delta**2 + np.expm1(-integer) > 0)),
    )


def _check_delta(delta: float) -> None:
    if isinstance(delta, bool) or not isinstance(delta, int | float) or not 0 < delta < 1:
        raise ConfigError(f"delta must be a number in (0, 1), found {delta!r}.")

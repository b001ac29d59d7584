"""Privacy accounting as pure functions over immutable mechanism events.

Modelled on Google's ``dp_accounting``: a client's privacy loss is a list of
:class:`DpEvent` objects (what was *done*), and ε is always recomputed from those events
with an accountant, never stored as the truth. The numbers come from Opacus' own
accountants, so the ε a client reports is the ε Opacus' ``PrivacyEngine`` would report
for the same DP-SGD run:

- ``"rdp"``: Rényi DP of the sampled Gaussian mechanism (Mironov, Talwar & Zhang 2019,
  "Rényi Differential Privacy of the Sampled Gaussian Mechanism"), composed additively
  over steps (Mironov 2017, Prop. 1) and converted to (ε, δ)-DP with the bound of
  Balle et al. 2020 ("Hypothesis testing interpretations and Rényi DP", Thm. 21).
- ``"prv"``: numerical composition of privacy loss random variables (Gopi, Lee & Wutschitz
  2021, "Numerical Composition of Differential Privacy"); Opacus returns the upper end
  of its error interval, so the value is still a guarantee, and it is tighter than RDP.

Every function here is pure: no accountant object outlives a call, so there is no hidden
state that could drift from a client's ledger.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from opacus.accountants import create_accountant
from opacus.accountants.utils import get_noise_multiplier

from common.errors import BudgetExceededError, ConfigError

__all__ = [
    "ACCOUNTANTS",
    "BudgetCheck",
    "DpEvent",
    "calibrate_noise_multiplier",
    "check_budget",
    "epsilon_from_events",
]

# The Opacus accountants this project trusts. ``gdp`` is left out on purpose: Opacus
# warns that its CLT approximation can underestimate ε.
ACCOUNTANTS: tuple[str, ...] = ("rdp", "prv")


def _is_real(value: object) -> bool:
    """True for ints and floats, but not bools (``True`` is not a noise multiplier)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass(frozen=True)
class DpEvent:
    """A Poisson-subsampled Gaussian mechanism, self-composed ``steps`` times.

    This is one DP-SGD run as Opacus accounts for it (``PrivacyEngine`` with Poisson
    sampling): every step samples each example independently with probability
    ``sample_rate``, clips per-example gradients and adds Gaussian noise of standard
    deviation ``noise_multiplier * max_grad_norm``. ``max_grad_norm`` does not enter ε.

    Parameters
    ----------
    noise_multiplier : float
        σ, the ratio of the noise standard deviation to the clipping norm (> 0).
    sample_rate : float
        q, the Poisson sampling probability of one example per step (0 < q ≤ 1).
    steps : int
        Number of noisy steps taken (≥ 0; zero steps cost nothing).
    """

    noise_multiplier: float
    sample_rate: float
    steps: int

    def __post_init__(self) -> None:
        sigma, q, steps = self.noise_multiplier, self.sample_rate, self.steps
        if not _is_real(sigma) or not math.isfinite(sigma) or sigma <= 0:
            raise ConfigError(
                f"noise_multiplier must be a finite number > 0, found {sigma!r}. "
                "A noise multiplier of 0 gives no privacy at all."
            )
        if not _is_real(q) or not math.isfinite(q) or not 0 < q <= 1:
            raise ConfigError(
                f"sample_rate must be a number in (0, 1], found {q!r}. "
                "With Poisson sampling it is batch_size / dataset_size."
            )
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
            raise ConfigError(f"steps must be an integer >= 0, found {steps!r}.")
        # Normalise ints to floats so that equal events compare and hash equal.
        object.__setattr__(self, "noise_multiplier", float(sigma))
        object.__setattr__(self, "sample_rate", float(q))


@dataclass(frozen=True)
class BudgetCheck:
    """The outcome of a dry run of one planned event against a budget.

    Parameters
    ----------
    fits : bool
        True when ``epsilon_after <= budget``. A non-finite ε never fits.
    epsilon_now : float
        ε of the events already spent.
    epsilon_after : float
        ε after the planned event would also be spent.
    reason : str
        A sentence for logs and for a client's decline message.
    """

    fits: bool
    epsilon_now: float
    epsilon_after: float
    reason: str

    def raise_if_exceeded(self) -> None:
        """Raise :class:`BudgetExceededError` with :attr:`reason` unless the plan fits."""
        if not self.fits:
            raise BudgetExceededError(self.reason)


def _check_accountant(accountant: str) -> None:
    if accountant not in ACCOUNTANTS:
        raise ConfigError(
            f"Unknown accountant {accountant!r}; choose one of {', '.join(ACCOUNTANTS)}."
        )


def _check_delta(delta: float) -> None:
    if not _is_real(delta) or not math.isfinite(delta) or not 0 < delta < 1:
        raise ConfigError(
            f"delta must be a number in (0, 1), found {delta!r}. "
            "Pick it below 1/n for a client holding n examples."
        )


def _check_positive(name: str, value: float) -> None:
    if not _is_real(value) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{name} must be a finite number > 0, found {value!r}.")


def _history(events: Sequence[DpEvent]) -> list[tuple[float, float, int]]:
    """Opacus accountant history ``[(σ, q, steps), ...]`` for ``events``.

    Events with the same (σ, q) are merged into one entry with the summed steps. This is
    exact, not an approximation: composition is commutative, and a mechanism composed
    with itself a then b times is the same mechanism composed a + b times. It makes ε of
    a ledger independent of how the steps were split into rounds (the PRV accountant
    would otherwise differ in the 9th digit because its discretisation domain depends on
    the split) and keeps the PRV accountant fast on long ledgers.
    """
    merged: dict[tuple[float, float], int] = {}
    for event in events:
        if not isinstance(event, DpEvent):
            raise TypeError(f"expected DpEvent objects, found {type(event).__name__}")
        if event.steps == 0:
            continue
        key = (event.noise_multiplier, event.sample_rate)
        merged[key] = merged.get(key, 0) + event.steps
    return [(sigma, q, steps) for (sigma, q), steps in merged.items()]


def epsilon_from_events(
    events: Sequence[DpEvent], *, delta: float, accountant: str = "rdp"
) -> float:
    """ε spent by the composition of ``events`` at the given δ.

    Parameters
    ----------
    events : Sequence[DpEvent]
        Everything spent on one client's data, across rounds and runs.
    delta : float
        δ of the (ε, δ) guarantee, in (0, 1).
    accountant : str
        One of :data:`ACCOUNTANTS` (default: ``"rdp"``).

    Returns
    -------
    float
        ε; 0.0 when there are no events or none with a step.
    """
    _check_accountant(accountant)
    _check_delta(delta)
    history = _history(events)
    if not history:
        return 0.0
    engine = create_accountant(mechanism=accountant)
    engine.history = history
    return float(engine.get_epsilon(delta=delta))


def calibrate_noise_multiplier(
    *,
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: str = "rdp",
) -> float:
    """The smallest σ (to Opacus' search tolerance) whose ``steps`` steps stay within ε.

    Call it once, up front, with ``steps`` = all planned rounds x steps per round: a σ
    calibrated per round would assume a fresh budget every round (the trap of Opacus'
    ``make_private_with_epsilon`` across rounds). The result satisfies
    ``epsilon_from_events([DpEvent(σ, q, steps)], ...) <= target_epsilon``.

    Parameters
    ----------
    target_epsilon : float
        The ε to stay within (> 0).
    delta : float
        δ, in (0, 1).
    sample_rate : float
        Poisson sampling rate q, in (0, 1].
    steps : int
        Total number of noisy steps planned (≥ 1).
    accountant : str
        One of :data:`ACCOUNTANTS` (default: ``"rdp"``).

    Raises
    ------
    ConfigError
        On an invalid argument, or when no σ up to Opacus' limit (1e6) reaches the target.
    """
    _check_accountant(accountant)
    _check_delta(delta)
    _check_positive("target_epsilon", target_epsilon)
    # Validates q and steps with the same messages as an event would.
    DpEvent(noise_multiplier=1.0, sample_rate=sample_rate, steps=steps)
    if steps < 1:
        raise ConfigError(f"steps must be >= 1 to calibrate a noise multiplier, found {steps}.")
    try:
        sigma = get_noise_multiplier(
            target_epsilon=target_epsilon,
            target_delta=delta,
            sample_rate=sample_rate,
            steps=steps,
            accountant=accountant,
        )
    except ValueError as exc:  # Opacus: "The privacy budget is too low."
        raise ConfigError(
            f"No noise multiplier reaches ε={target_epsilon} at δ={delta} over {steps} "
            f"steps with sample rate {sample_rate} ({accountant}): {exc} Raise the budget, "
            "or take fewer steps or a smaller sample rate."
        ) from exc
    return float(sigma)


def check_budget(
    events: Sequence[DpEvent],
    planned: DpEvent,
    *,
    delta: float,
    budget: float,
    accountant: str = "rdp",
) -> BudgetCheck:
    """Dry-run ``planned`` on top of ``events``: would ε stay within ``budget``?

    Like ``dp_accounting``'s ``supports``, this changes no state; the caller decides
    (a client declines the round with :attr:`BudgetCheck.reason`). A plan fits when
    ε after it is at most the budget; an ε that is not finite never fits.

    Parameters
    ----------
    events : Sequence[DpEvent]
        Events already spent (for example ``PrivacyLedger.events()``).
    planned : DpEvent
        The event the next round would add.
    delta : float
        δ of the budget, in (0, 1).
    budget : float
        The ε budget (> 0).
    accountant : str
        One of :data:`ACCOUNTANTS` (default: ``"rdp"``).
    """
    _check_positive("budget", budget)
    if not isinstance(planned, DpEvent):
        raise TypeError(f"planned must be a DpEvent, found {type(planned).__name__}")
    eps_now = epsilon_from_events(events, delta=delta, accountant=accountant)
    eps_after = epsilon_from_events([*events, planned], delta=delta, accountant=accountant)
    fits = bool(math.isfinite(eps_after) and eps_after <= budget)
    plan = f"σ={planned.noise_multiplier:g}, q={planned.sample_rate:g}, steps={planned.steps}"
    if fits:
        reason = (
            f"the planned round ({plan}) takes ε from {eps_now:.4g} to {eps_after:.4g}, "
            f"within the budget {budget:g} (δ={delta:g}, {accountant})"
        )
    else:
        reason = (
            f"the planned round ({plan}) would take ε from {eps_now:.4g} to "
            f"{eps_after:.4g}, past the budget {budget:g} (δ={delta:g}, {accountant})"
        )
    return BudgetCheck(fits=fits, epsilon_now=eps_now, epsilon_after=eps_after, reason=reason)

"""One DP planner for every DP-SGD run: the client's rounds, the baselines, the audits.

A plan fixes, before any private example is touched, the mechanism a run will be
accounted for: σ for all planned rounds (calibrated once, after the budget the node has
already spent), the Poisson rate q and the steps per round. The event that is recorded is
:meth:`NoisePlan.event`; after training, :func:`check_ran_as_planned` compares it with
what Opacus actually ran, and any difference stops the round before an output leaves.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from common.errors import ConfigError, PrivacyMismatchError
from common.privacy.accounting import DpEvent, calibrate_noise_multiplier, epsilon_from_events

__all__ = ["NoisePlan", "check_ran_as_planned", "plan_noise", "sample_rate_and_steps"]

_SIGMA_RANGE = (0.3, 64.0)  # bisection bounds when earlier events share the budget


@dataclass(frozen=True)
class NoisePlan:
    """One noise multiplier for every planned round of a run (OPACUS.md, Accounting)."""

    noise_multiplier: float
    sample_rate: float
    steps_per_round: int
    rounds: int

    def event(self) -> DpEvent:
        """The event one round of this plan spends."""
        return DpEvent(self.noise_multiplier, self.sample_rate, self.steps_per_round)

    def total_event(self) -> DpEvent:
        """The event of every planned round together (what a one-shot run spends)."""
        return DpEvent(self.noise_multiplier, self.sample_rate,
                       self.steps_per_round * self.rounds)


def sample_rate_and_steps(num_examples: int, expected_batch_size: int,
                          epochs: float) -> tuple[float, int]:
    """q of Opacus' Poisson loader (1 / number of batches) and the steps for ``epochs``."""
    if num_examples <= 0:
        raise ConfigError(f"Cannot train with DP on {num_examples} examples.")
    batches = math.ceil(num_examples / min(expected_batch_size, num_examples))
    # Opacus' accountant takes q = 1 / len(its Poisson loader) = 1 / int(1 / (1 / batches)),
    # which float rounding makes one batch short for some sizes (1 / (1 / 105) is
    # 104.99...). Record the q it accounts: the larger one, so ε is never understated.
    return 1.0 / int(1.0 / (1.0 / batches)), max(1, math.ceil(epochs * batches))


def plan_noise(
    *,
    budget: float,
    delta: float,
    num_examples: int,
    expected_batch_size: int,
    epochs_per_round: float,
    rounds: int,
    previous: Sequence[DpEvent] = (),
    accountant: str = "rdp",
    noise_multiplier: float = 0.0,
) -> NoisePlan:
    """σ, q and steps for ``rounds`` rounds that, after ``previous``, stay within ``budget``.

    ``noise_multiplier`` > 0 fixes σ instead (the budget check still declines rounds that
    would pass the budget). When even the largest σ searched cannot pay for the rounds,
    the plan keeps that σ and the budget check declines the rounds that do not fit.
    """
    if rounds < 1:
        raise ConfigError(f"rounds must be >= 1 to plan DP training, found {rounds}.")
    q, steps = sample_rate_and_steps(num_examples, expected_batch_size, epochs_per_round)
    if noise_multiplier > 0:
        return NoisePlan(float(noise_multiplier), q, steps, rounds)
    total = steps * rounds
    if not previous:
        sigma = calibrate_noise_multiplier(target_epsilon=budget, delta=delta, sample_rate=q,
                                           steps=total, accountant=accountant)
        return NoisePlan(sigma, q, steps, rounds)
    return NoisePlan(_sigma_after(previous, q, total, budget, delta, accountant), q, steps,
                     rounds)


def _sigma_after(previous: Sequence[DpEvent], q: float, total_steps: int, budget: float,
                 delta: float, accountant: str) -> float:
    """The smallest σ (bisection in log space) whose steps fit after ``previous``."""

    def eps(sigma: float) -> float:
        return epsilon_from_events([*previous, DpEvent(sigma, q, total_steps)],
                                   delta=delta, accountant=accountant)

    lo, hi = _SIGMA_RANGE
    if eps(hi) > budget:
        return hi
    for _ in range(30):
        mid = math.sqrt(lo * hi)
        lo, hi = (lo, mid) if eps(mid) <= budget else (mid, hi)
    return hi


def check_ran_as_planned(event: DpEvent, *, noise_multiplier: float, sample_rate: float,
                         steps: int, max_grad_norm: float, planned_max_grad_norm: float) -> None:
    """Raise :class:`PrivacyMismatchError` unless the run is the recorded event.

    The ledger holds ``event``; ε is only true if Opacus ran exactly that mechanism with
    the planned clipping norm (a larger C with the same σ adds relatively less noise).
    """
    ran = (noise_multiplier, sample_rate, steps, max_grad_norm)
    planned = (event.noise_multiplier, event.sample_rate, event.steps, planned_max_grad_norm)
    if not all(math.isclose(a, b, rel_tol=1e-12, abs_tol=0.0) for a, b in zip(ran, planned,
                                                                             strict=True)):
        raise PrivacyMismatchError(
            f"DP-SGD ran (σ, q, steps, C) = {ran}, but the ledger records {planned}: the "
            "reported ε would not describe this training. Nothing is sent for this round."
        )

"""The statistics of the soft-label audit: scores from soft labels, and what the result says.

:mod:`simulations.softlabel_audit` runs the experiment (canaries planted, the client's
rounds in-process); this module holds what the auditors compute from the soft labels they
saw (:func:`log_odds`, :func:`canary_scores`) and the result of the audit: each auditor's
one-run bound and ceiling next to the claim, and whether the claim stands.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from simulations.audit_output import json_safe

if TYPE_CHECKING:
    from common.privacy.auditing import AttackMetrics, OneRunAudit


def log_odds(probs: np.ndarray) -> np.ndarray:
    """log p_c - log(1 - p_c) for every row and class of decoded soft labels (m, C).

    Both terms are clipped at 1e-7, so a top-k zero or a float16 1.0 stays finite.
    """
    p = np.asarray(probs, dtype=np.float64)
    rest = p.sum(axis=1, keepdims=True) - p
    return np.log(np.clip(p, 1e-7, None)) - np.log(np.clip(rest, 1e-7, None))


def canary_scores(log_odds_sum: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Each canary's log-odds of its target class, minus every canary's for that class.

    The private step shifts all canary inputs alike (a class prior, a feature the rare
    tokens share); subtracting the canaries' mean per class removes that common shift,
    which says nothing about any one canary, and leaves what sets canary i apart.
    """
    centered = log_odds_sum - log_odds_sum.mean(axis=0, keepdims=True)
    return centered[np.arange(len(target)), target]


# ---------------------------------------------------------------- results
@dataclass(frozen=True)
class AuditorResult:
    """One auditor's guesses, bound and attack metrics."""

    name: str
    sees: str
    audit: OneRunAudit
    ceiling: float  # the bound with every one of these guesses right
    attack: AttackMetrics  # AUC, TPR at 1% FPR, advantage on the canaries


@dataclass(frozen=True)
class SoftlabelAuditResult:
    """What the soft-label audit measured, next to the claim."""

    config: dict[str, Any]
    family: str
    epsilon_claimed: float  # the run's planned ε over every observed round (inf without DP)
    epsilon_round: float  # one round's ε (inf without DP)
    noise_multiplier: float | None  # planned σ
    noise_multiplier_run: float | None  # given to dp_train
    sample_rate: float | None
    steps_per_round: int
    rounds: int
    private_examples: int  # ordinary (after trimming) + included canaries
    ordinary_examples: int
    included: int
    ceiling_all: float  # the bound with all m canaries guessed right
    auditors: tuple[AuditorResult, ...]
    seconds: float
    notes: tuple[str, ...] = ()

    def auditor(self, name: str) -> AuditorResult:
        return next(a for a in self.auditors if a.name == name)

    @property
    def epsilon_lower_bound(self) -> float:
        return max(a.audit.epsilon_lower_bound for a in self.auditors)

    @property
    def consistent(self) -> bool:
        """No bound exceeds the claim (always true without DP: the claim is ∞)."""
        return self.epsilon_lower_bound <= self.epsilon_claimed + 1e-9

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["consistent"] = self.consistent
        out["epsilon_lower_bound"] = self.epsilon_lower_bound
        return json_safe(out)

"""Empirical privacy auditing as pure functions: attack metrics and ε lower bounds.

The accountant gives an *upper* bound on ε (what the mechanism can leak at most). These
functions give evidence from the other side: how much a concrete attack actually learns
about membership, and the ε *lower* bound that the attack's success proves with stated
confidence. A lower bound above the claimed ε would mean the claim (or the
implementation) is wrong; a lower bound far below it proves nothing about the claim.

- Loss-threshold membership inference (Yeom, Giacomelli, Fredrikson & Jha 2018, "Privacy
  Risk in Machine Learning: Analyzing the Connection to Overfitting"): an example is
  guessed to be a member when the model's loss on it is low. We report the ROC AUC, the
  TPR at 1% FPR (Carlini et al. 2022, "Membership Inference Attacks From First
  Principles": the low-FPR regime is what matters for privacy), and the membership
  advantage max_t (TPR - FPR) of Yeom et al.
- One-run auditing (Steinke, Nasr & Jagielski 2023, "Privacy Auditing with One (1)
  Training Run", NeurIPS 2023, arXiv:2305.08846): m canaries, each included in training
  independently with probability 1/2; after one training run the auditor guesses "in"
  for the k+ highest scores, "out" for the k- lowest, and abstains on the rest. With r
  guesses of which v are correct, :func:`one_run_p_value` bounds the probability of v or
  more correct guesses under (ε, δ)-DP (their Theorem 5.2, computed as in their
  Algorithm 2 / Appendix D), and :func:`one_run_epsilon_lower_bound` is the largest ε
  that this rejects at the given confidence.

Everything here is numpy/scipy on plain arrays: no model, no training, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import special, stats

from common.errors import ConfigError

__all__ = [
    "AttackMetrics",
    "OneRunAudit",
    "clopper_pearson_epsilon",
    "loss_threshold_attack",
    "membership_advantage",
    "one_run_audit",
    "one_run_epsilon_lower_bound",
    "one_run_guesses",
    "one_run_p_value",
    "roc_auc",
    "tpr_at_fpr",
]

_ArrayLike = Sequence[float] | np.ndarray


def _scores(name: str, values: _ArrayLike) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).ravel()
    if arr.size == 0:
        raise ConfigError(f"{name} is empty; an attack needs at least one score on each side.")
    if not np.all(np.isfinite(arr)):
        raise ConfigError(
            f"{name} holds {int(np.sum(~np.isfinite(arr)))} non-finite scores; "
            "clip losses before scoring (an infinite loss is still a valid, extreme score)."
        )
    return arr


# ---------------------------------------------------------------- attack metrics
def roc_auc(member_scores: _ArrayLike, nonmember_scores: _ArrayLike) -> float:
    """P[score(member) > score(non-member)] + ½ P[tie]: the ROC AUC, by Mann-Whitney U.

    0.5 is chance; 1.0 separates members perfectly. Ties count a half, so a constant
    score gives exactly 0.5.
    """
    pos = _scores("member_scores", member_scores)
    neg = _scores("nonmember_scores", nonmember_scores)
    ranks = stats.rankdata(np.concatenate([pos, neg]))  # average ranks for ties
    u = ranks[: pos.size].sum() - pos.size * (pos.size + 1) / 2
    return float(u / (pos.size * neg.size))


def _roc(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """TPR and FPR of every threshold rule ``score >= t`` (t over all distinct scores)."""
    thresholds = np.unique(np.concatenate([pos, neg]))[::-1]  # high to low
    tpr = (pos[None, :] >= thresholds[:, None]).mean(axis=1)
    fpr = (neg[None, :] >= thresholds[:, None]).mean(axis=1)
    # the rule that flags nothing: (0, 0)
    return np.concatenate([[0.0], tpr]), np.concatenate([[0.0], fpr])


def tpr_at_fpr(
    member_scores: _ArrayLike, nonmember_scores: _ArrayLike, fpr: float = 0.01
) -> float:
    """The highest TPR of a threshold rule whose FPR is at most ``fpr`` (default: 0.01).

    With fewer than 1/fpr non-members the only such rule may be "flag nothing" (TPR 0)
    unless some members score above every non-member: that is the honest answer for a
    small sample, not a bug.
    """
    if not 0 <= fpr <= 1:
        raise ConfigError(f"fpr must be in [0, 1], found {fpr!r}.")
    tprs, fprs = _roc(_scores("member_scores", member_scores),
                      _scores("nonmember_scores", nonmember_scores))
    return float(tprs[fprs <= fpr + 1e-12].max())


def membership_advantage(member_scores: _ArrayLike, nonmember_scores: _ArrayLike) -> float:
    """max over thresholds of TPR - FPR (Yeom et al. 2018, Def. 4); 0 is chance.

    The threshold is chosen on the same scores it is evaluated on, so this is the best a
    loss-threshold attacker could do with hindsight: an optimistic (attacker-favouring)
    number, which is the right direction for an audit.
    """
    tprs, fprs = _roc(_scores("member_scores", member_scores),
                      _scores("nonmember_scores", nonmember_scores))
    return float(max(0.0, (tprs - fprs).max()))


@dataclass(frozen=True)
class AttackMetrics:
    """How well low loss singles out members."""

    auc: float  # ROC AUC; 0.5 = chance
    tpr_at_1pct_fpr: float  # TPR of the best rule with FPR <= 1%
    advantage: float  # max TPR - FPR (Yeom et al.); 0 = chance
    members: int
    nonmembers: int


def loss_threshold_attack(
    member_losses: _ArrayLike, nonmember_losses: _ArrayLike
) -> AttackMetrics:
    """The loss-threshold attack of Yeom et al. (2018): score = -loss."""
    pos = -_scores("member_losses", member_losses)
    neg = -_scores("nonmember_losses", nonmember_losses)
    return AttackMetrics(
        auc=roc_auc(pos, neg),
        tpr_at_1pct_fpr=tpr_at_fpr(pos, neg, 0.01),
        advantage=membership_advantage(pos, neg),
        members=int(pos.size),
        nonmembers=int(neg.size),
    )


# ---------------------------------------------------------------- one-run audit
def _check_counts(m: int, r: int, v: int) -> None:
    for name, value in (("m", m), ("r", r), ("v", v)):
        if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < 0:
            raise ConfigError(f"{name} must be an integer >= 0, found {value!r}.")
    if not v <= r <= m:
        raise ConfigError(
            f"Need correct guesses <= guesses <= canaries, found v={v}, r={r}, m={m}."
        )


def one_run_p_value(m: int, r: int, v: int, *, epsilon: float, delta: float) -> float:
    """Upper bound on P[at least v of r guesses correct] for an (ε, δ)-DP training run.

    Steinke, Nasr & Jagielski (2023), Theorem 5.2: with
    f(u) = P[Binomial(r, e^ε / (1 + e^ε)) >= u],

        P[W >= v] <= f(v) + 2 m δ · max_{1 <= i <= m} (f(v - i) - f(v)) / i.

    f(v - i) - f(v) = P[v - i <= Binomial < v] stops growing once i > v, so the maximum
    is over 1 <= i <= v (their Algorithm 2). For δ = 0 this is the Binomial tail alone:
    an ε-DP run cannot make a guess right with probability above e^ε / (1 + e^ε),
    the accuracy of ε-randomised response.

    Parameters
    ----------
    m : int
        Canaries, each included independently with probability 1/2.
    r : int
        Guesses made (abstentions excluded).
    v : int
        Correct guesses.
    epsilon, delta : float
        The (ε, δ) of the null hypothesis "training is (ε, δ)-DP".
    """
    _check_counts(m, r, v)
    if not epsilon >= 0:  # also rejects NaN
        raise ConfigError(f"epsilon must be >= 0, found {epsilon!r}.")
    if not 0 <= delta <= 1:
        raise ConfigError(f"delta must be in [0, 1], found {delta!r}.")
    q = float(special.expit(epsilon))  # e^ε / (1 + e^ε), stable for large ε
    tail = float(stats.binom.sf(v - 1, r, q))  # f(v) = P[Binomial(r, q) >= v]
    if delta == 0 or v == 0:
        return min(tail, 1.0)
    below = stats.binom.pmf(np.arange(v - 1, -1, -1), r, q)  # pmf(v-1), ..., pmf(0)
    gaps = np.cumsum(below)  # gaps[i-1] = P[v - i <= Binomial < v] = f(v - i) - f(v)
    alpha = float(np.max(gaps / np.arange(1, v + 1)))
    return min(tail + alpha * delta * 2 * m, 1.0)


def one_run_epsilon_lower_bound(
    m: int, r: int, v: int, *, delta: float, confidence: float = 0.95, tol: float = 1e-6
) -> float:
    """The largest ε that v correct out of r guesses rejects at ``confidence``.

    The training run is *not* (ε, δ)-DP for any ε below the returned value, unless an
    event of probability at most ``1 - confidence`` happened (Steinke et al. 2023,
    Algorithm 2). Returns 0.0 when even ε = 0 cannot be rejected (for example when about
    half of the guesses are right). The search is a bisection on the monotone p-value,
    stopped at ``tol``; the lower end is returned, so the bound is never overstated.
    """
    if not 0 < confidence < 1:
        raise ConfigError(f"confidence must be in (0, 1), found {confidence!r}.")
    p = 1.0 - confidence
    if one_run_p_value(m, r, v, epsilon=0.0, delta=delta) >= p:
        return 0.0
    lo, hi = 0.0, 1.0
    while one_run_p_value(m, r, v, epsilon=hi, delta=delta) < p:
        lo, hi = hi, 2 * hi
        if hi > 1e3:  # only v = r with huge r gets here; ε beyond 1000 means "no privacy"
            return lo
    while hi - lo > tol:
        mid = (lo + hi) / 2
        if one_run_p_value(m, r, v, epsilon=mid, delta=delta) < p:
            lo = mid
        else:
            hi = mid
    return lo


def one_run_guesses(
    scores: _ArrayLike, included: _ArrayLike, *, k_pos: int, k_neg: int
) -> tuple[int, int]:
    """Guess "in" for the ``k_pos`` highest scores and "out" for the ``k_neg`` lowest.

    Returns ``(r, v)``: guesses made and correct guesses. ``k_pos`` and ``k_neg`` must be
    fixed before looking at the outcome: trying several and keeping the best would void
    the confidence of the bound (or needs a union bound over the tries). Ties in the
    scores are broken by position, which does not depend on membership.
    """
    s = _scores("scores", scores)
    member = np.asarray(included, dtype=bool).ravel()
    if member.shape != s.shape:
        raise ConfigError(
            f"scores and included must have the same length, found {s.size} and {member.size}."
        )
    if k_pos < 0 or k_neg < 0 or k_pos + k_neg > s.size:
        raise ConfigError(
            f"Need 0 <= k_pos, k_neg and k_pos + k_neg <= {s.size} canaries, "
            f"found k_pos={k_pos}, k_neg={k_neg}."
        )
    order = np.argsort(-s, kind="stable")  # highest score first
    guessed_in = order[:k_pos]
    guessed_out = order[s.size - k_neg :] if k_neg else order[:0]
    v = int(member[guessed_in].sum() + (~member[guessed_out]).sum())
    return k_pos + k_neg, v


@dataclass(frozen=True)
class OneRunAudit:
    """The outcome of a one-run canary audit."""

    canaries: int  # m
    guesses: int  # r = k_pos + k_neg
    correct: int  # v
    delta: float
    confidence: float
    epsilon_lower_bound: float


def one_run_audit(
    scores: _ArrayLike,
    included: _ArrayLike,
    *,
    k_pos: int,
    k_neg: int,
    delta: float,
    confidence: float = 0.95,
) -> OneRunAudit:
    """Guess with :func:`one_run_guesses`, then bound ε with the guesses' accuracy."""
    r, v = one_run_guesses(scores, included, k_pos=k_pos, k_neg=k_neg)
    m = int(np.asarray(scores).size)
    bound = one_run_epsilon_lower_bound(m, r, v, delta=delta, confidence=confidence)
    return OneRunAudit(m, r, v, float(delta), float(confidence), bound)


def clopper_pearson_epsilon(r: int, v: int, confidence: float = 0.95) -> float:
    """ε lower bound for δ = 0 from the one-sided Clopper-Pearson interval (a cross-check).

    For δ = 0, :func:`one_run_p_value` is the Binomial tail, so rejecting ε is the same
    as the Clopper-Pearson lower confidence limit on the guess accuracy exceeding
    e^ε / (1 + e^ε). Used by the tests as an independent reference.
    """
    _check_counts(r, r, v)
    if v == 0:
        return 0.0
    low = float(stats.beta.ppf(1 - confidence, v, r - v + 1))
    return max(0.0, math.log(low / (1 - low))) if low < 1 else math.inf

"""Verdicts on a replayed grid: the strongest attack, the best robust rule, the target."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from simulations.robustness.replay import (
    NO_ATTACK,
    NON_ROBUST_RULES,
    TARGET_FRACTION,
    TARGET_POINTS,
)


# ---------------------------------------------------------------------------- verdicts
def accuracy_table(
    results: Sequence[dict[str, Any]], metric: str = "accuracy"
) -> dict[tuple[str, str, float], float]:
    return {
        (r["rule"], r["attack"], float(r["fraction"])): float(r[metric])
        for r in results
        if metric in r
    }


def target_fraction(fractions: Sequence[float]) -> float:
    """The issue's 30 %, or the largest fraction run when 30 % is not among them."""
    return TARGET_FRACTION if TARGET_FRACTION in fractions else max(fractions)


def strongest_attack(
    table: dict[tuple[str, str, float], float],
    attacks: Sequence[str],
    fraction: float,
    rule: str = "mean",
    balanced: dict[tuple[str, str, float], float] | None = None,
) -> str:
    """The attack that leaves ``rule`` (the plain mean) the lowest accuracy at ``fraction``;
    with ``balanced``, the lowest mean of accuracy and balanced accuracy (an attack that
    only moves the majority class's share is not the strongest on both)."""

    def score(key: tuple[str, str, float]) -> float:
        if balanced is None or key not in balanced:
            return table[key]
        return (table[key] + balanced[key]) / 2

    scored = [
        (score((rule, a, fraction)), i, a)
        for i, a in enumerate(attacks)
        if a != NO_ATTACK and (rule, a, fraction) in table
    ]
    if not scored:
        raise ValueError(f"no {rule} cell at fraction {fraction}")
    return min(scored)[2]


def best_robust_rule(
    table: dict[tuple[str, str, float], float], rules: Sequence[str], attack: str, fraction: float
) -> str:
    """The robust rule (not a plain mean) with the highest accuracy at that cell."""
    scored = [
        (-table[(r, attack, fraction)], i, r)
        for i, r in enumerate(rules)
        if r not in NON_ROBUST_RULES and (r, attack, fraction) in table
    ]
    if not scored:
        raise ValueError("no robust rule in the grid")
    return min(scored)[2]


def target_check(
    no_attack: float, robust: float, mean: float, points: float = TARGET_POINTS
) -> dict[str, Any]:
    """The issue's target: robust within ``points`` of the no-attack run, the mean not."""
    tolerance = 1e-9  # accuracies are ratios of counts; keep 3.0 points "within 3 points"
    robust_drop, mean_drop = no_attack - robust, no_attack - mean
    robust_ok = robust_drop <= points + tolerance
    mean_outside = mean_drop > points + tolerance
    return {
        "no_attack": no_attack,
        "robust": robust,
        "mean": mean,
        "points": points,
        "robust_drop": robust_drop,
        "mean_drop": mean_drop,
        "robust_within": robust_ok,
        "mean_outside": mean_outside,
        "met": bool(robust_ok and mean_outside),
    }


def replay_verdict(
    results: Sequence[dict[str, Any]],
    rules: Sequence[str],
    attacks: Sequence[str],
    fractions: Sequence[float],
    reference_rule: str,
) -> dict[str, Any] | None:
    """Strongest attack, best robust rule and the target, from the replay's cells."""
    table = accuracy_table(results)
    if "mean" not in rules or not any(a != NO_ATTACK for a in attacks) or not fractions:
        return None
    fraction = target_fraction(fractions)
    balanced = accuracy_table(results, "balanced_accuracy")
    attack = strongest_attack(table, attacks, fraction, balanced=balanced)
    try:
        best = best_robust_rule(table, rules, attack, fraction)
    except ValueError:
        return None
    ref_rule = reference_rule if (reference_rule, NO_ATTACK, 0.0) in table else "mean"
    check = target_check(
        table[(ref_rule, NO_ATTACK, 0.0)],
        table[(best, attack, fraction)],
        table[("mean", attack, fraction)],
    )
    cells = [(ref_rule, NO_ATTACK, 0.0), (best, attack, fraction), ("mean", attack, fraction)]
    return {
        "attack": attack,
        "fraction": fraction,
        "best_rule": best,
        "reference_rule": ref_rule,
        **check,
        # the same cells in balanced accuracy (the target asks for both)
        "balanced": (
            target_check(*(balanced[c] for c in cells))
            if all(c in balanced for c in cells)
            else None
        ),
    }



"""Benchmark 3's grid: which accuracy fills each (dataset, method, ε) cell, and the targets.

Pure functions of the result files (no torch, no Flower): FD cells come from the preset
runs of :mod:`bench.results`, baseline cells from :mod:`bench.privacy_utility`'s own rows
or, marked borrowed, from the same baselines in a preset run.
"""

from __future__ import annotations

import math
from typing import Any

INF = math.inf
EPSILONS = (1.0, 3.0, 8.0, INF)
PRESETS = ("default", "sst2")
# Method label -> (baseline run at a finite ε, its non-private counterpart run at ε=∞).
BASELINES = {
    "dp-fedavg": ("dp-fedavg", "fedavg"),
    "centralized-dp": ("centralized-dp", "centralized"),
    "local-only": ("local-only", "local-only-nodp"),
}
FD_PRIVATE, FD_NONPRIVATE = "federated-distillation", "non-private-fd"
LABELS = {
    "fd-students": "federated distillation, students (mean)",
    "fd-teacher": "federated distillation, server teacher",
    "dp-fedavg": "DP-FedAvg, global model (ε=∞: FedAvg)",
    "centralized-dp": "centralized DP-SGD (ε=∞: non-private)",
    "local-only": "local-only, students (mean) (ε=∞: no DP)",
}
GAP_POINTS = 3.0  # FD at ε=8 within this many points of non-private FD
TARGET_EPSILON = 8.0

# ------------------------------------------------------------------------ pure parts
def eps_key(eps: float | None) -> str:
    """ε as a JSON-safe key: ``"1"``, ``"8"``, ``"inf"``."""
    return "inf" if eps is None or math.isinf(eps) else f"{eps:g}"


def parse_eps(text: str) -> float:
    return INF if text.strip().lower() in ("inf", "∞", "none") else float(text)


def settings_eps(settings: dict[str, Any]) -> tuple[float, ...]:
    """The ε grid of a result file (stored with ``null`` for ∞: JSON has no infinity)."""
    return tuple(INF if e is None else float(e) for e in settings["epsilons"])


def _same_experiment(row: dict[str, Any], config: dict[str, Any], seed: int) -> bool:
    return row.get("seed") == seed and all(
        row.get(k) == config.get(k) for k in ("dataset", "rounds", "clients")
        if config.get(k) is not None)


def fd_cells(rows: list[dict[str, Any]], preset: str, config: dict[str, Any], seed: int,
             epsilons: tuple[float, ...] = EPSILONS) -> dict[str, dict[str, Any]]:
    """FD cells of one preset, by ε key, from ``bench/results/<preset>.json``'s rows.

    A row counts when its seed is ``seed`` and its dataset, rounds and clients are those
    of ``config`` (the baselines' preset settings): a run with other settings is not the
    same experiment. Finite ε: method ``federated-distillation`` with DP on and
    ``privacy.budget == ε``; ε=∞: method ``non-private-fd``. The last matching row wins.
    """
    out: dict[str, dict[str, Any]] = {}
    for row in rows:
        if not _same_experiment(row, config, seed):
            continue
        privacy, final = row.get("privacy") or {}, row.get("final") or {}
        if row.get("method") == FD_NONPRIVATE:
            eps = INF
        elif row.get("method") == FD_PRIVATE and privacy.get("dp") and privacy.get("budget"):
            eps = float(privacy["budget"])
        else:
            continue
        if eps not in epsilons:
            continue
        out[eps_key(eps)] = {
            "preset": preset, "method": row["method"], "epsilon": None if eps == INF else eps,
            "seed": seed, "students": row.get("students"),
            "student_accuracy_mean": final.get("student_accuracy_mean"),
            "teacher_accuracy": final.get("teacher_accuracy"),
            "ensemble_accuracy": final.get("ensemble_accuracy"),
            "epsilon_max": privacy.get("epsilon_max"),
            "source": f"bench/results/{preset}.json",
        }
    return out


def baseline_cells(rows: list[dict[str, Any]], preset: str, config: dict[str, Any],
                   seed: int, epsilons: tuple[float, ...] = EPSILONS
                   ) -> dict[str, dict[str, float]]:
    """Baseline accuracies {method: {ε key: accuracy}} from ``bench/results.py`` rows.

    ``results.py`` runs the same ``run_baseline`` on the same preset settings, so its rows
    fill cells this script has not run (same seed/dataset/rounds/clients rule as
    :func:`fd_cells`): a DP baseline at ``privacy.budget == ε``, and at ε=∞ ``fedavg`` and
    ``centralized``. Local-only without DP exists only in this script's own runs.
    """
    out: dict[str, dict[str, float]] = {m: {} for m in BASELINES}
    for row in rows:
        if not _same_experiment(row, config, seed):
            continue
        privacy, final = row.get("privacy") or {}, row.get("final") or {}
        acc = final.get("student_accuracy_mean")
        for method, (private, public) in BASELINES.items():
            if row.get("method") == private and privacy.get("dp") and privacy.get("budget"):
                eps = float(privacy["budget"])
            elif row.get("method") == public and not privacy.get("dp"):
                eps = INF
            else:
                continue
            if eps in epsilons and acc is not None:
                out[method][eps_key(eps)] = acc
    return out


def grid(data: dict[str, Any], preset_results: dict[str, dict[str, Any]] | None = None,
         borrowed: set[tuple[str, str, str]] | None = None) -> dict[str, Any]:
    """{preset: {method: {ε key: accuracy or None}}} for every table row of LABELS.

    FD cells, and baseline cells this script has not run itself, are re-read from
    ``preset_results`` (``{preset: results.py file}``) when a preset's file is given,
    else taken from the snapshot in ``data["fd"]`` / ``data["baselines_from_results_py"]``.
    ``borrowed`` collects the (preset, method, ε key) of baseline cells so filled.
    """
    settings = data["settings"]
    keys = [eps_key(e) for e in settings_eps(settings)]
    out: dict[str, Any] = {}
    for preset in settings["presets"]:
        config = settings["configs"].get(preset, {})
        if preset_results is not None and preset in preset_results:
            rows = preset_results[preset].get("rows", [])
            fd = fd_cells(rows, preset, config, settings["seed"], settings_eps(settings))
            other = baseline_cells(rows, preset, config, settings["seed"],
                                   settings_eps(settings))
        else:
            fd = data.get("fd", {}).get(preset, {})
            other = data.get("baselines_from_results_py", {}).get(preset, {})
        table: dict[str, dict[str, float | None]] = {
            "fd-students": {k: (fd.get(k) or {}).get("student_accuracy_mean") for k in keys},
            "fd-teacher": {k: (fd.get(k) or {}).get("teacher_accuracy") for k in keys},
        }
        for method in BASELINES:
            table[method] = {k: None for k in keys}
        for row in data.get("rows", []):
            if row.get("preset") == preset and row.get("method") in BASELINES \
                    and "accuracy" in row and row["epsilon_key"] in keys:
                table[row["method"]][row["epsilon_key"]] = row["accuracy"]
        for method, cells in other.items():
            for k, acc in cells.items():
                if k in keys and table[method][k] is None:
                    table[method][k] = acc
                    if borrowed is not None:
                        borrowed.add((preset, method, k))
        out[preset] = table
    return out


def evaluate_targets(table: dict[str, Any]) -> dict[str, Any]:
    """The issue's two targets per preset, judged on the FD students' mean accuracy.

    ``met`` is True or False when every cell the target needs is there, else None
    (*not decided*: some cell is not run). A target's overall ``met`` is False as soon as
    one preset misses it, True when every preset meets it, else None.
    """
    per: dict[str, Any] = {}
    target = eps_key(TARGET_EPSILON)
    for preset, t in table.items():
        fd, nonpriv = t["fd-students"].get(target), t["fd-students"].get("inf")
        gap = None if fd is None or nonpriv is None else 100.0 * (nonpriv - fd)
        gap_met = None if gap is None else gap <= GAP_POINTS
        ahead = {}
        for k in t["fd-students"]:
            if k == "inf":
                continue
            a, b = t["fd-students"][k], t["dp-fedavg"].get(k)
            ahead[k] = {"fd": a, "dp_fedavg": b,
                        "margin_points": None if a is None or b is None else 100.0 * (a - b),
                        "met": None if a is None or b is None else a > b}
        vals = [v["met"] for v in ahead.values()]
        ahead_met = False if False in vals else (None if None in vals or not vals else True)
        # Information only: the same comparisons with the server teacher.
        tfd, tnp = t["fd-teacher"].get(target), t["fd-teacher"].get("inf")
        per[preset] = {
            "fd_within_gap_at_8": {"fd": fd, "non_private_fd": nonpriv, "gap_points": gap,
                                   "max_gap_points": GAP_POINTS, "met": gap_met,
                                   "teacher_gap_points": None if tfd is None or tnp is None
                                   else 100.0 * (tnp - tfd)},
            "fd_ahead_of_dp_fedavg": {"per_epsilon": ahead, "met": ahead_met},
        }

    def overall(name: str) -> bool | None:
        vals = [p[name]["met"] for p in per.values()]
        return False if False in vals else (None if None in vals or not vals else True)

    return {"accuracy": "final.student_accuracy_mean (FD: the clients' students)",
            "per_preset": per,
            "fd_within_gap_at_8": overall("fd_within_gap_at_8"),
            "fd_ahead_of_dp_fedavg": overall("fd_ahead_of_dp_fedavg")}


def cell_key(c: dict[str, Any]) -> tuple[str, str, str]:
    return c["preset"], c["method"], c["epsilon_key"]

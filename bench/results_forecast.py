"""The results page's section for a forecasting preset (``bench/results.py`` calls it).

Scores are test MSE and MAE in the dataset's standardised units (lower is better), shown
×10⁻⁴ and ×10⁻² so that the differences read. The reference lines are the seasonal-naive
forecast on the same test windows and a closed-form ridge regression (the simple
non-private forecaster: on the teacher's labels, and pooled with every private label),
and the target table holds issue 19's forecasting
target beside what was measured: federated distillation at ε = 8 ahead of seasonal naive
and of local-only DP on MSE.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bench.pages import lines as page_lines
from common.metrics import mean_interval

MSE_UNIT, MAE_UNIT = 1e-4, 1e-2
TARGET_BUDGET = 8.0  # issue 19: "FD at ε = 8 beats seasonal-naive and local-only DP on MSE"


def is_forecast(rows: list[dict[str, Any]]) -> bool:
    return any(r.get("metric") == "mse" for r in rows)


def mse(x: float | None) -> str:
    return "—" if x is None else f"{x / MSE_UNIT:.2f}"


def _mae(x: float | None) -> str:
    return "—" if x is None else f"{x / MAE_UNIT:.2f}"


def section(preset: str, rows: list[dict[str, Any]], header: list[str]) -> list[str]:
    """Table, reference line and targets of a forecasting preset (``header``: the
    preset's title, commands and environment lines)."""
    naive = _seasonal_naive(rows)
    out = [*header,
           "Test MSE (×10⁻⁴) and MAE (×10⁻²) in standard deviations of the public and "
           "teacher segments; lower is better.", "",
           "| method | seed | private step | teacher MSE (initial → final) | ensemble MSE "
           "| ensemble MAE | students MSE (mean) | ε max (budget) | δ | bytes up "
           "| bytes down | wall s |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    out += [_row(r) for r in rows]
    linear = _linear(rows)
    out += ["", f"**Seasonal naive** (each step repeats the value of the same hour the day "
                f"before; no training, no private data) on the same {naive['test_windows']:,} "
                f"test windows: MSE {mse(naive['seasonal_naive_mse'])}, MAE "
                f"{_mae(naive['seasonal_naive_mae'])}. **Ridge regression** of what seasonal "
                "naive misses on the whole input window (closed form, ridge 10⁻³·n, no DP): "
                f"on the teacher's {linear['teacher_windows']} labelled windows MSE "
                f"{mse(linear['linear_teacher_labels_mse'])}, MAE "
                f"{_mae(linear['linear_teacher_labels_mae'])}; on those and every private "
                f"window pooled MSE {mse(linear['linear_all_labels_mse'])}, MAE "
                f"{_mae(linear['linear_all_labels_mae'])}.", ""]
    out += contribution(rows)
    out += targets(rows, naive["seasonal_naive_mse"])
    return out + page_lines(f"RESULTS/{preset}_note.md") + [""]


def contribution(rows: list[dict[str, Any]]) -> list[str]:
    """FD at ε − the public-only ablation of the same seed, in MSE (negative: the clients'
    DP-trained private windows lowered the error)."""
    public = {r["seed"]: r["final"] for r in rows if r["method"] == "public-only"}
    paired = [(r["final"], public[r["seed"]]) for r in rows
              if r["method"] == "federated-distillation" and r["seed"] in public
              and float(r["privacy"]["budget"]) == TARGET_BUDGET]
    if not paired:
        return []
    cells = []
    for key in ("teacher_mse", "ensemble_mse", "student_mse_mean"):
        mean, lo, hi = mean_interval([fd[key] - po[key] for fd, po in paired])
        cells.append(mse(mean) + ("" if np.isnan(lo) else f" [{mse(lo)}, {mse(hi)}]"))
    return ["**Private contribution** = federated distillation at ε = 8 − the public-only "
            "ablation of the same seed (test MSE ×10⁻⁴; negative = the private windows "
            "helped; mean over seeds and 95% Student-t interval):", "",
            "| ε | seeds | teacher | ensemble | students |", "|---|---|---|---|---|",
            f"| 8 | {len(paired)} | " + " | ".join(cells) + " |", ""]


def _row(row: dict[str, Any]) -> str:
    f, p, c = row["final"], row["privacy"], row["communication"]
    teacher = ("—" if f.get("teacher_mse") is None else
               f"{mse(f['teacher_mse_initial'])} → {mse(f['teacher_mse'])}")
    eps = "∞ (no DP)" if p.get("epsilon_max") is None else f"{p['epsilon_max']:.2f}"
    return (f"| {row['method']} | {row['seed']} | {row.get('private_step', '—')} | {teacher} "
            f"| {mse(f.get('ensemble_mse'))} | {_mae(f.get('ensemble_mae'))} | "
            f"{mse(f.get('student_mse_mean'))} | {eps} ({p['budget']}) | {p['delta']:g} | "
            f"{c['bytes_up']:,} | {c['bytes_down']:,} | {row['wall_seconds']:.0f} |")


def _seasonal_naive(rows: list[dict[str, Any]]) -> dict[str, Any]:
    from common.config import FedConfig
    from simulations.reference import seasonal_naive_reference

    return seasonal_naive_reference(FedConfig(dataset=rows[0]["dataset"]))


def _linear(rows: list[dict[str, Any]]) -> dict[str, Any]:
    from common.config import FedConfig
    from simulations.reference import linear_reference

    return linear_reference(FedConfig(dataset=rows[0]["dataset"]), pooled=True)


def _values(rows: list[dict[str, Any]], method: str, key: str) -> list[float]:
    return [r["final"][key] for r in rows if r["method"] == method
            and float(r["privacy"]["budget"]) == TARGET_BUDGET
            and r["final"].get(key) is not None]


def _interval(values: list[float]) -> str:
    mean, lo, hi = mean_interval(values)
    return mse(mean) + ("" if np.isnan(lo) else f" [{mse(lo)}, {mse(hi)}]")


def targets(rows: list[dict[str, Any]], naive: float) -> list[str]:
    """FD's final teacher and ensemble against seasonal naive and local-only DP (the
    better of its ensemble and its students' mean, so the bar is local-only's best)."""
    local = [min(v for v in (r["final"].get("ensemble_mse"), r["final"].get("student_mse_mean"))
                 if v is not None)
             for r in rows if r["method"] == "local-only"
             and float(r["privacy"]["budget"]) == TARGET_BUDGET]
    bars = [("seasonal naive", naive)]
    if local:
        bars.append(("local-only DP (its better of ensemble and students)",
                     float(np.mean(local))))
    out = ["**Target (issue 19)**: federated distillation at ε = 8 beats seasonal naive and "
           "local-only DP on MSE; measured on the rows above (mean over seeds, 95% "
           "interval, MSE ×10⁻⁴):", "", "| target | measured | bar | met |", "|---|---|---|---|"]
    for key, what in (("teacher_mse", "final teacher"), ("ensemble_mse", "final ensemble")):
        values = _values(rows, "federated-distillation", key)
        if not values:
            continue
        mean, _, high = mean_interval(values)
        for name, bar in bars:
            gap = 100 * (mean - bar) / bar
            met = ("yes" if mean < bar and not high >= bar else  # one seed: high is nan
                   "yes on the mean; the interval reaches above the bar" if mean < bar else
                   f"**no** ({gap:+.0f}% MSE)")
            out.append(f"| {what} at ε = 8 below {name} | {_interval(values)} | "
                       f"{mse(bar)} | {met} |")
    return out + [""]

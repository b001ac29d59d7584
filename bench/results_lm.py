"""The lm preset's section of docs/RESULTS.md: test perplexity (lower is better), token
accuracy beside it, and the bigram reference.

The rows come from ``python -m bench.results --preset lm --methods
federated-distillation,non-private-fd,local-only`` (Flower's Simulation Engine for the
federations, the local-only DP baseline on the same split).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from common.metrics import mean_interval

METHODS = ("federated-distillation", "non-private-fd", "local-only")
TARGET_BUDGET = 8.0


def is_lm(rows: list[dict[str, Any]]) -> bool:
    return any(r.get("metric") == "perplexity" for r in rows)


def ppl(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f}"


def _acc(x: float | None) -> str:
    return "—" if x is None else f"{x:.3f}"


def section(preset: str, rows: list[dict[str, Any]], header: list[str]) -> list[str]:
    """Table, reference line and comparison of a language-modelling preset."""
    del preset
    out = [*header, "Test perplexity (lower is better) and token accuracy on the test "
           "windows, next-character prediction.", "",
           "| method | seed | private step | teacher perplexity (initial → final) | "
           "ensemble perplexity | ensemble token acc. | students perplexity (mean) | "
           "ε max (budget) | δ | bytes up | bytes down | wall s |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    out += [_row(r) for r in rows]
    reference = _bigram(rows)
    out += ["", f"**Bigram model** (add-0.1 counts on the teacher's "
                f"{reference['teacher_windows']:,} windows, no private data): test perplexity "
                f"{ppl(reference['bigram_perplexity'])}, token accuracy "
                f"{_acc(reference['bigram_token_accuracy'])}; unigram perplexity "
                f"{ppl(reference['unigram_perplexity'])}.", ""]
    return out + comparison(rows)


def _row(row: dict[str, Any]) -> str:
    f, p, c = row["final"], row["privacy"], row["communication"]
    teacher = ("—" if f.get("teacher_perplexity") is None else
               f"{ppl(f['teacher_perplexity_initial'])} → {ppl(f['teacher_perplexity'])}")
    eps_max = p.get("epsilon_max")
    eps = "∞ (no DP)" if eps_max is None or not math.isfinite(eps_max) else f"{eps_max:.2f}"
    return (f"| {row['method']} | {row['seed']} | {row.get('private_step', '—')} | {teacher} "
            f"| {ppl(f.get('ensemble_perplexity'))} | {_acc(f.get('ensemble_token_accuracy'))} "
            f"| {ppl(f.get('student_perplexity_mean'))} | {eps} ({p['budget']}) | "
            f"{p['delta']:g} | {c['bytes_up']:,} | {c['bytes_down']:,} | "
            f"{row['wall_seconds']:.0f} |")


def _bigram(rows: list[dict[str, Any]]) -> dict[str, Any]:
    from simulations.cli_common import resolve_config
    from simulations.reference import bigram_reference

    return bigram_reference(resolve_config("lm", None, [f"dataset='{rows[0]['dataset']}'"],
                                           None))


def comparison(rows: list[dict[str, Any]]) -> list[str]:
    """Each method's final perplexities, mean over seeds with a 95% Student-t interval."""
    out = ["| method | seeds | final teacher | ensemble | students (mean) |",
           "|---|---|---|---|---|"]
    for method in METHODS:
        mine = [r["final"] for r in rows if r["method"] == method]
        if not mine:
            continue
        cells = [_interval([f[k] for f in mine if f.get(k) is not None])
                 for k in ("teacher_perplexity", "ensemble_perplexity",
                           "student_perplexity_mean")]
        out.append(f"| {method} | {len(mine)} | " + " | ".join(cells) + " |")
    return out + [""]


def _interval(values: list[float]) -> str:
    if not values:
        return "—"
    mean, lo, hi = mean_interval(values)
    return ppl(mean) + ("" if np.isnan(lo) else f" [{ppl(lo)}, {ppl(hi)}]")

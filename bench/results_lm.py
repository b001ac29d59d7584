"""The lm preset's section of docs/RESULTS.md: test perplexity (lower is better), token
accuracy beside it, and the bigram reference.

The rows come from ``python -m bench.results --preset lm`` (Flower's Simulation Engine
for the federations, the baselines on the same split). Each row carries the quality of
text sampled from its model (``simulations/generate.py``): the final teacher of a
federation, every student of a baseline.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from bench.pages import lines as page_lines
from common.metrics import mean_interval

METHODS = ("federated-distillation", "public-only", "non-private-fd", "centralized",
           "centralized-dp", "local-only", "fedavg", "dp-fedavg")
TARGET_BUDGET = 8.0
# Issue 19's language-modelling targets; measured below, never edited
WITHIN_NON_PRIVATE = 0.15  # FD students' perplexity at most 15% above non-private FD's


def is_lm(rows: list[dict[str, Any]]) -> bool:
    return any(r.get("metric") == "perplexity" for r in rows)


def ppl(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f}"


def _acc(x: float | None) -> str:
    return "—" if x is None else f"{x:.3f}"


def section(preset: str, rows: list[dict[str, Any]], header: list[str]) -> list[str]:
    """Table, reference line and comparison of a language-modelling preset."""
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
    return (out + comparison(rows) + samples_table(rows) + targets_table(rows)
            + page_lines(f"RESULTS/{preset}_note.md") + [""])


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


def _samples(row: dict[str, Any]) -> list[dict[str, Any]]:
    """The sample scores of a row: its teacher's (federations) or every student's."""
    return list((row.get("samples") or {}).values())


def _error_key(rows: list[dict[str, Any]]) -> str | None:
    keys = {k for r in rows for q in _samples(r) for k in q
            if k in ("syntax_error_rate", "spelling_error_rate")}
    return next(iter(sorted(keys)), None)


def samples_table(rows: list[dict[str, Any]]) -> list[str]:
    """Per method, the sampled text's error rate and distinct-2, mean over seeds (and over
    a baseline's students)."""
    key = _error_key(rows)
    if key is None:
        return []
    first = next(q for r in rows for q in _samples(r))
    what = "syntax-error rate of the finished samples" if key.startswith("syntax") else \
        "spelling-error rate"
    out = [f"**Sampled text**: {first['samples']} unprompted samples of at most "
           f"{first['max_new_tokens']:,} tokens at temperature {first['temperature']:g} from "
           "each federation's final teacher and each baseline's students; the "
           f"{what} (lower is better) and distinct-2 (the share of unique word pairs), mean "
           "over seeds with a 95% interval.", "",
           "| method | seeds | sampled from | " + what + " | distinct-2 |", "|---|---|---|---|---|"]
    for method in METHODS:
        mine = [r for r in rows if r["method"] == method and _samples(r)]
        if not mine:
            continue
        who = "teacher" if "teacher" in (mine[0].get("samples") or {}) else "students"
        out.append(f"| {method} | {len(mine)} | {who} | "
                   f"{_rate_interval(_rates(rows, method, key))} | "
                   f"{_rate_interval(_rates(rows, method, 'distinct_2'))} |")
    return out + [""]


def _mean_of(row: dict[str, Any], key: str) -> float | None:
    values = [q[key] for q in _samples(row) if q.get(key) is not None]
    return float(np.mean(values)) if values else None


def _rates(rows: list[dict[str, Any]], method: str, key: str) -> list[float]:
    """Per row of ``method``, the mean of ``key`` over its sampled models (where scored)."""
    return [v for r in rows if r["method"] == method and (v := _mean_of(r, key)) is not None]


def _rate_interval(values: list[float]) -> str:
    if not values:
        return "—"
    mean, lo, hi = mean_interval(values)
    return f"{mean:.3f}" + ("" if np.isnan(lo) else f" [{lo:.3f}, {hi:.3f}]")


def targets_table(rows: list[dict[str, Any]]) -> list[str]:
    """Issue 19's language-modelling targets beside what was measured: met or missed."""
    def values(method: str, key: str) -> list[float]:
        return [r["final"][key] for r in rows if r["method"] == method
                and float(r["privacy"]["budget"]) == TARGET_BUDGET
                and r["final"].get(key) is not None]

    fd = values("federated-distillation", "student_perplexity_mean")
    if not fd:
        return []
    out = ["**Targets (issue 19)**, measured on the rows above (mean over seeds, 95% "
           "interval):", "", "| target | measured | bar | met |", "|---|---|---|---|"]
    local = values("local-only", "student_perplexity_mean")
    if local:
        bar = float(np.mean(local))
        out.append(f"| FD students' perplexity at ε = 8 below local-only DP students' | "
                   f"{_interval(fd)} | {ppl(bar)} | {_verdict(fd, bar)} |")
    private = values("non-private-fd", "student_perplexity_mean")
    if private:
        bar = float(np.mean(private)) * (1 + WITHIN_NON_PRIVATE)
        out.append(f"| FD students' perplexity at ε = 8 within {100 * WITHIN_NON_PRIVATE:.0f}% "
                   f"of non-private FD's ({ppl(float(np.mean(private)))}) | {_interval(fd)} | "
                   f"{ppl(bar)} | {_verdict(fd, bar)} |")
    out += _syntax_target(rows)
    return out + [""]


def _syntax_target(rows: list[dict[str, Any]]) -> list[str]:
    if _error_key(rows) != "syntax_error_rate":
        return []
    fd = _rates(rows, "federated-distillation", "syntax_error_rate")
    local = _rates(rows, "local-only", "syntax_error_rate")
    if not fd or not local:
        return []
    bar = float(np.mean(local))
    return [f"| syntax-error rate of the FD teacher's sampled code below the local-only DP "
            f"students' | {_rate_interval(fd)} | {bar:.3f} | {_verdict(fd, bar)} |"]


def _verdict(values: list[float], bar: float) -> str:
    """Lower is better: met on the mean, and said when the interval reaches the bar."""
    mean, _, hi = mean_interval(values)
    if mean >= bar:
        return "**no**"
    return "yes" if np.isnan(hi) or hi < bar else \
        "yes on the mean; the interval reaches above the bar"

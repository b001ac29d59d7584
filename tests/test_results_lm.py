"""bench.results_lm renders the lm preset's rows (perplexity, lower is better)."""

from __future__ import annotations

from typing import Any

from bench.results_lm import comparison, is_lm, samples_table, section, targets_table


def _row(method: str, seed: int, teacher: float, ensemble: float | None,
         eps: float | None) -> dict[str, Any]:
    return {"method": method, "seed": seed, "dataset": "python-docs", "metric": "perplexity",
            "wall_seconds": 100.0, "private_step": "DP all",
            "final": {"teacher_perplexity_initial": 9.2, "teacher_perplexity": teacher,
                      "ensemble_perplexity": ensemble, "ensemble_token_accuracy": 0.3,
                      "student_perplexity_mean": ensemble},
            "privacy": {"epsilon_max": eps, "budget": 8.0, "delta": 1e-5},
            "communication": {"bytes_up": 10, "bytes_down": 20}}


ROWS = [_row("federated-distillation", s, 8.0 + s, 15.0 + s, 7.9) for s in range(3)]
ROWS += [_row("local-only", 0, 9.0, 30.0, 8.0), _row("non-private-fd", 0, 7.5, 12.0, float("inf"))]


def test_the_comparison_averages_each_method_over_its_seeds() -> None:
    lines = comparison(ROWS)
    [fd] = [line for line in lines if line.startswith("| federated-distillation")]
    assert fd.startswith("| federated-distillation | 3 | 9.00 [") and "16.00 [" in fd
    [local] = [line for line in lines if line.startswith("| local-only")]
    assert local == "| local-only | 1 | 9.00 | 30.00 | 30.00 |"


def test_the_section_has_a_row_per_run_and_the_bigram_line() -> None:
    assert is_lm(ROWS) and not is_lm([{"metric": "mse"}])
    lines = section("lm", ROWS, ["## lm"])
    assert sum(line.startswith("| federated-distillation | ") for line in lines) == 4
    assert any("∞ (no DP)" in line for line in lines)
    assert any(line.startswith("**Bigram model**") and "14.09" in line for line in lines)


def _sampled(row: dict[str, Any], who: list[str], rate: float,
             key: str = "syntax_error_rate") -> dict[str, Any]:
    quality = {"samples": 32, "max_new_tokens": 1000, "temperature": 0.8, key: rate,
               "distinct_2": 0.5}
    return {**row, "samples": {w: quality for w in who}}


def test_the_targets_compare_fd_students_with_local_only_and_non_private_fd() -> None:
    lines = targets_table(ROWS)  # FD students 15, 16, 17; local-only 30; non-private 12
    [local] = [line for line in lines if "below local-only" in line]
    assert local.endswith("| 30.00 | yes |")
    [private] = [line for line in lines if "within 15%" in line]
    assert "(12.00)" in private and private.endswith("| 13.80 | **no** |")
    assert not any("syntax" in line for line in lines)  # no sampled code: no code target
    assert targets_table([r for r in ROWS if r["method"] != "federated-distillation"]) == []


def test_the_syntax_target_and_the_samples_table_read_each_row_s_models() -> None:
    rows = [_sampled(r, ["teacher"], 0.5 + 0.1 * r["seed"]) if r["method"] ==
            "federated-distillation" else _sampled(r, ["client-0", "client-1"], 0.9)
            for r in ROWS]
    [code] = [line for line in targets_table(rows) if "syntax-error rate" in line]
    assert "0.600 [" in code and code.endswith("| 0.900 | yes |")
    table = samples_table(rows)
    assert any("syntax-error rate of the finished samples" in line for line in table)
    [fd] = [line for line in table if line.startswith("| federated-distillation")]
    assert fd.startswith("| federated-distillation | 3 | teacher | 0.600 [")
    [local] = [line for line in table if line.startswith("| local-only")]
    assert local == "| local-only | 1 | students | 0.900 | 0.500 |"
    worse = [_sampled(r, ["teacher"], 0.95) if r["method"] == "federated-distillation"
             else r for r in rows]
    assert any("syntax-error" in line and line.endswith("| **no** |")
               for line in targets_table(worse))


def test_prose_samples_get_the_spelling_table_and_no_code_target() -> None:
    rows = [_sampled(r, ["teacher"], 0.2, "spelling_error_rate") for r in ROWS]
    assert any("spelling-error rate" in line for line in samples_table(rows))
    assert not any("syntax" in line for line in targets_table(rows))
    assert samples_table(ROWS) == []

"""bench.results_lm renders the lm preset's rows (perplexity, lower is better)."""

from __future__ import annotations

from typing import Any

from bench.results_lm import comparison, is_lm, section


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

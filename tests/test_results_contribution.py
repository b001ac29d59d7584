"""The private contribution of docs/RESULTS.md: FD(ε) − public-only, paired by seed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.results import contribution_table, image_targets_table, private_contribution
from common.metrics import mean_interval


def _row(method: str, seed: int, budget: float, teacher: float) -> dict:
    return {"method": method, "seed": seed, "privacy": {"budget": budget},
            "final": {"teacher_accuracy": teacher, "ensemble_accuracy": 0.6,
                      "student_accuracy_mean": None}}


def test_mean_interval_matches_the_t_distribution() -> None:
    mean, lo, hi = mean_interval([1.0, 2.0, 3.0])
    assert mean == 2.0
    assert hi - mean == pytest.approx(4.302653 * 1.0 / 3 ** 0.5, rel=1e-5)  # t(0.975, 2)
    assert lo == pytest.approx(2 * mean - hi)


def test_contribution_is_paired_by_seed_and_split_by_budget() -> None:
    rows = [_row("public-only", s, 8.0, 0.60 + 0.01 * s) for s in range(3)]
    rows += [_row("federated-distillation", s, 8.0, 0.64 + 0.01 * s) for s in range(3)]
    rows += [_row("federated-distillation", s, 1.0, 0.61 + 0.01 * s) for s in (0, 1)]
    rows += [_row("federated-distillation", 5, 1.0, 0.99)]  # no public-only seed 5: unpaired
    table = private_contribution(rows)
    assert list(table) == [8.0, 1.0]
    assert table[8.0]["seeds"] == 3 and table[1.0]["seeds"] == 2
    assert table[8.0]["teacher"][0] == pytest.approx(0.04)
    assert table[8.0]["teacher"][1] == pytest.approx(0.04)  # same gap every seed: no spread
    assert table[1.0]["teacher"][0] == pytest.approx(0.01)
    assert table[8.0]["ensemble"][0] == pytest.approx(0.0)
    assert table[8.0]["students"] is None
    text = "\n".join(contribution_table(rows))
    assert "| 8 | 3 | +4.0 [+4.0, +4.0] | +0.0 [+0.0, +0.0] | — |" in text


def test_no_public_only_rows_no_table() -> None:
    assert contribution_table([_row("federated-distillation", 0, 8.0, 0.6)]) == []


def test_recipes_section_renders_every_recipes_file(tmp_path: Path) -> None:
    from bench.results import recipes_section

    run = {"seed": 0, "epsilon": 8.0, "dataset": "rotten-tomatoes", "clients": 2,
           "partition_sizes": [3346, 3346],
           "rows": [{"recipe": "none", "students": 0.6, "ensemble": 0.61, "gain_students": 0.0,
                     "gain_ensemble": 0.0},
                    {"recipe": "head", "students": 0.62, "ensemble": 0.64,
                     "gain_students": 0.02, "gain_ensemble": 0.03}]}
    (tmp_path / "dp_recipes-x.json").write_text(json.dumps(
        {"benchmark": "dp_recipes", "command": "cmd", "wall_seconds": 3.0, "runs": [run]}))
    text = "\n".join(recipes_section(tmp_path))
    assert "2 clients (3346–3346 private examples each)" in text
    assert "| head | 0.620 / 0.640 | +2.0 / +3.0 |" in text
    assert recipes_section(tmp_path / "empty") == []


def test_image_target_is_met_or_missed_with_the_gap() -> None:
    rows = [_row("federated-distillation", s, 2.0, t) for s, t in ((0, 0.85), (1, 0.87))]
    rows[0]["final"]["ensemble_accuracy"] = rows[1]["final"]["ensemble_accuracy"] = 0.93
    rows.append(_row("federated-distillation", 0, 8.0, 0.99))  # another budget: not counted
    lines = image_targets_table("images", rows)
    teacher = next(line for line in lines if "final teacher at ε = 2 ≥ 0.9" in line)
    assert "0.860" in teacher and "**no** (gap -4.0 points)" in teacher
    ensemble = next(line for line in lines if "final ensemble" in line)
    assert ensemble.endswith("| yes |")
    assert image_targets_table("default", rows) == []


def test_image_target_met_on_the_mean_alone_says_so() -> None:
    rows = [_row("federated-distillation", s, 2.0, t) for s, t in ((0, 0.88), (1, 0.93))]
    teacher = next(line for line in image_targets_table("images", rows)
                   if "final teacher" in line)
    assert teacher.endswith("| yes on the mean; the interval reaches below the bar |")

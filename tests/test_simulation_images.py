"""End to end: ``fedistill simulate --preset images`` through Flower's Simulation Engine.

The images preset on sklearn's digits, shortened to 2 rounds and under SecAgg+: a patch
ViT teacher, CNN students under real Opacus DP-SGD, the same client DP step, ledgers and
budget as text. One run (module-scoped, a few minutes on 2 cores) is shared by the checks.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import simulate_or_fail

from common.privacy.ledger import PrivacyLedger

pytestmark = pytest.mark.slow
CHANCE = 0.1  # ten digit classes, stratified test set


@pytest.fixture(scope="module")
def images_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("images") / "run"
    return simulate_or_fail(out, "--preset", "images", "--set", "rounds=2",
                            "--set", "secure-aggregation=true")


def test_the_federation_learns_digits_well_above_chance(images_run: Path) -> None:
    summary = json.loads((images_run / "summary.json").read_text())
    assert (summary["dataset"], summary["rounds"], summary["clients"]) == ("digits", 2, 3)
    final = summary["final"]
    assert final["teacher_accuracy"] > 5 * CHANCE, final
    assert final["ensemble_accuracy"] > 5 * CHANCE, final
    assert final["student_accuracy_mean"] > 5 * CHANCE, final  # each reports its own
    assert summary["reference"]["teacher_labels"] == 180
    assert 0.5 < summary["reference"]["pixel_lr_teacher_labels"] <= 1.0


def test_every_round_was_secure_and_every_client_spent_dp_budget(images_run: Path) -> None:
    records = [json.loads(x) for x in (images_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [0, 1, 2]
    for r in records[1:]:
        assert r["secure_aggregation"] and r["replies"] == 3 and not r["rejected"], r
        assert r["teacher_update"] == "applied" or r["teacher_update"].startswith("rolled")
        assert r["declined"] == []  # every client trained under DP
    assert not (images_run / "tokenizer.json").exists()  # images need none


def test_ledgers_verify_and_stay_within_the_budget(images_run: Path) -> None:
    summary = json.loads((images_run / "summary.json").read_text())
    privacy = summary["privacy"]
    assert privacy["budget"] == 2.0
    assert set(privacy["epsilon_per_client"]) == {"client-0", "client-1", "client-2"}
    for client, eps in privacy["epsilon_per_client"].items():
        ledger = PrivacyLedger(images_run / "clients" / client / "ledger.jsonl")
        ledger.verify()
        assert len(ledger.records()) == 2  # one DP event per round
        assert 0 < eps <= 2.0
        assert eps == pytest.approx(privacy["epsilon_reported"][client], abs=1e-9)

"""End to end: ``fedistill simulate --preset images`` through Flower's Simulation Engine.

The images preset on sklearn's digits, shortened to 2 rounds, with 5 clients under
SecAgg+ of which the first two train and then fail before sending their masked vector
(after the key exchange): every round completes with the other three, whose masks are
rebuilt from their shares. A patch ViT teacher, CNN students under real Opacus DP-SGD,
the same client DP step, ledgers and budget as text. One run (module-scoped) is shared
by the checks; a second, of one round, has every reply invalid and must fail clearly.
(The image preset runs in about a minute: the end-to-end failure paths use it.)
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import simulate, simulate_or_fail

from common.privacy.ledger import PrivacyLedger

pytestmark = pytest.mark.slow
CHANCE = 0.1  # ten digit classes, stratified test set
DROPPED = ("client-0", "client-1")
KEPT = ("client-2", "client-3", "client-4")


@pytest.fixture(scope="module")
def images_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("images") / "run"
    return simulate_or_fail(out, "--preset", "images", "--set", "rounds=2",
                            "--set", "secure-aggregation=true", "--set", "num-clients=5",
                            "--set", "attack='raise'", "--set", "attack-fraction=0.4")


def test_the_federation_learns_digits_well_above_chance(images_run: Path) -> None:
    summary = json.loads((images_run / "summary.json").read_text())
    assert (summary["dataset"], summary["rounds"], summary["clients"]) == ("digits", 2, 5)
    final = summary["final"]
    assert final["teacher_accuracy"] > 5 * CHANCE, final
    assert final["ensemble_accuracy"] > 5 * CHANCE, final
    assert final["student_accuracy_mean"] > 5 * CHANCE, final  # each reports its own
    assert len(final["student_accuracy"]) == len(KEPT)
    assert summary["reference"]["teacher_labels"] == 180
    assert 0.5 < summary["reference"]["pixel_lr_teacher_labels"] <= 1.0


def test_two_clients_drop_out_of_secagg_and_every_round_goes_on(images_run: Path) -> None:
    records = [json.loads(x) for x in (images_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [0, 1, 2]
    for r in records[1:]:
        assert r["secure_aggregation"] and r["sampled"] == 5 and r["replies"] == 3, r
        assert sorted(r["epsilon"]) == list(KEPT)
        assert any("2 client(s) dropped out of SecAgg+" in x["reason"] for x in r["rejected"])
        assert r["teacher_update"] == "applied" or r["teacher_update"].startswith("rolled")
        assert r["declined"] == []  # every client trained under DP
    assert "Secure aggregation completed" in (images_run / "flower.log").read_text()
    assert not (images_run / "tokenizer.json").exists()  # images need none


def test_too_few_valid_replies_fail_the_run_with_a_clear_message(tmp_path: Path) -> None:
    out = tmp_path / "allfaulty"
    proc = simulate(out, "--preset", "images", "--set", "rounds=1", "--set", "attack='nan'",
                    "--set", "attack-fraction=1.0", "--set", "min-replies=2")
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    message = " ".join(proc.stdout.split())
    assert "fewer than min-replies=2" in message
    assert not (out / "summary.json").exists()


def test_ledgers_verify_and_stay_within_the_budget(images_run: Path) -> None:
    summary = json.loads((images_run / "summary.json").read_text())
    privacy = summary["privacy"]
    assert privacy["budget"] == 2.0
    assert set(privacy["epsilon_per_client"]) == set(DROPPED + KEPT)
    assert set(privacy["epsilon_reported"]) == set(KEPT)
    for client, eps in privacy["epsilon_per_client"].items():
        ledger = PrivacyLedger(images_run / "clients" / client / "ledger.jsonl")
        ledger.verify()
        # one DP event per round; the dropped clients trained before failing, so their
        # ledgers hold the budget they spent
        assert len(ledger.records()) == 2
        assert 0 < eps <= 2.0
        if client in KEPT:
            assert eps == pytest.approx(privacy["epsilon_reported"][client], abs=1e-9)

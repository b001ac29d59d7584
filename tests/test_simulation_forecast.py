"""End to end: the forecast preset through the real ServerApp and ClientApp.

The forecast preset on seattle-temps, cut to one short round (one epoch each, 200 public
windows, forecast-mlp students), with 3 clients of which the first sends NaN forecasts:
its reply is refused with a reason, the round completes with the other two, and every
client's DP step (Opacus DP-SGD seeded by its node secret) is in its verified ledger
within the budget, as for text and images. The apps exchange Flower Messages over the
in-process grid (conftest.run_in_process, every client mod included): through Flower's
Simulation Engine the same run took 2 minutes on the shared 2-core machine, most of it
starting Ray, past this test's 40-second share of CI; ``fedistill simulate --preset
forecast`` itself is the command docs/RESULTS.md ran.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_in_process

from common.privacy.ledger import PrivacyLedger
from simulations.cli_common import resolve_config
from simulations.report import finalize_summary

pytestmark = pytest.mark.slow
# noise-multiplier fixed: calibrating σ to ε 8 (Opacus' search over fractional RDP
# orders) took 20 of this run's 45 seconds; the budget check still runs on the ledger
SHORT = ("rounds=1", "teacher-epochs=1", "teacher-distill-epochs=1", "student-distill-epochs=1",
         "public-batch-size=200", "students='forecast-mlp'", "encoding='float32'",
         "noise-multiplier=1.0", "attack='nan'", "attack-fraction=0.34", "min-replies=2")


@pytest.fixture(scope="module")
def forecast_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("forecast") / "run"
    cfg = resolve_config("forecast", None, list(SHORT), out)
    run_in_process(cfg)
    finalize_summary(out, json.loads((out / "summary.json").read_text()))  # as simulate does
    return out


def test_the_nan_reply_is_refused_and_the_round_completes(forecast_run: Path) -> None:
    records = [json.loads(x) for x in (forecast_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [0, 1]
    last = records[1]
    assert (last["sampled"], last["replies"], last["metric"]) == (3, 2, "mse")
    [rejected] = last["rejected"]
    assert "'forecasts' has a non-finite value" in rejected["reason"], rejected
    assert sorted(last["epsilon"]) == ["client-1", "client-2"]
    assert last["teacher_update"] == "applied"
    assert 0 < last["teacher_mse"] < 0.01 and 0 < last["ensemble_mse"] < 0.01, last
    assert set(last["student_mse"]) == {"client-1", "client-2"}


def test_the_summary_reports_mse_and_mae(forecast_run: Path) -> None:
    summary = json.loads((forecast_run / "summary.json").read_text())
    assert (summary["task"], summary["metric"], summary["dataset"]) == (
        "forecast", "mse", "seattle-temps")
    final = summary["final"]
    assert {"teacher_mse_initial", "teacher_mse", "teacher_mae", "ensemble_mse",
            "ensemble_mae", "student_mse_mean"} <= set(final)
    assert final["teacher_mae"] ** 2 <= final["teacher_mse"]  # Jensen: a real MAE beside it
    assert not (forecast_run / "tokenizer.json").exists()


def test_every_ledger_verifies_within_the_budget(forecast_run: Path) -> None:
    privacy = json.loads((forecast_run / "summary.json").read_text())["privacy"]
    assert privacy["budget"] == 8.0 and privacy["within_budget"]
    for client in ("client-0", "client-1", "client-2"):  # the faulty one trained too
        ledger = PrivacyLedger(forecast_run / "clients" / client / "ledger.jsonl")
        ledger.verify()
        [record] = ledger.records()
        assert record.event.noise_multiplier == 1.0  # the DP event it ran, with noise
        assert 0 < privacy["epsilon_per_client"][client] <= 8.0

"""End to end: ``fedistill simulate --preset quick`` through Flower's real Simulation Engine.

One run (module-scoped, ~2 minutes on 2 cores) is shared by the checks below: the quick
preset with four clients, the first of which raises in every round (the round goes on
with the other three, its reply rejected with a reason). The summary has the documented
fields, every ledger verifies and stays within its budget, ε is recomputed from the
ledgers, and the run's files and plots are there. The run reads SST-2 from the shared
data folder when it is there: the apps run from Flower's copy of the project, so this
also proves they find the shared folder from inside Flower.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import simulate, simulate_or_fail

from common.privacy.ledger import PrivacyLedger

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
DATASET = "sst2" if (ROOT.parent / "shared" / "data" / "sst2").is_dir() else "rotten-tomatoes"
# client-0 raises in every round; clients 1-3 are honest
SHARED_RUN = ["--set", "num-clients=4", "--set", "attack='raise'", "--set",
              "attack-fraction=0.25", "--set", "min-replies=2", "--set",
              f"dataset='{DATASET}'", "--set", "partition='iid'"]
HONEST = ("client-1", "client-2", "client-3")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return simulate_or_fail(tmp_path_factory.mktemp("quick") / "run", "--preset", "quick",
                            *SHARED_RUN)


def test_summary_has_documented_fields(quick_run: Path) -> None:
    summary = json.loads((quick_run / "summary.json").read_text())
    for key in ("task", "dataset", "rounds", "clients", "wall_seconds"):
        assert key in summary, key
    assert summary["rounds"] == 2 and summary["clients"] == 4
    assert summary["dataset"] == DATASET
    final = summary["final"]
    for key in ("teacher_accuracy_initial", "teacher_accuracy", "ensemble_accuracy",
                "student_accuracy_mean"):
        assert 0.0 <= final[key] <= 1.0, (key, final[key])
    privacy = summary["privacy"]
    assert privacy["source"] == "recomputed from the clients' ledgers"
    assert set(HONEST) <= set(privacy["epsilon_per_client"])
    assert 0 < privacy["epsilon_max"] <= privacy["budget"]
    comm = summary["communication"]
    assert comm["bytes_up"] > 0 and comm["bytes_down"] > 0


def test_a_client_that_raises_is_rejected_and_the_round_goes_on(quick_run: Path) -> None:
    """client-0 raises; each round completes with the three others (min 2), and the
    exception's text never leaves the client."""
    records = [json.loads(x) for x in (quick_run / "metrics.jsonl").read_text().splitlines()]
    for record in records[1:]:
        assert record["replies"] == 3 and len(record["rejected"]) == 1, record
        rejected = record["rejected"][0]
        assert rejected["node_id"] > 0 and "round-failed" in rejected["reason"]
        assert "injected client failure" not in rejected["reason"]
    assert "Rejected the reply of node" in (quick_run / "flower.log").read_text()


def test_ledgers_verify_and_match_reported_epsilon(quick_run: Path) -> None:
    summary = json.loads((quick_run / "summary.json").read_text())
    reported = summary["privacy"]["epsilon_reported"]
    assert set(reported) == set(HONEST)  # the raising client never reported
    for client, eps in summary["privacy"]["epsilon_per_client"].items():
        ledger = PrivacyLedger(quick_run / "clients" / client / "ledger.jsonl")
        ledger.verify()
        assert len(ledger.records()) == 2  # one DP event per round, none twice
        if client in reported:
            assert eps == pytest.approx(reported[client], abs=1e-9)


def test_metrics_and_artifacts_written(quick_run: Path) -> None:
    lines = (quick_run / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(x) for x in lines]
    assert [r["round"] for r in records] == [0, 1, 2]
    for name in ("accuracy.png", "epsilon.png", "bytes.png", "teacher.pt", "tokenizer.json",
                 "checkpoint.pt"):
        assert (quick_run / name).stat().st_size > 0, name
    for client in HONEST:
        assert (quick_run / "clients" / client / "student.pt").exists()


def _rerun(out: Path, *extra: str) -> Path:
    proc = simulate(out, "--preset", "quick", *SHARED_RUN, *extra)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def _without_timing(run: Path) -> list[dict]:
    """The metrics but for wall time, the ledger heads (their records carry timestamps,
    and each run's nodes have their own ledger keys) and the rejected nodes' ids (Flower
    draws node ids afresh in each run)."""
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    for r in records:
        for rejected in r.get("rejected", []):
            rejected.pop("node_id")
    return [{k: v for k, v in r.items() if k not in ("seconds", "ledgers")} for r in records]


def _students(run: Path) -> list:
    import torch

    return [torch.load(run / "clients" / client / "student.pt", weights_only=True)
            for client in HONEST]


def _same_weights(a: list, b: list) -> bool:
    import torch

    return all(torch.equal(x[key], y[key]) for x, y in zip(a, b, strict=True) for key in x)


def test_the_same_node_secrets_repeat_a_run_exactly(quick_run: Path, tmp_path: Path) -> None:
    """Through the CLI's --node-secrets; that fresh secrets change the run is checked in
    process (tests/test_repeatability.py), where a third run costs seconds."""
    again = _rerun(tmp_path / "again", "--node-secrets", str(quick_run))
    assert _without_timing(again) == _without_timing(quick_run)
    for k in range(4):
        events = [PrivacyLedger(run / "clients" / f"client-{k}" / "ledger.jsonl").events()
                  for run in (again, quick_run)]
        assert events[0] == events[1]
    assert _same_weights(_students(again), _students(quick_run))

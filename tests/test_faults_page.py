"""Smoke tests of bench/faults.py's page: a fabricated result renders the Faults table
between its markers, and nothing else of docs/ROBUSTNESS.md changes. Nothing here runs a
fault scenario."""

from __future__ import annotations

import json
from pathlib import Path

from bench import faults, faults_page


def _view(rounds: list[int], eps: float) -> dict:
    return {"records": len(rounds), "rounds": rounds, "epsilon": eps,
            "duplicate_rounds": len(rounds) != len(set(rounds)), "verifies": True}


def _round(rnd: int, replies: int, rejected: dict | None = None,
           declined: list | None = None) -> dict:
    return {"round": rnd, "sampled": 3, "replies": replies, "rejected": rejected or {},
            "declined": declined or [], "seconds": 12.5}


def _dropout(name: str) -> dict:
    return {"scenario": name, "command": "fedistill simulate ...", "exit_code": 0,
            "wall_seconds": 61.0, "rounds": [_round(1, 4, {"round-failed": 1}),
                                             _round(2, 4, {"round-failed": 1})],
            "dropped": ["client-0"], "dropped_ledgers": {"client-0": _view([1, 2], 7.999)},
            "honest_client": "client-1", "honest_ledger": _view([1, 2], 7.999),
            "user_sees": {"console_failure_lines": [],
                          "console": "round 2: teacher 0.583",
                          "flower_log": "ERROR:client-0: the round failed | `x`"}}


def _data() -> dict:
    ledgers = {f"node-{k}": _view([1, 2], 5.5) for k in range(3)}
    deployment = {
        "scenario": "deployment", "wall_seconds": 400.0,
        "faults": {
            "node-killed-in-dp-step": {"round": 1, "ledger_at_kill": _view([1], 3.25),
                                       "ledgers_after_round": {"node-2": _view([1], 3.25)},
                                       "round_outcome": _round(1, 2, {"secagg-dropout": 1}),
                                       "seconds_to_round_end": 70.0,
                                       "killed_seconds_after_its_record": 0.04},
            "coordinator-killed-between-rounds": {
                "metrics_rounds_at_kill": [0, 1], "metrics_rounds_after": [0, 1, 2],
                "round_outcome": _round(2, 3), "ledgers_at_kill": ledgers,
                "ledgers_after_round": ledgers, "seconds_to_round_end": 90.0},
            "student-file-corrupt": {"round_outcome": _round(2, 3), "set_aside": ["a"],
                                     "ledger_before": _view([1], 3.25),
                                     "ledger_after": _view([1, 2], 5.5)},
            "coordinator-killed-mid-round": {
                "checkpoint_at_kill": 2, "metrics_rounds_at_kill": [0, 1, 2],
                "metrics_rounds_after": [0, 1, 2, 3], "ledgers_at_kill": ledgers,
                "ledgers_after_round": {**ledgers, "node-0": _view([1, 2, 3, 3], 9.0)},
                "round_outcome": _round(3, 3, declined=["client-0"]),
                "final_exit_code": 0, "seconds_to_round_end": 120.0}},
        "ledgers_final": ledgers,
        "user_sees": {"student-file-corrupt": "student.pt does not load (UnpicklingError)",
                      "coordinator-killed-mid-round/declined": "round-already-recorded"}}
    disk = {"scenario": "full-disk", "exit_code": 0, "output": "refused: ... unchanged",
            "ledger_before": _view([1, 2], 7.999), "ledger_after": _view([1, 2], 7.999),
            "leftover_files": [], "ledger_after_retry": _view([1, 2, 3], 9.1),
            "wall_seconds": 1.5}
    return {"benchmark": "faults", "command": "python -m bench.faults",
            "environment": {"torch": "t", "flwr": "f", "opacus": "o", "python": "3",
                            "cpu_count": 2, "load_average_1m": 1.0, "device": "cpu"},
            "wall_seconds": 700.0, "round_timeout": 90.0,
            "scenarios": {"dropout-plain": _dropout("dropout-plain"),
                          "dropout-secagg": _dropout("dropout-secagg"),
                          "deployment": deployment, "full-disk": disk}}


def test_the_faults_table_renders_between_the_markers(tmp_path: Path) -> None:
    doc = tmp_path / "ROBUSTNESS.md"
    head = "# Robustness\n\nThe other generator's text.\n"
    doc.write_text(head)
    results = tmp_path / "faults.json"
    results.write_text(json.dumps(_data()))
    assert faults.main(["--render-only", "--out-json", str(results), "--doc", str(doc)]) == 0
    page = doc.read_text()
    assert page.startswith(head)  # the rest of the page is untouched
    assert page.count(faults_page.BEGIN) == page.count(faults_page.END) == 1
    body = page.split(faults_page.BEGIN)[1].split(faults_page.END)[0]
    assert "## Faults" in body and "| fault | round outcome | ε before → after |" in body
    rows = [ln for ln in body.splitlines() if ln.startswith("| ") and "---" not in ln]
    assert len(rows) == 1 + 2 + 4 + 1  # header, dropouts, deployment faults, full disk
    assert "`round-failed` ×1" in body and "`secagg-dropout` ×1" in body
    assert "0.000 (rounds none) → 7.999 (rounds 1, 2)" in body
    assert "a round twice!" in body  # a duplicated ledger round is shown, not hidden
    assert "\\|" in body  # a pipe inside a cell does not break the table
    assert "no word of the failure" in body
    assert "8.7 min" in body and "load average 1.0" in body  # the scenarios' seconds summed

    # rendered again (other numbers, text after the section): only the section changes
    doc.write_text(page + "\nA later section.\n")
    data = _data()
    data["scenarios"]["deployment"]["wall_seconds"] = 10.0
    results.write_text(json.dumps(data))
    faults.main(["--render-only", "--out-json", str(results), "--doc", str(doc)])
    again = doc.read_text()
    assert again.startswith(head) and again.endswith("\nA later section.\n")
    assert "2.2 min" in again and "8.7 min" not in again
    assert again.count(faults_page.BEGIN) == 1


def test_reason_codes_are_short() -> None:
    traceback = "client error: ...\nclient.app.NodeRoundFailed: round-failed\n'>"
    assert faults.reason_code(traceback) == "round-failed"
    assert faults.reason_code("1 client(s) dropped out of SecAgg+ (Node Unavailable)") \
        == "secagg-dropout"
    assert faults.reason_code("no reply within 90 s") == "no-reply"


def test_a_ledger_view_reports_rounds_and_recomputed_epsilon(tmp_path: Path) -> None:
    from common.privacy.accounting import DpEvent, epsilon_from_events
    from common.privacy.ledger import PrivacyLedger

    path = tmp_path / "ledger.jsonl"
    assert faults.ledger_view(path)["epsilon"] == 0.0
    event = DpEvent(1.0, 0.01, 100)
    for rnd in (1, 2):
        PrivacyLedger(path).append(run_id="r", round=rnd, client_id="c", event=event,
                                   accountant="rdp", delta=1e-5)
    view = faults.ledger_view(path)
    assert view["rounds"] == [1, 2] and not view["duplicate_rounds"]
    assert view["epsilon"] == round(epsilon_from_events([event, event], delta=1e-5), 4)
    path.write_text(path.read_text()[:-5])  # torn
    assert faults.ledger_view(path)["verifies"] is False

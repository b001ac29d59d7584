"""`fedistill audit verify|report` fail closed, through the real console entry point.

``simulations.cli.main`` runs the app with ``standalone_mode=False``: there a
``typer.Exit(1)`` came back as a return value that ``main`` dropped, so every failed
audit exited 0. These tests call ``main`` as the ``fedistill`` script does.
"""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from common.crypto.keys import (
    LEDGER_PUBLIC_KEY_FILE,
    generate_private_key,
    key_fingerprint,
    ledger_signer,
    save_public_key,
)
from common.privacy.accounting import DpEvent
from common.privacy.ledger import PrivacyLedger
from simulations import audit_cli
from simulations.cli import app, main

pytestmark = pytest.mark.filterwarnings("ignore:Optimal order is the:UserWarning")
EVENTS = [DpEvent(1.1, 0.02, 40), DpEvent(0.9, 0.05, 25)]


@pytest.fixture(autouse=True)
def _keep_sigterm() -> Iterator[None]:
    """``main`` installs a SIGTERM handler; give pytest its own back."""
    before = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, before)


def _run(tmp_path: Path) -> Path:
    """A run directory with two clients' signed ledgers and the coordinator's heads."""
    heads: dict[int, dict] = {}
    for k in range(2):
        directory = tmp_path / "run" / "clients" / f"client-{k}"
        key = generate_private_key()
        save_public_key(key, directory / LEDGER_PUBLIC_KEY_FILE)
        ledger = PrivacyLedger(directory / "ledger.jsonl", signer=ledger_signer(key))
        for rnd, event in enumerate(EVENTS, start=1):
            record = ledger.append(run_id="run-1", round=rnd, client_id=f"client-{k}",
                                   event=event, accountant="rdp", delta=1e-5)
            heads.setdefault(rnd, {})[f"client-{k}"] = {
                "head": record.hash, "records": rnd, "key": key_fingerprint(key)}
    (tmp_path / "run" / "metrics.jsonl").write_text(
        "".join(json.dumps({"round": r, "ledgers": h}) + "\n" for r, h in heads.items()))
    return tmp_path / "run"


def _entry_point(monkeypatch: pytest.MonkeyPatch, *args: str | Path) -> int:
    """Exit code of ``fedistill audit ARGS`` through ``main``, as the script runs it."""
    monkeypatch.setattr(sys, "argv", ["fedistill", "audit", *map(str, args)])
    try:
        main()
    except SystemExit as exc:
        return 0 if exc.code is None else int(exc.code)
    return 0


def _client(run: Path, k: int = 1) -> Path:
    return run / "clients" / f"client-{k}"


def _break(case: str, run: Path) -> list[str | Path]:
    """Break ``run`` as ``case`` says; return the arguments both commands get."""
    ledger, metrics = _client(run) / "ledger.jsonl", run / "metrics.jsonl"
    args: list[str | Path] = [run]
    if case == "missing ledger file":
        args = [run / "nope.jsonl"]
    elif case == "missing public key":
        (_client(run) / LEDGER_PUBLIC_KEY_FILE).unlink()
    elif case == "empty ledger":
        ledger.write_bytes(b"")
    elif case == "tampered record":
        ledger.write_bytes(ledger.read_bytes().replace(b'"steps":25', b'"steps":2'))
    elif case == "torn last record":
        ledger.write_bytes(ledger.read_bytes()[:-5])
    elif case == "truncated behind the coordinator's back":
        ledger.write_bytes(b"".join(ledger.read_bytes().splitlines(keepends=True)[:-1]))
        args += ["--coordinator-metrics", metrics]
    elif case == "unreadable coordinator metrics":
        metrics.write_text("{not json\n")
        args += ["--coordinator-metrics", metrics]
    elif case == "missing --public-key file":
        args += ["--public-key", run / "absent.pub"]
    return args


def _flat(text: str) -> str:
    """Rich wraps lines at the terminal's width; compare words, not lines."""
    return " ".join(text.split())


@pytest.mark.parametrize(
    ("case", "code"),
    [
        ("all proven", 0),
        ("missing ledger file", 2),
        ("missing public key", 1),
        ("empty ledger", 1),
        ("tampered record", 1),
        ("torn last record", 1),
        ("truncated behind the coordinator's back", 1),
        ("unreadable coordinator metrics", 2),
        ("missing --public-key file", 2),
    ],
)
def test_verify_and_report_exit_codes_through_the_entry_point(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    case: str, code: int,
) -> None:
    """Before, every row exited 0 through ``main`` (and a missing key passed report)."""
    args = _break(case, _run(tmp_path))
    assert _entry_point(monkeypatch, "verify", *args) == code, case
    verify_out = _flat(capsys.readouterr().out)
    report = _entry_point(monkeypatch, "report", *args, "--out", tmp_path / "o")
    report_out = _flat(capsys.readouterr().out)
    assert report == code, (case, report_out)
    if code == 2:  # bad input: one line that says what and what to do
        assert "error:" in verify_out and "error:" in report_out, case
    elif code == 1:
        assert "do not trust" in verify_out and "resolve each error" in report_out, case


def test_report_budget_and_allow_unsigned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(audit_cli, "console", Console(width=250))  # no wrapped headers
    run = _run(tmp_path)
    out = tmp_path / "out"
    assert _entry_point(monkeypatch, "report", run, "--out", out, "--budget", "0.5") == 1
    assert "exceeds the budget" in capsys.readouterr().out
    (_client(run) / LEDGER_PUBLIC_KEY_FILE).unlink()
    assert _entry_point(monkeypatch, "report", run, "--out", out) == 1
    assert _entry_point(monkeypatch, "report", run, "--out", out, "--allow-unsigned") == 0
    printed = capsys.readouterr().out
    assert "signatures NOT checked (--allow-unsigned)" in _flat(printed)
    data = json.loads((out / "audit_report.json").read_text())
    assert [c["signatures"] for c in data["clients"]] == ["valid", "unchecked"]
    assert all(c["independent"]["pld"] < c["epsilon_rdp"] for c in data["clients"])
    assert "ε PLD (dp_acc)" in printed  # the second accountant is in the terminal table


def test_cli_runner_in_the_entry_points_mode(tmp_path: Path) -> None:
    """typer's CliRunner in standalone mode hid the bug (it exits on typer.Exit itself);
    in ``main``'s mode the old code gave exit code 0 for a missing ledger."""
    runner = CliRunner()
    missing = runner.invoke(app, ["audit", "verify", str(tmp_path / "missing.jsonl")],
                            standalone_mode=False)
    assert missing.exit_code == 2, missing.output
    assert "no such file or directory" in _flat(missing.output)

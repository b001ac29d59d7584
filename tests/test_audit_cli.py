"""`fedistill audit` end to end through typer's CliRunner: exit codes and outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tomli_w
import torch
from typer.testing import CliRunner

from client.state import ClientState
from common.config import FedConfig
from common.models import ModelConfig, build_model
from common.privacy.accounting import DpEvent
from common.task import prepare_task
from simulations import mia
from simulations.cli import app

pytestmark = [
    pytest.mark.filterwarnings("ignore:Optimal order is the:UserWarning"),
    pytest.mark.filterwarnings("ignore:Secure RNG turned off:UserWarning"),
    pytest.mark.filterwarnings("ignore:Full backward hook:UserWarning"),
    pytest.mark.filterwarnings("ignore:The given NumPy array is not writable:UserWarning"),
]
runner = CliRunner()
EVENTS = [DpEvent(1.1, 0.02, 40), DpEvent(0.9, 0.05, 25)]


def _run_dir(root: Path, clients: int = 2) -> Path:
    """A run directory whose clients signed their ledgers through ClientState."""
    for k in range(clients):
        state = ClientState(root / "clients" / f"client-{k}")
        for rnd, event in enumerate(EVENTS, start=1):
            state.ledger.append(run_id="run-1", round=rnd, client_id=f"client-{k}",
                                event=event, accountant="rdp", delta=1e-5)
    return root


def _invoke(*args: str | Path) -> object:
    return runner.invoke(app, ["audit", *map(str, args)])


def test_verify_exit_codes(tmp_path: Path) -> None:
    run = _run_dir(tmp_path / "run")
    ok = _invoke("verify", run)
    assert ok.exit_code == 0, ok.output
    assert "2 ledger(s) verified" in ok.output

    ledger = run / "clients" / "client-1" / "ledger.jsonl"
    ledger.write_bytes(ledger.read_bytes().replace(b'"steps":25', b'"steps":20'))
    bad = _invoke("verify", run)
    assert bad.exit_code == 1
    assert "record 1 (line 2)" in bad.output

    ledger.write_bytes(ledger.read_bytes()[:-7])  # a torn last record
    torn = _invoke("verify", ledger)
    assert torn.exit_code == 1
    assert "TORN" in torn.output


def test_verify_with_explicit_public_keys(tmp_path: Path) -> None:
    run = _run_dir(tmp_path / "run")
    a, b = (run / "clients" / f"client-{k}" for k in (0, 1))
    ok = _invoke("verify", a / "ledger.jsonl", b / "ledger.jsonl", "--public-key",
                 a / "ledger_key.pub", "--public-key", b / "ledger_key.pub")
    assert ok.exit_code == 0, ok.output
    swapped = _invoke("verify", a / "ledger.jsonl", "--public-key", b / "ledger_key.pub")
    assert swapped.exit_code == 1
    wrong_count = _invoke("verify", a / "ledger.jsonl", b / "ledger.jsonl", "--public-key",
                          a / "ledger_key.pub", "--public-key", a / "ledger_key.pub",
                          "--public-key", a / "ledger_key.pub")
    assert wrong_count.exit_code == 2


def test_report_writes_outputs_and_fails_on_findings(tmp_path: Path) -> None:
    run = _run_dir(tmp_path / "run")
    result = _invoke("report", run, "--out", tmp_path / "out", "--budget", "10")
    assert result.exit_code == 0, result.output
    for name in ("audit_report.json", "audit_clients.csv", "audit_records.csv",
                 "epsilon_over_rounds.png"):
        assert (tmp_path / "out" / name).stat().st_size > 0, name
    data = json.loads((tmp_path / "out" / "audit_report.json").read_text())
    assert data["ok"] and data["exhausted"] == []

    tight = _invoke("report", run, "--out", tmp_path / "out2", "--budget", "0.5")
    assert tight.exit_code == 1  # both clients are over a budget of 0.5
    assert "exceeds the budget" in tight.output


def test_mia_canary_experiment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(3, 60, (120, 16), generator=gen)
    data = mia.AuditData(x[:100], (x[:100, 0] % 2).long(), x[100:],
                         torch.randint(0, 2, (20,), generator=gen), 60, 2)
    monkeypatch.setattr(mia, "canary_data", lambda cfg: data)
    result = _invoke("mia", "--epsilon", "1", "--canaries", "20", "--train-size", "100",
                     "--epochs", "2", "--out", tmp_path)
    assert result.exit_code == 0, result.output
    out = json.loads((tmp_path / "mia.json").read_text())
    assert out["consistent"] is True
    assert out["epsilon_claimed"] <= 1.0
    assert set(out["attack"]) >= {"auc", "tpr_at_1pct_fpr", "advantage"}
    assert out["one_run"]["canaries"] == 20
    assert "ε lower bound" in result.output


def test_mia_on_a_student_in_a_run(tmp_path: Path) -> None:
    cfg = FedConfig(num_clients=2, vocab_size=500, max_len=16, students="cnn",
                    out_dir=str(tmp_path))
    (tmp_path / "run_config.toml").write_text(tomli_w.dumps(cfg.to_run_config()))
    task = prepare_task(cfg.dataset, cfg.seed, cfg.vocab_size, cfg.max_len)
    torch.manual_seed(0)
    student = build_model(ModelConfig(family="cnn", size="tiny", vocab_size=task.vocab_size,
                                      num_classes=task.num_classes, max_len=cfg.max_len))
    state = ClientState(tmp_path / "clients" / "client-1")
    state.save_student(student)
    state.ledger.append(run_id="r", round=1, client_id="client-1", event=EVENTS[0],
                        accountant="rdp", delta=1e-5)
    result = _invoke("mia", "--run", tmp_path, "--client", "client-1", "--out", tmp_path)
    assert result.exit_code == 0, result.output
    out = json.loads((tmp_path / "mia.json").read_text())
    assert out["client"] == "client-1" and out["family"] == "cnn"
    assert 0.3 < out["attack"]["auc"] < 0.7  # an untrained student knows nothing
    assert out["epsilon_claimed"] == pytest.approx(state.ledger.epsilon())
    missing = _invoke("mia", "--run", tmp_path, "--client", "client-0")
    assert missing.exit_code == 2 and "does not exist" in missing.output
    half = _invoke("mia", "--run", tmp_path)
    assert half.exit_code != 0

"""``fedistill compress`` on finished runs: bad input, and both teacher kinds end to end
(a probe on a tiny local backbone, and a from-scratch Transformer)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import tomli_w
from conftest import run_in_process
from test_pretrained import _save_tiny_bert

from common.config import FedConfig
from simulations.cli import main

FAST = ["--reps", "5", "--epochs", "1", "--test-limit", "64"]


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDISTILL_DATA_DIR", str(tmp_path / "cache"))


def _compress(monkeypatch, *args: str) -> int:
    monkeypatch.setattr(sys, "argv", ["fedistill", "compress", *args])
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit) as exited:
        main()
    return exited.value.code


def _finished_run(cfg: FedConfig) -> Path:
    """A run as `fedistill simulate` leaves it (the runner writes run_config.toml)."""
    run_in_process(cfg)
    run = Path(cfg.out_dir)
    (run / "run_config.toml").write_text(tomli_w.dumps(cfg.to_run_config()))
    return run


def test_a_missing_run_or_teacher_exits_2_with_a_clear_message(tmp_path, monkeypatch, capsys):
    assert _compress(monkeypatch, str(tmp_path / "nope"), "--out", str(tmp_path / "o")) == 2
    assert "does not exist" in capsys.readouterr().out
    run = tmp_path / "run"
    run.mkdir()
    (run / "run_config.toml").write_text(tomli_w.dumps(FedConfig().to_run_config()))
    assert _compress(monkeypatch, str(run), "--out", str(tmp_path / "o")) == 2
    assert "no teacher.pt" in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize(("option", "message"), [
    (["--epochs", "0"], "at least 1"), (["--validation", "0.9"], "must lie in (0, 0.5)")])
def test_bad_distillation_settings_exit_2_before_any_work(tmp_path, monkeypatch, capsys,
                                                          option, message):
    run = tmp_path / "run"
    run.mkdir()
    (run / "run_config.toml").write_text(tomli_w.dumps(FedConfig().to_run_config()))
    (run / "teacher.pt").write_bytes(b"not read: the settings are refused first")
    assert _compress(monkeypatch, str(run), "--out", str(tmp_path / "o"), *option) == 2
    assert message in " ".join(capsys.readouterr().out.split())


def _rows(out) -> dict[str, dict]:
    result = json.loads((out / "compression.json").read_text())
    assert (out / "pareto.png").stat().st_size > 0 and (out / "COMPRESSION.md").is_file()
    return {row["recipe"]: row for row in result["rows"]}


@pytest.mark.slow
def test_the_probe_teacher_compresses_with_its_encoder(tmp_path, monkeypatch):
    bert = _save_tiny_bert(tmp_path / "bert")
    cfg = FedConfig(backbone=f"hf:{bert}", teacher_family="probe", students="probe,probe-mlp",
                    num_clients=2, rounds=1, max_len=16, public_batch_size=64,
                    teacher_epochs=2, teacher_distill_epochs=1, student_distill_epochs=1,
                    dp_epochs=0.2, out_dir=str(tmp_path / "run"))
    run = _finished_run(cfg)
    plans = {"teacher": ["fp32", "int8+int8emb", "vocab+positions"],
             "ensemble": ["fp32", "student=1+vocab+positions+int8+int8emb"]}
    for source, recipes in plans.items():
        out = tmp_path / source
        args = [a for r in recipes for a in ("--recipe", r)]
        assert _compress(monkeypatch, str(run), "--out", str(out), "--source", source,
                         *args, *FAST) == 0
        rows = _rows(out)
        assert list(rows) == recipes
        for recipe in recipes[1:]:
            assert rows[recipe]["size_mb"] < rows["fp32"]["size_mb"]
            assert 0 <= rows[recipe]["accuracy"] <= 1 and rows[recipe]["cpu_b1_p50_ms"] > 0


@pytest.mark.slow
def test_a_from_scratch_teacher_compresses(tmp_path, monkeypatch):
    cfg = FedConfig(teacher_family="transformer", teacher_size="tiny", students="cnn",
                    num_clients=2, rounds=1, max_len=16, vocab_size=500,
                    public_batch_size=64, teacher_epochs=1, teacher_distill_epochs=1,
                    student_distill_epochs=1, dp_epochs=0.2, out_dir=str(tmp_path / "run"))
    run = _finished_run(cfg)
    out = tmp_path / "out"
    assert _compress(monkeypatch, str(run), "--out", str(out), *FAST) == 0
    rows = _rows(out)
    assert rows["student=1"]["weights"] < rows["fp32"]["weights"]
    assert rows["int8"]["size_mb"] < rows["fp32"]["size_mb"]

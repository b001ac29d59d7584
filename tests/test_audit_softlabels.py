"""Soft-label channel audit (simulations/softlabel_audit.py) on a synthetic task.

The instrument (canaries, the fixed-q private size, the scores, the client's private
step) is checked piece by piece; then whole audits through the command: a client that
memorises its canaries (no DP, or DP-SGD with the noise left out) is caught, and the
same client with its planned noise stays below a small claim. Synthetic tokens keep it
fast: ordinary examples use tokens 5..99 and are labelled by the first token's parity;
tokens 100..199 never occur in public or private data, so they are the rare ones.
Fixed seeds (public coins and the client's secret) make every outcome deterministic.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

import simulations.softlabel_audit as sla
from common.config import FedConfig, parse_assignments
from common.distill.losses import soften
from common.errors import ConfigError
from common.models import ModelConfig, build_model
from common.privacy.auditing import one_run_epsilon_lower_bound
from common.privacy.planner import plan_noise, sample_rate_and_steps
from common.training import predict_logits
from simulations.softlabel_audit import (
    AuditTask,
    SoftlabelAuditConfig,
    canary_inputs,
    canary_labels,
    fit_private_size,
    fixed_teacher,
    private_step,
    run_softlabel_audit,
)
from simulations.softlabel_audit_cli import softlabel_command
from simulations.softlabel_audit_stats import canary_scores, log_odds

pytestmark = [
    pytest.mark.filterwarnings("ignore:Optimal order is the:UserWarning"),
    pytest.mark.filterwarnings("ignore:Secure RNG turned off:UserWarning"),
    pytest.mark.filterwarnings("ignore:Full backward hook:UserWarning"),
]
VOCAB, T, M = 200, 8, 80
# A one-round run small enough for seconds: q = 1/2, claimed ε = 1 at δ = 1e-5.
RUN = {"dataset": "rotten-tomatoes", "num-clients": 2, "rounds": 1, "public-batch-size": 120,
       "student-distill-epochs": 1, "dp-batch-size": 64, "epsilon": 1.0, "students": "cnn",
       "max-len": T, "dp-epochs": 10}
# Adam with the embedding trainable memorises one-token canaries in 20 steps when the
# noise is left out; with it, nothing shows (measured: AUC 1.0 vs ~0.5).
MEMORISING = ["dp-optimizer=\"adamw\"", "dp-lr=0.01", "dp-trainable=\"embedding\""]


def synthetic_task(seed: int = 0) -> AuditTask:
    gen = torch.Generator().manual_seed(seed)

    def tokens(n: int) -> torch.Tensor:
        return torch.randint(5, 100, (n, T), generator=gen)

    private, teacher = tokens(120), tokens(100)
    return AuditTask(private, private[:, 0] % 2, tokens(300), teacher, teacher[:, 0] % 2,
                     VOCAB, 2)


def audit_config(sets: list[str] = (), **kw) -> SoftlabelAuditConfig:  # noqa: ANN003
    """RUN with ``--set``-style overrides, and the audit settings the command tests use."""
    run = FedConfig.from_mapping({**RUN, **parse_assignments(list(sets))})
    return SoftlabelAuditConfig(**{"run": run, "canaries": M, "canary_tokens": 1,
                                   "teacher_epochs": 1, "secret_seed": 3, **kw})


@pytest.fixture()
def cli(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):  # noqa: ANN201 - a runner fn
    """Run the command on the synthetic task, with RUN as its preset file."""
    monkeypatch.setattr(sla, "client_task", lambda run, client: synthetic_task())
    preset = tmp_path / "tiny.toml"
    preset.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in RUN.items()))
    app = typer.Typer()
    app.command()(softlabel_command)

    def invoke(*args: str) -> tuple[int, str, dict | None]:
        out = tmp_path / "out"
        result = CliRunner().invoke(app, ["--preset", str(preset), "--canaries", str(M),
                                          "--canary-tokens", "1", "--teacher-epochs", "1",
                                          "--secret-seed", "3", "--out", str(out), *args])
        report = out / "softlabel_audit.json"
        data = json.loads(report.read_text()) if report.exists() else None
        return result.exit_code, result.output, data

    return invoke


# ---------------------------------------------------------------- the instrument
def test_rare_canaries_are_unique_tokens_the_public_side_never_uses() -> None:
    task = synthetic_task()
    cfg = audit_config()
    x, rows = canary_inputs(cfg, task, np.random.default_rng(0))
    assert x.shape == (M, T) and rows.size == 0
    first = x[:, 0].numpy()
    assert len(set(first)) == M and (first >= 100).all()  # never in public or teacher texts
    assert (x[:, 1:] == 0).all()  # padding
    wide, _ = canary_inputs(audit_config(canaries=20, canary_tokens=4), task,
                            np.random.default_rng(0))
    used = wide[:, :4].numpy().ravel()
    assert len(set(used)) == used.size  # no token in two canaries
    text, rows = canary_inputs(audit_config(canary_kind="text"), task,
                               np.random.default_rng(0))
    assert len(set(rows)) == M and torch.equal(text, task.public_x[torch.as_tensor(rows)])


def test_flip_labels_are_the_teachers_least_likely_class() -> None:
    task = synthetic_task()
    cfg = audit_config(canary_label="flip")
    teacher = fixed_teacher(cfg.run, task, 1, device=torch.device("cpu"))
    x, _ = canary_inputs(cfg, task, np.random.default_rng(0))
    labels = canary_labels(cfg, teacher, x, 2, np.random.default_rng(0),
                           device=torch.device("cpu"))
    expect = predict_logits(teacher, x, device=torch.device("cpu")).argmin(1)
    assert torch.equal(labels, expect)
    coins = canary_labels(audit_config(), teacher, x, 2, np.random.default_rng(0),
                          device=torch.device("cpu"))
    assert 0.3 < coins.float().mean() < 0.7  # random: no common direction


@pytest.mark.parametrize(("available", "m", "batch", "epochs"),
                         [(670, 256, 128, 1.0), (120, 80, 64, 10.0), (5000, 500, 200, 2.5)])
def test_private_size_keeps_q_and_steps_for_every_likely_count(available: int, m: int,
                                                                batch: int,
                                                                epochs: float) -> None:
    n = fit_private_size(available, m, batch, epochs)
    spread = sla.COIN_SPREAD * math.sqrt(m) / 2
    counts = range(max(0, math.floor(m / 2 - spread)), min(m, math.ceil(m / 2 + spread)) + 1)
    assert len({sample_rate_and_steps(n + c, batch, epochs) for c in counts}) == 1
    if n < available:  # the largest such size: one more example would break it
        assert len({sample_rate_and_steps(n + 1 + c, batch, epochs) for c in counts}) == 2


def test_private_size_refuses_when_no_size_fits() -> None:
    with pytest.raises(ConfigError, match="no private size keeps q fixed"):
        fit_private_size(1000, 2000, 16, 1.0)


def test_scores_ignore_a_shift_common_to_all_canaries() -> None:
    rng = np.random.default_rng(0)
    lo = rng.normal(size=(50, 3))
    target = rng.integers(0, 3, 50)
    shifted = lo + np.array([5.0, -2.0, 0.3])  # a class prior moved by the private step
    assert np.allclose(canary_scores(lo, target), canary_scores(shifted, target))
    bumped = lo.copy()
    bumped[7, target[7]] += 1.0  # one canary memorised: only it rises
    assert np.argmax(canary_scores(bumped, target) - canary_scores(lo, target)) == 7
    edges = log_odds(np.array([[1.0, 0.0], [0.5, 0.5]], dtype=np.float16))
    assert np.isfinite(edges).all() and np.allclose(edges[1], 0.0)


def test_private_step_is_the_clients_dp_step_on_the_trainable_set() -> None:
    task = synthetic_task()
    run = audit_config(["dp-trainable=\"head\"", "dp-epochs=1"]).run
    torch.manual_seed(0)
    student = build_model(ModelConfig(family="cnn", vocab_size=VOCAB, num_classes=2,
                                      max_len=T))
    start = {k: v.clone() for k, v in student.state_dict().items()}
    plan = plan_noise(budget=run.epsilon, delta=run.delta, num_examples=len(task.private_x),
                      expected_batch_size=run.dp_batch_size, epochs_per_round=run.dp_epochs,
                      rounds=run.rounds, accountant=run.accountant)
    ran = private_step(run, plan, student, task.private_x, task.private_y, round_=1,
                       seeds=sla._seeds(b"x" * 32, 1), device=torch.device("cpu"))
    assert (ran.noise_multiplier, ran.sample_rate, ran.steps) == (
        plan.noise_multiplier, plan.sample_rate, plan.steps_per_round)
    changed = {k for k, v in student.state_dict().items() if not torch.equal(v, start[k])}
    assert changed == {"head.weight", "head.bias"}  # dp-trainable = head, as configured
    plain = FedConfig.from_mapping({**RUN, "dp": False})
    assert private_step(plain, None, student, task.private_x, task.private_y, round_=1,
                        seeds=sla._seeds(b"x" * 32, 1), device=torch.device("cpu")) is None
    assert not torch.equal(student.state_dict()["tok_emb.weight"], start["tok_emb.weight"])


def test_the_reply_is_softened_and_encoded_like_a_clients() -> None:
    task = synthetic_task()
    run = audit_config().run
    torch.manual_seed(0)
    student = build_model(ModelConfig(family="cnn", vocab_size=VOCAB, num_classes=2,
                                      max_len=T))
    sent = sla._reply(student, task.public_x[:10], run, 2, device=torch.device("cpu"))
    probs = soften(predict_logits(student, task.public_x[:10], device=torch.device("cpu")),
                   run.temperature).numpy()
    assert np.allclose(sent, probs.astype(np.float16), atol=1e-3)  # run.encoding: float16


# ---------------------------------------------------------------- whole audits
def test_a_client_without_dp_is_caught() -> None:
    result = run_softlabel_audit(audit_config(["dp=false"]), synthetic_task())
    ref = result.auditor("labels+ref")
    assert result.epsilon_claimed == math.inf and result.consistent
    assert ref.attack.auc > 0.9
    assert ref.audit.epsilon_lower_bound > 1.5  # clearly above a small claim (ε = 1)
    assert result.epsilon_lower_bound > 1.5
    # each of the two auditors is tested at 1 - 0.05/2 (Bonferroni): all 40 guesses right
    per_test = one_run_epsilon_lower_bound(M, 40, 40, delta=1e-5, confidence=0.975)
    assert ref.audit.guesses == 40 and ref.ceiling == pytest.approx(per_test)
    assert ref.audit.confidence == pytest.approx(0.975)


def test_missing_noise_is_caught_and_exits_1(cli) -> None:  # noqa: ANN001
    code, output, data = cli(*sum((["--set", s] for s in MEMORISING), []),
                             "--actual-noise-multiplier", "0")
    assert code == 1, output
    assert data["epsilon_claimed"] <= 1.0 and not data["consistent"]
    assert data["epsilon_lower_bound"] > 1.5  # the claim, ε <= 1, is refuted
    assert data["noise_multiplier_run"] == 0.0 and data["noise_multiplier"] > 5


def test_the_same_client_with_its_noise_stays_below_the_claim(cli) -> None:  # noqa: ANN001
    code, output, data = cli(*sum((["--set", s] for s in MEMORISING), []))
    assert code == 0, output
    assert data["consistent"] and data["epsilon_lower_bound"] <= data["epsilon_claimed"] <= 1
    assert all(a["attack"]["auc"] < 0.7 for a in data["auditors"])
    assert data["included"] == run_softlabel_audit(  # same coins as the caught run
        audit_config(MEMORISING, actual_noise_multiplier=0.0), synthetic_task()).included


@pytest.mark.parametrize("args", [
    ["--canaries", "4"],
    ["--canary-kind", "words"],
    ["--canary-label", "mine"],
    ["--set", "dp-trainable=nothing"],
    ["--set", "public-batch-size=10"],
    ["--guesses", "41"],
    ["--preset", "no-such-preset"],
    ["--actual-noise-multiplier", "0", "--set", "dp=false"],
    ["--set", "dp-batch-size=8"],  # no private size keeps q fixed: found while running
])
def test_bad_input_exits_2(cli, args: list[str]) -> None:  # noqa: ANN001
    code, output, data = cli(*args)
    assert code == 2, output
    assert "error" in output and data is None

"""White-box DP-SGD audit (simulations/dpsgd_audit.py) on the real dp_train.

Two kinds of test: the instrument is exact (canaries are Dirac, the per-step observer
recovers Opacus' noisy gradients and batches), and the audit can fail (it catches a run
with the noise missing, stays below a true claim, and shows what knowing the batches is
worth). Every run uses fixed seeds, so each outcome is deterministic; the settings leave
wide margins (measured over several seeds while writing them, see each test).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from scipy import stats
from typer.testing import CliRunner

from common.errors import ConfigError
from common.privacy.secrets import DpSeeds
from simulations.dpsgd_audit import (
    ACCOUNTANTS,
    SECRET_AUDITORS,
    CanaryLayout,
    DpsgdAuditConfig,
    dirac_canary_model,
    run_dpsgd_audit,
    train_with_canaries,
)
from simulations.dpsgd_audit_cli import dpsgd_command
from simulations.dpsgd_audit_stats import (
    auditor_scores,
    momentum_weights,
    opacus_expected_batch_size,
    poisson_masks,
    step_observations,
)

pytestmark = [
    pytest.mark.filterwarnings("ignore:Optimal order is the:UserWarning"),
    pytest.mark.filterwarnings("ignore:Secure RNG turned off:UserWarning"),
    pytest.mark.filterwarnings("ignore:Full backward hook:UserWarning"),
]
U = np.array([1.0, -1.0]) / math.sqrt(2)
# A small run: 200 canaries + 200 ordinary examples, q = 0.05, 50 steps. Claimed σ = 3
# gives ε = 0.51 at δ = 1e-5 (rdp).
SMALL = dict(epsilon=None, noise_multiplier=3.0, canaries=200, ordinary=200, batch_size=20,
             steps=50, seed=0, sampling_seed=11, noise_seed=7)


# ---------------------------------------------------------------- the instrument
@pytest.mark.parametrize(("case", "token", "label"), [
    ("canary 0", 4, 0), ("canary 19", 23, 0), ("ordinary token 3", 3, 1), ("blank", 24, 0),
])
def test_each_example_gradient_lands_on_its_own_row(case: str, token: int,
                                                     label: int) -> None:
    layout = CanaryLayout(ordinary_tokens=4, canaries=20)
    assert layout.blank == 24 and layout.vocab == 25
    model = dirac_canary_model(layout.vocab)
    loss = torch.nn.functional.cross_entropy(model(torch.tensor([token])),
                                             torch.tensor([label]))
    loss.backward()
    grad = model.weight.grad.double().numpy()
    assert np.flatnonzero(np.abs(grad).sum(axis=1)).tolist() == [token], case
    if layout.canary_rows.start <= token < layout.canary_rows.stop:
        # along -u only, norm sqrt(2) / 2 = 0.71 = 7 C: Opacus clips it to C = 0.1
        assert grad[token] @ U == pytest.approx(-math.sqrt(2) / 2, rel=1e-6)
        assert DpsgdAuditConfig().max_grad_norm == 0.1
        assert grad[token].sum() == pytest.approx(0.0, abs=1e-7)


def test_dp_train_update_of_a_canary_is_exactly_c_on_its_row_when_sampled() -> None:
    """σ = 0 through the real dp_train: each step's recovered z is exactly b_t ∈ {0, 1}.

    14 steps at q = 1/6 span three passes over the Poisson loader, so the recomputed
    batches also replay the loader's per-pass base-seed draws. Fails if the momentum,
    the scale (Opacus' expected batch size), clipping or the batch replay is wrong.
    """
    cfg = DpsgdAuditConfig(epsilon=None, noise_multiplier=1.0, canaries=30, ordinary=60,
                           batch_size=15, steps=14)
    included = np.random.default_rng(0).random(30) < 0.5
    ran, model, snapshots, recorder = train_with_canaries(
        cfg, included, sigma=0.0, seeds=DpSeeds(sampling=3, noise=4), record_batches=True)
    assert (ran.sample_rate, ran.steps) == (pytest.approx(1 / 6), 14)

    masks = poisson_masks(3, num_examples=90, sample_rate=ran.sample_rate, steps=14)[:, 60:]
    seen = np.zeros_like(masks)
    for step, batch in enumerate(recorder.batches):
        seen[step, sorted(batch)] = True
    assert (seen == (masks & included)).all()  # recomputed = what Opacus really sampled
    assert seen.sum() > 10

    batch = opacus_expected_batch_size(90, ran.sample_rate)
    assert batch == 15
    z = step_observations(snapshots, lr=cfg.lr, expected_batch_size=batch,
                          max_grad_norm=cfg.max_grad_norm)
    np.testing.assert_allclose(z, masks & included, atol=1e-4)
    rows = model.weight.detach().double().numpy()[cfg.ordinary_tokens:][:30]
    assert np.all(rows[~included] == 0)  # an absent canary's row never moves
    np.testing.assert_allclose(rows.sum(axis=1), 0.0, atol=1e-9)  # nothing off the u axis


def test_step_observations_undo_torch_sgd_momentum() -> None:
    """Reference: torch's own SGD(momentum=0.9) fed known gradients."""
    rng = np.random.default_rng(1)
    grads = rng.standard_normal((9, 5))
    param = torch.zeros(5, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.SGD([param], lr=0.01, momentum=0.9)
    snapshots = [param.detach().numpy().copy()]
    for g in grads:
        param.grad = torch.as_tensor(g)
        opt.step()
        snapshots.append(param.detach().numpy().copy())
    # z is -g in units of C / B: with B = 4 and C = 2, z = -2 g
    z = step_observations(np.array(snapshots), lr=0.01, expected_batch_size=4,
                          max_grad_norm=2.0)
    np.testing.assert_allclose(z, -2 * grads, atol=1e-10)
    np.testing.assert_allclose(snapshots[-1], -0.01 * momentum_weights(9) @ grads,
                               atol=1e-12)


@pytest.mark.parametrize("q", [0.05, 0.5, 1.0])
def test_secret_sampling_score_is_the_mixture_likelihood_ratio(q: float) -> None:
    rng = np.random.default_rng(2)
    sigma = 0.7
    z = rng.normal(0.3, 1.5, (6, 4))
    scores = auditor_scores(z, np.zeros_like(z, dtype=bool), sigma=sigma, sample_rate=q)
    mixture = np.log((1 - q) * stats.norm.pdf(z, 0, sigma) + q * stats.norm.pdf(z, 1, sigma))
    reference = (mixture - stats.norm.logpdf(z, 0, sigma)).sum(axis=0)
    np.testing.assert_allclose(scores["steps/secret"], reference, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(scores["steps/known"], 0.0)  # never sampled: no evidence


# ---------------------------------------------------------------- audits that can fail
def _bounds(result) -> dict[str, float]:  # noqa: ANN001 - a DpsgdAuditResult
    for a in result.auditors:  # nothing beats all guesses right
        assert a.audit.epsilon_lower_bound <= a.ceiling + 1e-9
    return {a.name: a.audit.epsilon_lower_bound for a in result.auditors}


def test_audit_catches_a_run_without_noise() -> None:
    """Claims ε = 0.51 (σ = 3) but dp_train runs with σ = 0.001: the bug is caught.

    Measured over seeds 0-2: secret-sampling bounds 2.2-2.6, never below 2.
    """
    result = run_dpsgd_audit(DpsgdAuditConfig(**SMALL, actual_noise_multiplier=1e-3))
    assert result.epsilon_claimed == pytest.approx(0.511, abs=0.01)
    assert result.noise_multiplier_run == pytest.approx(1e-3)
    bounds = _bounds(result)
    for name in SECRET_AUDITORS:
        assert bounds[name] > 3 * result.epsilon_claimed, name
    assert not result.consistent


def test_audit_of_a_correct_run_stays_below_the_claim() -> None:
    """The same run with the claimed noise: no secret-sampling auditor beats ε = 0.51."""
    result = run_dpsgd_audit(DpsgdAuditConfig(**SMALL))
    assert result.noise_multiplier_run == result.noise_multiplier_claimed == 3.0
    bounds = _bounds(result)
    for name in SECRET_AUDITORS:
        assert bounds[name] <= result.epsilon_claimed, name
    assert result.consistent
    assert result.canary_grad_norm_min > 1 and not result.notes  # every canary clipped to C


def test_knowing_the_batches_beats_secret_sampling() -> None:
    """σ = 0.8, q = 0.025, 200 steps: an auditor with the sampling seed learns far more.

    Measured over seeds 0-5: steps/known 2.85-3.61, both secret auditors 0-0.56.
    """
    result = run_dpsgd_audit(DpsgdAuditConfig(
        epsilon=None, noise_multiplier=0.8, canaries=200, ordinary=200, batch_size=10,
        steps=200, seed=0, sampling_seed=200, noise_seed=100))
    bounds = _bounds(result)
    secret = max(bounds[name] for name in SECRET_AUDITORS)
    assert bounds["steps/known"] >= secret + 2.0, bounds
    assert bounds["steps/known"] >= 2.5


# ---------------------------------------------------------------- command line
def _cli() -> typer.Typer:
    app = typer.Typer()
    app.command("dpsgd")(dpsgd_command)
    app.command("unused")(lambda: None)  # two commands: `dpsgd` stays a subcommand
    return app


@pytest.mark.parametrize(("case", "extra", "code"), [
    ("noise missing", ["--actual-noise-multiplier", "0.001"], 1),
    ("honest run", [], 0),
    ("too few canaries", ["--canaries", "3"], 2),
    ("half the guess rule", ["--k-pos", "10"], 2),
])
def test_cli_exit_codes(tmp_path: Path, case: str, extra: list[str], code: int) -> None:
    args = ["dpsgd", "--noise-multiplier", "3", "--canaries", "200", "--ordinary", "200",
            "--batch-size", "20", "--steps", "50", "--sampling-seed", "11", "--noise-seed",
            "7", "--out", str(tmp_path), *extra]
    result = CliRunner().invoke(_cli(), args)
    assert result.exit_code == code, (case, result.output)
    if code != 2:
        report = json.loads((tmp_path / "dpsgd_audit.json").read_text())
        assert report["consistent"] is (code == 0)
        assert {a["name"] for a in report["auditors"]} == {
            "final/secret", "steps/secret", "final/known", "steps/known"}


@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(epsilon=None), "exactly one of epsilon and noise_multiplier"),
    (dict(epsilon=8.0, noise_multiplier=1.0), "exactly one"),
    (dict(epsilon=-1.0), "epsilon must be a finite number > 0"),
    (dict(canaries=9), "canaries must be >= 10"),
    (dict(actual_noise_multiplier=-0.1), "actual_noise_multiplier must be >= 0"),
    (dict(k_pos=3), "both k_pos and k_neg"),
    (dict(canaries=10, k_pos=6, k_neg=6), "k_pos \\+ k_neg <= canaries"),
    (dict(steps=0), "steps must be >= 1"),
    (dict(delta=1.0), "delta and confidence"),
    (dict(accountant="gdp"), "accountant"),
    (dict(canaries=100_000, steps=1000), "per-step observations"),
])
def test_config_is_validated(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        DpsgdAuditConfig(**kwargs)


def test_accountants_match_the_accounting_module() -> None:
    from common.privacy import accounting  # the audit module avoids importing it at startup

    assert ACCOUNTANTS == accounting.ACCOUNTANTS

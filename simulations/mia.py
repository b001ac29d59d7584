"""Membership-inference audits of students: empirical evidence next to the claimed ε.

Two ways to audit:

- :func:`run_canary_audit` — a self-contained experiment in the style of Steinke, Nasr &
  Jagielski (2023, "Privacy Auditing with One (1) Training Run"). m canaries (examples
  with a wrong label, so only memorisation can fit them) are each included in the
  training set independently with probability 1/2; a small student is trained *once*,
  with DP-SGD at the claimed ε or without DP; the loss of every canary is the attack's
  score. The result is the loss-threshold attack's AUC / TPR at 1% FPR / advantage on the
  canaries, and the one-run ε lower bound, reported next to the ε the accountant claims.
- :func:`audit_run_student` — the loss-threshold attack on a student already trained in
  a ``fedistill simulate`` run: its client's private partition (members) against the
  test set (non-members). No ε lower bound here: membership in a run was not decided by
  independent coin flips, and the one-run theorem needs exactly that.

Both train and score on the CPU by default; a tiny CNN student takes seconds.
"""

from __future__ import annotations

import logging
import math
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from common.config import FedConfig, load_toml
from common.errors import ConfigError, LedgerError
from common.models import ModelConfig, build_model
from common.privacy.accounting import (
    ACCOUNTANTS,
    epsilon_from_events,
)
from common.privacy.auditing import (
    AttackMetrics,
    OneRunAudit,
    loss_threshold_attack,
    one_run_audit,
)
from common.privacy.ledger import PrivacyLedger
from common.privacy.planner import check_ran_as_planned, plan_noise
from common.privacy.secrets import fresh_seeds
from common.task import client_partitions, prepare_task
from common.training import dp_train, predict_logits, train_supervised
from simulations.audit_output import json_safe

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- configuration
@dataclass(frozen=True)
class CanaryAuditConfig:
    """One canary audit experiment; validated on construction."""

    dataset: str = "rotten-tomatoes"  # a text-classification dataset name
    epsilon: float = math.inf  # claimed ε of the training run; inf = no DP at all
    delta: float = 1e-5  # δ of the claim and of the lower bound
    canaries: int = 200  # m: each included with probability 1/2
    train_size: int = 500  # ordinary (correctly labelled) training examples
    guesses: int = 0  # k guesses "in" and k "out" (0 = canaries // 4); fixed in advance
    confidence: float = 0.95  # of the ε lower bound
    family: str = "cnn"  # student family (cnn tiny trains fastest)
    size: str = "tiny"
    epochs: int = 30  # passes over the training set (DP: steps = epochs x 1/q)
    batch_size: int = 64  # (expected, for DP) batch size
    lr: float = 3e-3  # AdamW learning rate without DP
    dp_lr: float = 0.5  # SGD learning rate with DP (noisy steps want a larger one)
    max_grad_norm: float = 1.0  # DP-SGD clipping norm C
    accountant: str = "rdp"  # accountant that calibrates σ and states the claimed ε
    seed: int = 0
    vocab_size: int = 2000  # tokenizer of the dataset task
    max_len: int = 32

    def __post_init__(self) -> None:
        if not (self.epsilon > 0):  # also rejects NaN
            raise ConfigError(f"epsilon must be > 0 (or inf for no DP), found {self.epsilon!r}.")
        if not 0 < self.delta < 1:
            raise ConfigError(f"delta must be in (0, 1), found {self.delta!r}.")
        if self.canaries < 10:
            raise ConfigError(
                f"canaries must be >= 10, found {self.canaries}; a handful of coin flips "
                "cannot support any bound (use a few hundred)."
            )
        if self.train_size < 0 or self.epochs < 1 or self.batch_size < 1:
            raise ConfigError(
                f"Need train_size >= 0, epochs >= 1, batch_size >= 1; found "
                f"{self.train_size}, {self.epochs}, {self.batch_size}."
            )
        if not 0 <= 2 * self.guesses <= self.canaries:
            raise ConfigError(
                f"guesses={self.guesses} per side needs 2 x guesses <= canaries={self.canaries}."
            )
        if not 0 < self.confidence < 1:
            raise ConfigError(f"confidence must be in (0, 1), found {self.confidence!r}.")
        if self.accountant not in ACCOUNTANTS:
            raise ConfigError(f"accountant={self.accountant!r} is not one of {ACCOUNTANTS}.")

    @property
    def private(self) -> bool:
        return math.isfinite(self.epsilon)

    @property
    def guesses_per_side(self) -> int:
        return self.guesses or max(1, self.canaries // 4)


@dataclass(frozen=True)
class AuditData:
    """Token ids to train and audit on: ordinary examples and canary candidates."""

    train_x: Tensor  # (N, T) long
    train_y: Tensor  # (N,) long
    canary_x: Tensor  # (m, T) long
    canary_y: Tensor  # (m,) long: the canaries' (wrong) labels
    vocab_size: int
    num_classes: int


def canary_data(cfg: CanaryAuditConfig) -> AuditData:
    """Ordinary examples and canaries from the private pool of ``cfg.dataset``.

    Canaries are real texts given a *wrong* label (shifted by a random non-zero offset):
    a model fits them only by memorising them, which is what DP must bound.
    """
    task = prepare_task(cfg.dataset, cfg.seed, cfg.vocab_size, cfg.max_len)
    need = cfg.train_size + cfg.canaries
    if len(task.private_x) < need:
        raise ConfigError(
            f"dataset={cfg.dataset!r} has {len(task.private_x)} private examples, fewer "
            f"than train_size + canaries = {need}; lower one of them."
        )
    gen = torch.Generator().manual_seed(cfg.seed)
    order = torch.randperm(len(task.private_x), generator=gen)
    base, cans = order[: cfg.train_size], order[cfg.train_size : need]
    offset = torch.randint(1, task.num_classes, (cfg.canaries,), generator=gen)
    return AuditData(
        train_x=task.private_x[base],
        train_y=task.private_y[base],
        canary_x=task.private_x[cans],
        canary_y=(task.private_y[cans] + offset) % task.num_classes,
        vocab_size=task.vocab_size,
        num_classes=task.num_classes,
    )


# ---------------------------------------------------------------- canary audit
@dataclass(frozen=True)
class CanaryAuditResult:
    """What a canary audit measured, next to what the accountant claims."""

    config: dict[str, Any]
    epsilon_claimed: float  # inf without DP
    noise_multiplier: float | None  # σ (None without DP)
    sample_rate: float | None
    steps: int
    included: int  # canaries that were trained on
    attack: AttackMetrics  # loss-threshold attack on the canaries
    one_run: OneRunAudit
    seconds: float

    @property
    def consistent(self) -> bool:
        """The lower bound does not exceed the claim (always true without DP)."""
        return self.one_run.epsilon_lower_bound <= self.epsilon_claimed + 1e-9

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["consistent"] = self.consistent
        return json_safe(out)


def run_canary_audit(
    cfg: CanaryAuditConfig,
    data: AuditData | None = None,
    *,
    device: torch.device | None = None,
) -> CanaryAuditResult:
    """Train once with canaries randomly in or out, then attack and bound ε.

    ``data`` defaults to :func:`canary_data` of ``cfg.dataset``; tests pass small
    synthetic data instead.
    """
    start = time.perf_counter()
    device = device or torch.device("cpu")
    data = data if data is not None else canary_data(cfg)
    m = len(data.canary_x)
    if m != cfg.canaries:
        raise ConfigError(f"data holds {m} canaries, the config asks for {cfg.canaries}.")
    # Steinke et al. need S_i uniform on {in, out}, independently: one coin per canary.
    rng = np.random.default_rng(cfg.seed)
    included = rng.random(m) < 0.5
    inc = torch.as_tensor(included)
    x = torch.cat([data.train_x, data.canary_x[inc]])
    y = torch.cat([data.train_y, data.canary_y[inc]])

    torch.manual_seed(cfg.seed)
    model = build_model(ModelConfig(family=cfg.family, size=cfg.size,
                                    vocab_size=data.vocab_size, num_classes=data.num_classes,
                                    max_len=x.shape[1]))
    sigma, q, steps, claimed = _train(model, x, y, cfg, device)

    losses = _per_example_loss(model, data.canary_x, data.canary_y, device)
    attack = loss_threshold_attack(losses[included], losses[~included])
    k = cfg.guesses_per_side
    one = one_run_audit(-losses, included, k_pos=k, k_neg=k, delta=cfg.delta,
                        confidence=cfg.confidence)
    return CanaryAuditResult(
        config=asdict(cfg), epsilon_claimed=claimed, noise_multiplier=sigma, sample_rate=q,
        steps=steps, included=int(included.sum()), attack=attack, one_run=one,
        seconds=time.perf_counter() - start,
    )


def _train(
    model: nn.Module, x: Tensor, y: Tensor, cfg: CanaryAuditConfig, device: torch.device
) -> tuple[float | None, float | None, int, float]:
    """Train ``model`` in place; return (σ, q, steps, claimed ε)."""
    if not cfg.private:
        # No weight decay, many epochs: the overfit student an audit must catch.
        train_supervised(model, x, y, epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size,
                         device=device, seed=cfg.seed, weight_decay=0.0)
        return None, None, cfg.epochs * math.ceil(len(x) / cfg.batch_size), math.inf
    plan = plan_noise(budget=cfg.epsilon, delta=cfg.delta, num_examples=len(x),
                      expected_batch_size=cfg.batch_size, epochs_per_round=cfg.epochs,
                      rounds=1, accountant=cfg.accountant)
    event = plan.total_event()
    ran = dp_train(model, x, y, noise_multiplier=event.noise_multiplier,
                   max_grad_norm=cfg.max_grad_norm, expected_batch_size=cfg.batch_size,
                   steps=event.steps, lr=cfg.dp_lr, device=device, seeds=fresh_seeds())
    check_ran_as_planned(event, noise_multiplier=ran.noise_multiplier,
                         sample_rate=ran.sample_rate, steps=ran.steps,
                         max_grad_norm=ran.max_grad_norm, planned_max_grad_norm=cfg.max_grad_norm)
    # The claim is what the accountant says for the event actually run (<= the target).
    claimed = epsilon_from_events([event], delta=cfg.delta, accountant=cfg.accountant)
    return event.noise_multiplier, event.sample_rate, event.steps, claimed


def _per_example_loss(model: nn.Module, x: Tensor, y: Tensor, device: torch.device) -> np.ndarray:
    logits = predict_logits(model, x, device=device)
    return nn.functional.cross_entropy(logits, y, reduction="none").double().numpy()


# ---------------------------------------------------------------- a student in a run
@dataclass(frozen=True)
class StudentAuditResult:
    """The loss-threshold attack on one client's student of a finished run."""

    run: str
    client: str
    family: str
    attack: AttackMetrics
    epsilon_claimed: float | None  # recomputed from the client's ledger; None if unreadable
    delta: float | None
    note: str

    def to_dict(self) -> dict[str, Any]:
        return json_safe(asdict(self))


def audit_run_student(
    run: Path,
    client: str,
    *,
    max_examples: int = 1000,
    seed: int = 0,
    device: torch.device | None = None,
) -> StudentAuditResult:
    """Attack ``client``'s student of the run in ``run``: its partition vs the test set."""
    device = device or torch.device("cpu")
    cfg_path = run / "run_config.toml"
    if not cfg_path.exists():
        raise ConfigError(f"{run} holds no run_config.toml; pass a `fedistill simulate` --out.")
    cfg = FedConfig.from_mapping(load_toml(cfg_path))
    name, pid = _client_id(client, cfg.num_clients)
    client_dir = run / "clients" / name
    weights = client_dir / "student.pt"
    if not weights.exists():
        raise ConfigError(f"{weights} does not exist; did {name} train in this run?")

    task = prepare_task(cfg.dataset, cfg.seed, cfg.vocab_size, cfg.max_len)
    part = client_partitions(cfg.dataset, cfg.seed, cfg.vocab_size, cfg.max_len,
                             cfg.num_clients, cfg.partition, cfg.alpha)[pid]
    family = cfg.student_for(pid)
    model = build_model(ModelConfig(family=family, size=cfg.student_size,
                                    vocab_size=task.vocab_size, num_classes=task.num_classes,
                                    max_len=cfg.max_len))
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))

    rng = np.random.default_rng(seed)
    n = min(max_examples, len(part), len(task.test_x))
    members = torch.as_tensor(rng.choice(np.asarray(part), n, replace=False))
    outsiders = torch.as_tensor(rng.choice(len(task.test_x), n, replace=False))
    attack = loss_threshold_attack(
        _per_example_loss(model, task.private_x[members], task.private_y[members], device),
        _per_example_loss(model, task.test_x[outsiders], task.test_y[outsiders], device),
    )
    eps, delta = _ledger_epsilon(client_dir / "ledger.jsonl")
    note = ("members: the client's private partition; non-members: the test set. A "
            "partition that differs in distribution from the test set (natural or "
            "non-IID splits) raises the AUC without any memorisation. No ε lower bound: "
            "membership was not randomised; run the canary audit for one.")
    return StudentAuditResult(str(run), name, family, attack, eps, delta, note)


def _client_id(client: str, num_clients: int) -> tuple[str, int]:
    match = re.fullmatch(r"(?:client-)?(\d+)", client)
    if not match or int(match.group(1)) >= num_clients:
        raise ConfigError(
            f"--client {client!r} is not one of client-0 .. client-{num_clients - 1}."
        )
    pid = int(match.group(1))
    return f"client-{pid}", pid


def _ledger_epsilon(path: Path) -> tuple[float | None, float | None]:
    """ε recomputed from a ledger (chain checked), with its last record's δ."""
    try:
        records = PrivacyLedger(path).records()
    except LedgerError as exc:
        log.warning("cannot read %s: %s", path, exc)
        return None, None
    if not records:
        return None, None
    return PrivacyLedger(path).epsilon(), records[-1].delta



"""Audit of the channel that leaves a client: its soft labels on a public batch.

``audit dpsgd`` (simulations/dpsgd_audit.py) audits one ``dp_train`` call on a logit
table, white box. What a client actually sends is neither: it is the student's
temperature-softened soft labels on a public batch the coordinator chose, after the
round's distillation and DP step (client/app.py, ``_client_round``). This audit attacks
that output, in the threat model of a curious coordinator:

- it knows the public set and chooses the public batch, and it can plant **canary inputs**
  in the public set (public data is anyone's);
- it hopes that a client's private data holds those inputs with a label it chose (a
  "poisoned" record; by default a public coin per canary, or ``flip``: the class its own
  teacher finds least likely for that input);
- it sees only the client's soft labels on the batch it chose, as the codec of the run
  delivers them (float16 by default), round after round.

**One run** (Steinke, Nasr & Jagielski 2023): each of m canaries is in the client's
private data with probability 1/2 (public coins). The client then runs the real pieces
of its round in-process, with the run's settings (a preset plus ``--set`` overrides):
``distill`` on the public batch towards a fixed teacher's softened knowledge, then the
private step as ``_private_round`` takes it (``plan_noise`` with the run's budget, δ,
batch size, epochs and rounds; ``dp_train`` with the configured optimizer, trainable
set, clipping and grad-sample mode; seeds from a fresh secret, derived per round as a
node does; ``check_ran_as_planned``), or, with ``dp = false``, the plain
``train_supervised`` of ``_non_private_round``; then ``soften(predict_logits(...), T)``
on the public batch, encoded and decoded by the run's knowledge codec.

Two auditors score each canary i by the log-odds of its target class t_i in the soft
label of canary input i, summed over the observed rounds, minus the mean over all m
canaries of their log-odds for class t_i (the private step moves every canary input
alike, by the class prior and what rare tokens share; that says nothing about any one):

==========  =========================================================================
auditor     score (before the centering)
==========  =========================================================================
labels      log p_t - log(1 - p_t) of the soft labels the client sent (nothing else)
labels+ref  the same minus that log-odds of the student *before* the round's private
            step (a difference score): the auditor also knows the distilled student
==========  =========================================================================

The second auditor knows more than a coordinator does, but DP-SGD's ε holds whatever
the starting model (it is computed from public data and earlier DP outputs only), so
both stay within the claim. Guesses are fixed in advance (k "in" for the highest scores,
k "out" for the lowest; k = m/4 per side unless given), and each auditor's bound is at
1 - (1 - confidence)/2 so the larger of the two holds at ``confidence`` (Bonferroni).

Holding the mechanism fixed: the client's q and steps follow from its number of private
examples, which here depends on the coins. The ordinary part of the client's data is
trimmed so that n stays in one Poisson bucket (the same q, steps and σ) for every count
of included canaries within 5 standard deviations of m/2, and the realised run is
checked against that plan. Opacus still divides by its expected batch size ⌊n q⌋, which
moves by one with each canary; that is how the client trains too.

This module is the experiment; :mod:`simulations.softlabel_audit_stats` holds the
auditors' scores and the result, :mod:`simulations.softlabel_audit_cli` the command line.
"""

from __future__ import annotations

import hashlib
import logging
import math
import secrets
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from common.config import STUDENT_FAMILIES, FedConfig
from common.errors import ConfigError, FedistillError
from simulations.softlabel_audit_stats import (
    AuditorResult,
    SoftlabelAuditResult,
    canary_scores,
    log_odds,
)

if TYPE_CHECKING:  # torch and Opacus load only when an audit runs
    import torch
    from torch import Tensor, nn

    from common.privacy.planner import NoisePlan
    from common.privacy.secrets import DpSeeds
    from common.training import DpTrainResult

log = logging.getLogger(__name__)

CANARY_KINDS = ("rare", "text")
CANARY_LABELS = ("random", "flip")
FIRST_REGULAR_TOKEN = 5  # ids 0-4 are the encoder specials ([PAD], [UNK], [CLS], [SEP], [MASK])
COIN_SPREAD = 5.0  # standard deviations of the included count that must share one q
AUDITORS: dict[str, str] = {
    "labels": "the soft labels the client sent, nothing else",
    "labels+ref": "the soft labels minus the student's before the private step",
}


# ---------------------------------------------------------------- configuration
@dataclass(frozen=True)
class SoftlabelAuditConfig:
    """One soft-label audit: the run's settings plus the audit's own; validated here."""

    run: FedConfig = field(default_factory=FedConfig)  # the client's settings (a preset)
    client: int = 0  # whose private partition (and student family) stands in
    family: str | None = None  # student family; None = the run's for ``client``
    canaries: int = 256  # m, each in the private data with probability 1/2
    canary_kind: str = "rare"  # rare: unique rare-token sequences; text: public texts
    canary_tokens: int = 8  # tokens per rare canary
    canary_label: str = "random"  # random: a public coin per canary; flip: the teacher's
    #                               least likely class for the input
    actual_noise_multiplier: float | None = None  # σ given to dp_train; None = planned σ
    guesses: int = 0  # k per side, fixed in advance; 0 = m // 4
    confidence: float = 0.95  # of the larger of the two bounds
    teacher_epochs: int = 3  # the fixed teacher: a tiny CNN on the teacher set
    secret_seed: int | None = None  # None = a fresh secret nobody keeps (the default)

    def __post_init__(self) -> None:
        if self.canaries < 10:
            raise ConfigError(f"canaries must be >= 10, found {self.canaries}; a handful "
                              "of coin flips cannot support any bound (use hundreds).")
        if self.canary_kind not in CANARY_KINDS:
            raise ConfigError(f"canary-kind={self.canary_kind!r} is not one of "
                              f"{', '.join(CANARY_KINDS)}.")
        if self.canary_label not in CANARY_LABELS:
            raise ConfigError(f"canary-label={self.canary_label!r} is not one of "
                              f"{', '.join(CANARY_LABELS)}.")
        if self.canary_tokens < 1:
            raise ConfigError(f"canary-tokens must be >= 1, found {self.canary_tokens}.")
        if self.client < 0 or self.client >= self.run.num_clients:
            raise ConfigError(f"client={self.client} is not one of 0 .. "
                              f"{self.run.num_clients - 1} (num-clients).")
        if self.family is not None and self.family not in STUDENT_FAMILIES:
            raise ConfigError(f"family={self.family!r} is not one of "
                              f"{', '.join(STUDENT_FAMILIES)}.")
        sigma = self.actual_noise_multiplier
        if sigma is not None and not 0 <= sigma < math.inf:
            raise ConfigError(f"actual-noise-multiplier must be >= 0, found {sigma!r}.")
        if sigma is not None and not self.run.dp:
            raise ConfigError("actual-noise-multiplier needs dp = true (it replaces the "
                              "planned σ of the DP step).")
        if not 0 <= 2 * self.guesses <= self.canaries:
            raise ConfigError(f"guesses={self.guesses} per side needs 0 <= 2 x guesses <= "
                              f"canaries={self.canaries}.")
        if not 0 < self.confidence < 1:
            raise ConfigError(f"confidence must be in (0, 1), found {self.confidence!r}.")
        if self.teacher_epochs < 0:
            raise ConfigError(f"teacher-epochs must be >= 0, found {self.teacher_epochs}.")
        if self.run.public_batch_size < self.canaries:
            raise ConfigError(f"public-batch-size={self.run.public_batch_size} cannot hold "
                              f"the {self.canaries} canary inputs; raise it or lower "
                              "--canaries.")
        if not self.run.private_training:
            raise ConfigError("private-training = false: the client never touches its "
                              "private data, there is nothing to audit.")

    @property
    def student_family(self) -> str:
        return self.family or self.run.student_for(self.client)

    @property
    def guesses_per_side(self) -> int:
        return self.guesses or max(1, self.canaries // 4)


@dataclass(frozen=True)
class AuditTask:
    """Token ids of what the audit needs: one client's private data and the public side."""

    private_x: Tensor  # (n, T) the client's own examples
    private_y: Tensor  # (n,)
    public_x: Tensor  # (P, T) the public pool the coordinator draws batches from
    teacher_x: Tensor  # (N_t, T) the coordinator's labelled set (for the fixed teacher)
    teacher_y: Tensor
    vocab_size: int
    num_classes: int


def client_task(run: FedConfig, client: int) -> AuditTask:
    """The run's prepared task: ``client``'s private partition and the public pool."""
    from common.task import client_partitions, prepare_task

    task = prepare_task(run.dataset, run.seed, run.vocab_size, run.max_len)
    part = client_partitions(run.dataset, run.seed, run.vocab_size, run.max_len,
                             run.num_clients, run.partition, run.alpha)[client]
    return AuditTask(task.private_x[part], task.private_y[part], task.public_x,
                     task.teacher_x, task.teacher_y, task.vocab_size, task.num_classes)


# ---------------------------------------------------------------- canaries
def rare_tokens(task: AuditTask, count: int) -> np.ndarray:
    """The ``count`` regular tokens rarest in the public side (public + teacher texts).

    What the coordinator knows: the private texts never count. Ties break by id.
    """
    public = np.concatenate([task.public_x.numpy().ravel(), task.teacher_x.numpy().ravel()])
    freq = np.bincount(public, minlength=task.vocab_size)[FIRST_REGULAR_TOKEN:]
    order = np.argsort(freq, kind="stable") + FIRST_REGULAR_TOKEN
    if count > len(order):
        raise ConfigError(f"{count} canary tokens needed, the vocabulary has only "
                          f"{len(order)} regular tokens; lower --canaries or "
                          "--canary-tokens.")
    return order[:count]


def canary_inputs(cfg: SoftlabelAuditConfig, task: AuditTask,
                  rng: np.random.Generator) -> tuple[Tensor, np.ndarray]:
    """m canary inputs and the public rows they take (empty for rare canaries).

    ``rare``: canary i is ``canary_tokens`` tokens of its own, drawn from the
    ``m x canary_tokens`` rarest regular tokens (no token is in two canaries), padded to
    the task's length. ``text``: m distinct texts of the public pool (real inputs, which
    the coordinator then leaves out of the ordinary part of its batches).
    """
    import torch

    m, width = cfg.canaries, task.public_x.shape[1]
    if cfg.canary_kind == "text":
        if len(task.public_x) < m:
            raise ConfigError(f"the public pool has {len(task.public_x)} texts, fewer than "
                              f"{m} canaries.")
        rows = np.sort(rng.choice(len(task.public_x), m, replace=False))
        return task.public_x[torch.as_tensor(rows)].clone(), rows
    length = cfg.canary_tokens
    if length > width:
        raise ConfigError(f"canary-tokens={length} exceeds the task's max-len={width}.")
    tokens = rng.permutation(rare_tokens(task, m * length)).reshape(m, length)
    x = torch.zeros((m, width), dtype=torch.long)
    x[:, :length] = torch.as_tensor(tokens, dtype=torch.long)
    return x, np.zeros(0, dtype=np.int64)


def fixed_teacher(run: FedConfig, task: AuditTask, epochs: int, *,
                  device: torch.device) -> nn.Module:
    """The coordinator's knowledge source: a tiny CNN trained on the teacher set."""
    import torch

    from common.models import ModelConfig, build_model
    from common.training import train_supervised

    torch.manual_seed(run.seed)
    teacher = build_model(ModelConfig(family="cnn", size="tiny", vocab_size=task.vocab_size,
                                      num_classes=task.num_classes,
                                      max_len=task.public_x.shape[1]))
    if epochs:
        train_supervised(teacher, task.teacher_x, task.teacher_y, epochs=epochs, lr=3e-3,
                         batch_size=32, device=device, seed=run.seed)
    return teacher.eval()


def canary_labels(cfg: SoftlabelAuditConfig, teacher: nn.Module, canary_x: Tensor,
                  num_classes: int, rng: np.random.Generator, *,
                  device: torch.device) -> Tensor:
    """The label the coordinator hopes each canary carries in the private data.

    ``random``: a public coin per canary, so the canaries pull the shared parts of the
    model (the class prior, what all rare tokens have in common) in no net direction and
    each one's own label is what membership changes. ``flip``: the class the fixed
    teacher finds least likely for that input (a "poisoned" record); on two classes the
    canaries then mostly share one label, and only :func:`canary_scores`' centering keeps
    their common pull from drowning the single canary's (docs/AUDIT.md has both).
    """
    import torch

    from common.training import predict_logits

    if cfg.canary_label == "flip":
        return predict_logits(teacher, canary_x, device=device).argmin(dim=1)
    return torch.as_tensor(rng.integers(0, num_classes, len(canary_x)), dtype=torch.long)


# ---------------------------------------------------------------- the client's mechanism
def fit_private_size(available: int, canaries: int, batch_size: int, epochs: float) -> int:
    """The most ordinary examples that keep q and steps the same for every likely count.

    The included count is Binomial(m, 1/2); every count within ``COIN_SPREAD`` standard
    deviations of m/2 must give the same (q, steps) of the client's Poisson loader, so
    adding or removing one canary never changes the mechanism the plan accounts for.
    """
    from common.privacy.planner import sample_rate_and_steps

    spread = COIN_SPREAD * math.sqrt(canaries) / 2
    lo = max(0, math.floor(canaries / 2 - spread))
    hi = min(canaries, math.ceil(canaries / 2 + spread))
    for n in range(available, -1, -1):
        if n + lo > 0 and (sample_rate_and_steps(n + lo, batch_size, epochs)
                           == sample_rate_and_steps(n + hi, batch_size, epochs)):
            return n
    raise ConfigError(
        f"no private size keeps q fixed for {lo}..{hi} included canaries with "
        f"dp-batch-size={batch_size}: lower --canaries or raise dp-batch-size.")


def _seeds(secret: bytes, round_: int) -> DpSeeds:
    from common.privacy.secrets import DpSeeds

    return DpSeeds.derive(secret, "softlabel-audit", round_)


def _reply(student: nn.Module, public_x: Tensor, run: FedConfig, num_classes: int, *,
           device: torch.device) -> np.ndarray:
    """What the coordinator decodes: soften(logits, T), encoded as the run encodes it."""
    from common.distill.codec import decode_knowledge, encode_knowledge
    from common.distill.losses import soften
    from common.training import predict_logits

    probs = soften(predict_logits(student, public_x, device=device), run.temperature).numpy()
    return decode_knowledge(encode_knowledge(probs, run.encoding, topk=run.topk),
                            run.encoding, num_rows=len(probs), num_classes=num_classes)


def private_step(run: FedConfig, plan: NoisePlan | None, student: nn.Module, x: Tensor,
                 y: Tensor, *, round_: int, seeds: DpSeeds, device: torch.device,
                 actual_noise_multiplier: float | None = None) -> DpTrainResult | None:
    """Step (c) of a client round, as client/app.py's ``_private_round`` takes it.

    DP: one round's event of ``plan`` through ``dp_train`` with the run's settings, then
    ``check_ran_as_planned`` (against the σ actually given, under fault injection).
    ``dp = false``: ``_non_private_round``'s plain AdamW pass; returns None.
    """
    from common.errors import PrivacyMismatchError
    from common.privacy.planner import check_ran_as_planned
    from common.training import dp_train, train_supervised

    if not run.dp:
        train_supervised(student, x, y, epochs=max(1, round(run.dp_epochs)),
                         lr=run.student_distill_lr, batch_size=run.dp_batch_size,
                         device=device, seed=run.seed + round_)
        return None
    assert plan is not None
    event = plan.event()
    sigma = (event.noise_multiplier if actual_noise_multiplier is None
             else actual_noise_multiplier)
    ran = dp_train(student, x, y, noise_multiplier=sigma, max_grad_norm=run.max_grad_norm,
                   expected_batch_size=run.dp_batch_size, steps=event.steps, lr=run.dp_lr,
                   optimizer=run.dp_optimizer, trainable=run.dp_trainable,
                   grad_sample_mode=run.grad_sample_mode,
                   max_physical_batch_size=run.max_physical_batch_size, device=device,
                   seeds=seeds, adapter_rank=run.dp_adapter_rank)
    ran_sigma = ran.noise_multiplier
    if actual_noise_multiplier is not None:  # fault injection: σ differs on purpose
        if not math.isclose(ran_sigma, sigma, rel_tol=1e-12, abs_tol=1e-12):
            raise PrivacyMismatchError(f"Opacus ran σ={ran_sigma}, the audit gave {sigma}.")
        ran_sigma = event.noise_multiplier  # check the rest of the event as usual
    check_ran_as_planned(event, noise_multiplier=ran_sigma,
                         sample_rate=ran.sample_rate, steps=ran.steps,
                         max_grad_norm=ran.max_grad_norm,
                         planned_max_grad_norm=run.max_grad_norm)
    return ran





# ---------------------------------------------------------------- the audit
def run_softlabel_audit(cfg: SoftlabelAuditConfig, task: AuditTask | None = None, *,
                        device: torch.device | None = None) -> SoftlabelAuditResult:
    """Plant canaries, run the client's rounds in-process, bound ε from its soft labels.

    ``task`` defaults to the run's dataset (``client_task``); tests pass synthetic data.
    """
    import torch

    from common.models import ModelConfig, build_model
    from common.privacy.accounting import epsilon_from_events
    from common.privacy.auditing import (
        loss_threshold_attack,
        one_run_audit,
        one_run_epsilon_lower_bound,
    )
    from common.privacy.planner import plan_noise, sample_rate_and_steps
    from common.training import distill

    start = time.perf_counter()
    run, m = cfg.run, cfg.canaries
    device = device or torch.device("cpu")
    task = task if task is not None else client_task(run, cfg.client)
    rng = np.random.default_rng([run.seed, 0x50F7])  # public: canaries, coins, batches

    # --- the coordinator's side: a fixed teacher, canary inputs and the labels it hopes for
    teacher = fixed_teacher(run, task, cfg.teacher_epochs, device=device)
    canary_x, canary_rows = canary_inputs(cfg, task, rng)
    target = canary_labels(cfg, teacher, canary_x, task.num_classes, rng, device=device)
    included = rng.random(m) < 0.5
    ordinary_pool = np.setdiff1d(np.arange(len(task.public_x)), canary_rows)
    batch_extra = min(run.public_batch_size - m, len(ordinary_pool))

    # --- the client's private data: its partition (trimmed to one q) + included canaries
    ordinary = (fit_private_size(len(task.private_x), m, run.dp_batch_size, run.dp_epochs)
                if run.dp else len(task.private_x))
    inc = torch.as_tensor(included)
    x_priv = torch.cat([task.private_x[:ordinary], canary_x[inc]])
    y_priv = torch.cat([task.private_y[:ordinary], target[inc]])
    n = len(x_priv)
    plan, notes = None, []
    if run.dp:
        plan = plan_noise(budget=run.epsilon, delta=run.delta, num_examples=n,
                          expected_batch_size=run.dp_batch_size,
                          epochs_per_round=run.dp_epochs, rounds=run.rounds,
                          accountant=run.accountant, noise_multiplier=run.noise_multiplier)
        if sample_rate_and_steps(ordinary + m // 2, run.dp_batch_size, run.dp_epochs) != (
                plan.sample_rate, plan.steps_per_round):
            raise FedistillError(f"{int(included.sum())} canaries in moved q off the "
                                 "planned bucket (p < 1e-6); rerun with another --seed.")
        claimed = epsilon_from_events([plan.total_event()], delta=run.delta,
                                      accountant=run.accountant)
        per_round = epsilon_from_events([plan.event()], delta=run.delta,
                                        accountant=run.accountant)
        if claimed > run.epsilon * (1 + 1e-6) and run.noise_multiplier == 0:
            raise ConfigError(f"the plan spends ε={claimed:.4g} > epsilon={run.epsilon}: the "
                              "client would decline these rounds (BUDGET); nothing to audit.")
    else:
        claimed = per_round = math.inf
    if ordinary < len(task.private_x):
        notes.append(f"{len(task.private_x) - ordinary} of the client's "
                     f"{len(task.private_x)} examples left out so that q stays fixed.")
    log.info("softlabel audit: m=%d, n=%d (%d ordinary), rounds=%d, claimed ε=%.4g",
             m, n, ordinary, run.rounds, claimed)

    # --- the client's rounds: distill on the chosen batch, private step, soft labels
    secret = (secrets.token_bytes(32) if cfg.secret_seed is None
              else hashlib.sha256(f"softlabel-audit/{cfg.secret_seed}".encode()).digest())
    torch.manual_seed(run.seed)
    student = build_model(ModelConfig(family=cfg.student_family, size=run.student_size,
                                      vocab_size=task.vocab_size,
                                      num_classes=task.num_classes,
                                      max_len=task.public_x.shape[1]))
    target_np = target.numpy()
    sent = np.zeros((m, task.num_classes))  # log-odds summed over rounds
    before = np.zeros((m, task.num_classes))
    ran = None
    for round_ in range(1, run.rounds + 1):
        rows = rng.choice(ordinary_pool, batch_extra, replace=False)
        public_x = torch.cat([canary_x, task.public_x[torch.as_tensor(rows)]])
        knowledge = _reply(teacher, public_x, run, task.num_classes, device=device)
        distill(student, public_x, torch.as_tensor(knowledge), temperature=run.temperature,
                epochs=run.student_distill_epochs, lr=run.student_distill_lr, device=device,
                seed=run.seed + round_)
        probe = canary_x  # the canaries are the batch's first m rows; only they are scored
        before += log_odds(_reply(student, probe, run, task.num_classes, device=device))
        ran = private_step(run, plan, student, x_priv, y_priv, round_=round_,
                           seeds=_seeds(secret, round_), device=device,
                           actual_noise_multiplier=cfg.actual_noise_multiplier)
        sent += log_odds(_reply(student, probe, run, task.num_classes, device=device))

    # --- guesses fixed in advance, two auditors, Bonferroni over them
    k = cfg.guesses_per_side
    per_test = 1 - (1 - cfg.confidence) / len(AUDITORS)
    auditors = []
    for name, raw in (("labels", sent), ("labels+ref", sent - before)):
        scores = canary_scores(raw, target_np)
        audit = one_run_audit(scores, included, k_pos=k, k_neg=k, delta=run.delta,
                              confidence=per_test)
        ceiling = one_run_epsilon_lower_bound(m, audit.guesses, audit.guesses,
                                              delta=run.delta, confidence=per_test)
        attack = loss_threshold_attack(-scores[included], -scores[~included])
        auditors.append(AuditorResult(name, AUDITORS[name], audit, ceiling, attack))
    return SoftlabelAuditResult(
        config={**asdict(cfg), "run": asdict(run)}, family=cfg.student_family,
        epsilon_claimed=float(claimed), epsilon_round=float(per_round),
        noise_multiplier=None if plan is None else plan.noise_multiplier,
        noise_multiplier_run=None if ran is None else ran.noise_multiplier,
        sample_rate=None if plan is None else plan.sample_rate,
        steps_per_round=(plan.steps_per_round if plan is not None
                         else max(1, math.ceil(run.dp_epochs * n / run.dp_batch_size))),
        rounds=run.rounds, private_examples=n, ordinary_examples=ordinary,
        included=int(included.sum()),
        ceiling_all=one_run_epsilon_lower_bound(m, m, m, delta=run.delta,
                                                confidence=per_test),
        auditors=tuple(auditors), seconds=time.perf_counter() - start, notes=tuple(notes),
    )

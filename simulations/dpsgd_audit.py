"""White-box audit of the DP-SGD step itself: Dirac canaries through the real ``dp_train``.

The black-box canary audit (simulations/mia.py) attacks a trained student by its loss;
it is far too weak to tell a correct DP-SGD from a subtly broken one (docs/AUDIT.md).
This audit gives the attacker everything the accountant's ε is meant to withstand, so a
bug that leaks more than claimed has a chance to show:

- **Dirac canaries** (Nasr et al. 2023, "Tight Auditing of Differentially Private Machine
  Learning", USENIX Security): the model is a table of logits, ``Embedding(V, 2)``.
  Canary i is one token with a row of its own, labelled 0; with every row starting at 0,
  its cross-entropy gradient is ``p - e_0`` on its own row only, of norm
  ``sqrt(2) * p_1`` (0.71 = 7 C at C = 0.1), so Opacus clips it to exactly C along the
  fixed direction u = (1, -1)/sqrt(2). Every other example (ordinary tokens, blanks) touches
  other rows. Along u on row i, one DP-SGD step is then a one-dimensional Gaussian
  mechanism: the noisy gradient along -u is ``(b_t * C + N(0, sigma^2 C^2)) / B`` with
  b_t = 1 when canary i is in the data *and* Poisson-sampled in step t.
- **One run** (Steinke, Nasr & Jagielski 2023, "Privacy Auditing with One (1) Training
  Run"): each of m canaries is in the data with probability 1/2 (public coins); an
  excluded canary's slot holds a blank (its own row, never looked at), so the dataset
  size, the sample rate and Opacus' expected batch size do not depend on the coins, and
  the canary rows see exactly what they would see had the canary been removed. The
  scores go to :func:`common.privacy.auditing.one_run_audit`.
- **The real code path**: training is one call of ``dp_train`` as a client makes it
  (Poisson loader, Opacus clipping and noise, SGD with momentum, ``DpSeeds``); the model
  records its canary rows before every optimizer step, which is how the per-step auditors
  see every intermediate update without touching ``dp_train``.

Four auditors score the same run:

================  ============================================================  ========
auditor           sees                                                           claimed?
================  ============================================================  ========
final/secret      the trained model (white box), not which steps sampled what    covered
steps/secret      every step's noisy update (white box), not the batches         covered
final/known       the trained model and the sampling seed (recomputed batches)   no
steps/known       every step's update and the sampling seed                      no
================  ============================================================  ========

DP-SGD's ε covers the release of every noisy update, so both *secret* auditors must stay
below the claim: one above it is a bug (or a false claim). The *known* auditors model the
old code, which seeded the Poisson loader from public values: without secret sampling
the amplification by subsampling is gone and the claim does not hold; their bounds show
by how much more they learn. Guess counts are fixed before the run's scores are seen
(by simulating the *claimed* mechanism with a public seed, plus Steinke et al.'s m/4 per
side, with a Bonferroni correction for the two): choosing them on the run's own scores
would void the bound.

This module is the experiment; :mod:`simulations.dpsgd_audit_stats` holds its statistics
(observations, scores, guesses) and :mod:`simulations.dpsgd_audit_cli` its command line.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from common.errors import ConfigError, FedistillError
from simulations.dpsgd_audit_stats import (
    auditor_scores,
    choose_guesses,
    opacus_expected_batch_size,
    poisson_masks,
    simulate_claimed_run,
    step_observations,
)

if TYPE_CHECKING:  # torch, Opacus and scipy load only when an audit runs: `fedistill` starts fast
    import torch
    from torch import Tensor, nn

    from common.privacy.auditing import OneRunAudit
    from common.privacy.secrets import DpSeeds
    from common.training import DpTrainResult

log = logging.getLogger(__name__)
ACCOUNTANTS = ("rdp", "prv")  # common.privacy.accounting.ACCOUNTANTS (checked in the tests)

CANARY_LABEL = 0
# u = (1, -1)/sqrt(2): a label-0 canary's clipped gradient is -C u (descent pushes +u).
_U = np.array([1.0, -1.0]) / math.sqrt(2.0)
MAX_OBSERVATIONS = 50_000_000  # steps x canaries floats the per-step auditors may hold

AUDITORS: dict[str, str] = {
    "final/secret": "white box, final model; sampling secret (the fixed code)",
    "steps/secret": "white box, every step's update; sampling secret (the fixed code)",
    "final/known": "white box, final model; knows the batches (the old public seeding)",
    "steps/known": "white box, every step's update; knows the batches (old seeding)",
}
SECRET_AUDITORS = ("final/secret", "steps/secret")


# ---------------------------------------------------------------- configuration
@dataclass(frozen=True)
class DpsgdAuditConfig:
    """One white-box DP-SGD audit; validated on construction.

    The claim is either ``epsilon`` (σ calibrated so the accountant gives at most that ε
    for the run's q and steps) or ``noise_multiplier`` (ε is what the accountant says for
    it); exactly one must be set.
    """

    epsilon: float | None = 8.0  # claimed ε at ``delta`` (σ calibrated to it)
    noise_multiplier: float | None = None  # or the claimed σ (then ε follows from it)
    actual_noise_multiplier: float | None = None  # σ given to dp_train; None = claimed σ
    delta: float = 1e-5  # δ of the claim and of the bound
    canaries: int = 1000  # m, each in with probability 1/2
    ordinary: int = 1000  # ordinary examples (their own rows; they set n and q)
    ordinary_tokens: int = 16  # distinct ordinary tokens
    batch_size: int = 100  # expected batch size: q = 1 / ceil(n / batch_size)
    steps: int = 100  # DP-SGD steps, one dp_train call
    max_grad_norm: float = 0.1  # C: a canary's raw gradient (0.71 at the start) is 7 C
    lr: float = 1e-3  # small, so canary logits stay near 0 and gradients clip to C
    accountant: str = "rdp"  # the accountant that states the claim
    confidence: float = 0.95  # of each ε lower bound
    k_pos: int | None = None  # guesses "in"; None = the two rules of _guess_rules
    k_neg: int | None = None  # guesses "out"; None = likewise
    seed: int = 0  # public: coins, ordinary data, the simulation that picks k
    sampling_seed: int | None = None  # None = fresh; only the "known" auditors get it
    noise_seed: int | None = None  # None = fresh; never given to any auditor

    def __post_init__(self) -> None:
        if (self.epsilon is None) == (self.noise_multiplier is None):
            raise ConfigError("Give exactly one of epsilon and noise_multiplier as the claim, "
                              f"found epsilon={self.epsilon!r}, "
                              f"noise_multiplier={self.noise_multiplier!r}.")
        for name in ("epsilon", "noise_multiplier"):
            value = getattr(self, name)
            if value is not None and not (0 < value < math.inf):
                raise ConfigError(f"{name} must be a finite number > 0, found {value!r}.")
        sigma = self.actual_noise_multiplier
        if sigma is not None and not (0 <= sigma < math.inf):
            raise ConfigError(f"actual_noise_multiplier must be >= 0, found {sigma!r}.")
        if self.canaries < 10:
            raise ConfigError(f"canaries must be >= 10, found {self.canaries}; a handful of "
                              "coin flips cannot support any bound (use hundreds).")
        for name in ("ordinary_tokens", "batch_size", "steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, found {getattr(self, name)}.")
        if self.ordinary < 0:
            raise ConfigError(f"ordinary must be >= 0, found {self.ordinary}.")
        for name in ("max_grad_norm", "lr"):
            if not 0 < getattr(self, name) < math.inf:
                raise ConfigError(f"{name} must be > 0, found {getattr(self, name)!r}.")
        if not 0 < self.delta < 1 or not 0 < self.confidence < 1:
            raise ConfigError(f"delta and confidence must be in (0, 1), found "
                              f"{self.delta!r} and {self.confidence!r}.")
        if self.accountant not in ACCOUNTANTS:
            raise ConfigError(f"accountant={self.accountant!r} is not one of {ACCOUNTANTS}.")
        if (self.k_pos is None) != (self.k_neg is None):
            raise ConfigError("Give both k_pos and k_neg, or neither (then both are chosen "
                              "on a simulated run of the claimed mechanism).")
        if self.k_pos is not None and not (0 <= self.k_pos and 0 <= self.k_neg
                                           and 0 < self.k_pos + self.k_neg <= self.canaries):
            raise ConfigError(f"Need k_pos, k_neg >= 0 and 0 < k_pos + k_neg <= canaries="
                              f"{self.canaries}, found {self.k_pos} and {self.k_neg}.")
        if self.steps * self.canaries > MAX_OBSERVATIONS:
            raise ConfigError(f"steps x canaries = {self.steps * self.canaries} exceeds "
                              f"{MAX_OBSERVATIONS} per-step observations; lower one of them.")

    @property
    def num_examples(self) -> int:
        """n: ordinary examples plus one slot per canary (the canary or a blank)."""
        return self.ordinary + self.canaries


# ---------------------------------------------------------------- model and data
class StepRecorder:
    """Snapshots of the canary rows (projected on u) before every optimizer step.

    A forward pre-hook of the model. ``dp_train`` trains a deep copy of the model; the
    recorder survives the copy as the same object, so the auditor keeps what the copy
    saw. A new snapshot is taken when the weight's version counter moved, i.e. once per
    optimizer step however Opacus splits the logical batch into physical ones.
    """

    def __init__(self, rows: slice, *, record_batches: bool = False) -> None:
        self.rows = rows
        self.record_batches = record_batches
        self.snapshots: list[np.ndarray] = []  # each (m,)
        self.batches: list[set[int]] = []  # canary indices in each step (if recorded)
        self._version: int | None = None

    def __deepcopy__(self, memo: dict[int, Any]) -> StepRecorder:
        return self

    def __call__(self, module: nn.Embedding, inputs: tuple[Tensor, ...]) -> None:
        weight, (tokens,) = module.weight, inputs
        if weight._version != self._version:
            self._version = weight._version
            self.snapshots.append(weight.detach()[self.rows].double().numpy() @ _U)
            if self.record_batches:
                self.batches.append(set())
        if self.record_batches:
            start = self.rows.start
            hit = tokens[(tokens >= start) & (tokens < self.rows.stop)] - start
            self.batches[-1].update(int(i) for i in hit)


def dirac_canary_model(vocab: int, recorder: StepRecorder | None = None) -> nn.Embedding:
    """A logit table, ``Embedding(vocab, 2)``, every row 0: logits 0, p = (1/2, 1/2).

    One token per example, so each example's gradient lands on its own token's row only:
    a label-0 canary's is ``p - e_0 = (-1/2, 1/2)``, norm 0.71, along -u.
    """
    from torch import nn

    model = nn.Embedding(vocab, 2)
    nn.init.zeros_(model.weight)
    if recorder is not None:
        model.register_forward_pre_hook(recorder)
    return model


@dataclass(frozen=True)
class CanaryLayout:
    """Which token is which: ordinary tokens, then one per canary, then the blank."""

    ordinary_tokens: int
    canaries: int

    @property
    def canary_rows(self) -> slice:
        return slice(self.ordinary_tokens, self.ordinary_tokens + self.canaries)

    @property
    def blank(self) -> int:
        return self.ordinary_tokens + self.canaries

    @property
    def vocab(self) -> int:
        return self.blank + 1


def canary_dataset(cfg: DpsgdAuditConfig, included: np.ndarray) -> tuple[Tensor, Tensor]:
    """Tokens and labels: ``cfg.ordinary`` ordinary examples, then m canary slots.

    Slot i (example ``cfg.ordinary + i``) holds canary i when ``included[i]``, else the
    blank token; both are labelled 0. Ordinary tokens are labelled by their parity.
    """
    import torch

    layout = CanaryLayout(cfg.ordinary_tokens, cfg.canaries)
    gen = torch.Generator().manual_seed(cfg.seed)
    ordinary = torch.randint(0, cfg.ordinary_tokens, (cfg.ordinary,), generator=gen)
    slots = torch.where(torch.as_tensor(included), torch.arange(cfg.canaries) +
                        cfg.ordinary_tokens, torch.tensor(layout.blank))
    x = torch.cat([ordinary, slots])
    y = torch.cat([ordinary % 2, torch.full((cfg.canaries,), CANARY_LABEL)])
    return x, y



def _guess_rules(cfg: DpsgdAuditConfig, sim_scores: np.ndarray,
                 sim_included: np.ndarray) -> list[tuple[int, int]]:
    """The (k_pos, k_neg) to try, all fixed before the audited run's scores are seen.

    Given k: that alone. Otherwise two: the best for the *claimed* mechanism (found on a
    simulated run of it), and Steinke et al.'s m/4 per side, which suits a run that leaks
    far more than claimed (the bug an audit is for) where the first may guess too little.
    """
    if cfg.k_pos is not None and cfg.k_neg is not None:
        return [(cfg.k_pos, cfg.k_neg)]
    quarter = (max(1, cfg.canaries // 4), max(1, cfg.canaries // 4))
    k_pos, k_neg, _ = choose_guesses(sim_scores, sim_included, delta=cfg.delta,
                                     confidence=1 - (1 - cfg.confidence) / 2)
    return [(k_pos, k_neg)] if (k_pos, k_neg) == quarter else [(k_pos, k_neg), quarter]


def _best_audit(scores: np.ndarray, included: np.ndarray, rules: list[tuple[int, int]], *,
                delta: float, confidence: float) -> tuple[tuple[int, int], OneRunAudit]:
    """The rule with the highest bound, each bound at ``confidence`` (the first on ties)."""
    from common.privacy.auditing import one_run_audit

    audits = [(rule, one_run_audit(scores, included, k_pos=rule[0], k_neg=rule[1],
                                   delta=delta, confidence=confidence)) for rule in rules]
    return max(audits, key=lambda pair: pair[1].epsilon_lower_bound)


# ---------------------------------------------------------------- the audit
@dataclass(frozen=True)
class AuditorResult:
    """One auditor's guesses and bound, with what the method allows at best."""

    name: str  # e.g. "steps/secret"
    threat_model: str
    k_pos: int  # guesses "in" (the highest scores)
    k_neg: int  # guesses "out" (the lowest)
    rules: int  # guess rules tried; each bound at 1 - (1 - confidence) / rules
    audit: OneRunAudit
    ceiling: float  # the bound with all of these guesses right
    simulated: float  # the same rules' best bound on a simulated run of the claim


@dataclass(frozen=True)
class DpsgdAuditResult:
    """What the white-box audit measured, next to the claim."""

    config: dict[str, Any]
    epsilon_claimed: float
    noise_multiplier_claimed: float
    noise_multiplier_run: float  # what Opacus ran (differs only under fault injection)
    sample_rate: float
    steps: int
    expected_batch_size: int
    included: int
    ceiling_all: float  # the bound with all m canaries guessed right
    auditors: tuple[AuditorResult, ...]
    canary_grad_norm_min: float  # smallest raw canary gradient norm seen, in units of C
    seconds: float
    notes: tuple[str, ...] = field(default=())

    def auditor(self, name: str) -> AuditorResult:
        return next(a for a in self.auditors if a.name == name)

    @property
    def consistent(self) -> bool:
        """No auditor of the deployed threat model (secret sampling) beats the claim."""
        return all(self.auditor(name).audit.epsilon_lower_bound <= self.epsilon_claimed + 1e-9
                   for name in SECRET_AUDITORS)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["consistent"] = self.consistent
        return out


def _claim(cfg: DpsgdAuditConfig, q: float) -> tuple[float, float]:
    """(σ, ε) of the claim for the run's q and steps (ε: the accountant's, <= target)."""
    from common.privacy.accounting import DpEvent, calibrate_noise_multiplier, epsilon_from_events

    sigma = cfg.noise_multiplier
    if sigma is None:
        sigma = calibrate_noise_multiplier(target_epsilon=cfg.epsilon, delta=cfg.delta,
                                           sample_rate=q, steps=cfg.steps,
                                           accountant=cfg.accountant)
    eps = epsilon_from_events([DpEvent(sigma, q, cfg.steps)], delta=cfg.delta,
                              accountant=cfg.accountant)
    return float(sigma), float(eps)


def train_with_canaries(cfg: DpsgdAuditConfig, included: np.ndarray, *, sigma: float,
                        seeds: DpSeeds, device: torch.device | None = None,
                        record_batches: bool = False,
                        ) -> tuple[DpTrainResult, nn.Embedding, np.ndarray, StepRecorder]:
    """One ``dp_train`` call on the canary data, as a client makes it, with noise ``sigma``.

    Returns what Opacus ran, the trained model, the canary rows along u before every step
    and after the last, (T + 1, m), and the recorder (its ``batches`` when recorded).
    """
    import torch

    from common.training import dp_train

    layout = CanaryLayout(cfg.ordinary_tokens, cfg.canaries)
    recorder = StepRecorder(layout.canary_rows, record_batches=record_batches)
    model = dirac_canary_model(layout.vocab, recorder)
    x, y = canary_dataset(cfg, included)
    ran = dp_train(model, x, y, noise_multiplier=sigma, max_grad_norm=cfg.max_grad_norm,
                   expected_batch_size=cfg.batch_size, steps=cfg.steps, lr=cfg.lr,
                   device=device or torch.device("cpu"), seeds=seeds)
    final = model.weight.detach()[layout.canary_rows].double().numpy() @ _U
    snapshots = np.vstack([*recorder.snapshots, final])
    if len(snapshots) != cfg.steps + 1:
        raise FedistillError(f"recorded {len(snapshots) - 1} optimizer steps, dp_train "
                             f"reported {ran.steps} of {cfg.steps} planned; cannot audit.")
    return ran, model, snapshots, recorder


def run_dpsgd_audit(cfg: DpsgdAuditConfig, *, device: torch.device | None = None,
                    ) -> DpsgdAuditResult:
    """Train once through ``dp_train`` with Dirac canaries; bound ε with four auditors."""
    from common.privacy.auditing import one_run_epsilon_lower_bound
    from common.privacy.secrets import DpSeeds, fresh_seeds
    from common.training import steps_per_epoch

    start = time.perf_counter()
    m, n = cfg.canaries, cfg.num_examples
    q, _ = steps_per_epoch(n, cfg.batch_size)
    expected_batch = opacus_expected_batch_size(n, q)
    sigma, claimed = _claim(cfg, q)
    sigma_run = sigma if cfg.actual_noise_multiplier is None else cfg.actual_noise_multiplier
    log.info("dpsgd audit: m=%d, n=%d, q=%.4g, steps=%d, claimed σ=%.4g ε=%.4g (δ=%g), "
             "run σ=%.4g", m, n, q, cfg.steps, sigma, claimed, cfg.delta, sigma_run)

    # --- coins (public), seeds (sampling handed to the "known" auditors only)
    rng = np.random.default_rng(cfg.seed)
    included = rng.random(m) < 0.5
    fresh = fresh_seeds()
    seeds = DpSeeds(sampling=fresh.sampling if cfg.sampling_seed is None else cfg.sampling_seed,
                    noise=fresh.noise if cfg.noise_seed is None else cfg.noise_seed)

    # --- one training run, observed before every step
    ran, _, snapshots, _ = train_with_canaries(cfg, included, sigma=sigma_run, seeds=seeds,
                                               device=device)
    z = step_observations(snapshots, lr=cfg.lr, expected_batch_size=expected_batch,
                          max_grad_norm=cfg.max_grad_norm)
    masks = poisson_masks(seeds.sampling, num_examples=n, sample_rate=ran.sample_rate,
                          steps=cfg.steps)[:, cfg.ordinary:]  # the canary slots, (T, m)
    scores = auditor_scores(z, masks, sigma=sigma, sample_rate=q)

    # --- guess rules fixed on one simulated claimed run, checked on another, then bounds
    sims = []
    for stream in (1, 2):
        sim_in, sim_masks, sim_z = simulate_claimed_run(
            m, steps=cfg.steps, sigma=sigma, sample_rate=q,
            rng=np.random.default_rng([cfg.seed, stream]))
        sims.append((sim_in, auditor_scores(sim_z, sim_masks, sigma=sigma, sample_rate=q)))
    auditors = []
    for name, threat in AUDITORS.items():
        rules = _guess_rules(cfg, sims[0][1][name], sims[0][0])
        # Every rule is a test of its own: Bonferroni keeps the max at cfg.confidence.
        per_test = 1 - (1 - cfg.confidence) / len(rules)
        (k_pos, k_neg), audit = _best_audit(scores[name], included, rules, delta=cfg.delta,
                                            confidence=per_test)
        _, simulated = _best_audit(sims[1][1][name], sims[1][0], rules, delta=cfg.delta,
                                   confidence=per_test)
        ceiling = one_run_epsilon_lower_bound(m, audit.guesses, audit.guesses,
                                              delta=cfg.delta, confidence=per_test)
        auditors.append(AuditorResult(name, threat, k_pos, k_neg, len(rules), audit, ceiling,
                                      simulated.epsilon_lower_bound))

    # --- was every canary gradient clipped to exactly C along u?
    gap = math.sqrt(2) * float(np.abs(snapshots).max())  # the largest |logit_0 - logit_1|
    norm_min = math.sqrt(2) / (1 + math.exp(gap)) / cfg.max_grad_norm  # sqrt(2) p_1 / C
    notes = []
    if norm_min < 1:
        notes.append(f"a canary's raw gradient fell to {norm_min:.3g} C (< C): it was not "
                     "always clipped to C; lower lr or max_grad_norm for a sharper audit.")
    if (ran.noise_multiplier, ran.sample_rate, ran.steps) != (sigma_run, q, cfg.steps):
        notes.append(f"Opacus ran σ={ran.noise_multiplier}, q={ran.sample_rate}, "
                     f"steps={ran.steps}; planned σ={sigma_run}, q={q}, steps={cfg.steps}.")
    return DpsgdAuditResult(
        config=asdict(cfg), epsilon_claimed=claimed, noise_multiplier_claimed=sigma,
        noise_multiplier_run=ran.noise_multiplier, sample_rate=ran.sample_rate,
        steps=ran.steps, expected_batch_size=expected_batch, included=int(included.sum()),
        ceiling_all=one_run_epsilon_lower_bound(m, m, m, delta=cfg.delta,
                                                confidence=cfg.confidence),
        auditors=tuple(auditors), canary_grad_norm_min=norm_min,
        seconds=time.perf_counter() - start, notes=tuple(notes),
    )

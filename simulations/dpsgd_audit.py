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
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
import typer

from common.errors import ConfigError, FedistillError

if TYPE_CHECKING:  # torch, Opacus and scipy load only when an audit runs: `fedistill` starts fast
    import torch
    from torch import Tensor, nn

    from common.privacy.auditing import OneRunAudit
    from common.privacy.secrets import DpSeeds
    from common.training import DpTrainResult

log = logging.getLogger(__name__)
ACCOUNTANTS = ("rdp", "prv")  # common.privacy.accounting.ACCOUNTANTS (checked in the tests)

# dp_train's SGD (common/training/dp.py: _make_optimizer): the per-step auditor undoes it.
# tests/test_audit_dpsgd.py (the σ = 0 run through dp_train) fails if it changes.
SGD_MOMENTUM = 0.9
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


# ---------------------------------------------------------------- what the auditor sees
def poisson_masks(sampling_seed: int, *, num_examples: int, sample_rate: float,
                  steps: int) -> np.ndarray:
    """Which examples each of ``steps`` DP-SGD steps sampled, recomputed from the seed.

    Replays the generator draws of ``dp_train``'s loader: every pass over the loader
    first draws the DataLoader iterator's base seed, then Opacus'
    ``UniformWithReplacementSampler`` draws ``torch.rand(n) < q`` for each of its
    ``int(1 / q)`` batches. Returns a (steps, n) bool array.
    """
    import torch

    gen = torch.Generator().manual_seed(sampling_seed)
    per_pass = int(1 / sample_rate)  # the sampler's own batch count
    masks: list[np.ndarray] = []
    while len(masks) < steps:
        torch.empty((), dtype=torch.int64).random_(generator=gen)  # the iterator's base seed
        for _ in range(min(per_pass, steps - len(masks))):
            masks.append((torch.rand(num_examples, generator=gen) < sample_rate).numpy())
    return np.stack(masks)


def opacus_expected_batch_size(num_examples: int, sample_rate: float) -> int:
    """The B that Opacus divides the noisy gradient sum by (PrivacyEngine.make_private)."""
    return int(num_examples * sample_rate)


def step_observations(snapshots: np.ndarray, *, lr: float, expected_batch_size: int,
                      max_grad_norm: float, momentum: float = SGD_MOMENTUM) -> np.ndarray:
    """Each step's noisy gradient on each canary row along u, in units of C: (T, m).

    ``snapshots`` (T + 1, m) are the projected rows before every step and after the last.
    SGD with momentum moves by -lr * buf_t with buf_t = momentum * buf_{t-1} + g_t, so
    g_t = -(d_t - momentum * d_{t-1}) / lr for the moves d_t. Opacus' g_t along u is
    (-b_t C + N(0, σ²C²)) / B, so the returned z_t = b_t + σ N(0, 1).
    """
    moves = np.diff(snapshots, axis=0)  # (T, m)
    previous = np.vstack([np.zeros_like(moves[:1]), moves[:-1]])
    return (moves - momentum * previous) * expected_batch_size / (lr * max_grad_norm)


def momentum_weights(steps: int, momentum: float = SGD_MOMENTUM) -> np.ndarray:
    """How much step s's gradient moves the final model: sum_{t>=s} momentum^(t-s)."""
    remaining = np.arange(steps, 0, -1)  # T - s + 1 for s = 1..T
    return (1 - momentum ** remaining) / (1 - momentum)


def auditor_scores(z: np.ndarray, masks: np.ndarray, *, sigma: float,
                   sample_rate: float) -> dict[str, np.ndarray]:
    """The four auditors' scores (higher = "in") from observations z (T, m).

    ``masks`` (T, m) are the canary slots' Poisson draws, used only by the *known*
    auditors. ``sigma`` is the claimed noise multiplier: each score is the log-likelihood
    ratio of "in" vs "out" under the claimed mechanism (any score gives a valid bound; the
    likelihood ratio is the most powerful one when the claim is true).
    """
    w = momentum_weights(len(z))
    final = w @ z  # (m,): (W_T - W_0) along u, in units of lr C / B
    mu = w @ masks  # (m,): the final move's mean if the canary is in
    var = sigma**2 * float(w @ w)
    per_step = (z - 0.5) / sigma**2  # log N(z; 1, σ²) / N(z; 0, σ²), (T, m)
    if sample_rate < 1:
        secret = np.logaddexp(math.log1p(-sample_rate), math.log(sample_rate) + per_step)
    else:
        secret = per_step
    return {
        "final/secret": final,
        "steps/secret": secret.sum(axis=0),
        "final/known": (mu * final - mu**2 / 2) / var,
        "steps/known": (masks * per_step).sum(axis=0),
    }


# ---------------------------------------------------------------- guesses and bounds
def _bound_grid(m: int) -> list[int]:
    return sorted({0, *np.unique(np.geomspace(1, m, 28).round().astype(int)).tolist()})


def choose_guesses(scores: np.ndarray, included: np.ndarray, *, delta: float,
                   confidence: float) -> tuple[int, int, float]:
    """(k_pos, k_neg, bound) that maximise the one-run bound on *these* scores.

    Call it on a simulated run only: picking k on the audited run's own scores would
    void the bound's confidence, which holds for guesses fixed in advance.
    """
    from common.privacy.auditing import one_run_epsilon_lower_bound, one_run_p_value

    m = len(scores)
    order = np.argsort(-scores, kind="stable")
    hits_in = np.concatenate([[0], np.cumsum(included[order])])  # right among k highest
    hits_out = np.concatenate([[0], np.cumsum(~included[order][::-1])])  # among k lowest
    pairs = [(a, b) for a in _bound_grid(m) for b in _bound_grid(m) if 0 < a + b <= m]
    # Steinke et al.'s k = m/4 per side first: it stays the choice when nothing beats it.
    best = (max(1, m // 4), max(1, m // 4), 0.0)
    for k_pos, k_neg in [best[:2], *pairs]:
        r, v = k_pos + k_neg, int(hits_in[k_pos] + hits_out[k_neg])
        # The p-value grows with ε: when it does not reject the best ε so far, this pair
        # cannot beat it (one p-value instead of a whole bisection).
        if one_run_p_value(m, r, v, epsilon=best[2], delta=delta) >= 1 - confidence:
            continue
        bound = one_run_epsilon_lower_bound(m, r, v, delta=delta, confidence=confidence,
                                            tol=1e-3)
        if bound > best[2]:
            best = (k_pos, k_neg, bound)
    return best


def simulate_claimed_run(m: int, *, steps: int, sigma: float, sample_rate: float,
                         rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Coins, Poisson masks and observations of an ideal run of the claimed mechanism."""
    included = rng.random(m) < 0.5
    masks = rng.random((steps, m)) < sample_rate
    z = masks * included + sigma * rng.standard_normal((steps, m))
    return included, masks, z


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


# ---------------------------------------------------------------- command line
def _result_table(result: DpsgdAuditResult):  # noqa: ANN202 - a rich Table
    from rich.table import Table

    table = Table(title=f"White-box DP-SGD audit: claimed ε = {result.epsilon_claimed:.4g} "
                        f"(δ = {result.config['delta']:g}), "
                        f"{result.config['canaries']} canaries")
    table.add_column("auditor", no_wrap=True)
    for column in ("in / out", "right / guesses", "ε lower bound", "ceiling", "ideal (sim.)"):
        table.add_column(column, justify="right")
    for a in result.auditors:
        table.add_row(a.name, f"{a.k_pos} / {a.k_neg}", f"{a.audit.correct} / {a.audit.guesses}",
                      f"{a.audit.epsilon_lower_bound:.3f}", f"{a.ceiling:.3f}",
                      f"{a.simulated:.3f}")
    return table


def dpsgd_command(
    epsilon: Annotated[float | None, typer.Option(
        help="Claimed ε at --delta; σ is calibrated to it (default 8 unless "
             "--noise-multiplier).")] = None,
    noise_multiplier: Annotated[float | None, typer.Option(
        help="Claim σ instead of ε (ε is then the accountant's for it).")] = None,
    actual_noise_multiplier: Annotated[float | None, typer.Option(
        help="σ given to dp_train (default: the claimed σ). Lower it to check that the "
             "audit catches a run with less noise than claimed.")] = None,
    delta: Annotated[float, typer.Option(help="δ of the claim and the bound.")] = 1e-5,
    canaries: Annotated[int, typer.Option(help="m Dirac canaries, each in with prob. "
                                               "1/2.")] = 1000,
    ordinary: Annotated[int, typer.Option(help="Ordinary examples.")] = 1000,
    batch_size: Annotated[int, typer.Option(help="Expected batch size (q = 1 / "
                                                 "ceil(n / batch)).")] = 100,
    steps: Annotated[int, typer.Option(help="DP-SGD steps (one dp_train call).")] = 100,
    lr: Annotated[float, typer.Option(help="SGD learning rate (small keeps canaries "
                                           "clipped to C).")] = 1e-3,
    accountant: Annotated[str, typer.Option(help="Accountant of the claim: rdp or "
                                                 "prv.")] = "rdp",
    k_pos: Annotated[int | None, typer.Option(help="Guesses 'in' for every auditor "
                                                   "(default: chosen on a simulated "
                                                   "claimed run).")] = None,
    k_neg: Annotated[int | None, typer.Option(help="Guesses 'out' (with --k-pos).")] = None,
    confidence: Annotated[float, typer.Option(help="Confidence of the bounds.")] = 0.95,
    seed: Annotated[int, typer.Option(help="Public seed: coins, data, the simulation.")] = 0,
    sampling_seed: Annotated[int | None, typer.Option(
        help="Poisson sampling seed (default: fresh). Only the 'known' auditors get "
             "it.")] = None,
    noise_seed: Annotated[int | None, typer.Option(
        help="Noise seed, for a reproducible run (default: fresh). No auditor gets "
             "it.")] = None,
    out: Annotated[Path | None, typer.Option(help="Write dpsgd_audit.json here.")] = None,
) -> None:
    """White-box audit of dp_train with Dirac canaries (Nasr et al. 2023; one run).

    Exits 1 when an auditor of the deployed threat model (sampling secret) bounds ε above
    the claim, 2 on bad input.
    """
    import torch
    from rich.console import Console

    from simulations.audit_output import finish_audit

    console = Console()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
    try:
        if epsilon is None and noise_multiplier is None:
            epsilon = 8.0
        cfg = DpsgdAuditConfig(
            epsilon=epsilon, noise_multiplier=noise_multiplier,
            actual_noise_multiplier=actual_noise_multiplier, delta=delta, canaries=canaries,
            ordinary=ordinary, batch_size=batch_size, steps=steps, lr=lr,
            accountant=accountant, k_pos=k_pos, k_neg=k_neg, confidence=confidence,
            seed=seed, sampling_seed=sampling_seed, noise_seed=noise_seed)
        with console.status("training with Dirac canaries through dp_train ..."):
            result = run_dpsgd_audit(cfg)
    except FedistillError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(code=2) from None
    console.print(_result_table(result))
    for name, threat in AUDITORS.items():
        console.print(f"  {name}: {threat}")
    console.print("  ceiling: the bound with every one of these guesses right; ideal: the "
                  "same rule on a simulated run of the claimed mechanism")
    console.print(
        f"σ claimed {result.noise_multiplier_claimed:.4g} / run "
        f"{result.noise_multiplier_run:.4g}, q = {result.sample_rate:.4g}, "
        f"steps = {result.steps}, canaries in = {result.included} / {cfg.canaries}, "
        f"ceiling with all {cfg.canaries} guessed right = {result.ceiling_all:.3f}, "
        f"{result.seconds:.1f} s")
    finish_audit(console, notes=result.notes, out=out, filename="dpsgd_audit.json",
                 payload=result.to_dict(), consistent=result.consistent,
                 failure="An auditor with secret sampling bounds ε above the claim: the "
                         "claim is false, or dp_train does not do what the accountant "
                         "assumes.")

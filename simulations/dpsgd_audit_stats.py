"""The statistics of the white-box DP-SGD audit: what its auditors see, score and guess.

:mod:`simulations.dpsgd_audit` runs the experiment (Dirac canaries through ``dp_train``);
this module turns what it recorded into evidence: the Poisson batches recomputed from the
sampling seed, each step's noisy gradient along u, the four auditors' likelihood-ratio
scores, and the guess counts that maximise the one-run bound on a simulated run of the
claimed mechanism. Pure numpy (torch and scipy load only inside the functions that need them).
"""

from __future__ import annotations

import math

import numpy as np

# dp_train's SGD (common/training/dp.py: _make_optimizer): the per-step auditor undoes it.
# tests/test_audit_dpsgd.py (the σ = 0 run through dp_train) fails if it changes.
SGD_MOMENTUM = 0.9


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

"""Choosing the next token from logits: greedy, temperature, top-k and top-p (nucleus)."""

from __future__ import annotations

import torch

from common.errors import ModelError


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Set every logit outside the ``k`` largest of each row to -inf.

    Ties at the k-th value are all kept (the threshold is a value, not a count).
    """
    if k < 1:
        raise ModelError(f"top_k={k} must be >= 1.")
    k = min(k, logits.size(-1))
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]  # (..., 1)
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filtering (Holtzman et al., 2020): keep the smallest set of most likely
    tokens whose probability mass reaches ``p``; set the rest to -inf.

    A token is kept when the mass of the tokens ranked above it is still below ``p``,
    so the most likely token is always kept.
    """
    if not 0.0 < p <= 1.0:
        raise ModelError(f"top_p={p} must be in (0, 1].")
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs  # mass of the higher-ranked tokens
    drop_sorted = mass_before >= p
    drop = drop_sorted.scatter(-1, order, drop_sorted)  # back to vocabulary order
    return logits.masked_fill(drop, float("-inf"))


def sample_next_token(
    logits: torch.Tensor,
    *,
    greedy: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Pick one token per row of ``logits`` (B, V); returns (B,) token ids.

    Parameters
    ----------
    greedy
        Take the arg-max and ignore the sampling knobs (default: False).
    temperature
        Divide the logits by it before sampling; must be > 0 (default: 1.0).
    top_k, top_p
        Optional filters applied after the temperature (default: None).
    generator
        Random generator for reproducible sampling (default: None, the global one).
    """
    if greedy:
        return logits.argmax(dim=-1)
    if temperature <= 0.0:
        raise ModelError(f"temperature={temperature} must be > 0; use greedy=True for arg-max.")
    logits = logits / temperature
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None:
        logits = top_p_filter(logits, top_p)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)

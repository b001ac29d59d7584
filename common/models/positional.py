"""Positional information for Transformers: the fixed sinusoid and learned positions.

Both modules take token vectors ``x`` of shape (B, T, d) and return ``x`` plus the
vectors for positions ``offset .. offset+T-1`` (the offset is where a KV-cached
decoding step starts). Both are written for Opacus:

- The sinusoid table is a buffer, and it lives in a module with no parameters of its
  own: Opacus refuses trainable layers that also hold buffers.
- Learned positions are an ``nn.Embedding`` looked up with a (B, T) id tensor. The
  ids are batch-first (Opacus reads dim 0 of an embedding's input as the batch) and
  ``.contiguous()`` (ghost clipping calls ``.view`` on them, which an ``.expand()``-ed
  tensor refuses).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from common.errors import ModelError

POSITIONAL_KINDS = ("sinusoidal", "learned")


def sinusoidal_table(max_len: int, d_model: int) -> torch.Tensor:
    """The table of "Attention Is All You Need" (Vaswani et al., 2017, section 3.5).

    ``PE[pos, 2i] = sin(pos / 10000^(2i/d))`` and ``PE[pos, 2i+1] = cos(pos / 10000^(2i/d))``.
    An odd ``d_model`` gets one more sine column than cosine columns.

    Returns
    -------
    torch.Tensor
        Float32 tensor of shape (max_len, d_model).
    """
    position = torch.arange(max_len, dtype=torch.float64).unsqueeze(1)  # (L, 1)
    two_i = torch.arange(0, d_model, 2, dtype=torch.float64)  # (ceil(d/2),)
    # 10000^(-2i/d) through exp/log, in float64 so the float32 table is exact to rounding
    inv_freq = torch.exp(-math.log(10000.0) * two_i / d_model)
    angles = position * inv_freq  # (L, ceil(d/2))
    table = torch.zeros(max_len, d_model, dtype=torch.float64)
    table[:, 0::2] = torch.sin(angles)
    table[:, 1::2] = torch.cos(angles[:, : d_model // 2])
    return table.to(torch.float32)


def _check_span(offset: int, length: int, max_len: int) -> None:
    if offset < 0 or offset + length > max_len:
        raise ModelError(
            f"Positions {offset}..{offset + length - 1} do not fit max_len={max_len}; "
            "shorten the input or build the model with a larger max_len."
        )


class SinusoidalPositionalEncoding(nn.Module):
    """Adds the fixed sinusoid table; holds a buffer and no parameters (Opacus-safe)."""

    def __init__(self, d_model: int, max_len: int) -> None:
        super().__init__()
        self.max_len = max_len
        # non-persistent: the table is a pure function of (max_len, d), so checkpoints
        # stay interchangeable between sinusoidal and learned-position models
        self.register_buffer("table", sinusoidal_table(max_len, d_model), persistent=False)

    def forward(self, x: torch.Tensor, offset: int = 0) -> torch.Tensor:
        T = x.size(1)
        _check_span(offset, T, self.max_len)
        pe = self.table[offset : offset + T].to(dtype=x.dtype)  # (T, d)
        return x + pe.unsqueeze(0)  # (B, T, d)


class LearnedPositionalEmbedding(nn.Module):
    """Adds one trained vector per position (BERT/GPT-2 style), as an ``nn.Embedding``."""

    def __init__(self, d_model: int, max_len: int) -> None:
        super().__init__()
        self.max_len = max_len
        self.embedding = nn.Embedding(max_len, d_model)

    def forward(self, x: torch.Tensor, offset: int = 0) -> torch.Tensor:
        B, T = x.shape[:2]
        _check_span(offset, T, self.max_len)
        ids = torch.arange(offset, offset + T, device=x.device)  # (T,)
        # one row of ids per example, materialised: see the module docstring
        ids = ids.unsqueeze(0).expand(B, T).contiguous()  # (B, T)
        return x + self.embedding(ids)


def make_positional(kind: str, d_model: int, max_len: int) -> nn.Module:
    """Build the positional module named ``kind`` ("sinusoidal" or "learned")."""
    if kind == "sinusoidal":
        return SinusoidalPositionalEncoding(d_model, max_len)
    if kind == "learned":
        return LearnedPositionalEmbedding(d_model, max_len)
    raise ModelError(f"Unknown positional encoding {kind!r}; use one of {POSITIONAL_KINDS}.")

"""Scaled dot-product attention and multi-head attention, built for Opacus.

Multi-head attention is four ``nn.Linear`` projections (q, k, v, out) around a
parameter-free attention function. Opacus has exact per-sample gradient rules for
``nn.Linear``, so this form gives exact per-sample gradients under hooks and ghost
clipping. ``nn.MultiheadAttention`` is avoided on purpose: Opacus swaps it for
``DPMultiheadAttention``, which disagreed with the original and refuses causal masks
(see notes/OPACUS.md).

Mask convention: a boolean ``attn_mask`` is True where a query *may* attend to a key
(as in ``torch.nn.functional.scaled_dot_product_attention``); a ``key_padding_mask``
is True where a key is *padding* (as in ``nn.MultiheadAttention``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from common.errors import ModelError


def causal_mask(T: int, S: int, device: torch.device | None = None) -> torch.Tensor:
    """(T, S) boolean mask letting query i see keys 0 .. i + (S - T).

    With ``S > T`` the queries are the *last* T positions of the sequence (a KV-cached
    decoding step), so the diagonal is aligned bottom-right.
    """
    return torch.ones(T, S, dtype=torch.bool, device=device).tril(diagonal=S - T)


def scaled_dot_product_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    training: bool = False,
) -> torch.Tensor:
    """softmax(q kᵀ / sqrt(d)) v, with an optional boolean mask and dropout on the weights.

    Parameters
    ----------
    q, k, v
        (B, nh, T, hs), (B, nh, S, hs), (B, nh, S, hs).
    attn_mask
        Boolean, broadcastable to (B, nh, T, S); True = may attend (default: None).
    dropout_p
        Dropout probability on the attention weights, used when ``training`` (default: 0).

    A query whose keys are all masked would give softmax(-inf, ..., -inf) = NaN; we fill
    masked scores with the dtype's most negative *finite* value instead, so such a row
    (an all-padding sequence) averages the values and stays finite, while in any row
    with at least one visible key the masked weights underflow to exactly 0.
    """
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))  # (B, nh, T, S)
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, torch.finfo(scores.dtype).min)
    weights = scores.softmax(dim=-1)
    weights = F.dropout(weights, p=dropout_p, training=training)
    return weights @ v  # (B, nh, T, hs)


class KVCache:
    """Keys and values of the positions already decoded, for one attention layer.

    Decoding token t then costs one query against t cached keys instead of
    recomputing the whole prefix. Used only at inference (no gradients flow).
    """

    def __init__(self) -> None:
        self.k: torch.Tensor | None = None  # (B, nh, S, hs)
        self.v: torch.Tensor | None = None

    def __len__(self) -> int:
        return 0 if self.k is None else self.k.size(2)

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Add the new positions' keys/values; return all of them."""
        self.k = k if self.k is None else torch.cat([self.k, k], dim=2)
        self.v = v if self.v is None else torch.cat([self.v, v], dim=2)
        return self.k, self.v


class MultiHeadAttention(nn.Module):
    """Self, causal or cross multi-head attention from separate q/k/v/out projections."""

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if d_model % n_heads != 0:
            raise ModelError(f"d_model={d_model} is not divisible by n_heads={n_heads}.")
        self.n_heads = n_heads
        self.dropout = dropout
        # separate projections (not one fused qkv) so cross-attention can take q from
        # the decoder and k, v from the encoder with the same module
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        return x.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2)  # (B, nh, T, hs)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        *,
        key_padding_mask: torch.Tensor | None = None,
        causal: bool = False,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """Attend from ``x`` (B, T, d) to ``context`` (B, S, d), or to ``x`` itself.

        Parameters
        ----------
        context
            Keys/values source for cross-attention (default: None = self-attention).
        key_padding_mask
            (B, S) boolean, True where the key is padding (default: None).
        causal
            Forbid attending to later positions (default: False).
        cache
            Self-attention only: the new keys/values are appended to it and the queries
            attend to every cached position (default: None).
        """
        B, T, C = x.shape
        source = x if context is None else context
        q = self._split_heads(self.q_proj(x))  # (B, nh, T, hs)
        k = self._split_heads(self.k_proj(source))  # (B, nh, S, hs)
        v = self._split_heads(self.v_proj(source))
        if cache is not None:
            k, v = cache.append(k, v)  # (B, nh, S_past + T, hs)
        S = k.size(2)

        mask = None
        if key_padding_mask is not None:
            mask = ~key_padding_mask[:, None, None, :]  # (B, 1, 1, S)
        if causal:
            allowed = causal_mask(T, S, device=x.device)  # (T, S)
            mask = allowed if mask is None else mask & allowed

        y = scaled_dot_product_attention(q, k, v, mask, self.dropout, self.training)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble heads: (B, T, d)
        return self.out_proj(y)

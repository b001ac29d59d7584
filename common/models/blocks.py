"""Transformer blocks: feed-forward, self-attention block, decoder block, and a stack.

``norm`` picks where LayerNorm sits around each residual sub-layer:

- "post" (Vaswani et al., 2017; BERT): ``x = LN(x + Dropout(f(x)))``.
- "pre" (GPT-2; Xiong et al., 2020): ``x = x + Dropout(f(LN(x)))``, plus one final
  LayerNorm after the stack. It trains stably without learning-rate warm-up, which
  matters for short DP-SGD runs on clients.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from common.errors import ModelError
from common.models.attention import KVCache, MultiHeadAttention

NORMS = ("pre", "post")


@dataclass(frozen=True)
class TransformerSettings:
    """The shape of a Transformer, shared by every family built on one (nanoGPT's
    ``GPTConfig``): the factory fills it from a size preset, tests build it directly."""

    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    d_ff: int = 128
    dropout: float = 0.1
    norm: str = "pre"  # see the module docstring
    positional: str = "sinusoidal"  # common/models/positional.py


def init_weights(module: nn.Module) -> None:
    """GPT-2 initialisation: N(0, 0.02) for linear and embedding weights, zero biases."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)


class FeedForward(nn.Module):
    """Position-wise MLP: Linear(d, d_ff) -> GELU -> Linear(d_ff, d)."""

    def __init__(self, d_model: int, d_ff: int) -> None:
        super().__init__()
        self.fc_in = nn.Linear(d_model, d_ff)
        self.act = nn.GELU()
        self.fc_out = nn.Linear(d_ff, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_out(self.act(self.fc_in(x)))


class _Residual(nn.Module):
    """One residual sub-layer with its LayerNorm and dropout, pre- or post-norm."""

    def __init__(self, d_model: int, dropout: float, norm: str) -> None:
        super().__init__()
        if norm not in NORMS:
            raise ModelError(f"Unknown norm {norm!r}; use one of {NORMS}.")
        self.pre = norm == "pre"
        self.ln = nn.LayerNorm(d_model)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, sublayer: Callable[[torch.Tensor], torch.Tensor]):
        if self.pre:
            return x + self.drop(sublayer(self.ln(x)))
        return self.ln(x + self.drop(sublayer(x)))


class TransformerBlock(nn.Module):
    """Self-attention then feed-forward (an encoder block, or a GPT block when causal)."""

    def __init__(self, s: TransformerSettings) -> None:
        super().__init__()
        self.attn = MultiHeadAttention(s.d_model, s.n_heads, s.dropout)
        self.attn_res = _Residual(s.d_model, s.dropout, s.norm)
        self.ff = FeedForward(s.d_model, s.d_ff)
        self.ff_res = _Residual(s.d_model, s.dropout, s.norm)

    def forward(
        self,
        x: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        causal: bool = False,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        x = self.attn_res(
            x,
            lambda h: self.attn(h, key_padding_mask=key_padding_mask, causal=causal, cache=cache),
        )
        return self.ff_res(x, self.ff)


class DecoderBlock(nn.Module):
    """Causal self-attention, cross-attention to the encoder memory, feed-forward."""

    def __init__(self, s: TransformerSettings) -> None:
        super().__init__()
        self.self_attn = MultiHeadAttention(s.d_model, s.n_heads, s.dropout)
        self.self_res = _Residual(s.d_model, s.dropout, s.norm)
        self.cross_attn = MultiHeadAttention(s.d_model, s.n_heads, s.dropout)
        self.cross_res = _Residual(s.d_model, s.dropout, s.norm)
        self.ff = FeedForward(s.d_model, s.d_ff)
        self.ff_res = _Residual(s.d_model, s.dropout, s.norm)

    def forward(
        self,
        x: torch.Tensor,
        memory: torch.Tensor,
        memory_padding_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x = self.self_res(x, lambda h: self.self_attn(h, causal=True))
        x = self.cross_res(
            x, lambda h: self.cross_attn(h, memory, key_padding_mask=memory_padding_mask)
        )
        return self.ff_res(x, self.ff)


def final_norm(s: TransformerSettings) -> nn.Module:
    """The LayerNorm a pre-norm stack ends with (post-norm blocks already end in one)."""
    return nn.LayerNorm(s.d_model) if s.norm == "pre" else nn.Identity()


class TransformerStack(nn.Module):
    """``n_layers`` TransformerBlocks and, for pre-norm, the final LayerNorm."""

    def __init__(self, s: TransformerSettings) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(TransformerBlock(s) for _ in range(s.n_layers))
        # post-norm blocks already end in a LayerNorm; pre-norm leaves the residual
        # stream un-normalised, so it needs one more before any head
        self.final_norm = final_norm(s)

    def forward(
        self,
        x: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        causal: bool = False,
        caches: list[KVCache] | None = None,
    ) -> torch.Tensor:
        for i, block in enumerate(self.blocks):
            cache = None if caches is None else caches[i]
            x = block(x, key_padding_mask=key_padding_mask, causal=causal, cache=cache)
        return self.final_norm(x)

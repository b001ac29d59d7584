"""The encoder classifier (BERT-style) and the causal decoder LM (GPT-style).

Padding contract (shared with the LSTM and CNN students): token id ``pad_id`` marks
padding, sequences are right-padded, and the model derives its key-padding mask from
``input_ids != pad_id`` itself, so the model takes one tensor (which keeps Opacus'
batch handling simple). Padding never changes the outputs of real tokens.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from common.models.attention import KVCache
from common.models.blocks import TransformerSettings, TransformerStack, init_weights
from common.models.positional import make_positional
from common.models.sampling import sample_next_token

POOLINGS = ("mean", "cls")


def masked_mean(h: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Mean of ``h`` (B, T, d) over the positions where ``keep`` (B, T) is True.

    An all-padding row has nothing to average and gives zeros (never 0/0 = NaN).
    """
    weights = keep.to(h.dtype).unsqueeze(-1)  # (B, T, 1)
    count = weights.sum(dim=1).clamp(min=1.0)  # (B, 1)
    return (h * weights).sum(dim=1) / count  # (B, d)


class TransformerClassifier(nn.Module):
    """Token ids (B, T) -> class logits (B, num_classes), BERT-style encoder.

    ``pooling="cls"`` prepends a learned [CLS] vector and classifies from it; it is an
    ``nn.Embedding(1, d)`` rather than a raw ``nn.Parameter``, because a bare parameter
    on a module with children makes Opacus fall back to vmapping the whole model.
    ``pooling="mean"`` averages the encoder outputs of the real (non-pad) tokens.
    """

    def __init__(
        self,
        vocab_size: int,
        num_classes: int,
        max_len: int,
        settings: TransformerSettings | None = None,
        pooling: str = "mean",
        pad_id: int = 0,
    ) -> None:
        super().__init__()
        s = settings or TransformerSettings()
        self.pad_id = pad_id
        self.pooling = pooling
        self.tok_emb = nn.Embedding(vocab_size, s.d_model)
        self.cls_emb = nn.Embedding(1, s.d_model) if pooling == "cls" else None
        # the [CLS] slot takes position 0, so it needs one more position
        n_positions = max_len + (1 if pooling == "cls" else 0)
        self.pos = make_positional(s.positional, s.d_model, n_positions)
        self.drop = nn.Dropout(s.dropout)
        self.encoder = TransformerStack(s)
        self.head = nn.Linear(s.d_model, num_classes)
        self.apply(init_weights)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        x, keep = self.embed(input_ids)
        h = self.encoder(x, key_padding_mask=~keep)  # (B, T', d)
        return self.classify(h, keep)

    def embed(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Token (and [CLS]) embeddings with positions, and the real-token mask: what the
        first block reads (a pipeline split, common/models/pipeline.py, calls it alone)."""
        keep = input_ids != self.pad_id  # (B, T), True on real tokens
        # .contiguous(): ghost clipping .view()s embedding inputs; a sliced batch would fail
        x = self.tok_emb(input_ids.contiguous())  # (B, T, d)
        if self.cls_emb is not None:
            B = input_ids.size(0)
            cls_ids = torch.zeros(B, 1, dtype=torch.long, device=input_ids.device)
            x = torch.cat([self.cls_emb(cls_ids), x], dim=1)  # (B, 1 + T, d)
            keep = torch.cat([torch.ones_like(keep[:, :1]), keep], dim=1)
        return self.drop(self.pos(x)), keep

    def classify(self, h: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Logits from the encoder's output ``h`` (B, T', d)."""
        pooled = h[:, 0] if self.cls_emb is not None else masked_mean(h, keep)  # (B, d)
        return self.head(pooled)


class GPT(nn.Module):
    """Causal decoder LM: token ids (B, T) -> next-token logits (B, T, vocab_size).

    The output projection ``lm_head`` is *not* tied to the token embedding: a weight
    used through another module gets no per-sample gradient of its own in Opacus
    (silently wrong under hooks) and tying raises under ghost clipping.

    Right padding needs no mask here: causal attention already stops a real token
    from seeing the pads after it; leave pad targets out of the loss
    (``ignore_index=pad_id``).
    """

    def __init__(
        self,
        vocab_size: int,
        max_len: int,
        settings: TransformerSettings | None = None,
    ) -> None:
        super().__init__()
        s = settings or TransformerSettings(positional="learned")
        self.max_len = max_len
        self.n_layers = s.n_layers
        self.tok_emb = nn.Embedding(vocab_size, s.d_model)
        self.pos = make_positional(s.positional, s.d_model, max_len)
        self.drop = nn.Dropout(s.dropout)
        self.stack = TransformerStack(s)
        self.lm_head = nn.Linear(s.d_model, vocab_size, bias=False)
        self.apply(init_weights)

    def forward(self, input_ids: torch.Tensor, caches: list[KVCache] | None = None) -> torch.Tensor:
        """Logits for every position; with ``caches``, ``input_ids`` continue the cached
        prefix (their positions start after it) and the caches grow by T."""
        offset = 0 if caches is None else len(caches[0])
        # .contiguous(): ghost clipping .view()s embedding inputs (a sliced batch fails)
        x = self.tok_emb(input_ids.contiguous())  # (B, T, d)
        x = self.drop(self.pos(x, offset=offset))
        h = self.stack(x, causal=True, caches=caches)
        return self.lm_head(h)  # (B, T, vocab)

    @torch.no_grad()
    def generate_with_logits(
        self,
        input_ids: torch.Tensor,
        max_new_tokens: int,
        *,
        greedy: bool = False,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        use_cache: bool = True,
        eos_id: int | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Autoregressively extend ``input_ids`` (B, T) (equal-length prompts).

        Returns the ids (B, T + n) and the logits each new token was chosen from
        (B, n, vocab_size), n <= ``max_new_tokens``.

        Parameters
        ----------
        max_new_tokens
            How many tokens to add.
        greedy
            Arg-max decoding; the sampling knobs are ignored (default: False).
        temperature, top_k, top_p
            Sampling controls, see :func:`sample_next_token` (default: 1.0, None, None).
        use_cache
            Reuse each layer's keys/values instead of recomputing the prefix
            (default: True).
        eos_id
            Stop once every row has produced it; finished rows are padded with it
            (default: None = always generate ``max_new_tokens``).
        generator
            Random generator for reproducible sampling (default: None).

        Call ``model.eval()`` first, or dropout stays active while generating.
        """
        ids = input_ids
        # the KV cache needs a position for every token fed in; when the run would
        # outgrow max_len, recompute over the last max_len tokens instead (nanoGPT)
        fits = ids.size(1) + max_new_tokens - 1 <= self.max_len
        caches = [KVCache() for _ in range(self.n_layers)] if use_cache and fits else None
        finished = torch.zeros(ids.size(0), dtype=torch.bool, device=ids.device)
        step_logits = []
        next_input = ids
        for _ in range(max_new_tokens):
            if caches is None:
                next_input = ids[:, -self.max_len :]
            logits = self(next_input, caches=caches)[:, -1]  # (B, vocab)
            step_logits.append(logits)
            token = sample_next_token(
                logits,
                greedy=greedy,
                temperature=temperature,
                top_k=top_k,
                top_p=top_p,
                generator=generator,
            )  # (B,)
            if eos_id is not None:
                token = token.masked_fill(finished, eos_id)  # finished rows repeat eos
                finished |= token == eos_id
            ids = torch.cat([ids, token.unsqueeze(1)], dim=1)
            next_input = token.unsqueeze(1)  # (B, 1): only the new token when cached
            if eos_id is not None and bool(finished.all()):
                break
        return ids, torch.stack(step_logits, dim=1)

    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, **options: Any
                 ) -> torch.Tensor:
        """Only the ids of :meth:`generate_with_logits` (same options)."""
        return self.generate_with_logits(input_ids, max_new_tokens, **options)[0]

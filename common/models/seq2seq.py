"""Encoder-decoder Transformer (Vaswani et al., 2017) with greedy and beam decoding.

``model(src_ids (B, S), tgt_ids (B, T)) -> logits (B, T, vocab_size)``: teacher
forcing, where ``tgt_ids`` is the decoder input (``bos`` followed by the target
shifted right) and the logits predict the target. Source padding (``pad_id``) is
masked from the encoder and from cross-attention. Source and target share one
vocabulary but have separate embeddings: sharing one ``nn.Embedding`` between encoder
and decoder is parameter tying, which ghost clipping refuses.
"""

from __future__ import annotations

import torch
from torch import nn

from common.models.blocks import (
    DecoderBlock,
    TransformerSettings,
    TransformerStack,
    final_norm,
    init_weights,
)
from common.models.positional import make_positional


class Seq2SeqTransformer(nn.Module):
    """Transformer encoder over the source, causal decoder with cross-attention."""

    def __init__(
        self,
        vocab_size: int,
        max_len: int,
        settings: TransformerSettings | None = None,
        pad_id: int = 0,
        bos_id: int = 1,
        eos_id: int = 2,
    ) -> None:
        super().__init__()
        s = settings or TransformerSettings()
        self.max_len = max_len
        self.pad_id, self.bos_id, self.eos_id = pad_id, bos_id, eos_id
        self.src_emb = nn.Embedding(vocab_size, s.d_model)
        self.src_pos = make_positional(s.positional, s.d_model, max_len)
        self.tgt_emb = nn.Embedding(vocab_size, s.d_model)
        self.tgt_pos = make_positional(s.positional, s.d_model, max_len)
        self.drop = nn.Dropout(s.dropout)
        self.encoder = TransformerStack(s)
        self.decoder = nn.ModuleList(DecoderBlock(s) for _ in range(s.n_layers))
        self.decoder_norm = final_norm(s)
        self.lm_head = nn.Linear(s.d_model, vocab_size, bias=False)
        self.apply(init_weights)

    def encode(self, src_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Source ids (B, S) -> memory (B, S, d) and its padding mask (B, S)."""
        src_pad = src_ids == self.pad_id
        x = self.drop(self.src_pos(self.src_emb(src_ids.contiguous())))
        return self.encoder(x, key_padding_mask=src_pad), src_pad

    def decode(
        self, tgt_ids: torch.Tensor, memory: torch.Tensor, src_pad: torch.Tensor
    ) -> torch.Tensor:
        """Decoder input ids (B, T) -> logits (B, T, vocab) given the encoder memory."""
        x = self.drop(self.tgt_pos(self.tgt_emb(tgt_ids.contiguous())))
        for block in self.decoder:
            x = block(x, memory, memory_padding_mask=src_pad)
        return self.lm_head(self.decoder_norm(x))

    def forward(self, src_ids: torch.Tensor, tgt_ids: torch.Tensor) -> torch.Tensor:
        memory, src_pad = self.encode(src_ids)
        return self.decode(tgt_ids, memory, src_pad)

    def _start(self, batch: int, device: torch.device) -> torch.Tensor:
        return torch.full((batch, 1), self.bos_id, dtype=torch.long, device=device)

    def _next_logits(
        self, ids: torch.Tensor, memory: torch.Tensor, src_pad: torch.Tensor
    ) -> torch.Tensor:
        """Logits (B, V) of the token after ``ids``; pad and bos are never generated."""
        logits = self.decode(ids, memory, src_pad)[:, -1]
        logits[:, [self.pad_id, self.bos_id]] = float("-inf")
        return logits

    def _max_steps(self, max_new_tokens: int) -> int:
        # the decoder input holds bos plus every generated token but the last
        return min(max_new_tokens, self.max_len)

    @torch.no_grad()
    def greedy_decode(self, src_ids: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
        """Arg-max decoding: returns (B, 1 + n) ids starting with ``bos``; after a row's
        ``eos`` the row is filled with ``pad_id``. Stops early once every row has ended.
        Call ``model.eval()`` first."""
        memory, src_pad = self.encode(src_ids)
        ids = self._start(src_ids.size(0), src_ids.device)
        finished = torch.zeros(src_ids.size(0), dtype=torch.bool, device=src_ids.device)
        for _ in range(self._max_steps(max_new_tokens)):
            token = self._next_logits(ids, memory, src_pad).argmax(dim=-1)  # (B,)
            token = token.masked_fill(finished, self.pad_id)
            finished |= token == self.eos_id
            ids = torch.cat([ids, token.unsqueeze(1)], dim=1)
            if bool(finished.all()):
                break
        return ids

    @torch.no_grad()
    def beam_search(
        self,
        src_ids: torch.Tensor,
        max_new_tokens: int,
        beam_size: int = 4,
        length_penalty: float = 1.0,
    ) -> torch.Tensor:
        """Beam search: keep the ``beam_size`` best partial targets per source.

        A finished hypothesis (one that produced ``eos``) keeps its score and is
        extended only with ``pad_id``. The best final hypothesis maximises
        ``log p / length ** length_penalty`` (length counts tokens up to ``eos``).
        Returns (B, 1 + n) ids in the same layout as :meth:`greedy_decode`; with
        ``beam_size=1`` the result is the greedy one.
        """
        B, K = src_ids.size(0), beam_size
        memory, src_pad = self.encode(src_ids)
        memory = memory.repeat_interleave(K, dim=0)  # (B*K, S, d)
        src_pad = src_pad.repeat_interleave(K, dim=0)
        ids = self._start(B * K, src_ids.device)  # (B*K, 1)
        # only beam 0 is live at the start, or the K identical beams would fill the beam
        scores = torch.full((B, K), float("-inf"), dtype=memory.dtype, device=src_ids.device)
        scores[:, 0] = 0.0
        finished = torch.zeros(B * K, dtype=torch.bool, device=src_ids.device)
        lengths = torch.zeros(B * K, dtype=memory.dtype, device=src_ids.device)
        for _ in range(self._max_steps(max_new_tokens)):
            logp = self._next_logits(ids, memory, src_pad).log_softmax(dim=-1)  # (B*K, V)
            V = logp.size(-1)
            # a finished beam continues only with pad, at no cost
            pad_only = torch.full_like(logp, float("-inf"))
            pad_only[:, self.pad_id] = 0.0
            logp = torch.where(finished.unsqueeze(1), pad_only, logp)
            candidates = (scores.view(B * K, 1) + logp).view(B, K * V)
            scores, flat = candidates.topk(K, dim=-1)  # (B, K)
            beam = (flat // V + torch.arange(B, device=flat.device).unsqueeze(1) * K).view(-1)
            token = (flat % V).view(-1)  # (B*K,)
            ids = torch.cat([ids[beam], token.unsqueeze(1)], dim=1)
            lengths = lengths[beam] + (~finished[beam]).to(lengths.dtype)
            finished = finished[beam] | (token == self.eos_id)
            if bool(finished.all()):
                break
        normalised = scores / lengths.view(B, K).clamp(min=1.0) ** length_penalty
        best = normalised.argmax(dim=-1) + torch.arange(B, device=ids.device) * K  # (B,)
        return ids[best]

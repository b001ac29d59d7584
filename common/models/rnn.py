"""LSTM students built on Opacus' ``DPLSTM``.

``torch.nn.LSTM`` runs as one fused kernel that Opacus cannot hook; ``DPLSTM`` is the
same recurrence written with ``nn.Linear``-like gates, so per-sample gradients come
from Opacus' ``RNNLinear`` rule (accumulated over time steps). Its weights load into
``nn.LSTM`` after training.
"""

from __future__ import annotations

import torch
from opacus.layers import DPLSTM
from torch import nn

from common.models.blocks import init_weights


def _lstm(d_emb: int, hidden: int, n_layers: int, dropout: float) -> DPLSTM:
    # inter-layer dropout only means something with two or more layers
    return DPLSTM(
        d_emb,
        hidden,
        num_layers=n_layers,
        batch_first=True,
        dropout=dropout if n_layers > 1 else 0.0,
    )


class LSTMClassifier(nn.Module):
    """Token ids (B, T) -> class logits (B, num_classes) from the last real token's state.

    Sequences must be right-padded with ``pad_id`` (the project-wide contract): the
    LSTM reads left to right, so the state at the last real token has not seen any of
    the trailing pads. An all-padding row reads position 0 and stays finite.
    """

    def __init__(
        self,
        vocab_size: int,
        num_classes: int,
        d_emb: int = 64,
        hidden: int = 64,
        n_layers: int = 1,
        dropout: float = 0.1,
        pad_id: int = 0,
    ) -> None:
        super().__init__()
        self.pad_id = pad_id
        self.tok_emb = nn.Embedding(vocab_size, d_emb)
        self.drop = nn.Dropout(dropout)
        self.lstm = _lstm(d_emb, hidden, n_layers, dropout)
        self.head = nn.Linear(hidden, num_classes)
        self.tok_emb.apply(init_weights)
        self.head.apply(init_weights)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        keep = input_ids != self.pad_id  # (B, T)
        h, _ = self.lstm(self.drop(self.tok_emb(input_ids.contiguous())))  # (B, T, hidden)
        # index of the last real token (0 for an all-pad row)
        positions = torch.arange(1, input_ids.size(1) + 1, device=input_ids.device)
        last = ((positions * keep).amax(dim=1) - 1).clamp(min=0)  # (B,)
        index = last.view(-1, 1, 1).expand(-1, 1, h.size(-1))  # (B, 1, hidden)
        return self.head(self.drop(h.gather(1, index).squeeze(1)))


class LSTMLanguageModel(nn.Module):
    """Token ids (B, T) -> next-token logits (B, T, vocab_size); causal by construction.

    The output layer is untied from the embedding, for the same Opacus reasons as GPT.
    """

    def __init__(
        self,
        vocab_size: int,
        d_emb: int = 64,
        hidden: int = 64,
        n_layers: int = 1,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.tok_emb = nn.Embedding(vocab_size, d_emb)
        self.drop = nn.Dropout(dropout)
        self.lstm = _lstm(d_emb, hidden, n_layers, dropout)
        self.lm_head = nn.Linear(hidden, vocab_size)
        self.tok_emb.apply(init_weights)
        self.lm_head.apply(init_weights)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        h, _ = self.lstm(self.drop(self.tok_emb(input_ids.contiguous())))  # (B, T, hidden)
        return self.lm_head(self.drop(h))  # (B, T, vocab)

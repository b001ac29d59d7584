"""A pretrained encoder fine-tuned end to end: the ``encoder`` family (GPU preset).

``EncoderClassifier`` wraps a Hugging Face encoder (common/models/pretrained.py names
it) with mean pooling over real tokens and a linear ``head``. It reads token ids from
the checkpoint's own tokenizer (common/task.py ``task_for``), padded with its pad id.
Position and token-type ids are passed explicitly, one row per example, and every
embedding table is frozen: Opacus' embedding grad sampler mis-sizes per-sample gradients
for ids that broadcast as [1, seq] (opacus#841) and ignores ``padding_idx``; the
private-transformers reproductions of DP fine-tuning froze them too; and the word table
is half of MiniLM's parameters, so freezing it halves the dimension the noise spreads
over. The checkpoint's own dropout stays as configured there.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def _position_tables(encoder: nn.Module) -> list[nn.Module]:
    embeddings = getattr(encoder, "embeddings", None)
    return [getattr(embeddings, name) for name in ("position_embeddings",
                                                    "token_type_embeddings")
            if isinstance(getattr(embeddings, name, None), nn.Module)]


class EncoderClassifier(nn.Module):
    """``head(mean_pool(encoder(ids)))``: every layer trainable but the embedding tables."""

    def __init__(self, source: str, num_classes: int) -> None:
        from transformers import AutoModel, AutoTokenizer

        super().__init__()
        self.encoder = AutoModel.from_pretrained(source, dtype=torch.float32)
        if getattr(self.encoder, "pooler", None) is not None:
            # BERT's CLS pooler is unused by mean pooling; parameters that never get a
            # gradient would stop Opacus' optimizer
            self.encoder.pooler = None
        self.pad_id = int(AutoTokenizer.from_pretrained(source).pad_token_id or 0)
        self.head = nn.Linear(self.encoder.config.hidden_size, num_classes)
        for table in self.encoder.get_input_embeddings(), *_position_tables(self.encoder):
            table.requires_grad_(False)
        self.train()  # from_pretrained returns eval mode; every other family starts in train

    def forward(self, ids: Tensor) -> Tensor:
        mask = (ids != self.pad_id).long()
        positions = torch.arange(ids.shape[1], device=ids.device).expand_as(ids).contiguous()
        hidden = self.encoder(input_ids=ids, attention_mask=mask, position_ids=positions,
                              token_type_ids=torch.zeros_like(ids)).last_hidden_state
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        return self.head(pooled)

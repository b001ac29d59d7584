"""What a compressed model is: raw text in, class logits out.

The default teacher is a linear probe on the pooled features of a frozen pretrained
encoder, so the deployable model is the encoder *and* the probe: that is where the size
and the latency are, and every compression step acts on the whole. ``ProbeOnEncoder``
puts them in one module; ``TextModel`` adds the tokenizer, so that latency and accuracy
are measured end to end (tokenize -> model -> logits) as a user would run it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn


class ProbeOnEncoder(nn.Module):
    """``probe(normalize(mean_pool(encoder(ids))))``: the frozen-feature pipeline as one
    module (the same pooling and L2 normalisation as common/models/pretrained.py).

    ``remap`` (optional) maps the tokenizer's ids to rows of a pruned embedding table
    (common/compress/student.py); the padding mask is taken before remapping.
    """

    def __init__(self, encoder: nn.Module, probe: nn.Module, pad_id: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.probe = probe
        self.pad_id = pad_id
        self.register_buffer("remap", None)  # set by prune_vocabulary

    def features(self, ids: Tensor) -> Tensor:
        mask = (ids != self.pad_id).long()
        if self.remap is not None:
            ids = self.remap[ids].long()
        # explicit (contiguous) token types: BERT's default is an expanded view, which
        # the int8 embedding kernel refuses
        hidden = self.encoder(input_ids=ids, attention_mask=mask,
                              token_type_ids=torch.zeros_like(ids)).last_hidden_state
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        return nn.functional.normalize(pooled, dim=-1)

    def forward(self, ids: Tensor) -> Tensor:
        return self.probe(self.features(ids))


@dataclass(frozen=True)
class TextModel:
    """A module and the tokenizer that feeds it: texts -> token ids -> logits."""

    module: nn.Module
    tokenize: Callable[[Sequence[str]], Tensor]
    kind: str  # "pretrained" (encoder + probe) or the from-scratch family's name

    @torch.inference_mode()
    def logits(self, texts: Sequence[str]) -> Tensor:
        return self.module(self.tokenize(texts)).float()

    def with_module(self, module: nn.Module) -> TextModel:
        return TextModel(module, self.tokenize, self.kind)


class HFTokenize:
    """The backbone's own tokenizer, padded to the longest text of the batch (as the
    frozen encoder pads when it computes the features the teacher was trained on)."""

    def __init__(self, source: str, max_len: int) -> None:
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(source)
        self.max_len = max_len
        self.unk_id = int(self.tokenizer.unk_token_id)
        self.special_ids = tuple(int(i) for i in self.tokenizer.all_special_ids)

    def __call__(self, texts: Sequence[str]) -> Tensor:
        return self.tokenizer(list(texts), padding=True, truncation=True,
                              max_length=self.max_len, return_tensors="pt")["input_ids"]


def project_tokenize(tokenizer_json: str, max_len: int) -> Callable[[Sequence[str]], Tensor]:
    """The run's own WordPiece tokenizer (the from-scratch families)."""
    from tokenizers import Tokenizer

    from common.data import encode_batch

    tokenizer = Tokenizer.from_str(tokenizer_json)
    return lambda texts: encode_batch(tokenizer, list(texts), max_len)

"""Model parallelism: the Transformer classifier split into two pipeline stages.

Stage 0 (embeddings and the first half of the blocks) lives on one device, stage 1 (the
other blocks, the final norm and the head) on another; a batch is cut into micro-batches
so that, on GPUs, stage 0 works on micro-batch i + 1 while stage 1 works on i (kernels
are queued asynchronously per device; GPipe's fill-and-drain schedule). On CPU devices
it runs the same arithmetic in order, which is what the test checks. docs/COMPRESSION.md
has the memory arithmetic that says when a split is needed at all.
"""

from __future__ import annotations

import torch
from torch import nn

from common.errors import ModelError
from common.models.transformer import TransformerClassifier


class TwoStagePipeline(nn.Module):
    """``model`` across ``devices`` (two), split after block ``split`` (default: half)."""

    def __init__(self, model: TransformerClassifier, devices: tuple[str, str],
                 split: int | None = None, micro_batches: int = 2) -> None:
        super().__init__()
        blocks = model.encoder.blocks
        split = len(blocks) // 2 if split is None else split
        if not 0 < split < len(blocks):
            raise ModelError(f"split={split}: a two-stage split needs 0 < split < "
                             f"{len(blocks)} blocks.")
        self.devices = tuple(torch.device(d) for d in devices)
        self.model = model
        self.first = nn.ModuleList(blocks[:split])
        self.second = nn.ModuleList(blocks[split:])
        self.micro_batches = micro_batches
        for module in (model.tok_emb, model.cls_emb, model.pos, model.drop, self.first):
            if module is not None:
                module.to(self.devices[0])
        for module in (self.second, model.encoder.final_norm, model.head):
            module.to(self.devices[1])

    def _stage0(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, keep = self.model.embed(ids.to(self.devices[0]))
        for block in self.first:
            x = block(x, key_padding_mask=~keep)
        return x, keep

    def _stage1(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        x, keep = x.to(self.devices[1]), keep.to(self.devices[1])
        for block in self.second:
            x = block(x, key_padding_mask=~keep)
        return self.model.classify(self.model.encoder.final_norm(x), keep)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return torch.cat([self._stage1(*self._stage0(chunk))
                          for chunk in input_ids.chunk(self.micro_batches)])

"""1-D CNN text classifier (Kim, 2014): convolutions over word vectors, max over time.

Padding cannot leak in: pad tokens' vectors are zeroed before the convolution, so a
window reaching into the pads sees exactly the zeros that the convolution's own
``same`` padding would have supplied, and pad positions are left out of the max over
time.
Kernel sizes are odd so that output position t is centred on input token t.
"""

from __future__ import annotations

import torch
from torch import nn

from common.errors import ModelError
from common.models.blocks import init_weights


class CNNTextClassifier(nn.Module):
    """Token ids (B, T) -> class logits (B, num_classes)."""

    def __init__(
        self,
        vocab_size: int,
        num_classes: int,
        d_emb: int = 64,
        n_filters: int = 64,
        kernel_sizes: tuple[int, ...] = (3, 5, 7),
        dropout: float = 0.1,
        pad_id: int = 0,
    ) -> None:
        super().__init__()
        if any(k % 2 == 0 for k in kernel_sizes):
            raise ModelError(f"kernel_sizes={kernel_sizes} must all be odd (centred windows).")
        self.pad_id = pad_id
        self.tok_emb = nn.Embedding(vocab_size, d_emb)
        self.convs = nn.ModuleList(
            nn.Conv1d(d_emb, n_filters, k, padding=k // 2) for k in kernel_sizes
        )
        self.act = nn.ReLU()
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(n_filters * len(kernel_sizes), num_classes)
        self.tok_emb.apply(init_weights)
        self.head.apply(init_weights)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        keep = input_ids != self.pad_id  # (B, T)
        x = self.tok_emb(input_ids.contiguous()) * keep.unsqueeze(-1).to(self.tok_emb.weight.dtype)
        x = self.drop(x).transpose(1, 2)  # (B, d_emb, T): Conv1d wants channels first
        pooled = []
        for conv in self.convs:
            h = self.act(conv(x))  # (B, n_filters, T)
            # ReLU outputs are >= 0, so a 0 at pad positions never beats a real
            # position's value, and an all-padding row pools to zeros (not -inf)
            h = h.masked_fill(~keep.unsqueeze(1), 0.0)
            pooled.append(h.amax(dim=2))  # (B, n_filters)
        z = torch.cat(pooled, dim=1)  # (B, n_filters * len(kernel_sizes))
        return self.head(self.drop(z))


class CNNImageClassifier(nn.Module):
    """Images (B, C, H, W) -> class logits (B, num_classes): a small 2-D conv net.

    Two conv blocks, a 2x2 average pool between them, then a global average pool and a
    linear head. GroupNorm, not BatchNorm: BatchNorm mixes the examples of a batch, so
    no per-example gradient exists and Opacus refuses it. Tanh, not ReLU: bounded
    activations keep per-example gradient norms small, which loses less to clipping
    under DP-SGD (Papernot et al. 2021, "Tempered Sigmoid Activations").
    """

    def __init__(self, channels: int, num_classes: int, width: int = 32,
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _conv_block(channels, width // 2),
            nn.AvgPool2d(2, ceil_mode=True),
            _conv_block(width // 2, width),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(width, num_classes)
        self.apply(init_weights)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(self.body(images)))


def _conv_block(c_in: int, c_out: int) -> nn.Sequential:
    # groups of 4 channels: GroupNorm(1, c) would be LayerNorm over the whole map
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1),
                         nn.GroupNorm(max(1, c_out // 4), c_out), nn.Tanh())

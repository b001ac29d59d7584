"""Vision Transformer (Dosovitskiy et al., 2021) for small images such as digits.

``model(images (B, C, H, W)) -> logits (B, num_classes)``. The image is cut into
non-overlapping ``patch_size`` squares, each flattened and linearly projected to a
token; a learned [CLS] token is prepended (or the patch tokens are averaged) and a
Transformer encoder classifies. 8x8 digits with patch 2 or 4, 28x28 MNIST with 4 or 7.
"""

from __future__ import annotations

import torch
from torch import nn

from common.errors import ModelError
from common.models.blocks import TransformerSettings, TransformerStack, init_weights
from common.models.positional import make_positional


class PatchEmbedding(nn.Module):
    """(B, C, H, W) -> (B, N, d): flatten each p x p patch and project it.

    A Linear over flattened patches is the paper's definition and equals a Conv2d with
    kernel = stride = p; the Linear keeps Opacus on its exact (ghost-capable) rule.
    """

    def __init__(self, channels: int, patch_size: int, d_model: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Linear(channels * patch_size * patch_size, d_model)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        B, C, H, W = images.shape
        p = self.patch_size
        if H % p or W % p:
            raise ModelError(f"Image {H}x{W} is not divisible into {p}x{p} patches.")
        x = images.reshape(B, C, H // p, p, W // p, p)
        x = x.permute(0, 2, 4, 1, 3, 5)  # (B, H/p, W/p, C, p, p): patches row by row
        x = x.reshape(B, (H // p) * (W // p), C * p * p)  # (B, N, C*p*p)
        return self.proj(x)  # (B, N, d)


class VisionTransformer(nn.Module):
    """Patch-embedding classifier for images of ``channels`` x ``image_size`` squared."""

    def __init__(
        self,
        image_size: int,
        channels: int,
        patch_size: int,
        num_classes: int,
        settings: TransformerSettings | None = None,
        pooling: str = "cls",
    ) -> None:
        super().__init__()
        s = settings or TransformerSettings(positional="learned")
        if image_size % patch_size:
            raise ModelError(
                f"image_size={image_size} is not a multiple of patch_size={patch_size}."
            )
        n_patches = (image_size // patch_size) ** 2
        self.patches = PatchEmbedding(channels, patch_size, s.d_model)
        # [CLS] as nn.Embedding(1, d), not a bare nn.Parameter (see TransformerClassifier)
        self.cls_emb = nn.Embedding(1, s.d_model) if pooling == "cls" else None
        self.pos = make_positional(s.positional, s.d_model, n_patches + (pooling == "cls"))
        self.drop = nn.Dropout(s.dropout)
        self.encoder = TransformerStack(s)
        self.head = nn.Linear(s.d_model, num_classes)
        self.apply(init_weights)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.patches(images)  # (B, N, d)
        if self.cls_emb is not None:
            cls_ids = torch.zeros(x.size(0), 1, dtype=torch.long, device=x.device)
            x = torch.cat([self.cls_emb(cls_ids), x], dim=1)  # (B, 1 + N, d)
        h = self.encoder(self.drop(self.pos(x)))
        pooled = h[:, 0] if self.cls_emb is not None else h.mean(dim=1)  # (B, d)
        return self.head(pooled)

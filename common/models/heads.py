"""Classifiers on the features of a frozen pretrained encoder (common/models/pretrained.py).

The encoder's weights are public and frozen, so what a client trains under DP is this
small module alone, on features computed once: a linear probe, or one hidden layer and a
linear head. Tramèr & Boneh (2021) found DP linear probes on strong frozen features beat
end-to-end DP training; the hidden layer gives the ensemble a second, differently biased
member. The last layer is always ``head``, so ``dp-trainable = head`` means the same here
as for the from-scratch families.
"""

from __future__ import annotations

from torch import Tensor, nn


class FeatureClassifier(nn.Module):
    """``head(body(x))`` on (N, d_in) features; ``hidden = 0`` makes it a linear probe."""

    def __init__(self, d_in: int, num_classes: int, *, hidden: int = 0,
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.body: nn.Module = nn.Identity()
        if hidden:
            self.body = nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), nn.Dropout(dropout))
        self.head = nn.Linear(hidden or d_in, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))

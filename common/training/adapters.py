"""Low-rank adapters (LoRA, Hu et al. 2022) for DP fine-tuning of a distilled student.

DP-SGD adds noise of the same scale to every trained coordinate, so the fewer the
coordinates the better the signal-to-noise of each step (Yu et al. 2022, "Differentially
private fine-tuning of language models", train LoRA adapters for exactly this reason).
Training the head alone is the smallest choice, but on our data the private signal lies
in the body (docs/RESULTS.md); all layers include the 384k-parameter embedding, where the
noise drowns it. Adapters sit between the two: each frozen ``nn.Linear`` of the body
gets a trainable rank-``r`` update ``up(down(x))``, ``up`` starting at zero so the
adapted model starts exactly at the distilled one.

After training, :func:`merge_adapters` folds every update into its frozen weight and
puts the plain ``nn.Linear`` back: the model keeps its architecture and its state-dict
keys, so nothing downstream (distillation, checkpoints) knows adapters were used.
Only layers of type exactly ``nn.Linear`` are adapted: Opacus' ``RNNLinear`` (the DP
LSTM's gates, a subclass called once per time step) and convolutions are left frozen, so
for the LSTM and CNN students ``adapters`` trains the head alone.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class LoRALinear(nn.Module):
    """A frozen linear layer plus a trainable rank-``r`` update: W x + b + B A x."""

    def __init__(self, base: nn.Linear, rank: int) -> None:
        super().__init__()
        self.base = base
        self.down = nn.Linear(base.in_features, rank, bias=False)
        self.up = nn.Linear(rank, base.out_features, bias=False)
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.up.weight)  # the adapted layer starts as the base layer
        self.down.to(base.weight.device, base.weight.dtype)
        self.up.to(base.weight.device, base.weight.dtype)
        for p in base.parameters():
            p.requires_grad_(False)

    def forward(self, x: Tensor) -> Tensor:
        return self.base(x) + self.up(self.down(x))

    def merged(self) -> nn.Linear:
        """The base layer with the update folded into its weight (the same function)."""
        with torch.no_grad():
            self.base.weight += self.up.weight @ self.down.weight
        return self.base


def add_adapters(model: nn.Module, rank: int, *, skip: tuple[str, ...] = ("head",)) -> int:
    """Freeze ``model`` and wrap each body ``nn.Linear`` in a :class:`LoRALinear`.

    The modules named in ``skip`` (the head) stay plain and trainable. Returns how many
    layers were adapted.
    """
    if rank < 1:
        raise ValueError(f"adapter rank {rank} must be >= 1")
    if any(isinstance(m, LoRALinear) for m in model.modules()):
        raise ValueError("the model already has adapters; merge_adapters() them first")
    for p in model.parameters():
        p.requires_grad_(False)
    targets = [
        name
        for name, module in model.named_modules()
        if type(module) is nn.Linear and name not in skip and name
    ]
    for name in targets:
        parent, _, attr = name.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        setattr(owner, attr, LoRALinear(getattr(owner, attr), rank))
    for name in skip:
        if hasattr(model, name):
            for p in getattr(model, name).parameters():
                p.requires_grad_(True)
    return len(targets)


def merge_adapters(model: nn.Module) -> None:
    """Fold every :class:`LoRALinear` of ``model`` back into a plain ``nn.Linear``."""
    wrapped = [name for name, m in model.named_modules() if isinstance(m, LoRALinear)]
    for name in wrapped:
        parent, _, attr = name.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        setattr(owner, attr, getattr(owner, attr).merged())

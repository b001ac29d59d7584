"""Low-rank factorization of Linear layers by truncated SVD.

``W (out x in) ~= U_r S_r V_rᵀ`` becomes two Linear layers, ``in -> r`` (``S_r V_rᵀ``) and
``r -> out`` (``U_r``, with the bias). The rank is given, or the smallest that keeps an
``energy`` share of the squared singular values. A layer is only replaced when the two
factors hold fewer parameters than the original: ``r (in + out) < in out``.
"""

from __future__ import annotations

import torch
from torch import nn

from common.errors import ConfigError


def rank_for_energy(singular: torch.Tensor, energy: float) -> int:
    """Smallest r with sum(s_1..s_r ²) >= energy * sum(s ²)."""
    if not 0.0 < energy <= 1.0:
        raise ConfigError(f"a low-rank energy must be in (0, 1], found {energy!r}.")
    share = singular.pow(2).cumsum(0) / singular.pow(2).sum().clamp(min=1e-12)
    return min(int((share < energy - 1e-9).sum()) + 1, len(singular))


def factorize(layer: nn.Linear, rank: int) -> nn.Sequential:
    """``layer`` as ``Linear(in, rank, bias=False)`` then ``Linear(rank, out)``."""
    u, s, vh = torch.linalg.svd(layer.weight.detach().double(), full_matrices=False)
    rank = max(1, min(rank, len(s)))
    first = nn.Linear(layer.in_features, rank, bias=False)
    second = nn.Linear(rank, layer.out_features, bias=layer.bias is not None)
    first.weight.data.copy_((s[:rank, None] * vh[:rank]).float())
    second.weight.data.copy_(u[:, :rank].float())
    if layer.bias is not None:
        second.bias.data.copy_(layer.bias.detach())
    return nn.Sequential(first, second)


def low_rank(model: nn.Module, *, energy: float | None = None,
             rank: int | None = None) -> nn.Module:
    """Factorize every Linear (but the classifier ``head``) where it saves parameters."""
    if (energy is None) == (rank is None):
        raise ConfigError("low-rank needs exactly one of a rank or an energy.")
    targets = [(name, m) for name, m in model.named_modules()
               if isinstance(m, nn.Linear) and not name.endswith("head")]
    for name, layer in targets:
        r = rank
        if r is None:
            singular = torch.linalg.svdvals(layer.weight.detach().double())
            r = rank_for_energy(singular, energy)
        if r * (layer.in_features + layer.out_features) >= layer.in_features * layer.out_features:
            continue
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, factorize(layer, r))
    return model

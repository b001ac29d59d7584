"""Pruning: global magnitude (unstructured) and structured (attention heads, FFN channels).

Every mask comes from ``torch.nn.utils.prune`` and is made permanent with
``prune.remove``. Unstructured zeros do not shrink a dense file (the measured table says
so and gives the gzip size too); structured pruning slices the zeroed rows and columns
out, so the layers really get smaller and faster -- except for the from-scratch
Transformer's attention, whose module reshapes to ``d_model`` and so keeps pruned heads
as zero rows (measured, and marked, as such).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import prune

from common.errors import ConfigError


def _check_amount(amount: float) -> None:
    if not 0.0 <= amount < 1.0:
        raise ConfigError(f"a pruning amount must be in [0, 1), found {amount!r}.")


def _prunable_linears(model: nn.Module) -> list[nn.Linear]:
    """Every Linear but the classifier's last layer (a few hundred weights, all needed)."""
    return [m for name, m in model.named_modules() if isinstance(m, nn.Linear)
            and not name.endswith("head")]


def magnitude_prune(model: nn.Module, amount: float) -> nn.Module:
    """Zero the ``amount`` share of smallest-magnitude Linear weights, ranked globally."""
    _check_amount(amount)
    params = [(m, "weight") for m in _prunable_linears(model)]
    prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=amount)
    for module, name in params:
        prune.remove(module, name)
    return model


def sparsity(model: nn.Module) -> float:
    """Share of zero weights over the prunable Linear layers."""
    weights = [m.weight for m in _prunable_linears(model)]
    zeros = sum(int((w == 0).sum()) for w in weights)
    return zeros / max(sum(w.numel() for w in weights), 1)


# ------------------------------------------------------------------ structured


@dataclass(frozen=True)
class FeedForwardSlot:
    """Where a block's FFN lives: ``fc_in`` (d -> d_ff) then ``fc_out`` (d_ff -> d)."""

    owner_in: nn.Module
    name_in: str
    owner_out: nn.Module
    name_out: str


@dataclass(frozen=True)
class AttentionSlot:
    """A block's attention: q/k/v projections, the output projection, and its owner."""

    owner: nn.Module
    q: nn.Linear
    k: nn.Linear
    v: nn.Linear
    out_owner: nn.Module  # holds ``out`` as its ``.dense`` (HF) or ``.out_proj`` (own)
    out: nn.Linear
    n_heads: int
    hf: bool  # a Hugging Face BertSelfAttention (resizable) or the project's own


def ffn_slots(model: nn.Module) -> list[FeedForwardSlot]:
    from common.models.blocks import FeedForward

    slots = []
    for module in model.modules():
        if isinstance(module, FeedForward):
            slots.append(FeedForwardSlot(module, "fc_in", module, "fc_out"))
        elif hasattr(module, "intermediate") and hasattr(module, "output") \
                and hasattr(module.intermediate, "dense"):  # a BertLayer
            slots.append(FeedForwardSlot(module.intermediate, "dense", module.output, "dense"))
    return slots


def attention_slots(model: nn.Module) -> list[AttentionSlot]:
    from common.models.attention import MultiHeadAttention

    slots = []
    for module in model.modules():
        if isinstance(module, MultiHeadAttention):
            slots.append(AttentionSlot(module, module.q_proj, module.k_proj, module.v_proj,
                                       module, module.out_proj, module.n_heads, hf=False))
        elif hasattr(module, "self") and hasattr(module, "output") \
                and hasattr(module.self, "query"):  # a BertAttention
            own = module.self
            slots.append(AttentionSlot(own, own.query, own.key, own.value, module.output,
                                       module.output.dense,
                                       own.num_attention_heads, hf=True))
    return slots


def _sliced(layer: nn.Linear, keep: torch.Tensor, dim: int) -> nn.Linear:
    """``layer`` with only the ``keep`` output rows (dim 0) or input columns (dim 1)."""
    weight = layer.weight.detach().index_select(dim, keep)
    new = nn.Linear(weight.shape[1], weight.shape[0], bias=layer.bias is not None)
    new.weight.data.copy_(weight)
    if layer.bias is not None:
        new.bias.data.copy_(layer.bias.detach()[keep] if dim == 0 else layer.bias.detach())
    return new


def prune_ffn(model: nn.Module, amount: float) -> nn.Module:
    """Remove the ``amount`` share of each FFN's hidden channels with the smallest L2 norm
    (``prune.ln_structured`` picks them; the kept ones are sliced out into new layers)."""
    _check_amount(amount)
    for slot in ffn_slots(model):
        fc_in = getattr(slot.owner_in, slot.name_in)
        prune.ln_structured(fc_in, "weight", amount=amount, n=2, dim=0)
        prune.remove(fc_in, "weight")
        keep = (fc_in.weight.abs().sum(1) != 0).nonzero().squeeze(1)
        setattr(slot.owner_in, slot.name_in, _sliced(fc_in, keep, 0))
        setattr(slot.owner_out, slot.name_out, _sliced(getattr(slot.owner_out, slot.name_out),
                                                       keep, 1))
    return model


def _head_scores(slot: AttentionSlot) -> torch.Tensor:
    """One L2 norm per head over its q, k, v rows and its output columns."""
    size = slot.q.out_features // slot.n_heads
    parts = [lin.weight.detach().reshape(slot.n_heads, size, -1).pow(2).sum((1, 2))
             for lin in (slot.q, slot.k, slot.v)]
    out = slot.out.weight.detach().reshape(-1, slot.n_heads, size).pow(2).sum((0, 2))
    return (sum(parts) + out).sqrt()


def prune_heads(model: nn.Module, amount: float) -> nn.Module:
    """Remove the ``amount`` share of heads in every attention layer (lowest L2 norm; at
    least one head stays)."""
    _check_amount(amount)
    for slot in attention_slots(model):
        drop = min(int(round(amount * slot.n_heads)), slot.n_heads - 1)
        if drop == 0:
            continue
        size = slot.q.out_features // slot.n_heads
        head_mask = torch.ones(slot.n_heads)
        head_mask[_head_scores(slot).argsort()[:drop]] = 0
        rows = head_mask.repeat_interleave(size)  # one entry per q/k/v output row
        if slot.hf:
            _remove_hf_heads(slot, rows.nonzero().squeeze(1))
        else:
            _zero_heads(slot, rows)
    return model


def _remove_hf_heads(slot: AttentionSlot, keep: torch.Tensor) -> None:
    """Slice the heads out: BERT's attention reshapes with -1 heads, so it just works."""
    own = slot.owner
    own.query, own.key, own.value = (_sliced(lin, keep, 0) for lin in (slot.q, slot.k, slot.v))
    slot.out_owner.dense = _sliced(slot.out, keep, 1)
    own.num_attention_heads = len(keep) // own.attention_head_size
    own.all_head_size = len(keep)


def _zero_heads(slot: AttentionSlot, rows: torch.Tensor) -> None:
    """The project's attention reshapes to d_model, so its pruned heads stay as zeros: a
    head whose values and output columns are zero adds nothing to the output."""
    prune.custom_from_mask(slot.v, "weight", rows[:, None].expand_as(slot.v.weight))
    prune.custom_from_mask(slot.v, "bias", rows)
    prune.custom_from_mask(slot.out, "weight", rows[None, :].expand_as(slot.out.weight))
    for module, name in ((slot.v, "weight"), (slot.v, "bias"), (slot.out, "weight")):
        prune.remove(module, name)

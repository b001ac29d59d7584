"""Distillation into a compact student on the public set, and vocabulary pruning.

The student keeps the teacher's first ``layers`` blocks (a pretrained-initialised
encoder, or the from-scratch family's first blocks) and learns the teacher's softened
predictions on the *public* texts, plus, for the pretrained encoder, its pooled features
(cosine distance). Public texts through public or teacher weights: no ε is spent.

Vocabulary pruning keeps the embedding rows of the tokens that occur in the non-private
texts (public + the coordinator's labelled set, the corpus the project's own tokenizer
is trained on) and maps every other token to [UNK]: it restricts the vocabulary, and the
measured table says how many test texts meet an unknown token.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from common.compress.text_model import ProbeOnEncoder
from common.distill.losses import kd_loss
from common.errors import ConfigError
from common.models import ModelConfig, build_model
from common.training import distill


@dataclass(frozen=True)
class DistilSettings:
    """How a student learns: epochs and step size on the public set, and the weight of
    the feature (cosine) term next to the soft-label term."""

    epochs: int = 3
    lr: float = 1e-4
    batch_size: int = 32
    feature_weight: float = 1.0
    seed: int = 0


def truncated_encoder(model: ProbeOnEncoder, layers: int) -> ProbeOnEncoder:
    """A copy of ``model`` whose encoder keeps its first ``layers`` blocks."""
    blocks = model.encoder.encoder.layer
    if not 1 <= layers <= len(blocks):
        raise ConfigError(f"student={layers}: keep between 1 and {len(blocks)} layers.")
    student = copy.deepcopy(model)
    student.encoder.encoder.layer = nn.ModuleList(list(student.encoder.encoder.layer)[:layers])
    student.encoder.config.num_hidden_layers = layers
    return student


def scratch_student(teacher: nn.Module, config: ModelConfig, layers: int) -> nn.Module:
    """The teacher's family with ``layers`` blocks, initialised from its first blocks."""
    student = build_model(dataclasses.replace(config, n_layers=layers))
    own = student.state_dict()
    shared = {k: v for k, v in teacher.state_dict().items()
              if k in own and own[k].shape == v.shape}
    student.load_state_dict(shared, strict=False)
    return student


def distil_scratch(student: nn.Module, public_ids: Tensor, targets: Tensor,
                   temperature: float, settings: DistilSettings) -> nn.Module:
    distill(student, public_ids, targets, temperature=temperature, epochs=settings.epochs,
            lr=settings.lr, batch_size=settings.batch_size, device=torch.device("cpu"),
            seed=settings.seed)
    return student.eval()


def distil_pretrained(student: ProbeOnEncoder, tokenize, texts: Sequence[str],
                      targets: Tensor, features: Tensor, temperature: float,
                      settings: DistilSettings) -> ProbeOnEncoder:
    """Match the teacher's soft labels (KD at ``temperature``) and pooled features on the
    public texts. The word-embedding table stays frozen: half the weights, and rows of
    tokens the public set never shows would only drift."""
    student.train()
    student.encoder.get_input_embeddings().requires_grad_(False)
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=settings.lr, weight_decay=0.01)
    gen = torch.Generator().manual_seed(settings.seed)
    lengths = torch.tensor([len(t) for t in texts])
    for _ in range(settings.epochs):
        for idx in _length_buckets(lengths, settings.batch_size, gen):
            pooled = student.features(tokenize([texts[i] for i in idx]))
            loss = kd_loss(student.probe(pooled), targets[idx], temperature)
            cosine = nn.functional.cosine_similarity(pooled, features[idx], dim=-1)
            loss = loss + settings.feature_weight * (1 - cosine).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
    return student.eval()


def _length_buckets(lengths: Tensor, batch_size: int, gen: torch.Generator) -> list[Tensor]:
    """Shuffled batches of texts of similar length: a batch pads to its longest text, so
    random batches of short reviews would spend most of their compute on padding. Texts
    are shuffled, sorted by length within windows of 16 batches, and the batches
    shuffled again."""
    order = torch.randperm(len(lengths), generator=gen)
    window = batch_size * 16
    batches = []
    for chunk in order.split(window):
        chunk = chunk[lengths[chunk].argsort()]
        batches.extend(chunk.split(batch_size))
    return [batches[i] for i in torch.randperm(len(batches), generator=gen)]


def prune_vocabulary(model: ProbeOnEncoder, token_ids: Sequence[Tensor], keep_ids: Sequence[int],
                     unk_id: int) -> ProbeOnEncoder:
    """Keep the embedding rows of the tokens in ``token_ids`` (and ``keep_ids``, the
    special tokens); every other id maps to [UNK] through the model's ``remap``."""
    table = model.encoder.get_input_embeddings()
    seen = torch.zeros(table.num_embeddings, dtype=torch.bool)
    for ids in token_ids:
        seen[ids.flatten()] = True
    seen[list(keep_ids)] = True
    seen[unk_id] = True
    kept = seen.nonzero().squeeze(1)
    remap = torch.full((table.num_embeddings,), -1, dtype=torch.int32)
    remap[kept] = torch.arange(len(kept), dtype=torch.int32)
    remap[~seen] = remap[unk_id]
    smaller = nn.Embedding(len(kept), table.embedding_dim)
    smaller.weight.data.copy_(table.weight.detach()[kept])
    model.encoder.set_input_embeddings(smaller)
    model.encoder.config.vocab_size = len(kept)
    model.remap = remap
    return model


def unknown_share(token_ids: Sequence[Tensor], model: ProbeOnEncoder, unk_id: int) -> float:
    """Share of texts with at least one token the pruned vocabulary maps to [UNK]."""
    if model.remap is None:
        return 0.0
    unk_row = int(model.remap[unk_id])
    hits = total = 0
    for ids in token_ids:
        mapped = model.remap[ids]
        hits += int(((mapped == unk_row) & (ids != unk_id)).any(1).sum())
        total += len(ids)
    return hits / max(total, 1)


def trim_positions(model: ProbeOnEncoder, max_len: int) -> ProbeOnEncoder:
    """Keep the first ``max_len`` rows of the position table: the tokenizer truncates at
    ``max_len``, so the other rows are never read."""
    embeddings = model.encoder.embeddings
    table = embeddings.position_embeddings
    if max_len >= table.num_embeddings:
        return model
    smaller = nn.Embedding(max_len, table.embedding_dim)
    smaller.weight.data.copy_(table.weight.detach()[:max_len])
    embeddings.position_embeddings = smaller
    for name in ("position_ids", "token_type_ids"):
        if isinstance(getattr(embeddings, name, None), Tensor):
            embeddings.register_buffer(name, getattr(embeddings, name)[:, :max_len].clone(),
                                       persistent=False)
    model.encoder.config.max_position_embeddings = max_len
    return model

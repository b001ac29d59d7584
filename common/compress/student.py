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
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from common.compress.text_model import ProbeOnEncoder
from common.distill.losses import kd_loss
from common.errors import ConfigError
from common.models import ModelConfig, build_model
from common.training import distill, predict_logits


@dataclass(frozen=True)
class DistilSettings:
    """How a student learns: at most ``epochs`` passes over the public set at step size
    ``lr``, the weight of the feature (cosine) term next to the soft-label term, and the
    share of the public texts held out to choose the epoch that is kept."""

    epochs: int = 3
    lr: float = 1e-4
    batch_size: int = 32
    feature_weight: float = 1.0
    seed: int = 0
    validation: float = 0.1

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"distillation epochs must be at least 1, not {self.epochs}.")
        if not 0 < self.validation < 0.5:
            raise ConfigError(f"validation share {self.validation} must lie in (0, 0.5).")


@dataclass(frozen=True)
class Distilled:
    """A trained student and how its epoch was chosen."""

    model: nn.Module
    agreement: tuple[float, ...]  # per epoch, with the targets on the held-out texts
    held_out: int

    @property
    def epoch(self) -> int:
        """The kept epoch (1-based): the first with the best held-out agreement."""
        return self.agreement.index(max(self.agreement)) + 1

    def note(self) -> str:
        scores = ", ".join(f"{a:.3f}" for a in self.agreement)
        return (f"epoch {self.epoch} of {len(self.agreement)} kept: agreement with the "
                f"teacher on {self.held_out} held-out public texts by epoch {scores}")


def split_public(n: int, settings: DistilSettings) -> tuple[Tensor, Tensor]:
    """Indices to train on and to hold out: the epoch is chosen on public texts the
    student never trained on, so the test set never steers its training."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(settings.seed))
    held = max(1, round(n * settings.validation))
    return order[held:], order[:held]


def keep_best_epoch(model: nn.Module, settings: DistilSettings,
                    train_epoch: Callable[[int], None],
                    agreement: Callable[[], float], held_out: int) -> Distilled:
    """Train up to ``settings.epochs`` epochs; keep the weights of the epoch whose
    predictions agree best with the targets on the held-out public texts."""
    scores: list[float] = []
    best = None
    for epoch in range(settings.epochs):
        model.train()
        train_epoch(epoch)
        model.eval()
        scores.append(agreement())
        if scores[-1] == max(scores):
            best = copy.deepcopy(model.state_dict())
    model.load_state_dict(best)
    return Distilled(model.eval(), tuple(scores), held_out)


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
                   temperature: float, settings: DistilSettings) -> Distilled:
    train, held = split_public(len(public_ids), settings)

    def train_epoch(epoch: int) -> None:
        # one epoch per call, each with its own shuffle; AdamW restarts each epoch
        distill(student, public_ids[train], targets[train], temperature=temperature,
                epochs=1, lr=settings.lr, batch_size=settings.batch_size,
                device=torch.device("cpu"), seed=settings.seed + epoch)

    def agreement() -> float:
        logits = predict_logits(student, public_ids[held], device=torch.device("cpu"))
        return _agreement(logits, targets[held])

    return keep_best_epoch(student, settings, train_epoch, agreement, len(held))


def distil_pretrained(student: ProbeOnEncoder, tokenize, texts: Sequence[str],
                      targets: Tensor, features: Tensor, temperature: float,
                      settings: DistilSettings) -> Distilled:
    """Match the teacher's soft labels (KD at ``temperature``) and pooled features on the
    public texts. The word-embedding table stays frozen: half the weights, and rows of
    tokens the public set never shows would only drift."""
    student.encoder.get_input_embeddings().requires_grad_(False)
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=settings.lr, weight_decay=0.01)
    gen = torch.Generator().manual_seed(settings.seed)
    train, held = split_public(len(texts), settings)
    lengths = torch.tensor([len(texts[i]) for i in train])

    def train_epoch(_: int) -> None:
        for batch in _length_buckets(lengths, settings.batch_size, gen):
            idx = train[batch]
            pooled = student.features(tokenize([texts[i] for i in idx]))
            loss = kd_loss(student.probe(pooled), targets[idx], temperature)
            cosine = nn.functional.cosine_similarity(pooled, features[idx], dim=-1)
            loss = loss + settings.feature_weight * (1 - cosine).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()

    @torch.inference_mode()
    def agreement() -> float:
        logits = torch.cat([student(tokenize([texts[i] for i in chunk]))
                            for chunk in held.split(256)])
        return _agreement(logits, targets[held])

    return keep_best_epoch(student, settings, train_epoch, agreement, len(held))


def _agreement(logits: Tensor, targets: Tensor) -> float:
    """Share of examples where the student's class is the targets' most likely class."""
    return float((logits.argmax(-1) == targets.argmax(-1)).float().mean())


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

"""The prepared task that every party rebuilds identically.

The coordinator and every client load the same dataset roles and encode every role as
the inputs of its task's kind (common/task_kinds.py). For text classification they train
the same WordPiece tokenizer on the *non-private* texts (public pool + teacher set) and
encode everything to token ids; private texts never reach the tokenizer, whose vocabulary
would otherwise leak them (for language modelling: a character tokenizer, each role cut
into windows of tokens). Images, and windows of a time series, are used as they are.
Messages then carry only indices into the public set; the coordinator sends a fingerprint
(the tokenizer's, or the public images' or windows') so a client that loaded something
else refuses to go on.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer
from torch import Tensor

from common.config import ATTACKS, FEATURE_FAMILIES, FedConfig
from common.data import encode_batch, load_dataset, partition
from common.data.partition import time_blocks
from common.errors import ConfigError, DataError
from common.models import ModelConfig
from common.task_kinds import TaskKind, task_kind

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreparedTask:
    """Every role as model inputs (token ids or images), plus what the parties must
    agree on."""

    dataset: str
    num_classes: int
    vocab_size: int  # 0 without a tokenizer (images)
    fingerprint: str
    tokenizer_json: str  # "" without a tokenizer
    private_x: Tensor
    private_y: Tensor
    private_groups: np.ndarray | None
    public_x: Tensor
    teacher_x: Tensor
    teacher_y: Tensor
    test_x: Tensor
    test_y: Tensor
    # the coordinator's held-out share of its own labels (teacher-validation), if any
    valid_x: Tensor | None = None
    valid_y: Tensor | None = None
    task: str = "classification"  # the dataset's task: its kind (common/task_kinds.py)
    width: int = 0  # columns of a knowledge row: classes, horizon x targets (forecasts),
    #                 or positions x vocabulary (next tokens)
    block_gap: int = 0  # time-blocks: windows dropped between two clients' blocks
    positions: int = 0  # next tokens: the T positions of a window (0 for other tasks)

    @property
    def kind(self) -> TaskKind:
        return task_kind(self.task, self.dataset)

    def decode(self, arrays: Mapping[str, np.ndarray], encoding: str, *,
               num_rows: int) -> np.ndarray:
        """The task's knowledge decoder on an untrusted payload, with this task's row
        shape: (num_rows, width), or a KnowledgeError."""
        extra = {"positions": self.positions} if self.kind.knowledge.sparse else {}
        return self.kind.knowledge.decode(arrays, encoding, num_rows=num_rows,
                                          num_classes=self.width, **extra)


@functools.lru_cache(maxsize=4)
def prepare_task(dataset: str, seed: int, vocab_size: int, max_len: int) -> PreparedTask:
    """Load and encode ``dataset`` as its task's inputs (cached per process: Ray actors
    reuse it); ``vocab_size`` and ``max_len`` shape token ids only."""
    roles = load_dataset(dataset, seed=seed)
    kind = task_kind(roles.task, dataset)
    encoded = kind.inputs.prepare(roles, vocab_size, max_len)

    def role(name: str) -> tuple[Tensor, Tensor]:
        split = roles.role(name)
        x = encoded.encode(split)
        if encoded.shift:  # language modelling: the targets are the inputs moved by one
            return x[:, :-1].contiguous(), x[:, 1:].contiguous()
        if split.labels is None:
            raise DataError(f"dataset={dataset!r} has no labels for its {name} role.")
        # a copy (roles are read-only): class ids, or target windows (N, horizon, n_out)
        return x, torch.tensor(np.asarray(split.labels), dtype=kind.knowledge.label_dtype)

    (private_x, private_y), (teacher_x, teacher_y), (test_x, test_y) = (
        role("private"), role("teacher"), role("test"))
    public_x = encoded.encode(roles.public)
    positions = int(teacher_x.shape[1]) if encoded.shift else 0
    return PreparedTask(
        dataset=dataset,
        num_classes=roles.num_classes,
        vocab_size=encoded.vocab_size,
        fingerprint=encoded.fingerprint,
        tokenizer_json=encoded.tokenizer_json,
        private_x=private_x,
        private_y=private_y,
        # windows of a stream carry no document's key
        private_groups=None if encoded.shift else roles.private.groups,
        public_x=public_x[:, :-1].contiguous() if encoded.shift else public_x,
        teacher_x=teacher_x,
        teacher_y=teacher_y,
        test_x=test_x,
        test_y=test_y,
        task=kind.name,
        width=_width(roles.num_classes, teacher_y, positions, encoded.vocab_size),
        block_gap=_block_gap(roles.info),
        positions=positions,
    )


def _width(num_classes: int, teacher_y: Tensor, positions: int, vocab_size: int) -> int:
    """Columns of a knowledge row: classes; horizon x targets; positions x vocabulary."""
    if positions:
        return positions * vocab_size
    return num_classes or int(np.prod(teacher_y.shape[1:]))


def _block_gap(info: dict) -> int:
    """Windows between two clients' time blocks so that no row lies in both: a window
    spans input_len + horizon rows, and its start moves by ``stride`` rows."""
    if "input_len" not in info:
        return 0
    span = int(info["input_len"]) + int(info["horizon"]) - 1
    return math.ceil(span / int(info.get("stride", 1)))


@functools.lru_cache(maxsize=8)
def client_partitions(
    dataset: str, seed: int, vocab_size: int, max_len: int,
    num_clients: int, scheme: str, alpha: float,
) -> tuple[np.ndarray, ...]:
    """Index arrays of every client's private partition (deterministic by seed)."""
    task = prepare_task(dataset, seed, vocab_size, max_len)
    if scheme == "time-blocks":
        return tuple(time_blocks(len(task.private_x), num_clients, gap=task.block_gap,
                                 seed=seed))
    # class ids where a scheme reads them; windows of tokens (N, T) only need their count
    labels = task.private_y.numpy() if task.private_y.dim() == 1 else len(task.private_y)
    parts = partition(
        labels,
        num_clients,
        scheme=scheme,
        alpha=alpha,
        groups=task.private_groups,
        seed=seed,
    )
    return tuple(parts)


@functools.lru_cache(maxsize=4)
def prepare_features(dataset: str, seed: int, backbone: str, max_len: int,
                     dtype: str = "float32") -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Every role's features under the frozen ``backbone`` (computed once, then cached).

    Rows are in the same order as :func:`prepare_task`'s token ids. Public, teacher and
    test features are public (public texts through public weights). The private rows are
    here for simulation, where one process holds every partition; a deployed node
    encodes its own files in its own folder (client/private_data.py).
    """
    from common.models.pretrained import encode_cached  # transformers loads only if used

    roles = load_dataset(dataset, seed=seed)
    parts = (roles.private.texts, roles.public.texts, roles.teacher.texts, roles.test.texts)
    features = torch.from_numpy(encode_cached(backbone, [t for p in parts for t in p],
                                              max_len=max_len, dtype=dtype))
    private, public, teacher, test = features.split([len(p) for p in parts])
    return private, public, teacher, test


@functools.lru_cache(maxsize=2)
def prepare_backbone_ids(dataset: str, seed: int, backbone: str,
                         max_len: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Every role as token ids of the backbone's own tokenizer, padded to ``max_len``."""
    roles = load_dataset(dataset, seed=seed)
    return tuple(backbone_ids(backbone, role.texts, max_len)  # type: ignore[return-value]
                 for role in (roles.private, roles.public, roles.teacher, roles.test))


def backbone_ids(backbone: str, texts: Sequence[str], max_len: int) -> Tensor:
    from transformers import AutoTokenizer

    from common.models.pretrained import resolve_backbone

    tokenizer = AutoTokenizer.from_pretrained(resolve_backbone(backbone).source)
    return tokenizer(list(texts), padding="max_length", truncation=True, max_length=max_len,
                     return_tensors="pt")["input_ids"]


def encode_texts(cfg: FedConfig, family: str, texts: Sequence[str], *,
                 feature_dir: Path | None = None) -> Tensor:
    """Any texts (a deployed node's own files) as a ``family`` model reads them.

    Features go to ``feature_dir`` when given (a node's own folder), else the data cache.
    """
    if cfg.backbone and family in FEATURE_FAMILIES:
        from common.models.pretrained import encode_cached

        return torch.from_numpy(encode_cached(cfg.backbone, list(texts), max_len=cfg.max_len,
                                              feature_dir=feature_dir,
                                              dtype=cfg.encoder_dtype))
    if cfg.backbone and family == "encoder":
        return backbone_ids(cfg.backbone, texts, cfg.max_len)
    task = prepare_task(cfg.dataset, cfg.seed, cfg.vocab_size, cfg.max_len)
    return encode_batch(Tokenizer.from_str(task.tokenizer_json), list(texts), cfg.max_len)


def task_for(cfg: FedConfig, task: PreparedTask, family: str) -> PreparedTask:
    """The task as a ``family`` model reads it: features for the probes, the backbone's
    token ids for the encoder, else the project tokenizer's token ids.

    With a backbone the fingerprint both sides check covers its weights too, so a node
    with another checkpoint refuses the round like one with another tokenizer. A family
    that cannot read the task's inputs, or a rule that cannot aggregate its knowledge,
    fails here, naming the choices.
    """
    check_fits(cfg, task, family)
    if not cfg.backbone:
        return task
    from common.models.pretrained import resolve_backbone

    joined = f"{task.fingerprint}:{resolve_backbone(cfg.backbone).fingerprint}"
    task = dataclasses.replace(task, fingerprint=hashlib.sha256(joined.encode()).hexdigest())
    if family == "encoder":
        private, public, teacher, test = prepare_backbone_ids(cfg.dataset, cfg.seed,
                                                              cfg.backbone, cfg.max_len)
    elif family in FEATURE_FAMILIES:
        private, public, teacher, test = prepare_features(cfg.dataset, cfg.seed, cfg.backbone,
                                                          cfg.max_len, cfg.encoder_dtype)
    else:
        return task
    return dataclasses.replace(task, private_x=private, public_x=public, teacher_x=teacher,
                               test_x=test)


def check_fits(cfg: FedConfig, task: PreparedTask, family: str) -> None:
    """Fail, naming the choices, where ``family`` or the aggregation does not fit ``task``."""
    kind = task.kind
    if family not in kind.inputs.families:
        raise ConfigError(f"family {family!r} does not read {kind.inputs.name}, the inputs "
                          f"of dataset={cfg.dataset!r} ({kind.name}): use one of "
                          f"{', '.join(kind.inputs.families)}.")
    knowledge = kind.knowledge
    for key, value, fits in (("aggregation", cfg.aggregation, knowledge.aggregations),
                             ("encoding", cfg.encoding, knowledge.encodings)):
        if value not in fits:
            raise ConfigError(f"{key}={value!r} does not apply to {knowledge.name}: use one "
                              f"of {', '.join(fits)}.")
    if cfg.partition not in kind.inputs.partitions:
        raise ConfigError(f"partition={cfg.partition!r} does not fit {kind.inputs.name} "
                          f"(dataset={cfg.dataset!r}): use one of "
                          f"{', '.join(kind.inputs.partitions)}.")
    if knowledge.sparse and cfg.secure_aggregation:
        # SecAgg+ sums dense vectors of one shape: each client's top-k support differs, so
        # it would have to mask all m x T x V entries (8 bytes each, the sparse saving
        # gone), and a masked sum cannot be checked as a sparse reply is
        raise ConfigError(f"secure-aggregation=true sums dense vectors; {knowledge.name} "
                          "are sent top-k sparse: turn secure aggregation off for this task.")
    if not knowledge.simplex and cfg.secure_aggregation:
        # coordinator/secure.py quantizes each entry within [0, 1] (CLIPPING_RANGE): a
        # forecast outside it would be clipped in the masked sum without a word
        raise ConfigError(f"secure-aggregation=true quantizes values in [0, 1] "
                          f"(probabilities); {knowledge.name} range wider and would be "
                          "clipped: turn secure aggregation off for this task.")
    if not knowledge.simplex and cfg.attack in POISONING_ATTACKS:
        raise ConfigError(f"attack={cfg.attack!r} poisons class probabilities; "
                          f"{knowledge.name} take only the faults {', '.join(ATTACKS[6:])}.")


POISONING_ATTACKS = ATTACKS[1:6]  # flip ... adaptive: they rewrite probabilities


def model_config(cfg: FedConfig, task: PreparedTask, family: str, size: str) -> ModelConfig:
    """The ModelConfig of a ``family`` model on ``task`` (as :func:`task_for` shaped it)."""
    fields = {"vocab_size": task.vocab_size, "num_classes": task.num_classes,
              "max_len": cfg.max_len, "feature_dim": feature_dim(task),
              "backbone": cfg.backbone}
    # the inputs' own fields win: a window's length, not the text max-len, sizes a forecaster
    fields.update(task.kind.inputs.model_fields(task.teacher_x, task.teacher_y, cfg))
    return ModelConfig(family=family, size=size, **fields)


def test_scores(task: PreparedTask, model: torch.nn.Module, device: torch.device, *,
                x: Tensor | None = None, y: Tensor | None = None) -> dict[str, float]:
    """Every metric of the task's knowledge for ``model`` on the test set (or ``x``, ``y``):
    accuracy for classification; MSE and MAE of the forecasts for forecasting."""
    from common.training import predict_logits

    x, y = (task.test_x, task.test_y) if x is None or y is None else (x, y)
    knowledge = task.kind.knowledge
    rows = knowledge.from_outputs(predict_logits(model, x, device=device), 1.0)
    return knowledge.scores(y.numpy(), rows.numpy())


def feature_dim(task: PreparedTask) -> int:
    """The width of the features a probe reads (0 when the task holds token ids)."""
    # not images, not windows
    features = task.public_x.is_floating_point() and task.public_x.dim() == 2
    return int(task.public_x.shape[1]) if features else 0

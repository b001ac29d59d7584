"""The prepared text-classification task that every party rebuilds identically.

The coordinator and every client load the same dataset roles, train the same WordPiece
tokenizer on the *non-private* texts (public pool + teacher set), and encode everything
to token ids. Messages then carry only indices into the public set; the coordinator sends
the tokenizer's fingerprint so a client with a different vocabulary refuses to go on.
Private texts never reach the tokenizer: its vocabulary would otherwise leak them.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from common.data import (
    encode_batch,
    load_dataset,
    partition,
    tokenizer_fingerprint,
    train_tokenizer,
)
from common.errors import DataError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreparedTask:
    """Token ids of every role, plus what the parties must agree on."""

    dataset: str
    num_classes: int
    vocab_size: int
    fingerprint: str
    tokenizer_json: str
    private_x: Tensor
    private_y: Tensor
    private_groups: np.ndarray | None
    public_x: Tensor
    teacher_x: Tensor
    teacher_y: Tensor
    test_x: Tensor
    test_y: Tensor


@functools.lru_cache(maxsize=4)
def prepare_task(dataset: str, seed: int, vocab_size: int, max_len: int) -> PreparedTask:
    """Load, tokenize and encode ``dataset`` (cached per process: Ray actors reuse it)."""
    roles = load_dataset(dataset, seed=seed)
    if roles.task != "classification":
        raise DataError(
            f"dataset={dataset!r} is a {roles.task!r} dataset; federated distillation of "
            "soft labels needs a text-classification dataset (for example rotten-tomatoes)."
        )
    corpus = list(roles.public.texts) + list(roles.teacher.texts)
    tok = train_tokenizer(corpus, kind="wordpiece", vocab_size=vocab_size)

    def enc(texts: tuple[str, ...]) -> Tensor:
        return encode_batch(tok, list(texts), max_len)

    def labels(y: np.ndarray | None, role: str) -> Tensor:
        if y is None:
            raise DataError(f"dataset={dataset!r} has no labels for its {role} role.")
        return torch.tensor(np.asarray(y), dtype=torch.long)  # a copy: roles are read-only

    return PreparedTask(
        dataset=dataset,
        num_classes=roles.num_classes,
        vocab_size=tok.get_vocab_size(),
        fingerprint=tokenizer_fingerprint(tok),
        tokenizer_json=tok.to_str(),
        private_x=enc(roles.private.texts),
        private_y=labels(roles.private.labels, "private"),
        private_groups=roles.private.groups,
        public_x=enc(roles.public.texts),
        teacher_x=enc(roles.teacher.texts),
        teacher_y=labels(roles.teacher.labels, "teacher"),
        test_x=enc(roles.test.texts),
        test_y=labels(roles.test.labels, "test"),
    )


@functools.lru_cache(maxsize=8)
def client_partitions(
    dataset: str, seed: int, vocab_size: int, max_len: int,
    num_clients: int, scheme: str, alpha: float,
) -> tuple[np.ndarray, ...]:
    """Index arrays of every client's private partition (deterministic by seed)."""
    task = prepare_task(dataset, seed, vocab_size, max_len)
    parts = partition(
        task.private_y.numpy(),
        num_clients,
        scheme=scheme,
        alpha=alpha,
        groups=task.private_groups,
        seed=seed,
    )
    return tuple(parts)

"""What differs between the tasks a federation can distil: one small interface.

A :class:`TaskKind` is two parts. Its :class:`Knowledge` says what a client tells the
coordinator about one public example: the codec and the check a reply must pass, the
aggregation rules that apply, the distillation loss and the test metric. Its
:class:`Inputs` says how a dataset's roles become model inputs, what the parties must
agree on before a round (a fingerprint), and which model families read those inputs.

Text classification and small images are both classification: the knowledge on a public
example is its class probabilities, so both use :data:`CLASS_PROBABILITIES` and differ
only in their inputs (the federation tokenizer's token ids; images as they are).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from common.config import AGGREGATIONS, BACKBONE_FAMILIES
from common.data import DatasetRoles, Split, encode_batch, tokenizer_fingerprint, train_tokenizer
from common.distill.codec import decode_knowledge, encode_knowledge
from common.distill.losses import kd_loss
from common.errors import DataError
from common.metrics import accuracy
from common.models import IMAGE_FAMILIES


@dataclass(frozen=True)
class Knowledge:
    """What one public example's knowledge is, and everything that handles it."""

    name: str
    encode: Callable[..., dict[str, np.ndarray]]  # (probs, encoding, topk=) -> wire arrays
    decode: Callable[..., np.ndarray]  # wire arrays -> rows; refuses a malformed reply
    aggregations: tuple[str, ...]  # the rules of coordinator/aggregation that apply to it
    loss: Callable[[Tensor, Tensor, float], Tensor]  # (student logits, target, T) -> loss
    metric: Callable[[np.ndarray, np.ndarray], float]  # (labels, probs) -> test score


# (m, C) rows on the simplex: every rule averages, or robustly combines, such rows
CLASS_PROBABILITIES = Knowledge("class-probabilities", encode_knowledge, decode_knowledge,
                                AGGREGATIONS, kd_loss, accuracy)


@dataclass(frozen=True)
class Encoded:
    """A dataset's roles as one kind of inputs: the encoder of a role, and what the
    parties check they share (the fingerprint; the tokenizer where there is one)."""

    encode: Callable[[Split], Tensor]
    fingerprint: str
    vocab_size: int = 0
    tokenizer_json: str = ""


@dataclass(frozen=True)
class Inputs:
    """How a task's examples reach a model."""

    name: str
    families: tuple[str, ...]  # the model families (config STUDENT_FAMILIES) that read them
    prepare: Callable[[DatasetRoles, int, int], Encoded]  # (roles, vocab_size, max_len)
    model_fields: Callable[[Tensor, int], dict[str, Any]]  # (inputs, patch) -> ModelConfig


def _token_ids(roles: DatasetRoles, vocab_size: int, max_len: int) -> Encoded:
    # the tokenizer sees only the non-private texts: its vocabulary would leak the rest
    corpus = list(roles.public.texts or ()) + list(roles.teacher.texts or ())
    tok = train_tokenizer(corpus, kind="wordpiece", vocab_size=vocab_size)
    return Encoded(lambda split: encode_batch(tok, list(split.texts or ()), max_len),
                   tokenizer_fingerprint(tok), tok.get_vocab_size(), tok.to_str())


def _images(roles: DatasetRoles, vocab_size: int, max_len: int) -> Encoded:
    del vocab_size, max_len  # images need no tokenizer
    return Encoded(_image_tensor, _images_fingerprint(roles))


def _image_tensor(split: Split) -> Tensor:
    return torch.tensor(np.asarray(split.features), dtype=torch.float32)  # a writable copy


def _images_fingerprint(roles: DatasetRoles) -> str:
    """The non-private images' digest: a node that loaded another dataset or split would
    answer about other public rows, so it must refuse the round."""
    digest = hashlib.sha256()
    for split in (roles.public, roles.teacher):
        images = np.ascontiguousarray(split.features, dtype=np.float32)
        digest.update(repr(images.shape).encode())
        digest.update(images.tobytes())
    return digest.hexdigest()


def _image_fields(images: Tensor, patch_size: int) -> dict[str, Any]:
    channels, side = int(images.shape[1]), int(images.shape[2])
    # 0 = a 4x4 grid of patches: 2x2 pixels on 8x8 digits, 7x7 on 28x28 MNIST. Learned
    # positions (the ViT paper's): fixed sinusoids of norm ~1 drown patch tokens that
    # start at norm ~0.02 (docs/RESULTS.md, images section)
    return {"channels": channels, "image_size": side, "patch_size": patch_size or side // 4,
            "positional": "learned"}


TOKEN_IDS = Inputs("token-ids", ("transformer", "lstm", "cnn", *BACKBONE_FAMILIES),
                   _token_ids, lambda inputs, patch: {})
IMAGES = Inputs("images", IMAGE_FAMILIES, _images, _image_fields)


@dataclass(frozen=True)
class TaskKind:
    name: str  # the dataset's task (common/data/roles.py TASKS)
    knowledge: Knowledge
    inputs: Inputs


TASK_KINDS = {
    "classification": TaskKind("classification", CLASS_PROBABILITIES, TOKEN_IDS),
    "image": TaskKind("image", CLASS_PROBABILITIES, IMAGES),
}


def task_kind(task: str, dataset: str = "") -> TaskKind:
    """The kind of a dataset's ``task``; the others have no soft labels to distil."""
    if task not in TASK_KINDS:
        raise DataError(
            f"dataset={dataset!r} is a {task!r} dataset; federated distillation of soft "
            f"labels needs one of the tasks {', '.join(TASK_KINDS)} (for example "
            "rotten-tomatoes or digits).")
    return TASK_KINDS[task]

"""A deployed node's private data: its own files, not a slice of a simulated pool.

In simulation every client takes its partition of the dataset's private role. A real
node instead points ``data-dir`` (SuperNode ``--node-config``) at a local directory with
a ``train.csv`` / ``.tsv`` / ``.jsonl`` (columns ``text``, ``label``), or for language
modelling plain ``*.txt`` documents cut into the federation's windows. The texts are
encoded with the federation's tokenizer (rebuilt from ``task.tokenizer_json``, the
one whose fingerprint the coordinator checks), and labels are mapped to the dataset's
agreed class names, so that label ids mean the same on every node even when one node's
file holds only one class.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import torch
from tokenizers import Tokenizer

from common.data import encode_batch, load_dataset, load_text_classification_dir
from common.errors import DataError
from common.task import PreparedTask


@functools.lru_cache(maxsize=2)
def _tokenizer(tokenizer_json: str) -> Tokenizer:
    return Tokenizer.from_str(tokenizer_json)


@functools.lru_cache(maxsize=2)
def _class_names(dataset: str, seed: int) -> tuple[str, ...]:
    return tuple(load_dataset(dataset, seed=seed).class_names)


def load_private_dir(directory: Path, task: PreparedTask, *, dataset: str, seed: int,
                     max_len: int, encode: Callable[[list[str]], torch.Tensor] | None = None,
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, labels (N,)) of the node's own labelled files.

    The inputs are what ``encode`` makes of the texts (common/task.py ``encode_texts``:
    a pretrained encoder's features, cached in the node's own folder, or its token ids),
    by default the federation tokenizer's token ids (N, max_len).
    """
    if not task.tokenizer_json:  # the files hold texts for the federation tokenizer
        raise DataError(f"data-dir {directory}: dataset={dataset!r} is a {task.task!r} "
                        "task; a node's own files are read for text tasks only.")
    if task.positions:  # language modelling: plain text, no labels
        return _token_windows(directory, task)
    names = _class_names(dataset, seed)
    split = load_text_classification_dir(directory, class_names=names or None)
    if len(split) == 0 or split.texts is None or split.labels is None:
        raise DataError(f"data-dir {directory} holds no labelled examples; put a train.csv "
                        "with columns text,label and at least one row there.")
    y = torch.tensor(split.labels.tolist(), dtype=torch.long)  # a writable copy
    if int(y.max()) >= task.num_classes or int(y.min()) < 0:
        raise DataError(f"data-dir {directory}: label ids {sorted(set(y.tolist()))} do not fit "
                        f"the {task.num_classes} classes of dataset={dataset!r} {names}.")
    if encode is not None:
        return encode(list(split.texts)), y
    x = encode_batch(_tokenizer(task.tokenizer_json), list(split.texts), max_len)
    return x, y


def _token_windows(directory: Path, task: PreparedTask) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, next tokens), both (N, T), of the node's ``*.txt`` files: each file a
    document, cut into windows as the simulated private role is (common/task_kinds.py)."""
    from common.data import encode_stream
    from common.task_kinds import stream_windows

    files = sorted(directory.glob("*.txt"))
    if not files:
        raise DataError(f"data-dir {directory} holds no .txt file; a language-modelling "
                        "node reads its documents from plain text files there.")
    texts = [f.read_text(encoding="utf-8") for f in files]
    windows = stream_windows(encode_stream(_tokenizer(task.tokenizer_json), texts),
                             task.positions + 1)
    return windows[:, :-1].contiguous(), windows[:, 1:].contiguous()

"""Plain-text corpora as language-modelling data: one ``.txt`` file or a folder of them.

One family of the file loaders (:mod:`common.data.loaders` has labeled text,
:mod:`common.data.timeseries` CSV series, :mod:`common.data.hf` Hugging Face datasets).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from common.data.loaders import open_text
from common.data.roles import DatasetRoles, chunk_text, lm_roles
from common.errors import DataError


def read_text_corpus(path: str | Path) -> str:
    """A plain-text corpus: one file, or every ``*.txt`` in a directory (sorted, joined)."""
    path = Path(path).expanduser()
    if path.is_dir():
        files = sorted(path.glob("*.txt"))
        if not files:
            raise DataError(f"{path} holds no *.txt files; put the corpus there as plain text.")
        return "\n\n".join(read_text_corpus(f) for f in files)
    with open_text(path) as handle:
        text = handle.read()
    if not text.strip():
        raise DataError(f"{path} is empty; a text corpus needs some text.")
    return text


def text_corpus_dataset(
    name: str,
    path: Path,
    *,
    seed: int,
    doc_chars: int = 1000,
    group_docs: int = 20,
    test_tail: float | None = None,
    test_fraction: float = 0.1,
    teacher_fraction: float = 0.1,
    public_fraction: float = 0.3,
    info: dict[str, Any] | None = None,
) -> DatasetRoles:
    """Language-modelling roles from plain text, cut into ~``doc_chars`` documents at lines.

    With ``test_tail`` (e.g. 0.1) the last share of the text is the test set (the usual
    split of Tiny Shakespeare); otherwise test documents are drawn at random.
    ``groups`` = document index // ``group_docs``: contiguous stretches of text, so the
    ``natural`` partition gives each client its own part of the corpus.
    """
    text = read_text_corpus(path)
    test_docs = None
    if test_tail is not None:
        if not 0.0 < test_tail < 1.0:
            raise DataError(f"test_tail must lie in (0, 1); got {test_tail}.")
        cut = text.rfind("\n", 0, int(len(text) * (1.0 - test_tail))) + 1 or int(
            len(text) * (1.0 - test_tail)
        )
        text, tail = text[:cut], text[cut:]
        test_docs = chunk_text(tail, doc_chars)
    docs = chunk_text(text, doc_chars)
    if group_docs < 1:
        raise DataError(f"group_docs must be at least 1; got {group_docs}.")
    return lm_roles(
        name,
        docs,
        seed=seed,
        groups=np.arange(len(docs)) // group_docs,
        test_documents=test_docs,
        test_fraction=test_fraction,
        teacher_fraction=teacher_fraction,
        public_fraction=public_fraction,
        info={**(info or {}), "source": str(path), "doc_chars": doc_chars, "test_tail": test_tail},
    )

"""Tokenizers, trained with Hugging Face ``tokenizers`` on public/training text only.

Every party of a federation rebuilds the tokenizer from the same public texts, so the
training must be reproducible across processes: :func:`tokenizer_fingerprint` lets two
parties compare what they hold. ``tokenizers``' WordPieceTrainer is not reproducible
(huggingface/tokenizers#1794, measured again with 0.23): it numbers the ``##``
continuation symbols in hash-map order, and those ids break ties between equally
frequent merges, so two processes can learn different vocabularies. We therefore train
WordPiece through the library's (reproducible) BPE trainer on words whose non-initial
characters are mapped to private-use code points, which puts the continuation symbols
into the sorted base alphabet, and map the learned pieces back to ``##`` form: the same
algorithm WordPieceTrainer runs (``WordPiece::from_bpe``), minus the hash order. BPE,
byte-level BPE and the character level were found reproducible as trained.

Id 0 is always ``[PAD]``; ``[UNK]`` is 1. WordPiece adds ``[CLS] ... [SEP]`` (encoder
classifiers); the others add ``[BOS] ... [EOS]`` (decoders).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from tokenizers import (
    Encoding,
    Regex,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)

from common.errors import ConfigError, DataError

if TYPE_CHECKING:
    import torch

TokenizerKind = Literal["wordpiece", "bpe", "byte", "char"]
TOKENIZER_KINDS: tuple[str, ...] = ("wordpiece", "bpe", "byte", "char")
PAD, UNK = "[PAD]", "[UNK]"
PAD_ID = 0
ENCODER_SPECIALS: tuple[str, ...] = (PAD, UNK, "[CLS]", "[SEP]", "[MASK]")
DECODER_SPECIALS: tuple[str, ...] = (PAD, UNK, "[BOS]", "[EOS]")


def special_tokens(kind: str) -> tuple[str, ...]:
    """The special tokens of a tokenizer kind, in id order (``[PAD]`` = 0, ``[UNK]`` = 1)."""
    return ENCODER_SPECIALS if kind == "wordpiece" else DECODER_SPECIALS


def _build(kind: str, lowercase: bool) -> tuple[Tokenizer, type]:
    """An untrained tokenizer of ``kind`` and its trainer class."""
    normal = [normalizers.NFKC()] + ([normalizers.Lowercase()] if lowercase else [])
    if kind == "wordpiece":
        tok = Tokenizer(models.WordPiece(unk_token=UNK))
        tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        return tok, trainers.WordPieceTrainer
    if kind == "bpe":
        tok = Tokenizer(models.BPE(unk_token=UNK))
        tok.normalizer = normalizers.Sequence(normal)
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        return tok, trainers.BpeTrainer
    if kind == "byte":
        tok = Tokenizer(models.BPE())  # every byte is in the alphabet: nothing is unknown
        tok.normalizer = normalizers.Sequence(normal)
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        return tok, trainers.BpeTrainer
    if kind == "char":
        tok = Tokenizer(models.WordLevel(unk_token=UNK))
        tok.normalizer = normalizers.Sequence(normal)
        # One token per character, newlines included ((?m) makes '.' match '\n' in Oniguruma).
        tok.pre_tokenizer = pre_tokenizers.Split(Regex("(?m)."), behavior="isolated")
        tok.decoder = decoders.Fuse()
        return tok, trainers.WordLevelTrainer
    raise ConfigError(f"Unknown tokenizer kind {kind!r}; use one of {TOKENIZER_KINDS}.")


def train_tokenizer(
    texts: Iterable[str],
    *,
    kind: TokenizerKind = "wordpiece",
    vocab_size: int = 8000,
    min_frequency: int = 2,
    lowercase: bool | None = None,
) -> Tokenizer:
    """Train a tokenizer on ``texts`` (the training or public texts: never the test set).

    Parameters
    ----------
    texts
        Training texts.
    kind
        ``wordpiece`` (encoder classifiers), ``bpe``, ``byte`` (byte-level BPE: no unknown
        tokens) or ``char`` (one token per character) (default: wordpiece).
    vocab_size
        Upper bound on the vocabulary, special tokens included (default: 8000).
    min_frequency
        A merge/word/character must occur this often to enter the vocabulary (default: 2).
    lowercase
        Lowercase before tokenizing (default: True for wordpiece, False otherwise).

    Deterministic: the same texts give the same tokenizer (same fingerprint) in any
    process; there is no seed because nothing is sampled.
    """
    texts = [t for t in texts if t]
    if not texts:
        raise DataError("Cannot train a tokenizer on no text; pass the public/training texts.")
    specials = special_tokens(kind)
    if vocab_size <= len(specials):
        raise ConfigError(
            f"vocab_size must exceed the {len(specials)} special tokens; got {vocab_size}."
        )
    lower = (kind == "wordpiece") if lowercase is None else lowercase
    tok, trainer_cls = _build(kind, lower)
    if kind == "wordpiece":
        tok = _train_wordpiece(tok, texts, vocab_size, min_frequency)
    else:
        extra = {"initial_alphabet": pre_tokenizers.ByteLevel.alphabet()} if kind == "byte" else {}
        trainer = trainer_cls(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=list(specials),
            show_progress=False,
            **extra,
        )
        tok.train_from_iterator(texts, trainer=trainer)
    first, last = specials[2], specials[3]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{first} $A {last}",
        special_tokens=[(first, tok.token_to_id(first)), (last, tok.token_to_id(last))],
    )
    if tok.token_to_id(PAD) != PAD_ID:
        raise DataError(f"Tokenizer training put {PAD} at id {tok.token_to_id(PAD)}, not 0.")
    return tok


# Continuation characters are marked by moving them to Supplementary Private Use Area-A.
_MARK = 0xF0000


def _marked_words(tok: Tokenizer, texts: Sequence[str]) -> Iterator[str]:
    """Each text as space-joined words, non-initial characters marked (see module docstring).

    Normalised and pre-tokenized by ``tok``'s own normalizer and pre-tokenizer, so the
    words are exactly those WordPiece will see. Words with characters outside the BMP
    (or already in the private-use planes) are left out: they cannot be marked.
    """
    assert tok.normalizer is not None and tok.pre_tokenizer is not None
    for text in texts:
        pieces = tok.pre_tokenizer.pre_tokenize_str(tok.normalizer.normalize_str(text))
        marked = [
            word[0] + "".join(chr(_MARK + ord(c)) for c in word[1:])
            for word, _ in pieces
            if all(ord(c) < 0x10000 for c in word)
        ]
        yield " ".join(marked)


def _unmark(token: str) -> str:
    """A learned BPE piece back in WordPiece form: marked start -> ``##`` + plain text."""
    plain = "".join(chr(ord(c) - _MARK) if ord(c) >= _MARK else c for c in token)
    return "##" + plain if ord(token[0]) >= _MARK else plain


def _train_wordpiece(
    tok: Tokenizer, texts: Sequence[str], vocab_size: int, min_frequency: int
) -> Tokenizer:
    """Reproducible WordPiece training (module docstring): BPE on marked words, then unmark."""
    bpe = Tokenizer(models.BPE(unk_token=UNK))
    bpe.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(ENCODER_SPECIALS),
        show_progress=False,
    )
    bpe.train_from_iterator(_marked_words(tok, texts), trainer=trainer)
    learned = sorted(bpe.get_vocab().items(), key=lambda item: item[1])
    vocab: dict[str, int] = {}
    for token, _ in learned:
        vocab.setdefault(token if token in ENCODER_SPECIALS else _unmark(token), len(vocab))
    wordpiece = Tokenizer(models.WordPiece(vocab, unk_token=UNK))
    wordpiece.normalizer = tok.normalizer
    wordpiece.pre_tokenizer = tok.pre_tokenizer
    wordpiece.decoder = tok.decoder
    # Registered as special (ids unchanged: they are in the vocabulary already), so that
    # raw text never splits them and decoding can skip them.
    wordpiece.add_special_tokens(list(ENCODER_SPECIALS))
    return wordpiece


def _encode(
    tok: Tokenizer, texts: Sequence[str], max_len: int | None, add_special_tokens: bool
) -> list[Encoding]:
    """Encode with truncation that keeps the special tokens, without mutating ``tok``.

    (``enable_truncation``/``enable_padding`` would change the tokenizer's JSON and hence
    its fingerprint; here truncation is applied per encoding before post-processing.)
    """
    encodings = tok.encode_batch(list(texts), add_special_tokens=False)
    n_special = tok.num_special_tokens_to_add(is_pair=False) if add_special_tokens else 0
    out = []
    for enc in encodings:
        if max_len is not None:
            enc.truncate(max(max_len - n_special, 0))
        out.append(tok.post_process(enc, add_special_tokens=add_special_tokens))
    return out


def encode_batch(
    tok: Tokenizer, texts: Sequence[str], max_len: int, *, add_special_tokens: bool = True
) -> torch.Tensor:
    """Token ids (N, max_len) as a LongTensor: truncated, then right-padded with 0 ([PAD])."""
    import torch  # lazily: listing or describing datasets should not pay for torch

    if max_len < 1:
        raise ConfigError(f"max_len must be at least 1; got {max_len}.")
    if isinstance(texts, str):
        raise DataError(
            "encode_batch takes a sequence of texts, not one string; wrap it in a list."
        )
    ids = np.zeros((len(texts), max_len), dtype=np.int64)  # (N, max_len), 0 = [PAD]
    for row, enc in enumerate(_encode(tok, texts, max_len, add_special_tokens)):
        seq = enc.ids[:max_len]
        ids[row, : len(seq)] = seq
    return torch.from_numpy(ids)


def encode_stream(tok: Tokenizer, texts: Sequence[str]) -> torch.Tensor:
    """All ``texts`` as one 1-D LongTensor, each document wrapped in its special tokens.

    For language modelling, where training windows are cut from a contiguous stream.
    """
    import torch

    encodings = _encode(tok, texts, None, add_special_tokens=True)
    return torch.tensor([i for enc in encodings for i in enc.ids], dtype=torch.long)


def decode_batch(tok: Tokenizer, ids: torch.Tensor | np.ndarray) -> list[str]:
    """Texts from ids (N, L), padding and other special tokens dropped."""
    rows = np.asarray(ids.cpu() if hasattr(ids, "cpu") else ids, dtype=np.int64)
    if rows.ndim == 1:
        rows = rows[None]
    return tok.decode_batch([r.tolist() for r in rows], skip_special_tokens=True)


def tokenizer_fingerprint(tok: Tokenizer) -> str:
    """sha256 of the tokenizer's JSON: equal fingerprints = identical vocabulary and rules."""
    return hashlib.sha256(tok.to_str().encode("utf-8")).hexdigest()


def save_tokenizer(tok: Tokenizer, path: str | Path) -> Path:
    """Write the tokenizer as JSON (parent folders created)."""
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(path))
    return path


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Read a tokenizer JSON written by :func:`save_tokenizer`."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"Tokenizer file not found: {path}; train one and save_tokenizer() it.")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a bare Exception on bad JSON
        raise DataError(f"{path} is not a valid tokenizer JSON ({exc}); re-create it.") from exc


__all__ = [
    "DECODER_SPECIALS",
    "ENCODER_SPECIALS",
    "PAD_ID",
    "TOKENIZER_KINDS",
    "TokenizerKind",
    "decode_batch",
    "encode_batch",
    "encode_stream",
    "load_tokenizer",
    "save_tokenizer",
    "special_tokens",
    "tokenizer_fingerprint",
    "train_tokenizer",
]

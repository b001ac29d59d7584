"""Text from a run's language model, and how to tell whether it is any good.

:func:`load_run_model` rebuilds the teacher a ``fedistill simulate`` run saved
(``teacher.pt``) from the run's own config (``run_config.toml``) and tokenizer
(``tokenizer.json``); :func:`sample_texts` draws continuations of a prompt with
temperature, top-k and top-p. :func:`sample_quality` scores samples without a reference:
distinct-n (the share of unique word n-grams: 1.0 never repeats, near 0 loops), the
character entropy in bits; for code the syntax-error rate of finished samples under
``compile`` (a sample is finished when the model emitted its end-of-document token; an
unfinished one is cut mid-statement, so it is counted apart rather than as an error), and
for prose the spelling-error rate: the share of words that pyspellchecker's English word
list does not know (:func:`spelling_errors`; words and what is skipped are defined in
:func:`prose_words`).
"""

from __future__ import annotations

import functools
import math
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from spellchecker import SpellChecker
from tokenizers import Tokenizer
from torch import nn

from common.config import FedConfig, load_toml
from common.errors import ConfigError
from common.models import ModelConfig, build_model, sample_next_token

BOS, EOS = "[BOS]", "[EOS]"

# datasets whose documents are code: their samples are also scored by Python's compiler;
# the samples of every other dataset by an English word list (the spelling-error rate)
CODE_DATASETS = ("python-code",)

# How a run's summary samples its language models: fixed, so that the rows of different
# runs and baselines compare. Long enough for a python-code snippet of typical length to
# end (only an ended sample is compiled); below 1 a temperature trades variety for fewer
# errors, as people sample a small model.
SAMPLE_SETTINGS = {"samples": 32, "max_new_tokens": 1000, "temperature": 0.8, "seed": 0}


@dataclass(frozen=True)
class RunModel:
    """A run's language model with what it needs to read and write text."""

    model: nn.Module
    tokenizer: Tokenizer
    max_len: int
    family: str


def load_run_model(run: Path, *, weights: str = "teacher.pt") -> RunModel:
    """The run's teacher (or another saved state dict of the teacher's family)."""
    for name in ("run_config.toml", "tokenizer.json", weights):
        if not (run / name).is_file():
            raise ConfigError(f"{run} has no {name}: give the directory of a `fedistill "
                              "simulate` run on a language-modelling dataset (--preset lm).")
    cfg = FedConfig.from_mapping(load_toml(run / "run_config.toml"))
    if cfg.teacher_family not in ("gpt", "lstm-lm"):
        raise ConfigError(f"the run's teacher is a {cfg.teacher_family!r}, not a language "
                          "model (gpt, lstm-lm): it cannot generate text.")
    tokenizer = Tokenizer.from_file(str(run / "tokenizer.json"))
    model = build_model(ModelConfig(family=cfg.teacher_family, size=cfg.teacher_size,
                                    vocab_size=tokenizer.get_vocab_size(),
                                    max_len=cfg.max_len))
    state = torch.load(run / weights, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return RunModel(model.eval(), tokenizer, cfg.max_len, cfg.teacher_family)


@torch.no_grad()
def sample_texts(run: RunModel, prompt: str, *, samples: int = 1, max_new_tokens: int = 200,
                 temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, seed: int = 0) -> list[tuple[str, bool]]:
    """``samples`` continuations of ``prompt``: (text, finished) pairs, where finished
    means the model ended the document (emitted [EOS]) within ``max_new_tokens``."""
    tok = run.tokenizer
    bos, eos = tok.token_to_id(BOS), tok.token_to_id(EOS)
    prompt_ids = [bos, *tok.encode(prompt, add_special_tokens=False).ids]
    device = next(run.model.parameters()).device
    ids = torch.tensor([prompt_ids] * samples, dtype=torch.long, device=device)  # (S, P)
    generator = torch.Generator(device=device).manual_seed(seed)
    finished = torch.zeros(samples, dtype=torch.bool, device=device)
    for _ in range(max_new_tokens):
        # recompute over the last max_len tokens: positions never exceed what it learned
        logits = run.model(ids[:, -run.max_len:])[:, -1]  # (S, V)
        token = sample_next_token(logits, temperature=temperature, top_k=top_k, top_p=top_p,
                                  generator=generator)
        token = token.masked_fill(finished, eos)
        finished |= token == eos
        ids = torch.cat([ids, token[:, None]], dim=1)
        if bool(finished.all()):
            break
    out = []
    for row in ids[:, len(prompt_ids):].tolist():
        ended = eos in row
        body = row[: row.index(eos)] if ended else row
        out.append((prompt + tok.decode(body, skip_special_tokens=True), ended))
    return out


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Unique word n-grams over all word n-grams of ``texts`` (Li et al. 2016)."""
    grams = [tuple(words[i:i + n]) for t in texts for words in [t.split()]
             for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def char_entropy(texts: Sequence[str]) -> float:
    """Entropy in bits of the characters of ``texts`` taken together."""
    counts = Counter("".join(texts))
    total = sum(counts.values())
    return -sum(c / total * math.log2(c / total) for c in counts.values()) if total else 0.0


def syntax_errors(texts: Sequence[str]) -> int:
    """How many of ``texts`` Python's compiler refuses (SyntaxError and its kin)."""
    bad = 0
    for text in texts:
        try:
            compile(text, "<sample>", "exec", dont_inherit=True)
        except (SyntaxError, ValueError):  # ValueError: a NUL byte in the source
            bad += 1
    return bad


# A word: ASCII letters, at most one inner apostrophe (don't, module's).
_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")
# What may wrap a word: quotes, brackets, sentence punctuation, markup (``x``, *y*).
_EDGE = "\"'`*([{<>}]),.;:!?"


def prose_words(text: str) -> Iterator[str]:
    """The words of ``text`` that a spelling check can judge, lowercased.

    A whitespace-separated token loses the punctuation around it and is split at hyphens;
    a part is a word when it is letters only (see ``_WORD``) and at least 2 long. The rest
    is skipped rather than counted as misspelled: python-docs is full of identifiers and
    code (``sys.path``, ``__init__``, ``utf8``, ``f(x)``) whose underscores, digits, dots
    or brackets say they are names, not English, and single letters (``x``, ``a``) are
    variables as often as words.
    """
    for token in text.split():
        for part in token.strip(_EDGE).lower().split("-"):
            if len(part) > 1 and _WORD.fullmatch(part):
                yield part


@functools.cache
def _english() -> frozenset[str]:
    """pyspellchecker's English word list (building it takes about a second)."""
    return frozenset(SpellChecker(language="en").word_frequency.dictionary)


def spelling_errors(texts: Sequence[str]) -> float | None:
    """The share of the words of ``texts`` (:func:`prose_words`, every occurrence counted)
    that the English word list does not know; None when ``texts`` has no word."""
    words = [w for text in texts for w in prose_words(text)]
    if not words:
        return None
    # membership, not SpellChecker.unknown: that one silently skips very long tokens, and
    # a looping character model writes exactly those
    known = _english()
    return sum(w not in known for w in words) / len(words)


def _cut_last_word(text: str) -> str:
    """``text`` without a last word that may have been cut off mid-way (no space after)."""
    return re.sub(r"\S+\Z", "", text)


def sample_quality(samples: Sequence[tuple[str, bool]], *, code: bool) -> dict[str, Any]:
    """distinct-1/2, character entropy; for code the syntax-error rate of finished
    samples (None when no sample finished) and how many finished; for prose the
    spelling-error rate (None when there is no word), where an unfinished sample's last
    word is left out since generation may have stopped inside it."""
    texts = [text for text, _ in samples]
    quality: dict[str, Any] = {"samples": len(texts), "distinct_1": distinct_n(texts, 1),
                               "distinct_2": distinct_n(texts, 2),
                               "char_entropy_bits": char_entropy(texts)}
    if code:
        done = [text for text, finished in samples if finished]
        quality["finished"] = len(done)
        quality["syntax_error_rate"] = syntax_errors(done) / len(done) if done else None
    else:
        whole = [text if finished else _cut_last_word(text) for text, finished in samples]
        quality["spelling_error_rate"] = spelling_errors(whole)
    return quality


def model_samples(run: RunModel, dataset: str) -> dict[str, Any]:
    """:func:`sample_quality` of unprompted samples drawn with ``SAMPLE_SETTINGS``, and
    those settings: what a run's summary reports of its language model's text."""
    was_training = run.model.training
    run.model.eval()
    try:
        drawn = sample_texts(run, "", **SAMPLE_SETTINGS)
    finally:
        run.model.train(was_training)
    return {**SAMPLE_SETTINGS, **sample_quality(drawn, code=dataset in CODE_DATASETS)}


def run_samples(run: Path) -> dict[str, Any]:
    """:func:`model_samples` of the final teacher a ``fedistill simulate`` run saved."""
    cfg = FedConfig.from_mapping(load_toml(run / "run_config.toml"))
    return model_samples(load_run_model(run), cfg.dataset)

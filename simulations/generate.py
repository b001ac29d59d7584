"""Text from a run's language model, and how to tell whether it is any good.

:func:`load_run_model` rebuilds the teacher a ``fedistill simulate`` run saved
(``teacher.pt``) from the run's own config (``run_config.toml``) and tokenizer
(``tokenizer.json``); :func:`sample_texts` draws continuations of a prompt with
temperature, top-k and top-p. :func:`sample_quality` scores samples without a reference:
distinct-n (the share of unique word n-grams: 1.0 never repeats, near 0 loops), the
character entropy in bits, and for code the syntax-error rate of finished samples under
``compile`` (a sample is finished when the model emitted its end-of-document token; an
unfinished one is cut mid-statement, so it is counted apart rather than as an error).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer
from torch import nn

from common.config import FedConfig, load_toml
from common.errors import ConfigError
from common.models import ModelConfig, build_model, sample_next_token

BOS, EOS = "[BOS]", "[EOS]"


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
    ids = torch.tensor([prompt_ids] * samples, dtype=torch.long)  # (S, P)
    generator = torch.Generator().manual_seed(seed)
    finished = torch.zeros(samples, dtype=torch.bool)
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


def sample_quality(samples: Sequence[tuple[str, bool]], *, code: bool) -> dict[str, Any]:
    """distinct-1/2, character entropy; for code the syntax-error rate of finished
    samples (None when no sample finished) and how many finished."""
    texts = [text for text, _ in samples]
    quality: dict[str, Any] = {"samples": len(texts), "distinct_1": distinct_n(texts, 1),
                               "distinct_2": distinct_n(texts, 2),
                               "char_entropy_bits": char_entropy(texts)}
    if code:
        done = [text for text, finished in samples if finished]
        quality["finished"] = len(done)
        quality["syntax_error_rate"] = syntax_errors(done) / len(done) if done else None
    return quality

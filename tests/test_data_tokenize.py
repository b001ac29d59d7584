"""Tokenizers: special ids, padding/truncation, round trips, and reproducible training.

The federation relies on every party rebuilding the identical tokenizer from the public
set, so reproducibility is checked across separate processes (hash-map order differs
between processes, which is what broke tokenizers' WordPieceTrainer; see tokenize.py).
"""

from __future__ import annotations

import pydoc_data.topics
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from common.data import (
    PAD_ID,
    TOKENIZER_KINDS,
    decode_batch,
    encode_batch,
    encode_stream,
    load_tokenizer,
    save_tokenizer,
    tokenizer_fingerprint,
    train_tokenizer,
)
from common.data.tokenize import special_tokens
from common.errors import ConfigError, DataError

REPO = Path(__file__).resolve().parents[1]
CORPUS = [text for _, text in sorted(pydoc_data.topics.topics.items())][:40]
SENTENCE = "the for statement is used to iterate over the elements of a sequence"


@pytest.fixture(scope="module", params=TOKENIZER_KINDS)
def trained(request: pytest.FixtureRequest):
    return request.param, train_tokenizer(CORPUS, kind=request.param, vocab_size=1500)


def test_special_ids(trained) -> None:
    kind, tok = trained
    specials = special_tokens(kind)
    assert tok.token_to_id("[PAD]") == PAD_ID == 0
    assert tok.token_to_id("[UNK]") == 1
    assert [tok.token_to_id(s) for s in specials] == list(range(len(specials)))
    assert tok.get_vocab_size() <= 1500


def test_encode_pads_and_truncates_keeping_the_end_token(trained) -> None:
    kind, tok = trained
    first, last = special_tokens(kind)[2:4]
    ids = encode_batch(tok, [SENTENCE, "the"], max_len=8)
    assert ids.dtype == torch.long and ids.shape == (2, 8)
    assert ids[0, 0] == tok.token_to_id(first)
    assert ids[0, -1] == tok.token_to_id(last), "truncation dropped the end token"
    short = ids[1].tolist()
    n = short.index(tok.token_to_id(last)) + 1
    assert all(i == PAD_ID for i in short[n:]) and n < 8
    no_special = encode_batch(tok, ["the"], max_len=4, add_special_tokens=False)
    assert tok.token_to_id(first) not in no_special[0].tolist()


def test_round_trip_keeps_in_vocabulary_words(trained) -> None:
    _, tok = trained
    ids = encode_batch(tok, [SENTENCE], max_len=128)
    assert decode_batch(tok, ids) == [SENTENCE]
    stream = encode_stream(tok, [SENTENCE, SENTENCE])
    assert stream.ndim == 1 and len(stream) == 2 * int((ids[0] != PAD_ID).sum())


def test_fingerprint_is_stable_and_survives_save_load(trained, tmp_path: Path) -> None:
    kind, tok = trained
    fp = tokenizer_fingerprint(tok)
    encode_batch(tok, [SENTENCE], max_len=4)  # encoding must not change the tokenizer
    assert tokenizer_fingerprint(tok) == fp
    assert tokenizer_fingerprint(train_tokenizer(CORPUS, kind=kind, vocab_size=1500)) == fp
    loaded = load_tokenizer(save_tokenizer(tok, tmp_path / "a" / "tok.json"))
    assert tokenizer_fingerprint(loaded) == fp
    assert torch.equal(encode_batch(loaded, [SENTENCE], 16), encode_batch(tok, [SENTENCE], 16))
    other = train_tokenizer(CORPUS[:20], kind=kind, vocab_size=1500)
    assert tokenizer_fingerprint(other) != fp


_SCRIPT = """
import pydoc_data.topics
from common.data.tokenize import train_tokenizer, tokenizer_fingerprint
texts = [t for _, t in sorted(pydoc_data.topics.topics.items())][:40]
print(" ".join(tokenizer_fingerprint(train_tokenizer(texts, kind=k, vocab_size=1500))
               for k in ("wordpiece", "bpe", "byte", "char")))
"""


def test_training_is_reproducible_across_processes() -> None:
    # Two fresh processes (different hash seeds) and this one must agree on every kind.
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", _SCRIPT],
            cwd=REPO,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(2)
    ]
    outputs = []
    for proc in runs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        outputs.append(out.split())
    here = [
        tokenizer_fingerprint(train_tokenizer(CORPUS, kind=k, vocab_size=1500))
        for k in ("wordpiece", "bpe", "byte", "char")
    ]
    assert outputs[0] == outputs[1] == here


def test_wordpiece_uses_continuation_pieces() -> None:
    tok = train_tokenizer(CORPUS, kind="wordpiece", vocab_size=600)
    tokens = tok.encode("Iterating unambiguously").tokens
    assert any(t.startswith("##") for t in tokens), tokens
    assert tok.decode(tok.encode("Iterating").ids) == "iterating"


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        pytest.param(lambda: train_tokenizer([]), DataError, "no text", id="no texts"),
        pytest.param(
            lambda: train_tokenizer(["a b"], kind="morse"), ConfigError, "morse", id="unknown kind"
        ),
        pytest.param(
            lambda: train_tokenizer(["a b"], vocab_size=3),
            ConfigError,
            "vocab_size",
            id="vocab too small",
        ),
    ],
)
def test_bad_training_input(call, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        call()


def test_bad_tokenizer_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        load_tokenizer(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match=str(bad)):
        load_tokenizer(bad)
    tok = train_tokenizer(CORPUS, kind="char", vocab_size=200)
    with pytest.raises(ConfigError, match="max_len"):
        encode_batch(tok, ["a"], 0)
    with pytest.raises(DataError, match="not one string"):
        encode_batch(tok, "abc", 4)  # type: ignore[arg-type]

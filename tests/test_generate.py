"""`fedistill generate` and the sample-quality metrics (simulations/generate.py).

A run directory is written here as `fedistill simulate` writes one (run_config.toml,
tokenizer.json, teacher.pt) with an untrained tiny teacher, so the command is checked in
a second; tests/test_simulation_lm.py generates from a trained run's teacher.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import tomli_w
import torch
from typer.testing import CliRunner

from common.config import FedConfig
from common.data import save_tokenizer, train_tokenizer
from common.errors import ConfigError
from common.models import ModelConfig, build_model
from simulations.cli import app
from simulations.generate import (
    char_entropy,
    distinct_n,
    load_run_model,
    model_samples,
    prose_words,
    run_samples,
    sample_quality,
    sample_texts,
    spelling_errors,
    syntax_errors,
)

TEXTS = ["def f(x):\n    return x + 1\n", "class A:\n    pass\n", "The quick brown fox.\n"] * 3


def _run(root: Path, family: str = "gpt", dataset: str = "python-code") -> Path:
    cfg = FedConfig(dataset=dataset, teacher_family=family, teacher_size="tiny",
                    students=family, partition="iid", max_len=16, vocab_size=64)
    root.mkdir(parents=True, exist_ok=True)
    (root / "run_config.toml").write_text(tomli_w.dumps(cfg.to_run_config()))
    tok = train_tokenizer(TEXTS, kind="char", vocab_size=64, min_frequency=1)
    save_tokenizer(tok, root / "tokenizer.json")
    torch.manual_seed(0)
    model = build_model(ModelConfig(family=family, vocab_size=tok.get_vocab_size(),
                                    max_len=16))
    torch.save(model.state_dict(), root / "teacher.pt")
    return root


# ---------------------------------------------------------------- metrics, pinned
DISTINCT = [
    ("all new", ["a b c d"], 1, 1.0),
    ("a loop", ["a a a a"], 1, 0.25),
    ("bigrams of a loop", ["a b a b a b"], 2, 2 / 5),
    ("across samples", ["a b", "a b"], 2, 0.5),
    ("too short", ["a"], 2, 0.0),
]


@pytest.mark.parametrize("texts,n,expected", [c[1:] for c in DISTINCT],
                         ids=[c[0] for c in DISTINCT])
def test_distinct_n(texts: list[str], n: int, expected: float) -> None:
    assert distinct_n(texts, n) == pytest.approx(expected)


def test_char_entropy_in_bits() -> None:
    assert char_entropy(["aaaa"]) == 0.0
    assert char_entropy(["ab"]) == pytest.approx(1.0)
    assert char_entropy(["abcd", "abcd"]) == pytest.approx(2.0)
    assert char_entropy([""]) == 0.0


def test_syntax_errors_count_what_python_refuses() -> None:
    good = ["x = 1\n", "def f():\n    return 2\n", ""]
    bad = ["def f(:\n", "x = (1,\n", "    indented = 1\n", "a\x00b"]
    assert syntax_errors(good) == 0
    assert syntax_errors(bad) == len(bad)


def test_quality_scores_only_finished_samples_for_syntax() -> None:
    samples = [("x = 1\n", True), ("def f(:\n", True), ("def g(x):\n    ret", False)]
    quality = sample_quality(samples, code=True)
    assert (quality["samples"], quality["finished"]) == (3, 2)
    assert quality["syntax_error_rate"] == 0.5
    assert "syntax_error_rate" not in sample_quality(samples, code=False)
    assert sample_quality([("x", False)], code=True)["syntax_error_rate"] is None


PROSE = ("Return a new list containing all items from the iterable in ascending order. "
         "A custom key function can be supplied to customize the sort order, and the "
         "reverse flag can be set to request the result in descending order.")


def _scramble(text: str) -> str:
    """Each word's letters rotated by one (``the order.`` -> ``het rdero.``)."""
    return re.sub(r"[A-Za-z]+", lambda m: m.group()[1:] + m.group()[0], text)


def test_prose_words_keep_english_and_skip_names() -> None:
    text = ("The `sys.path` list (see __init__, utf8 and f(x)) isn't well-known; "
            "\"Quoted,\" a x.")
    assert list(prose_words(text)) == ["the", "list", "see", "and", "isn't", "well",
                                       "known", "quoted"]


def test_spelling_error_rate_of_prose_and_of_scrambled_prose() -> None:
    assert spelling_errors([PROSE]) == pytest.approx(1 / 37)  # the list lacks "iterable"
    assert spelling_errors([_scramble(PROSE)]) > 0.8  # 34 of 37 (orts, ni, ni are words)


def test_spelling_error_rate_exact() -> None:
    assert spelling_errors(["The cat", "sat teh"]) == pytest.approx(1 / 4)
    assert spelling_errors(["Recieve the apple, seperate the pear."]) == pytest.approx(2 / 6)
    # a loop of letters longer than any word is an error (SpellChecker.unknown skips it)
    assert spelling_errors(["the " + "ab" * 30]) == pytest.approx(0.5)
    assert spelling_errors(["the the the teh"]) == pytest.approx(1 / 4)  # every occurrence


@pytest.mark.parametrize("texts", [[], [""], ["x = 1 + 2", "__init__ sys.path 42"]])
def test_spelling_error_rate_without_words_is_none(texts: list[str]) -> None:
    assert spelling_errors(texts) is None


def test_quality_scores_spelling_for_prose_only() -> None:
    # an unfinished sample's last word may be cut off ("ord"), so it is left out
    samples = [("sort the list in ord", False), ("a new lsit.", True), ("x", False)]
    quality = sample_quality(samples, code=False)
    assert quality["spelling_error_rate"] == pytest.approx(1 / 6)
    assert "syntax_error_rate" not in quality and "finished" not in quality
    assert "spelling_error_rate" not in sample_quality(samples, code=True)
    assert sample_quality([("x", False)], code=False)["spelling_error_rate"] is None


# ---------------------------------------------------------------- sampling
def test_samples_continue_the_prompt_and_are_repeatable(tmp_path: Path) -> None:
    run = load_run_model(_run(tmp_path / "run"))
    drawn = sample_texts(run, "def ", samples=3, max_new_tokens=40, seed=1)
    assert len(drawn) == 3 and all(text.startswith("def ") for text, _ in drawn)
    assert drawn == sample_texts(run, "def ", samples=3, max_new_tokens=40, seed=1)
    assert drawn != sample_texts(run, "def ", samples=3, max_new_tokens=40, seed=2)
    greedy = sample_texts(run, "def ", samples=2, max_new_tokens=40, top_k=1)
    assert greedy[0] == greedy[1]  # top-k = 1 leaves no choice
    # longer than the model's 16 positions: it reads the last 16 tokens
    [(long, _)] = sample_texts(run, "", max_new_tokens=40, temperature=0.7, top_p=0.9)
    assert 0 < len(long) <= 40


def test_a_sample_finishes_at_the_end_of_document_token(tmp_path: Path) -> None:
    root = _run(tmp_path / "run", family="lstm-lm")
    state = torch.load(root / "teacher.pt", weights_only=True)
    tok = load_run_model(root).tokenizer
    state["lm_head.bias"][tok.token_to_id("[EOS]")] = 50.0  # it always ends at once
    torch.save(state, root / "teacher.pt")
    assert sample_texts(load_run_model(root), "x", samples=2) == [("x", True), ("x", True)]


def test_a_run_without_a_language_model_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="has no run_config.toml"):
        load_run_model(tmp_path)
    root = _run(tmp_path / "run")
    cfg = FedConfig(teacher_family="transformer")
    (root / "run_config.toml").write_text(tomli_w.dumps(cfg.to_run_config()))
    with pytest.raises(ConfigError, match="not a language model"):
        load_run_model(root)


def test_a_summary_samples_with_fixed_settings_and_scores_by_dataset(tmp_path: Path) -> None:
    code = run_samples(_run(tmp_path / "code"))
    assert code["samples"] == 32 and code["temperature"] == 0.8 and code["seed"] == 0
    assert 0 <= code["finished"] <= 32 and "spelling_error_rate" not in code
    assert run_samples(_run(tmp_path / "code")) == code  # repeatable: a fixed seed
    model = load_run_model(_run(tmp_path / "docs", dataset="python-docs"))
    model.model.train()
    prose = model_samples(model, "python-docs")
    assert "spelling_error_rate" in prose and "syntax_error_rate" not in prose
    assert model.model.training  # left as it was found


@pytest.mark.parametrize("dataset,rate,other", [
    ("python-code", "syntax_error_rate", "spelling_error_rate"),
    ("python-docs", "spelling_error_rate", "syntax_error_rate"),
])
def test_the_command_prints_samples_and_their_quality(tmp_path: Path, dataset: str,
                                                       rate: str, other: str) -> None:
    root = _run(tmp_path / "run", dataset=dataset)
    result = CliRunner().invoke(app, ["generate", str(root), "--prompt", "class ",
                                      "--samples", "2", "--max-new-tokens", "30",
                                      "--temperature", "0.9", "--top-k", "20", "--top-p",
                                      "0.95", "--quality"])
    assert result.exit_code == 0, result.output
    assert result.output.count("class ") >= 2 and "sample 2/2" in result.output
    scores = json.loads(result.output[result.output.index("{"):])
    assert scores["samples"] == 2 and 0 <= scores["distinct_1"] <= 1
    assert rate in scores and other not in scores
    assert math.isfinite(scores["char_entropy_bits"])

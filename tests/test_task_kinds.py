"""The task kinds (common/task_kinds.py): text classification unchanged, images,
forecasts and language modelling added (tests/test_forecast_knowledge.py and
tests/test_lm_knowledge.py have their own checks).

Text classification must prepare exactly what it prepared before the task kinds existed:
the same tokenizer fingerprint and the same token ids, bit for bit (the digests below were
taken on main at 747c44f, before the refactor, with the quick preset's vocab and length).
"""

from __future__ import annotations

import hashlib

import pytest
import torch

from common.config import FedConfig
from common.data import encode_batch, load_dataset, tokenizer_fingerprint, train_tokenizer
from common.errors import ConfigError, DataError
from common.models import build_model
from common.task import PreparedTask, model_config, prepare_task, task_for
from common.task_kinds import task_kind

ROLES = ("private_x", "private_y", "public_x", "teacher_x", "teacher_y", "test_x", "test_y")
# rotten-tomatoes, seed 0, vocab-size 2000, max-len 32, as main prepared it at 747c44f
TEXT_FINGERPRINT = "f8ceb3ae0dbf2364ae90f268f491de348dc73a453116fd0dd26a1e15635d42ca"
TEXT_DIGEST = "8dba1646ab7e05bdb9036c401a07b9be2a4a2b851a1865188504870d036490e4"


def _digest(task: PreparedTask) -> str:
    h = hashlib.sha256()
    for name in ROLES:
        x = getattr(task, name)
        h.update(name.encode())
        h.update(str(tuple(x.shape)).encode())
        h.update(x.numpy().tobytes())
    return h.hexdigest()


def test_text_classification_prepares_what_it_did_before() -> None:
    task = prepare_task("rotten-tomatoes", 0, 2000, 32)
    assert (task.task, task.kind.inputs.name) == ("classification", "token-ids")
    assert (task.fingerprint, task.vocab_size, task.num_classes) == (TEXT_FINGERPRINT, 2000, 2)
    assert tuple(task.public_x.shape) == (4049, 32) and task.public_x.dtype == torch.long
    assert _digest(task) == TEXT_DIGEST


def test_text_token_ids_follow_the_tokenizer_of_the_non_private_texts() -> None:
    """The same ids built directly, without the task kinds: public + teacher texts only."""
    roles = load_dataset("rotten-tomatoes", seed=0)
    tok = train_tokenizer(list(roles.public.texts) + list(roles.teacher.texts),
                          kind="wordpiece", vocab_size=2000)
    task = prepare_task("rotten-tomatoes", 0, 2000, 32)
    assert task.fingerprint == tokenizer_fingerprint(tok)
    assert torch.equal(task.private_x, encode_batch(tok, list(roles.private.texts), 32))
    assert torch.equal(task.test_x, encode_batch(tok, list(roles.test.texts), 32))


def test_digits_are_prepared_as_images_without_a_tokenizer() -> None:
    task = prepare_task("digits", 0, 2000, 32)
    roles = load_dataset("digits", seed=0)
    assert (task.task, task.kind.inputs.name, task.vocab_size, task.tokenizer_json) == (
        "image", "images", 0, "")
    assert task.public_x.dtype == torch.float32 and tuple(task.public_x.shape[1:]) == (1, 8, 8)
    assert len(task.private_x) == len(roles.private) == len(task.private_y)
    assert torch.equal(task.test_x, torch.tensor(roles.test.features))
    # the knowledge is the same as text classification's: class probabilities
    assert task.kind.knowledge is prepare_task("rotten-tomatoes", 0, 2000, 32).kind.knowledge


def test_the_image_fingerprint_changes_with_the_public_images() -> None:
    one, other = prepare_task("digits", 0, 2000, 32), prepare_task("digits", 1, 2000, 32)
    assert one.fingerprint == prepare_task("digits", 0, 6000, 40).fingerprint  # no tokenizer
    assert one.fingerprint != other.fingerprint


@pytest.mark.parametrize("family", ["vit", "image-cnn"])
def test_image_families_build_from_the_task_and_read_its_images(family: str) -> None:
    cfg = FedConfig(dataset="digits", teacher_family="vit", students="image-cnn")
    task = task_for(cfg, prepare_task("digits", 0, cfg.vocab_size, cfg.max_len), family)
    mc = model_config(cfg, task, family, "tiny")
    assert (mc.image_size, mc.channels, mc.patch_size, mc.feature_dim) == (8, 1, 2, 0)
    logits = build_model(mc).eval()(task.test_x[:5])
    assert tuple(logits.shape) == (5, 10)


def test_a_family_that_cannot_read_the_inputs_is_refused_naming_the_choices() -> None:
    cfg = FedConfig(dataset="digits")
    with pytest.raises(ConfigError, match="'lstm' does not read images.*vit, image-cnn"):
        task_for(cfg, prepare_task("digits", 0, cfg.vocab_size, cfg.max_len), "lstm")
    text = FedConfig(dataset="rotten-tomatoes", max_len=32, vocab_size=2000)
    with pytest.raises(ConfigError, match="'vit' does not read token-ids"):
        task_for(text, prepare_task("rotten-tomatoes", 0, 2000, 32), "vit")


def test_a_task_without_a_knowledge_kind_is_refused() -> None:
    with pytest.raises(DataError, match="'speech' dataset.*classification, image, forecast, lm"):
        task_kind("speech", "librispeech")


def test_python_docs_is_prepared_as_token_windows_with_next_token_knowledge() -> None:
    task = prepare_task("python-docs", 0, 128, 32)
    assert (task.task, task.kind.inputs.name, task.kind.knowledge.name) == (
        "lm", "token-windows", "next-tokens")
    assert (task.positions, task.width) == (32, 32 * task.vocab_size)
    assert task.private_y.shape == task.private_x.shape and task.private_y.dtype == torch.long


def test_seattle_temps_is_prepared_as_windows_with_forecast_knowledge() -> None:
    task = prepare_task("seattle-temps", 0, 2000, 32)
    assert (task.task, task.kind.inputs.name, task.kind.knowledge.name) == (
        "forecast", "windows", "forecasts")
    assert (task.width, task.num_classes, task.vocab_size, task.block_gap) == (24, 0, 0, 119)
    assert tuple(task.public_x.shape[1:]) == (96, 1) and task.test_y.dtype == torch.float32
    assert task.fingerprint == prepare_task("seattle-temps", 0, 6000, 40).fingerprint

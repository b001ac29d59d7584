"""Compression steps (common/compress/): each on a tiny model, each able to fail.

The pretrained path uses the tiny random BERT of tests/test_pretrained.py with a random
probe; the from-scratch path a tiny Transformer classifier.
"""

from __future__ import annotations

import copy

import pytest
import torch
from test_pretrained import TEXTS, _save_tiny_bert
from torch import nn

from common.compress.lowrank import factorize, low_rank, rank_for_energy
from common.compress.measure import saved_bytes, weight_count
from common.compress.prune import magnitude_prune, prune_ffn, prune_heads, sparsity
from common.compress.quantize import int8_embeddings, int8_linear
from common.compress.recipes import parse_recipe
from common.compress.student import prune_vocabulary, trim_positions, truncated_encoder
from common.compress.text_model import HFTokenize, ProbeOnEncoder
from common.errors import ConfigError
from common.models import ModelConfig, build_model


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    return _save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture()
def probe_model(tiny_bert) -> tuple[ProbeOnEncoder, HFTokenize]:
    from transformers import AutoModel

    torch.manual_seed(0)
    encoder = AutoModel.from_pretrained(str(tiny_bert), dtype=torch.float32).eval()
    tokenize = HFTokenize(str(tiny_bert), max_len=16)
    return ProbeOnEncoder(encoder, nn.Linear(32, 2), pad_id=0).eval(), tokenize


def _scratch() -> nn.Module:
    torch.manual_seed(0)
    cfg = ModelConfig(family="transformer", vocab_size=50, num_classes=3, max_len=12,
                      d_model=32, n_layers=2, n_heads=4, d_ff=64, dropout=0.0)
    return build_model(cfg).eval()


IDS = torch.randint(1, 50, (5, 12), generator=torch.Generator().manual_seed(0))


@torch.no_grad()
def test_int8_linear_and_embeddings_keep_the_outputs_and_shrink_the_file(probe_model):
    model, tokenize = probe_model
    ids = tokenize(TEXTS)
    before = model.features(ids)
    quantized = int8_embeddings(int8_linear(copy.deepcopy(model)))
    after = quantized.features(ids)
    assert nn.functional.cosine_similarity(before, after).min() > 0.99
    assert saved_bytes(quantized)[0] < 0.6 * saved_bytes(model)[0]
    assert weight_count(quantized) >= 0.99 * weight_count(model)  # the same weights, int8


def test_global_magnitude_pruning_reaches_the_asked_sparsity_and_is_permanent():
    model = magnitude_prune(_scratch(), 0.6)
    assert sparsity(model) == pytest.approx(0.6, abs=0.01)
    assert not any(name.endswith("_orig") for name, _ in model.named_parameters())
    dense, packed = saved_bytes(model)
    assert packed < saved_bytes(_scratch())[1]  # zeros compress; the dense file does not
    assert dense == pytest.approx(saved_bytes(_scratch())[0], rel=0.01)


@torch.no_grad()
def test_structured_pruning_slices_bert_heads_and_ffn_channels(probe_model):
    model, tokenize = probe_model
    ids = tokenize(TEXTS)
    untouched = prune_heads(prune_ffn(copy.deepcopy(model), 0.0), 0.0)
    torch.testing.assert_close(untouched(ids), model(ids))
    pruned = prune_heads(prune_ffn(copy.deepcopy(model), 0.5), 0.5)
    layer = pruned.encoder.encoder.layer[0]
    assert layer.attention.self.query.out_features == 16  # 2 of 4 heads of size 8
    assert layer.attention.self.num_attention_heads == 2
    assert layer.intermediate.dense.out_features == 32 == layer.output.dense.in_features
    assert pruned(ids).shape == (len(TEXTS), 2)
    assert weight_count(pruned) < weight_count(model)


@torch.no_grad()
def test_structured_pruning_of_the_scratch_transformer_zeroes_whole_heads():
    model = prune_heads(prune_ffn(_scratch(), 0.5), 0.5)
    block = model.encoder.blocks[0]
    assert block.ff.fc_in.out_features == 32
    zero_rows = (block.attn.v_proj.weight.abs().sum(1) == 0).reshape(4, 8).all(1)
    assert int(zero_rows.sum()) == 2
    assert model(IDS).shape == (5, 3)


def test_svd_at_full_rank_reconstructs_and_low_rank_saves_weights():
    torch.manual_seed(0)
    layer = nn.Linear(24, 16)
    x = torch.randn(7, 24)
    torch.testing.assert_close(factorize(layer, 16)(x), layer(x), rtol=1e-4, atol=1e-5)
    assert rank_for_energy(torch.tensor([3.0, 1.0, 0.0]), 0.9) == 1
    assert rank_for_energy(torch.tensor([3.0, 1.0, 0.0]), 1.0) == 2
    model = _scratch()
    before = weight_count(model)
    low_rank(model, rank=4)
    assert weight_count(model) < 0.6 * before
    assert isinstance(model.encoder.blocks[0].ff.fc_in, nn.Sequential)
    assert isinstance(model.head, nn.Linear)  # the classifier stays whole


@torch.no_grad()
def test_vocabulary_and_position_pruning_keep_seen_texts_exact(probe_model):
    model, tokenize = probe_model
    seen = TEXTS[:4]
    small = trim_positions(prune_vocabulary(copy.deepcopy(model), [tokenize(seen)],
                                            tokenize.special_ids, tokenize.unk_id), 16)
    torch.testing.assert_close(small(tokenize(seen)), model(tokenize(seen)))
    assert small.encoder.get_input_embeddings().num_embeddings < \
        model.encoder.get_input_embeddings().num_embeddings
    assert small.encoder.embeddings.position_embeddings.num_embeddings == 16
    assert saved_bytes(small)[0] < saved_bytes(model)[0]
    unseen = tokenize(["zzzz qqqq"])  # ids the pruned table maps to [UNK]
    assert (small.remap[unseen] == small.remap[tokenize.unk_id]).any()


def test_a_truncated_student_keeps_the_first_layers(probe_model):
    model, _ = probe_model
    student = truncated_encoder(model, 1)
    assert len(student.encoder.encoder.layer) == 1 and len(model.encoder.encoder.layer) == 2
    torch.testing.assert_close(student.encoder.encoder.layer[0].output.dense.weight,
                               model.encoder.encoder.layer[0].output.dense.weight)
    with pytest.raises(ConfigError, match="between 1 and 2"):
        truncated_encoder(model, 3)


@pytest.mark.parametrize(("recipe", "match"), [
    ("int8+student=2", "cannot follow"),
    ("magnitude", "needs a value"),
    ("int8=3", "takes no value"),
    ("sparsify=0.5", "unknown step"),
    ("vocab", "from-scratch"),
])
def test_bad_recipes_are_refused_before_any_work(recipe, match):
    with pytest.raises(ConfigError, match=match):
        parse_recipe(recipe, "transformer")


def test_recipes_compose_in_order():
    assert parse_recipe("fp32", "pretrained") == []
    assert parse_recipe("student=3+vocab+int8+int8emb", "pretrained") == [
        ("student", 3.0), ("vocab", None), ("int8", None), ("int8emb", None)]


def test_length_buckets_cover_every_text_once_in_similar_lengths():
    from common.compress.student import _length_buckets

    lengths = torch.randint(1, 200, (1000,), generator=torch.Generator().manual_seed(0))
    batches = _length_buckets(lengths, 32, torch.Generator().manual_seed(1))
    assert sorted(torch.cat(batches).tolist()) == list(range(1000))
    spread = sum(float(lengths[b].max() - lengths[b].min()) for b in batches) / len(batches)
    assert spread < 60  # random batches of 32 would span nearly the whole 1..200


def test_the_held_out_public_texts_are_disjoint_from_the_training_ones():
    from common.compress.student import DistilSettings, split_public

    train, held = split_public(1000, DistilSettings(validation=0.1, seed=3))
    assert len(held) == 100 and not set(train.tolist()) & set(held.tolist())
    assert sorted(train.tolist() + held.tolist()) == list(range(1000))
    with pytest.raises(ConfigError, match="validation share"):
        DistilSettings(validation=0.0)


def test_the_epoch_kept_is_the_best_on_the_held_out_texts_not_the_last():
    """Epoch k sets the weight to k; the held-out agreement peaks at epoch 2 of 4, so the
    student keeps epoch 2's weights."""
    from common.compress.student import DistilSettings, keep_best_epoch

    model = nn.Linear(1, 1, bias=False)
    scores = iter([0.70, 0.90, 0.80, 0.85])

    def train_epoch(epoch: int) -> None:
        with torch.no_grad():
            model.weight.fill_(epoch + 1)

    done = keep_best_epoch(model, DistilSettings(epochs=4), train_epoch,
                           lambda: next(scores), held_out=10)
    assert done.epoch == 2 and float(model.weight) == 2.0
    assert done.agreement == (0.70, 0.90, 0.80, 0.85)
    assert "epoch 2 of 4 kept" in done.note() and "10 held-out public texts" in done.note()

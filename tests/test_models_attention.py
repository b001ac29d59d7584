"""Attention and positional encodings against independent references.

References: a numpy evaluation of the sinusoid formula, PyTorch's fused
``scaled_dot_product_attention`` and PyTorch's ``nn.MultiheadAttention`` (with our
weights copied in) — none of them share code with ``common.models``.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from common.errors import ModelError
from common.models import (
    KVCache,
    LearnedPositionalEmbedding,
    MultiHeadAttention,
    SinusoidalPositionalEncoding,
    causal_mask,
    scaled_dot_product_attention,
    sinusoidal_table,
)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # tiny tensors: extra intra-op threads only contend on a shared 2-core machine
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ---------------------------------------------------------------- positional encodings


def _numpy_sinusoid(max_len: int, d: int) -> np.ndarray:
    """PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(pos / 10000^(2i/d))."""
    pe = np.zeros((max_len, d))
    for pos in range(max_len):
        for col in range(d):
            two_i = col - (col % 2)
            angle = pos / 10000 ** (two_i / d)
            pe[pos, col] = np.sin(angle) if col % 2 == 0 else np.cos(angle)
    return pe


@pytest.mark.parametrize(("max_len", "d"), [(50, 16), (33, 7), (128, 64)], ids=str)
def test_sinusoidal_table_matches_formula(max_len: int, d: int) -> None:
    table = sinusoidal_table(max_len, d)
    assert table.shape == (max_len, d)
    np.testing.assert_allclose(table.numpy(), _numpy_sinusoid(max_len, d), atol=1e-6)


def test_sinusoidal_module_adds_table_at_offset_and_owns_no_parameters() -> None:
    module = SinusoidalPositionalEncoding(d_model=8, max_len=20)
    assert list(module.parameters()) == []  # a buffer-holding module must be parameter-free
    x = torch.randn(3, 5, 8)
    expected = x + torch.from_numpy(_numpy_sinusoid(20, 8)[4:9]).float()
    torch.testing.assert_close(module(x, offset=4), expected, atol=1e-6, rtol=0)
    assert "table" not in module.state_dict()  # derived, so not checkpointed


def test_learned_positions_look_up_rows_at_offset() -> None:
    module = LearnedPositionalEmbedding(d_model=8, max_len=20)
    x = torch.randn(3, 5, 8)
    expected = x + module.embedding.weight[6:11].detach()
    torch.testing.assert_close(module(x, offset=6), expected)


@pytest.mark.parametrize("cls", [SinusoidalPositionalEncoding, LearnedPositionalEmbedding])
def test_positions_past_max_len_raise(cls: type[nn.Module]) -> None:
    module = cls(8, 10)
    with pytest.raises(ModelError, match="max_len=10"):
        module(torch.randn(1, 6, 8), offset=5)


# ---------------------------------------------------------------- scaled dot-product


def _qkv(B: int = 2, nh: int = 3, T: int = 5, S: int = 7, hs: int = 4):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(B, nh, T, hs, generator=g, dtype=torch.float64)
    k = torch.randn(B, nh, S, hs, generator=g, dtype=torch.float64)
    v = torch.randn(B, nh, S, hs, generator=g, dtype=torch.float64)
    return q, k, v


def _random_mask(shape: tuple[int, ...]) -> torch.Tensor:
    mask = torch.rand(shape, generator=torch.Generator().manual_seed(1)) > 0.4
    mask[..., 0] = True  # every query sees at least one key (else the reference is NaN)
    return mask


MASKS = {
    "none": lambda B, nh, T, S: None,
    "full-4d": lambda B, nh, T, S: _random_mask((B, nh, T, S)),
    "key-padding": lambda B, nh, T, S: _random_mask((B, 1, 1, S)),
    "per-query": lambda B, nh, T, S: _random_mask((T, S)),
}


@pytest.mark.parametrize("mask_kind", list(MASKS))
def test_attention_equals_torch_sdpa(mask_kind: str) -> None:
    q, k, v = _qkv()
    mask = MASKS[mask_kind](2, 3, 5, 7)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(scaled_dot_product_attention(q, k, v, mask), expected)


def test_causal_attention_equals_torch_sdpa_is_causal() -> None:
    q, k, v = _qkv(T=6, S=6)
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    actual = scaled_dot_product_attention(q, k, v, causal_mask(6, 6))
    torch.testing.assert_close(actual, expected)


def test_causal_mask_aligns_cached_queries_bottom_right() -> None:
    # 2 new queries after 3 cached keys: query 0 is position 3, query 1 is position 4
    expected = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(causal_mask(2, 5), expected)


def test_fully_masked_query_stays_finite() -> None:
    q, k, v = _qkv()
    mask = torch.zeros(2, 1, 1, 7, dtype=torch.bool)  # an all-padding sequence
    assert torch.isfinite(scaled_dot_product_attention(q, k, v, mask)).all()


def test_attention_dropout_acts_only_in_training() -> None:
    q, k, v = _qkv()
    evaluated = scaled_dot_product_attention(q, k, v, dropout_p=0.5, training=False)
    torch.testing.assert_close(evaluated, scaled_dot_product_attention(q, k, v))
    torch.manual_seed(0)
    trained = scaled_dot_product_attention(q, k, v, dropout_p=0.5, training=True)
    assert not torch.allclose(trained, evaluated)


# ---------------------------------------------------------------- multi-head attention


def _torch_mha_like(ours: MultiHeadAttention, d: int, nh: int) -> nn.MultiheadAttention:
    """PyTorch's own multi-head attention carrying our projection weights."""
    ref = nn.MultiheadAttention(d, nh, batch_first=True, dtype=torch.float64)
    with torch.no_grad():
        ref.in_proj_weight.copy_(
            torch.cat([ours.q_proj.weight, ours.k_proj.weight, ours.v_proj.weight])
        )
        ref.in_proj_bias.copy_(torch.cat([ours.q_proj.bias, ours.k_proj.bias, ours.v_proj.bias]))
        ref.out_proj.weight.copy_(ours.out_proj.weight)
        ref.out_proj.bias.copy_(ours.out_proj.bias)
    return ref.eval()


@pytest.fixture
def mha() -> MultiHeadAttention:
    torch.manual_seed(0)
    return MultiHeadAttention(d_model=16, n_heads=4).double().eval()


def test_self_attention_with_padding_equals_torch_mha(mha: MultiHeadAttention) -> None:
    x = torch.randn(3, 6, 16, dtype=torch.float64)
    pad = torch.zeros(3, 6, dtype=torch.bool)
    pad[0, 4:] = True
    pad[2, 2:] = True
    expected, _ = _torch_mha_like(mha, 16, 4)(x, x, x, key_padding_mask=pad)
    torch.testing.assert_close(mha(x, key_padding_mask=pad), expected)


def test_causal_self_attention_equals_torch_mha(mha: MultiHeadAttention) -> None:
    x = torch.randn(2, 6, 16, dtype=torch.float64)
    future = torch.ones(6, 6, dtype=torch.bool).triu(1)  # torch: True = not allowed
    expected, _ = _torch_mha_like(mha, 16, 4)(x, x, x, attn_mask=future)
    torch.testing.assert_close(mha(x, causal=True), expected)


def test_cross_attention_equals_torch_mha(mha: MultiHeadAttention) -> None:
    x = torch.randn(2, 4, 16, dtype=torch.float64)
    memory = torch.randn(2, 9, 16, dtype=torch.float64)
    pad = torch.zeros(2, 9, dtype=torch.bool)
    pad[1, 5:] = True
    expected, _ = _torch_mha_like(mha, 16, 4)(x, memory, memory, key_padding_mask=pad)
    torch.testing.assert_close(mha(x, memory, key_padding_mask=pad), expected)


def test_kv_cache_steps_equal_full_causal_attention(mha: MultiHeadAttention) -> None:
    x = torch.randn(2, 7, 16, dtype=torch.float64)
    full = mha(x, causal=True)
    cache = KVCache()
    prefix = mha(x[:, :3], causal=True, cache=cache)  # prefill 3 positions
    steps = [mha(x[:, t : t + 1], causal=True, cache=cache) for t in range(3, 7)]
    assert len(cache) == 7
    torch.testing.assert_close(torch.cat([prefix, *steps], dim=1), full)


def test_heads_must_divide_width() -> None:
    with pytest.raises(ModelError, match="n_heads=3"):
        MultiHeadAttention(d_model=16, n_heads=3)

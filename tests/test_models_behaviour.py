"""What the models promise: causality, padding invariance, decoding, shapes.

Every invariance test also checks the opposite (changing what *may* matter does change
the output), so a model that ignored its input could not pass.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest
import torch
from torch import nn

from common.models import (
    GPT,
    ModelConfig,
    PatchEmbedding,
    Seq2SeqTransformer,
    TransformerSettings,
    build_model,
    sample_next_token,
    top_k_filter,
    top_p_filter,
)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # tiny tensors: extra intra-op threads only contend on a shared 2-core machine
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


V = 19


def _model(**kwargs) -> nn.Module:
    torch.manual_seed(0)
    defaults = dict(vocab_size=V, num_classes=3, max_len=16, dropout=0.0)
    return build_model(ModelConfig(**{**defaults, **kwargs})).double().eval()


def _ids(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(3, V, shape, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- causality

CAUSAL_LMS = {
    "gpt-pre-learned": dict(family="gpt", positional="learned"),
    "gpt-post-sinusoidal": dict(family="gpt", norm="post"),
    "lstm-lm": dict(family="lstm-lm"),
}


@pytest.mark.parametrize("t", [0, 4, 8])
@pytest.mark.parametrize("name", list(CAUSAL_LMS))
def test_future_tokens_never_change_past_outputs(name: str, t: int) -> None:
    model = _model(**CAUSAL_LMS[name])
    ids = _ids(2, 10)
    changed = ids.clone()
    changed[:, t + 1 :] = _ids(2, 10 - t - 1, seed=1) % (V - 3) + 3
    before, after = model(ids), model(changed)
    torch.testing.assert_close(after[:, : t + 1], before[:, : t + 1], atol=1e-10, rtol=0)
    assert not torch.allclose(after[:, t + 1 :], before[:, t + 1 :])


@pytest.mark.parametrize("t", [0, 3, 7])
def test_seq2seq_decoder_is_causal_but_sees_the_whole_source(t: int) -> None:
    model = _model(family="seq2seq")
    src, tgt = _ids(2, 8), _ids(2, 9, seed=1)
    changed = tgt.clone()
    changed[:, t + 1 :] = (changed[:, t + 1 :] - 3 + 1) % (V - 3) + 3
    before = model(src, tgt)
    torch.testing.assert_close(
        model(src, changed)[:, : t + 1], before[:, : t + 1], atol=1e-10, rtol=0
    )
    other_src = src.clone()
    other_src[:, -1] = (other_src[:, -1] - 3 + 1) % (V - 3) + 3  # last source token
    assert not torch.allclose(model(other_src, tgt)[:, 0], before[:, 0])


# ---------------------------------------------------------------- padding

PADDED_CLASSIFIERS = {
    "transformer-mean-pre-sinusoidal": dict(family="transformer"),
    "transformer-cls-post-learned": dict(
        family="transformer", pooling="cls", norm="post", positional="learned"
    ),
    "transformer-mean-post-learned": dict(family="transformer", norm="post", positional="learned"),
    "lstm": dict(family="lstm", n_layers=4),
    "cnn": dict(family="cnn"),
}


@pytest.mark.parametrize("name", list(PADDED_CLASSIFIERS))
def test_padding_never_changes_real_outputs(name: str) -> None:
    model = _model(**PADDED_CLASSIFIERS[name])
    short = _ids(1, 5)
    alone = model(short)  # (1, C), no padding at all
    # the same example right-padded to 12, batched with longer, different examples
    batch = torch.zeros(3, 12, dtype=torch.long)
    batch[0, :5] = short[0]
    batch[1:] = _ids(2, 12, seed=2)
    batch[2, 9:] = 0
    torch.testing.assert_close(model(batch)[:1], alone, atol=1e-10, rtol=0)
    # control: a real token does matter
    other = short.clone()
    other[0, 2] = (other[0, 2] - 3 + 1) % (V - 3) + 3
    assert not torch.allclose(model(other), alone)


@pytest.mark.parametrize("name", [*PADDED_CLASSIFIERS, "gpt", "seq2seq"])
def test_all_padding_sequence_is_finite(name: str) -> None:
    config = PADDED_CLASSIFIERS.get(name, dict(family=name))
    model = _model(**config)
    ids = torch.zeros(2, 6, dtype=torch.long)
    ids[1, :3] = _ids(3)
    out = model(ids, ids) if name == "seq2seq" else model(ids)
    assert torch.isfinite(out).all()
    model.train()
    loss = (model(ids, ids) if name == "seq2seq" else model(ids)).sum()
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_seq2seq_source_padding_is_ignored() -> None:
    model = _model(family="seq2seq")
    src, tgt = _ids(1, 5), _ids(1, 6, seed=1)
    padded = torch.cat([src, torch.zeros(1, 7, dtype=torch.long)], dim=1)
    torch.testing.assert_close(model(padded, tgt), model(src, tgt), atol=1e-10, rtol=0)


# ---------------------------------------------------------------- GPT generation


def _gpt(**kwargs) -> GPT:
    model = _model(family="gpt", positional="learned", max_len=24, **kwargs)
    assert isinstance(model, GPT)
    return model


def _greedy_by_full_recompute(model: GPT, ids: torch.Tensor, n: int) -> torch.Tensor:
    """Reference decoder: re-run the whole sequence and take the arg-max, n times."""
    for _ in range(n):
        ids = torch.cat([ids, model(ids)[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_kv_cache_generation_equals_full_recomputation(norm: str) -> None:
    model = _gpt(norm=norm)
    prompt = _ids(3, 5)
    cached, cached_logits = model.generate_with_logits(prompt, 12, greedy=True, use_cache=True)
    plain, plain_logits = model.generate_with_logits(prompt, 12, greedy=True, use_cache=False)
    assert torch.equal(cached, plain)
    assert torch.equal(cached, _greedy_by_full_recompute(model, prompt, 12))
    torch.testing.assert_close(cached_logits, plain_logits, atol=1e-9, rtol=1e-9)
    assert cached.shape == (3, 17)


def test_generation_past_max_len_recomputes_a_window() -> None:
    model = _gpt()
    out = model.generate(_ids(2, 20), 10, greedy=True)  # 30 > max_len 24: no cache
    assert out.shape == (2, 30)
    window = out[:, :-1][:, -24:]
    assert torch.equal(out[:, -1], model(window)[:, -1].argmax(-1))


def test_top_k_1_sampling_equals_greedy() -> None:
    model = _gpt()
    prompt = _ids(3, 4)
    greedy = model.generate(prompt, 10, greedy=True)
    gen = torch.Generator().manual_seed(5)
    sampled = model.generate(prompt, 10, temperature=1.7, top_k=1, generator=gen)
    assert torch.equal(sampled, greedy)


def test_sampling_is_reproducible_with_a_generator_and_varies_without() -> None:
    model = _gpt()
    prompt = _ids(4, 3)
    a = model.generate(prompt, 12, temperature=2.0, generator=torch.Generator().manual_seed(1))
    b = model.generate(prompt, 12, temperature=2.0, generator=torch.Generator().manual_seed(1))
    c = model.generate(prompt, 12, temperature=2.0, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_eos_stops_generation_and_pads_finished_rows() -> None:
    model = _gpt()
    prompt = _ids(2, 3)
    free = model.generate(prompt, 8, greedy=True)
    eos = int(free[0, 5])  # the third generated token of row 0
    out = model.generate(prompt, 8, greedy=True, eos_id=eos)
    first = (out[0, 3:] == eos).nonzero()[0].item() + 3
    assert torch.all(out[0, first:] == eos)
    assert torch.equal(out[0, : first + 1], free[0, : first + 1])


# ---------------------------------------------------------------- filters

PROBS = torch.tensor([0.05, 0.5, 0.15, 0.3])  # ranked: 1, 3, 2, 0


@pytest.mark.parametrize(
    ("p", "kept"),
    [(0.3, {1}), (0.5, {1}), (0.51, {1, 3}), (0.8, {1, 3}), (0.81, {1, 3, 2}), (1.0, {0, 1, 2, 3})],
    ids=lambda v: str(v),
)
def test_top_p_keeps_the_smallest_set_reaching_p(p: float, kept: set[int]) -> None:
    filtered = top_p_filter(PROBS.log().unsqueeze(0), p)[0]
    assert {i for i in range(4) if torch.isfinite(filtered[i])} == kept
    finite = torch.isfinite(filtered)
    torch.testing.assert_close(filtered[finite], PROBS.log()[finite])  # survivors untouched


def test_top_p_sampling_draws_only_kept_tokens() -> None:
    logits = PROBS.log().repeat(400, 1)
    tokens = sample_next_token(logits, top_p=0.8, generator=torch.Generator().manual_seed(0))
    assert set(tokens.tolist()) == {1, 3}


@pytest.mark.parametrize(("k", "kept"), [(1, {1}), (2, {1, 3}), (3, {1, 2, 3}), (9, {0, 1, 2, 3})])
def test_top_k_keeps_the_k_largest(k: int, kept: set[int]) -> None:
    filtered = top_k_filter(PROBS.log().unsqueeze(0), k)[0]
    assert {i for i in range(4) if torch.isfinite(filtered[i])} == kept


# ---------------------------------------------------------------- seq2seq decoding


def _seq2seq(**kwargs) -> Seq2SeqTransformer:
    model = _model(family="seq2seq", **kwargs)
    assert isinstance(model, Seq2SeqTransformer)
    return model


def test_beam_search_with_beam_1_equals_greedy() -> None:
    model = _seq2seq()
    src = _ids(4, 7)
    src[2, 4:] = 0
    greedy = model.greedy_decode(src, 10)
    assert torch.equal(model.beam_search(src, 10, beam_size=1), greedy)
    # the reference arg-max loop, re-running the full decoder each step
    ids = torch.ones(4, 1, dtype=torch.long)
    for _ in range(greedy.size(1) - 1):
        ids = torch.cat([ids, model(src, ids)[:, -1].argmax(-1, keepdim=True)], dim=1)
    finished = torch.zeros(4, dtype=torch.bool)
    for t in range(1, ids.size(1)):  # after eos, the decoder pads
        ids[finished, t] = 0
        finished |= ids[:, t] == 2
    assert torch.equal(greedy, ids)


def _exhaustive_best(model, src, steps: int, alpha: float) -> torch.Tensor:
    """Score every target of up to ``steps`` tokens (cut at the first eos; pad and bos
    are never generated) and keep the best log p / length^alpha: an unbounded beam."""
    best, best_score = None, float("-inf")
    seen = set()
    for seq in itertools.product(range(2, model.lm_head.out_features), repeat=steps):
        cut = seq[: seq.index(2) + 1] if 2 in seq else seq
        if cut in seen:
            continue
        seen.add(cut)
        tgt = torch.tensor([[1, *cut]])
        logits = model(src, tgt[:, :-1])[0]
        logits[:, :2] = float("-inf")  # pad = 0 and bos = 1 are not outputs
        logp = logits.log_softmax(-1).gather(1, tgt[0, 1:].unsqueeze(1)).sum().item()
        score = logp / len(cut) ** alpha
        if score > best_score:
            best, best_score = cut, score
    return torch.tensor([1, *best] + [0] * (steps - len(best)))


def test_wide_beam_finds_the_exhaustive_best_for_each_length_penalty() -> None:
    # seed 8: the length penalty changes the best target, and greedy misses it
    torch.manual_seed(8)
    model = Seq2SeqTransformer(
        5, 8, TransformerSettings(d_model=16, n_layers=1, n_heads=2, d_ff=32, dropout=0.0))
    model = model.double().eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(5.0)  # sharpen: a clear best, no near-ties
    src = torch.tensor([[3, 4, 4, 3]])
    answers = []
    for alpha in (0.0, 1.0):
        found = model.beam_search(src, 3, beam_size=27, length_penalty=alpha)[0]
        expected = _exhaustive_best(model, src, 3, alpha)
        assert torch.equal(found, expected), (alpha, found, expected)
        answers.append(expected)
    assert not torch.equal(answers[0], answers[1])
    greedy = model.greedy_decode(src, 3)[0]
    assert not torch.equal(greedy, answers[1][: greedy.numel()])


# ---------------------------------------------------------------- shapes and images


@pytest.mark.parametrize(
    ("image_size", "patch_size", "pooling"), [(8, 2, "cls"), (8, 4, "mean"), (28, 7, "cls")]
)
def test_vit_classifies_small_images(image_size: int, patch_size: int, pooling: str) -> None:
    model = _model(family="vit", image_size=image_size, patch_size=patch_size, pooling=pooling)
    out = model(torch.randn(5, 1, image_size, image_size, dtype=torch.float64))
    assert out.shape == (5, 3) and torch.isfinite(out).all()


def test_patch_embedding_equals_strided_conv() -> None:
    torch.manual_seed(0)
    patches = PatchEmbedding(channels=3, patch_size=4, d_model=10)
    conv = nn.Conv2d(3, 10, kernel_size=4, stride=4)
    with torch.no_grad():
        conv.weight.copy_(patches.proj.weight.view(10, 3, 4, 4))
        conv.bias.copy_(patches.proj.bias)
    images = torch.randn(2, 3, 12, 8)
    expected = conv(images).flatten(2).transpose(1, 2)  # (B, N, d), patches row by row
    torch.testing.assert_close(patches(images), expected, atol=1e-5, rtol=1e-5)


def test_forecaster_maps_window_to_horizon() -> None:
    model = _model(family="forecaster", n_vars=4, horizon=6, n_out=2, max_len=32)
    out = model(torch.randn(3, 20, 4, dtype=torch.float64))
    assert out.shape == (3, 6, 2)
    same = _model(family="forecaster", n_vars=4, horizon=6, max_len=32)  # n_out = n_vars
    assert same(torch.randn(3, 20, 4, dtype=torch.float64)).shape == (3, 6, 4)


@pytest.mark.parametrize("family", ["transformer", "gpt", "seq2seq", "lstm", "lstm-lm", "cnn"])
def test_text_output_shapes(family: str) -> None:
    model = _model(family=family)
    ids = _ids(4, 9)
    out = model(ids, ids) if family == "seq2seq" else model(ids)
    expected = (4, 3) if family in ("transformer", "lstm", "cnn") else (4, 9, V)
    assert out.shape == expected

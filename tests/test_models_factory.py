"""ModelConfig validation, build_model over every family and size, parameter counts,
and the structural rules that keep Opacus exact (notes/OPACUS.md)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest
import torch
from opacus.validators import ModuleValidator
from torch import nn

from common.errors import ConfigError
from common.models import (
    FAMILIES,
    FEATURE_FAMILIES,
    IMAGE_FAMILIES,
    SIZES,
    ModelConfig,
    build_model,
    count_parameters,
)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # tiny tensors: extra intra-op threads only contend on a shared 2-core machine
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# the encoder family loads a checkpoint: tests/test_pretrained.py builds it on a tiny one
BUILT_HERE = [f for f in FAMILIES if f != "encoder"]
BASE = dict(vocab_size=40, num_classes=3, max_len=16, n_vars=3, horizon=2, image_size=8,
            feature_dim=12)


def _config(family: str, **kwargs) -> ModelConfig:
    patch = {"patch_size": 2} if family == "vit" else {}
    return ModelConfig(family=family, **{**BASE, **patch, **kwargs})


def _example_input(family: str) -> tuple[torch.Tensor, ...]:
    if family == "forecaster":
        return (torch.randn(2, 10, 3),)
    if family == "forecast-mlp":  # reads exactly max_len steps
        return (torch.randn(2, 16, 3),)
    if family in IMAGE_FAMILIES:
        return (torch.randn(2, 1, 8, 8),)
    if family in FEATURE_FAMILIES:
        return (torch.randn(2, 12),)
    ids = torch.randint(3, 40, (2, 10))
    return (ids, ids) if family == "seq2seq" else (ids,)


@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("family", BUILT_HERE)
def test_every_family_and_size_builds_and_runs(family: str, size: str) -> None:
    model = build_model(_config(family, size=size)).eval()
    with torch.no_grad():
        out = model(*_example_input(family))
    assert torch.isfinite(out).all()
    assert count_parameters(model) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("family", [f for f in BUILT_HERE if f != "probe"])  # no width
def test_sizes_grow_tiny_small_base(family: str) -> None:
    counts = [count_parameters(build_model(_config(family, size=s))) for s in SIZES]
    assert counts == sorted(counts) and len(set(counts)) == 3, counts


def test_tiny_fits_a_small_cpu_client() -> None:
    tiny = SIZES["tiny"]
    assert (tiny.d_model, tiny.n_layers, tiny.n_heads, tiny.d_ff) == (64, 2, 4, 128)
    assert count_parameters(build_model(_config("transformer"))) < 100_000


def test_count_parameters_counts_shared_tensors_once_and_can_skip_frozen() -> None:
    shared = nn.Linear(4, 4)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    assert count_parameters(model) == 20
    shared.bias.requires_grad_(False)
    assert count_parameters(model, trainable_only=True) == 16


def test_overrides_replace_single_preset_values() -> None:
    cfg = _config("transformer", size="small", n_layers=3, d_ff=64)
    assert (cfg.dims.d_model, cfg.dims.n_layers, cfg.dims.d_ff) == (128, 3, 64)
    model = build_model(cfg)
    assert len(model.encoder.blocks) == 3
    assert model.encoder.blocks[0].ff.fc_in.out_features == 64


def test_config_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        _config("gpt").size = "base"  # type: ignore[misc]


BAD = [
    ("family", dict(family="bert")),
    ("size", dict(size="huge")),
    ("norm", dict(norm="sandwich")),
    ("pooling", dict(pooling="max")),
    ("positional", dict(positional="rotary")),
    ("dropout", dict(dropout=1.0)),
    ("dropout", dict(dropout=-0.1)),
    ("vocab_size", dict(vocab_size=1)),
    ("num_classes", dict(num_classes=1)),
    ("pad_id", dict(pad_id=40)),
    ("max_len", dict(max_len=0)),
    ("max_len", dict(max_len="16")),
    ("n_layers", dict(n_layers=0)),
    ("d_model", dict(d_model=66)),  # 66 heads of 4 do not divide
    ("horizon", dict(family="forecaster", horizon=0)),
    ("patch_size", dict(family="vit", patch_size=3)),
    ("bos_id", dict(family="seq2seq", bos_id=0)),
    ("eos_id", dict(family="seq2seq", bos_id=5, eos_id=5)),
]


@pytest.mark.parametrize(("key", "bad"), BAD, ids=[f"{k}={v}" for k, d in BAD for v in [d[k]]])
def test_bad_values_raise_config_error_naming_key_and_value(key: str, bad: dict) -> None:
    kwargs = {**BASE, "family": "transformer", **bad}
    with pytest.raises(ConfigError) as info:
        ModelConfig(**kwargs)
    assert key in str(info.value) and repr(bad[key]) in str(info.value)


def test_from_dict_accepts_kebab_keys_and_rejects_unknown_ones() -> None:
    cfg = ModelConfig.from_dict({"family": "gpt", "vocab-size": 50, "max-len": 32})
    assert (cfg.vocab_size, cfg.max_len) == (50, 32)
    with pytest.raises(ConfigError, match="vocab_sise"):
        ModelConfig.from_dict({"family": "gpt", "vocab_sise": 50})
    with pytest.raises(ConfigError, match="family"):
        ModelConfig.from_dict({"vocab_size": 50})


# ---------------------------------------------------------------- Opacus structure


def _variants() -> list[ModelConfig]:
    extra = [
        _config("transformer", pooling="cls", positional="learned", norm="post"),
        _config("vit", pooling="cls", positional="learned"),
        _config("gpt", positional="learned"),
    ]
    return [_config(f) for f in BUILT_HERE] + extra


@pytest.mark.parametrize("cfg", _variants(), ids=lambda c: f"{c.family}-{c.pooling}-{c.positional}")
def test_models_follow_the_opacus_rules(cfg: ModelConfig) -> None:
    model = build_model(cfg)
    assert ModuleValidator.validate(model, strict=False) == []
    leaf_params: list[int] = []  # ids of parameters owned by leaf modules
    for name, module in model.named_modules():
        own = {id(p) for p in module.parameters(recurse=False)}
        below = {id(p) for c in module.children() for p in c.parameters()}
        assert not isinstance(module, nn.MultiheadAttention), name
        # a bare parameter next to child modules makes Opacus vmap the whole model;
        # DPLSTM's nn.LSTM-style names (weight_ih_l0) are aliases of its cells' weights
        assert own <= below or not below, f"{name} mixes its own parameters and children"
        # buffers only where there is nothing to train
        assert not (own and list(module.buffers(recurse=False))), f"{name} has buffers"
        if not below:
            leaf_params += own
    # untied heads: no weight is used by two layers
    assert len(leaf_params) == len(set(leaf_params))
    assert len(set(leaf_params)) == len({id(p) for p in model.parameters()})

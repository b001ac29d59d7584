"""What differs between the tasks a federation can distil: one small interface.

A :class:`TaskKind` is two parts. Its :class:`Knowledge` says what a client tells the
coordinator about one public example: the codec and the check a reply must pass, the
aggregation rules that apply, the distillation loss and the test metric. Its
:class:`Inputs` says how a dataset's roles become model inputs, what the parties must
agree on before a round (a fingerprint), and which model families read those inputs.

Text classification and small images are both classification: the knowledge on a public
example is its class probabilities, so both use :data:`CLASS_PROBABILITIES` and differ
only in their inputs (the federation tokenizer's token ids; images as they are).
Forecasting exchanges :data:`FORECASTS` (each public window's H-step forecast, a float
vector: regression distillation) about :data:`WINDOWS` of a series. Language modelling
exchanges :data:`NEXT_TOKENS` (each public window's next-token distribution at every
position, sent top-k sparse) about :data:`TOKEN_WINDOWS` of a corpus.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from common.config import AGGREGATIONS, BACKBONE_FAMILIES, ENCODINGS, PARTITIONS
from common.data import (
    DatasetRoles,
    Split,
    encode_batch,
    encode_stream,
    tokenizer_fingerprint,
    train_tokenizer,
)
from common.distill.codec import decode_knowledge, encode_knowledge
from common.distill.forecasts import (
    FORECAST_ENCODINGS,
    decode_forecasts,
    encode_forecasts,
    forecast_loss,
)
from common.distill.losses import kd_loss, soften
from common.distill.next_tokens import (
    NEXT_TOKEN_ENCODINGS,
    TokenCrossEntropy,
    decode_next_tokens,
    encode_next_tokens,
    next_token_loss,
    next_token_rows,
    perplexity,
    token_accuracy,
)
from common.errors import DataError
from common.metrics import accuracy, mae, mse
from common.models import FORECAST_FAMILIES, IMAGE_FAMILIES, ForecastMSELoss
from common.models.forecaster import seasonal_naive

Metric = Callable[[np.ndarray, np.ndarray], float]  # (targets, knowledge rows) -> score


@dataclass(frozen=True)
class Knowledge:
    """What one public example's knowledge is, and everything that handles it."""

    name: str
    encode: Callable[..., dict[str, np.ndarray]]  # (probs, encoding, topk=) -> wire arrays
    decode: Callable[..., np.ndarray]  # wire arrays -> rows; refuses a malformed reply
    aggregations: tuple[str, ...]  # the rules of coordinator/aggregation that apply to it
    loss: Callable[[Tensor, Tensor, float], Tensor]  # (student logits, target, T) -> loss
    metric: Metric  # (labels, knowledge rows) -> the test score
    metric_name: str = "accuracy"  # names the score in metrics.jsonl and summary.json
    higher_is_better: bool = True
    more_metrics: tuple[tuple[str, Metric], ...] = ()  # reported beside the main score
    encodings: tuple[str, ...] = ENCODINGS  # the wire encodings of config ENCODINGS it takes
    simplex: bool = True  # rows are probabilities: aggregates are put back on the simplex
    key: str = "probs"  # the key of its dense (float32 / float16) wire array
    from_outputs: Callable[[Tensor, float], Tensor] = soften  # (model outputs, T) -> rows
    criterion: Callable[[], nn.Module] = nn.CrossEntropyLoss  # supervised loss, DP or not
    label_dtype: torch.dtype = torch.long
    sparse: bool = False  # top-k sparse on the wire whatever the encoding (next tokens)

    @property
    def metrics(self) -> tuple[tuple[str, Metric], ...]:
        return ((self.metric_name, self.metric), *self.more_metrics)

    def scores(self, labels: np.ndarray, rows: np.ndarray) -> dict[str, float]:
        """Every metric of ``rows`` (model outputs as knowledge) against ``labels``."""
        return {name: fn(labels, rows) for name, fn in self.metrics}

    def better(self, score: float, than: float) -> bool:
        return score > than if self.higher_is_better else score < than


# (m, C) rows on the simplex: every rule averages, or robustly combines, such rows
CLASS_PROBABILITIES = Knowledge("class-probabilities", encode_knowledge, decode_knowledge,
                                AGGREGATIONS, kd_loss, accuracy)


def _flat(metric: Metric) -> Metric:
    """A forecast metric over targets (N, H, n_out) and forecasts (N, H * n_out)."""
    return lambda y, rows: metric(np.reshape(y, (len(y), -1)), np.reshape(rows, (len(rows), -1)))


def _forecasts(outputs: Tensor, temperature: float) -> Tensor:
    del temperature  # forecasts are sent as they are
    return outputs.flatten(1)  # (B, horizon, n_out) -> (B, horizon * n_out)


# (m, H * n_out) forecasts in standardised units. Only the coordinate-wise rules apply:
# dsfl sharpens probabilities and norm-filter's distance scale assumes the simplex.
FORECASTS = Knowledge("forecasts", encode_forecasts, decode_forecasts,
                      ("mean", "weighted-mean", "median", "trimmed-mean"), forecast_loss,
                      _flat(mse), metric_name="mse", higher_is_better=False,
                      more_metrics=(("mae", _flat(mae)),), encodings=FORECAST_ENCODINGS,
                      simplex=False, key="forecasts", from_outputs=_forecasts,
                      criterion=ForecastMSELoss, label_dtype=torch.float32)


# (m, T·V) next-token distributions, decoded dense from top-k + rest (the rest spread
# over the tokens outside the support): the mean and weighted mean average them over the
# union of the supports. The median and trimmed mean would not keep a position's mass at
# 1 (and cut into each client's spread rest); dsfl and norm-filter assume (m, C) rows on
# the simplex: all four are refused before a run starts.
NEXT_TOKENS = Knowledge("next-tokens", encode_next_tokens, decode_next_tokens,
                        ("mean", "weighted-mean"), next_token_loss, perplexity,
                        metric_name="perplexity", higher_is_better=False,
                        more_metrics=(("token_accuracy", token_accuracy),),
                        encodings=NEXT_TOKEN_ENCODINGS, simplex=False,
                        from_outputs=next_token_rows, criterion=TokenCrossEntropy,
                        sparse=True)


@dataclass(frozen=True)
class Encoded:
    """A dataset's roles as one kind of inputs: the encoder of a role, and what the
    parties check they share (the fingerprint; the tokenizer where there is one)."""

    encode: Callable[[Split], Tensor]
    fingerprint: str
    vocab_size: int = 0
    tokenizer_json: str = ""
    # language modelling: encode() gives windows of T + 1 tokens, whose first T are the
    # inputs and last T the targets (the next token at each position)
    shift: bool = False


@dataclass(frozen=True)
class Inputs:
    """How a task's examples reach a model."""

    name: str
    families: tuple[str, ...]  # the model families (config STUDENT_FAMILIES) that read them
    prepare: Callable[[DatasetRoles, int, int], Encoded]  # (roles, vocab_size, max_len)
    # (inputs, labels, run config) -> ModelConfig fields
    model_fields: Callable[[Tensor, Tensor, Any], dict[str, Any]]
    partitions: tuple[str, ...] = PARTITIONS[:4]  # the partition schemes that fit them


def _token_ids(roles: DatasetRoles, vocab_size: int, max_len: int) -> Encoded:
    # the tokenizer sees only the non-private texts: its vocabulary would leak the rest
    corpus = list(roles.public.texts or ()) + list(roles.teacher.texts or ())
    tok = train_tokenizer(corpus, kind="wordpiece", vocab_size=vocab_size)
    return Encoded(lambda split: encode_batch(tok, list(split.texts or ()), max_len),
                   tokenizer_fingerprint(tok), tok.get_vocab_size(), tok.to_str())


def _images(roles: DatasetRoles, vocab_size: int, max_len: int) -> Encoded:
    del vocab_size, max_len  # images need no tokenizer
    return Encoded(_image_tensor, _features_fingerprint(roles))


def _image_tensor(split: Split) -> Tensor:
    return torch.tensor(np.asarray(split.features), dtype=torch.float32)  # a writable copy


def _features_fingerprint(roles: DatasetRoles) -> str:
    """The non-private images' (or windows') digest: a node that loaded another dataset or
    split would answer about other public rows, so it must refuse the round."""
    digest = hashlib.sha256()
    for split in (roles.public, roles.teacher):
        images = np.ascontiguousarray(split.features, dtype=np.float32)
        digest.update(repr(images.shape).encode())
        digest.update(images.tobytes())
    return digest.hexdigest()


def _image_fields(images: Tensor, labels: Tensor, cfg: Any) -> dict[str, Any]:
    del labels
    patch_size = cfg.patch_size
    channels, side = int(images.shape[1]), int(images.shape[2])
    # 0 = a 4x4 grid of patches: 2x2 pixels on 8x8 digits, 7x7 on 28x28 MNIST. Learned
    # positions (the ViT paper's): fixed sinusoids of norm ~1 drown patch tokens that
    # start at norm ~0.02 (docs/RESULTS.md, images section)
    return {"channels": channels, "image_size": side, "patch_size": patch_size or side // 4,
            "positional": "learned"}


def _windows(roles: DatasetRoles, vocab_size: int, max_len: int) -> Encoded:
    """Windows as they are: the loader already standardised every channel with the mean
    and deviation of the public and teacher segments only (common/data/roles.py
    ``forecast_roles``), so no statistic of a client's private segment reaches anyone."""
    del vocab_size, max_len
    return Encoded(_image_tensor, _features_fingerprint(roles))


def _window_fields(windows: Tensor, targets: Tensor, cfg: Any) -> dict[str, Any]:
    # windows (N, input_len, n_vars) in, targets (N, horizon, n_out) out; the targets are
    # the last n_out variables (a univariate series; ETTh1's OT), which the models'
    # seasonal-naive start reads (common/models/forecaster.py)
    fields = {"n_vars": int(windows.shape[2]), "max_len": int(windows.shape[1]),
              "horizon": int(targets.shape[1]), "n_out": int(targets.shape[2]),
              "season": cfg.season, "center": cfg.center_windows}
    return {**fields, "output_scale": _residual_scale(windows, targets, cfg.season)}


def _residual_scale(windows: Tensor, targets: Tensor, season: int) -> float:
    """The RMS of what seasonal naive misses, on the windows given: the teacher's labelled
    ones (the coordinator's, not private), so every party computes the same number."""
    if not season or season > windows.shape[1]:
        return 1.0
    naive = seasonal_naive(windows, targets.shape[1], targets.shape[2], season)
    return max(float((targets - naive).pow(2).mean().sqrt()), 1e-6)


LM_TOKENIZER = "char"  # one token per character: whitespace and indentation survive
# decoding (code samples must parse), and V stays ~100, so dense T·V rows are cheap
LM_TEST_WINDOWS = 256  # evaluation reads this many test windows, evenly spaced


def _token_windows(roles: DatasetRoles, vocab_size: int, max_len: int) -> Encoded:
    """Every role as non-overlapping windows of ``max_len`` + 1 tokens of its stream.

    As for classification the tokenizer sees only the non-private texts. Windows share no
    token (stride max_len + 1), so one private token is in one window only; a document
    longer than a window spans several (docs/THREAT_MODEL.md: the unit of privacy is a
    window). The test role is cut to :data:`LM_TEST_WINDOWS` evenly spaced windows.
    """
    corpus = list(roles.public.texts or ()) + list(roles.teacher.texts or ())
    tok = train_tokenizer(corpus, kind=LM_TOKENIZER, vocab_size=vocab_size)

    def encode(split: Split) -> Tensor:
        windows = stream_windows(encode_stream(tok, list(split.texts or ())), max_len + 1)
        if split is roles.test and len(windows) > LM_TEST_WINDOWS:
            keep = np.linspace(0, len(windows) - 1, LM_TEST_WINDOWS).round().astype(np.int64)
            windows = windows[torch.from_numpy(keep)]
        return windows

    return Encoded(encode, tokenizer_fingerprint(tok), tok.get_vocab_size(), tok.to_str(),
                   shift=True)


def stream_windows(stream: Tensor, length: int) -> Tensor:
    """(N, length) non-overlapping windows of a 1-D token stream (the tail is dropped)."""
    n = len(stream) // length
    if n < 1:
        raise DataError(f"a role of {len(stream)} tokens holds no window of {length}: "
                        "lower max-len.")
    return stream[: n * length].reshape(n, length).clone()


TOKEN_IDS = Inputs("token-ids", ("transformer", "lstm", "cnn", *BACKBONE_FAMILIES),
                   _token_ids, lambda inputs, labels, cfg: {})
IMAGES = Inputs("images", IMAGE_FAMILIES, _images, _image_fields)
# Windows overlap (stride 1: neighbours share all but one row), so windows drawn at random
# for each client would put the same private rows with several clients: clients hold
# contiguous blocks of time instead (common/data/partition.py ``time_blocks``).
WINDOWS = Inputs("windows", FORECAST_FAMILIES, _windows, _window_fields, ("time-blocks",))
# windows of a text stream carry no label or natural key: clients draw them at random
TOKEN_WINDOWS = Inputs("token-windows", ("gpt", "lstm-lm"), _token_windows,
                       lambda inputs, targets, cfg: {"max_len": int(inputs.shape[1])},
                       ("iid",))


@dataclass(frozen=True)
class TaskKind:
    name: str  # the dataset's task (common/data/roles.py TASKS)
    knowledge: Knowledge
    inputs: Inputs


TASK_KINDS = {
    "classification": TaskKind("classification", CLASS_PROBABILITIES, TOKEN_IDS),
    "image": TaskKind("image", CLASS_PROBABILITIES, IMAGES),
    "forecast": TaskKind("forecast", FORECASTS, WINDOWS),
    "lm": TaskKind("lm", NEXT_TOKENS, TOKEN_WINDOWS),
}


def task_kind(task: str, dataset: str = "") -> TaskKind:
    """The kind of a dataset's ``task`` (every task of common/data/roles.py TASKS)."""
    if task not in TASK_KINDS:
        raise DataError(
            f"dataset={dataset!r} is a {task!r} dataset; federated distillation of soft "
            f"labels needs one of the tasks {', '.join(TASK_KINDS)} (for example "
            "rotten-tomatoes, digits, seattle-temps or python-docs).")
    return TASK_KINDS[task]
